"""Hostile DICOM input: resource limits before allocation, and a short run of the fuzz harness (benchmarks/fuzz.py).

Every case must end as a verdict with an audit record: no exception past the boundary, no hang, no lost record.
"""

from __future__ import annotations

import importlib.util
import io
import sys
import time
from pathlib import Path
from types import ModuleType

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import DeflatedExplicitVRLittleEndian

from tests.testkit import jsonl, run_cli
from verifier import instance as instance_module
from verifier.instance import Instance, UnreadableInstanceError

FUZZ = Path(__file__).resolve().parents[3] / "benchmarks" / "fuzz.py"


@pytest.fixture(scope="module")
def fuzz() -> ModuleType:
    spec = importlib.util.spec_from_file_location("medverify_fuzz", FUZZ)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["medverify_fuzz"] = module
    spec.loader.exec_module(module)
    return module


def _bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def _bomb() -> bytes:
    """A few kilobytes of RLE that claim 65535 x 65535 pixels in a million frames (8.6 PB decoded)."""
    ds = pydicom.dcmread(get_testdata_file("MR_small_RLE.dcm"))
    ds.Rows = ds.Columns = 65535
    ds.NumberOfFrames = "1000000"
    return _bytes(ds)


def test_a_decompression_bomb_is_refused_before_decoding() -> None:
    started = time.perf_counter()
    with pytest.raises(UnreadableInstanceError) as info:
        Instance.from_bytes(_bomb(), path="bomb.dcm")
    assert info.value.kind == "MALFORMED"
    assert "65535x65535, 1000000 frame(s)" in str(info.value)
    assert "MEDVERIFY_MAX_PIXEL_BYTES" in str(info.value)
    assert time.perf_counter() - started < 5  # refused from the header, nothing decoded (a sanity bound)


@pytest.mark.parametrize(
    ("keyword", "value", "message"),
    [("Rows", 0, "Rows is 0"), ("BitsAllocated", 0, "BitsAllocated is 0"), ("SamplesPerPixel", 9, "9 samples")],
)
def test_impossible_pixel_modules_are_malformed(keyword: str, value: int, message: str) -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds[keyword].value = value
    with pytest.raises(UnreadableInstanceError, match=message) as info:
        Instance.from_bytes(_bytes(ds))
    assert info.value.kind == "MALFORMED"


def test_an_image_at_the_limit_is_still_read(monkeypatch: pytest.MonkeyPatch) -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))  # 128 x 128 x 16 bits = 32,768 bytes
    monkeypatch.setattr(instance_module, "MAX_PIXEL_BYTES", 128 * 128 * 2)
    assert Instance.from_bytes(_bytes(ds)).modality == "CT"
    monkeypatch.setattr(instance_module, "MAX_PIXEL_BYTES", 128 * 128 * 2 - 1)
    with pytest.raises(UnreadableInstanceError, match="over the limit"):
        Instance.from_bytes(_bytes(ds))


def test_a_deflate_bomb_is_refused_before_inflating(monkeypatch: pytest.MonkeyPatch) -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.add_new(0x00091010, "LO", "MEDVERIFY FUZZ")
    ds.add_new(0x00091000, "OB", bytes(8 * 1024 * 1024))  # 8 MiB of zeros deflate to a few kilobytes
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    data = _bytes(ds)
    assert len(data) < 200_000
    assert Instance.from_bytes(data).modality == "CT"  # under the default limit it is an ordinary file
    monkeypatch.setattr(instance_module, "MAX_INFLATED_BYTES", 4 * 1024 * 1024)
    with pytest.raises(UnreadableInstanceError, match="inflates to more than") as info:
        Instance.from_bytes(data)
    assert info.value.kind == "MALFORMED"
    # The genuine deflated sample stays readable under the lowered limit.
    assert Instance.from_bytes(Path(get_testdata_file("image_dfl.dcm")).read_bytes()).sop_instance_uid


