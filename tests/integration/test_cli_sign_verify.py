"""``medverify sign`` and ``medverify verify`` end to end through ``verifier.cli.main``, on real files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from testkit import jsonl
from testkit import run_cli as run


@pytest.fixture
def home(cli_home: Path) -> Path:
    return cli_home


def sample(tmp_path: Path, name: str, target: str | None = None) -> Path:
    path = tmp_path / (target or name)
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(get_testdata_file(name), path)
    return path


def flip_pixel(path: Path) -> None:
    ds = pydicom.dcmread(path)
    data = bytearray(ds.PixelData)
    data[len(data) // 3] ^= 0x10
    ds.PixelData = bytes(data)
    ds.save_as(path)


def test_init_sign_and_verify(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "keys", "init")[0] == 0
    src = sample(tmp_path, "CT_small.dcm", "in/ct.dcm")
    before = src.read_bytes()
    out = tmp_path / "out" / "ct_signed.dcm"

    code, stdout, stderr = run(capsys, "sign", src, "-o", out)
    assert code == 0, stdout + stderr
    assert "signed" in stdout
    assert src.read_bytes() == before, "sign -o must not touch its input"

    # Signed by the default key, a generator key: the default policy calls it declared synthetic (exit 1).
    code, stdout, stderr = run(capsys, "verify", "--format", "jsonl", out)
    assert code == 1, stdout + stderr
    (line,) = jsonl(stdout)
    assert (line["verdict"], line["action"]) == ("DECLARED_SYNTHETIC", "quarantine")
    assert line["path"] == str(out)
    assert line["sop_instance_uid"] == str(pydicom.dcmread(src).SOPInstanceUID)
    assert line["signature"]["status"] == "VALID"
    assert "CN=generator" in line["signature"]["signer"]
    sig, binding = line["signature"]["signatures"]  # the full signature, and the pixel binding's
    assert sig["status"] == "VALID" and sig["mac_algorithm"] == "SHA256" and sig["pixel_binding"] is False
    assert binding["status"] == "VALID" and binding["pixel_binding"] is True
    assert line["signature"]["reasons"] == [] and line["signature"]["pixel_binding"] is None


def test_sign_in_place_and_options(keyed_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = sample(tmp_path, "MR_small.dcm")
    code, stdout, stderr = run(
        capsys, "sign", src, "--in-place", "--key", "second", "--profile", "creator", "--mac", "sha512"
    )
    assert code == 0, stdout + stderr
    ds = pydicom.dcmread(src)
    assert str(ds[0x4FFE0001].value[0][0x04000015].value) == "SHA512"

    code, stdout, _ = run(capsys, "verify", "--format", "jsonl", src)
    assert code == 0  # an acquisition key: AUTHENTIC, accepted
    (line,) = jsonl(stdout)
    assert (line["verdict"], line["action"]) == ("AUTHENTIC", "accept")
    sig, binding = line["signature"]["signatures"]
    assert "CN=second" in sig["signer"] and "creator" in sig["profiles"]
    assert binding["signer"] == sig["signer"] and binding["pixel_binding"] is True


def test_sign_refusals(keyed_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = sample(tmp_path, "CT_small.dcm")
    before = src.read_bytes()
    assert run(capsys, "sign", src)[0] == 2  # neither -o nor --in-place
    assert run(capsys, "sign", src, "--in-place", "-o", tmp_path / "x.dcm")[0] == 2
    assert run(capsys, "sign", src, "--in-place", "--mac", "ripemd160")[0] == 2
    assert run(capsys, "sign", src, "--in-place", "--key", "ecdsa", "--profile", "creator")[0] == 2
    assert src.read_bytes() == before


def test_sign_several_into_a_directory_and_verify_them(
    keyed_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names = ["CT_small.dcm", "MR_small_bigendian.dcm", "JPEG2000.dcm", "rtplan.dcm"]
    inputs = [sample(tmp_path, n, f"in/{n}") for n in names]
    outdir = tmp_path / "signed"
    code, stdout, stderr = run(capsys, "sign", *inputs, "-o", outdir, "--key", "ecdsa")
    assert code == 0, stdout + stderr
    assert sorted(p.name for p in outdir.iterdir()) == sorted(names)

    code, stdout, stderr = run(capsys, "verify", "--format", "jsonl", outdir)
    assert code == 1, stdout + stderr  # generator-signed: declared synthetic, quarantined
    lines = jsonl(stdout)
    assert len(lines) == len(names)
    assert {line["verdict"] for line in lines} == {"DECLARED_SYNTHETIC"}
    for line in lines:
        assert {"path", "sop_instance_uid", "signature", "reasons"} <= line.keys()
        assert line["signature"]["status"] == "VALID", line
        assert "CN=ecdsa" in line["signature"]["signer"]
        assert isinstance(line["signature"]["signatures"], list) and line["signature"]["signatures"]

    # One tampered file among valid ones: exit 1, and only that line says INVALID.
    flip_pixel(outdir / "CT_small.dcm")
    code, stdout, _ = run(capsys, "verify", "--format", "jsonl", outdir)
    assert code == 1
    by_name = {Path(line["path"]).name: line for line in jsonl(stdout)}
    assert by_name["CT_small.dcm"]["signature"]["status"] == "INVALID"
    assert by_name["CT_small.dcm"]["reasons"]
    assert {by_name[n]["signature"]["status"] for n in names if n != "CT_small.dcm"} == {"VALID"}

    # The text and json formats agree on the exit code.
    assert run(capsys, "verify", outdir)[0] == 1
    code, stdout, _ = run(capsys, "verify", "--format", "json", outdir)
    assert code == 1 and len(json.loads(stdout)) == len(names)


def test_unsigned_file_exits_zero(keyed_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = run(capsys, "verify", "--format", "jsonl", sample(tmp_path, "CT_small.dcm"))
    assert code == 0
    assert jsonl(stdout)[0]["signature"]["status"] == "UNSIGNED"


def test_added_element_is_a_finding(keyed_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = sample(tmp_path, "CT_small.dcm")
    assert run(capsys, "sign", src, "--in-place", "--key", "rsa")[0] == 0
    ds = pydicom.dcmread(src)
    ds.PatientComments = "added later"
    ds.save_as(src)
    code, stdout, _ = run(capsys, "verify", "--format", "jsonl", src)
    assert code == 1
    (line,) = jsonl(stdout)
    assert line["signature"]["status"] == "VALID"
    assert line["signature"]["uncovered"] == [{"tag": "(0010,4000)", "keyword": "PatientComments"}]
    assert any("(0010,4000)" in r for r in line["reasons"])


@pytest.mark.parametrize("kind", ["truncated", "text"])
def test_unreadable_input_alone_exits_two(
    keyed_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    if kind == "truncated":
        path = sample(tmp_path, "MR_truncated.dcm")
        expected = "MALFORMED"
    else:
        path = tmp_path / "notes.dcm"
        path.write_text("not a DICOM file\n")
        expected = "UNREADABLE"
    code, stdout, stderr = run(capsys, "verify", "--format", "jsonl", path)
    assert code == 2, stdout + stderr
    (line,) = jsonl(stdout)
    assert line["path"] == str(path)
    assert line["status"] == expected
    assert line["error"] and line["reasons"]
    assert "Traceback" not in stdout + stderr


def test_tampered_file_wins_over_unreadable(
    keyed_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    signed = sample(tmp_path, "CT_small.dcm")
    assert run(capsys, "sign", signed, "--in-place", "--key", "rsa")[0] == 0
    flip_pixel(signed)
    truncated = sample(tmp_path, "MR_truncated.dcm")
    code, stdout, _ = run(capsys, "verify", "--format", "jsonl", signed, truncated)
    assert code == 1
    assert [line["status"] for line in jsonl(stdout)] == ["INVALID", "MALFORMED"]


def test_bad_arguments_exit_two(keyed_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = sample(tmp_path, "CT_small.dcm")
    code, stdout, stderr = run(capsys, "verify", "--checks", "nonsense", src)
    assert code == 2
    assert "nonsense" in stdout + stderr
    assert run(capsys, "verify", "--format", "xml", src)[0] == 2
    assert run(capsys, "verify", tmp_path / "does-not-exist.dcm")[0] == 2
    assert run(capsys, "verify", "--checks", "signature", "--format", "jsonl", src)[0] == 0


def test_first_verify_on_a_fresh_home_needs_no_passphrase_and_reports_an_untrusted_signer(
    home: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    signing_keystore_template: Path,
) -> None:
    """What a new user meets: no keys, no passphrase, a file signed by someone else's key."""
    from testkit import TEST_KEY_PASSPHRASE

    from provenance.keys import KeyStore
    from provenance.signature import sign_dataset

    monkeypatch.delenv("MEDVERIFY_KEY_PASSPHRASE")
    src = sample(tmp_path, "CT_small.dcm")
    ds = pydicom.dcmread(src)
    other = KeyStore(signing_keystore_template, lambda: TEST_KEY_PASSPHRASE.encode())  # not this home's CA
    sign_dataset(ds, other.load_signing_key("second"))
    ds.save_as(src)

    code, stdout, stderr = run(capsys, "verify", "--format", "jsonl", "--checks", "signature,watermark", src)
    assert code == 1, stdout + stderr  # something found (an untrusted signer), not an error
    (line,) = jsonl(stdout)
    assert line["signature"]["status"] == "UNTRUSTED_SIGNER" and line["action"] == "flag"
    assert "no watermark key yet" in line["not_run"]["watermark"]
    assert any(r.startswith("watermark: not run: no watermark key yet") for r in line["reasons"])
    assert f"created the key store {home / 'keys'}" in stderr and "passphrase" in stderr
    assert (home / "keys" / "passphrase").stat().st_mode & 0o777 == 0o600

    code, stdout, stderr = run(capsys, "verify", "--format", "jsonl", "--checks", "signature", src)
    assert code == 1 and "created the key store" not in stderr  # said once