def test_an_undecodable_identifier_is_malformed_not_a_crash() -> None:
    data = bytearray(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    at = data.find(b"\x08\x00\x18\x00UI")  # SOP Instance UID: give it a VR that does not exist
    data[at + 4 : at + 6] = b"UA"
    with pytest.raises(UnreadableInstanceError, match="SOPInstanceUID cannot be decoded"):
        Instance.from_bytes(bytes(data))


@pytest.mark.parametrize("tag", [b"\x02\x00\x02\x00UI", b"\x02\x00\x10\x00UI", b"\x08\x00\x18\x00UI"])
def test_an_unknown_vr_in_meta_or_identifiers_is_one_malformed_result(tag: bytes, keystore_dir: Path) -> None:
    """Found by the fuzz harness: an unknown VR raised past the boundary (transfer syntax, SOP Instance UID)."""
    from provenance.keys import KeyStore
    from tests.testkit import TEST_KEY_PASSPHRASE
    from verifier.checker import Checker

    data = bytearray(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    at = data.find(tag)
    data[at + 4 : at + 6] = b"WI"
    trust = KeyStore(keystore_dir, lambda: TEST_KEY_PASSPHRASE.encode()).trust_policy()
    result = Checker(trust=trust).check(bytes(data), name="upload")
    assert result.status == "MALFORMED"
    assert "WI" in (result.error or "")


def test_a_nul_inside_a_uid_is_escaped_and_recorded(
    keyed_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by the fuzz harness: the audit log refused a record whose SOP Instance UID held a NUL byte."""
    data = bytearray(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    at = data.find(b"\x08\x00\x18\x00UI") + 8
    data[at + 3] = 0  # a NUL inside the UID, not padding
    path = tmp_path / "nul.dcm"
    path.write_bytes(bytes(data))
    code, out, _ = run_cli(capsys, "verify", path, "--format", "jsonl")
    (line,) = jsonl(out)
    assert "\\x00" in line["sop_instance_uid"]
    assert isinstance(line["audit_id"], int)
    assert code == 0


def test_a_decoder_panic_is_one_malformed_result(keystore_dir: Path) -> None:
    """Found by the fuzz harness: RLE data that makes the Rust decoder panic (pyo3's PanicException is a
    BaseException); scan and intake boundaries must both turn it into a result."""
    pytest.importorskip("rle", reason="pylibjpeg-rle (the data extra) decodes RLE")
    from provenance.keys import KeyStore
    from tests.testkit import TEST_KEY_PASSPHRASE
    from verifier.checker import Checker, parse_checks
    from verifier.intake.decide import Intake, Peer
    from verifier.reports import NotChecked, WatermarkNotChecked

    path = Path(__file__).resolve().parents[2] / "data" / "fuzz" / "rle_decoder_panic.dcm"
    store = KeyStore(keystore_dir, lambda: TEST_KEY_PASSPHRASE.encode())
    checker = Checker(
        checks=parse_checks("signature,watermark"), trust=store.trust_policy(), watermark_keys=(store.watermark_key(),)
    )
    result = checker.check(path)
    assert isinstance(result.watermark, WatermarkNotChecked) and result.watermark.reason is NotChecked.UNDECODABLE
    assert result.to_dict()["watermark"]["status"] == "UNDECODABLE"
    assert "PanicException" in result.watermark.error
    from verifier.audit import Channel

    decision = Intake(checker).check(path.read_bytes(), Peer(channel=Channel.INTAKE))
    assert decision.result.watermark is not None and decision.result.to_dict()["watermark"]["status"] == "UNDECODABLE"


def test_verify_gives_a_bomb_a_malformed_verdict_and_an_audit_record(
    keyed_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bomb = tmp_path / "bomb.dcm"
    bomb.write_bytes(_bomb())
    code, out, _ = run_cli(capsys, "verify", bomb, "--format", "jsonl")
    (line,) = jsonl(out)
    assert code == 2
    assert line["verdict"] == "MALFORMED" or line["status"] == "MALFORMED"
    assert "decoded pixels" in line["error"]
    assert isinstance(line["audit_id"], int)


def test_a_short_fuzz_run_has_no_crash_hang_or_lost_record(fuzz: ModuleType, tmp_path: Path) -> None:
    figures = fuzz.run(400, seed=20261125, workdir=tmp_path, timeout=20.0)
    failures = figures["crash_examples"] + figures["hang_examples"]
    assert figures["crashes"] == 0, failures
    assert figures["hangs"] == 0, failures
    assert figures["unrecorded"] == 0
    assert figures["audit_records"] == 400
    # The mutations reach the interesting paths: refused input and intact signatures both occur.
    verdicts = figures["verdicts"]
    assert any(k.startswith("MALFORMED") for k in verdicts)
    assert any(k.endswith("/VALID") for k in verdicts)
    assert any(k.endswith("/INVALID") for k in verdicts)