def test_directory_scan_finds_dicom_by_content(
    keyed_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "scan"
    disguised = sample(tmp_path, "CT_small.dcm", "scan/x.txt")
    assert run(capsys, "sign", disguised, "--in-place", "--key", "second")[0] == 0
    nested = sample(tmp_path, "MR_small.dcm", "scan/sub/no_extension")
    (folder / "y.dcm").write_text("plain text pretending to be DICOM\n")

    code, stdout, stderr = run(capsys, "verify", "--format", "jsonl", folder)
    assert code == 0, stdout + stderr
    lines = jsonl(stdout)
    assert sorted(line["path"] for line in lines) == sorted([str(disguised), str(nested)])
    statuses = {Path(line["path"]).name: line["signature"]["status"] for line in lines}
    assert statuses == {"x.txt": "VALID", "no_extension": "UNSIGNED"}


def test_trust_option_adds_an_anchor(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], signing_keystore_template: Path
) -> None:
    """A verifier with no key store of its own trusts a signer's CA given with --trust."""
    from testkit import TEST_KEY_PASSPHRASE

    from provenance.keys import KeyStore

    signer_store = KeyStore(signing_keystore_template, lambda: TEST_KEY_PASSPHRASE.encode())
    ca = tmp_path / "ca.pem"
    ca.write_bytes(signer_store.export_certificate("ca"))
    src = sample(tmp_path, "CT_small.dcm")
    ds = pydicom.dcmread(src)
    from provenance.signature import sign_dataset

    sign_dataset(ds, signer_store.load_signing_key("second"))
    ds.save_as(src)
    code, stdout, stderr = run(capsys, "verify", "--format", "jsonl", "--trust", ca, src)
    assert code == 0, stdout + stderr
    assert jsonl(stdout)[0]["signature"]["status"] == "VALID"
    assert jsonl(stdout)[0]["verdict"] == "AUTHENTIC"


def test_file_cut_inside_an_element_header_is_malformed(
    keyed_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    rows = pydicom.dcmread(get_testdata_file("CT_small.dcm")).get_item(0x00280010)
    header_start = rows.value_tell - 8  # explicit VR little endian, short VR: 8-byte header
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: header_start + 4])
    code, stdout, _ = run(capsys, "verify", "--format", "jsonl", cut)
    assert jsonl(stdout)[0]["status"] == "MALFORMED"
    assert code == 2


@pytest.mark.parametrize("name", ["CT_small.dcm", "JPEG2000.dcm"])
def test_every_cut_of_an_image_file_is_malformed(name: str) -> None:
    """A sweep over cut points: an image file cut anywhere (except in its last few trailing bytes) is refused."""
    from verifier.instance import Instance, UnreadableInstanceError

    data = Path(get_testdata_file(name)).read_bytes()
    accepted = []
    for cut in range(132, len(data) - 200, 7):
        try:
            Instance.from_bytes(data[:cut])
        except UnreadableInstanceError as exc:
            assert exc.kind in ("MALFORMED", "UNREADABLE")
        else:
            accepted.append(cut)
    assert accepted == []
