"""``medverify watermark`` end to end through ``verifier.cli.main`` with real DICOM, PNG and JPEG files."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from testkit import jsonl, run_cli

from verifier.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Path:
    monkeypatch.setenv("MEDVERIFY_HOME", str(tmp_path / "home"))
    path = tmp_path / "wm.key"
    code, out, _ = run(capsys, "watermark", "keygen", "--out", str(path), "--key-id", "site-a")
    assert code == 0 and "site-a" in out
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert run(capsys, "watermark", "keygen", "--out", str(path))[0] == 2  # never overwritten silently
    return path


def _ct() -> Path:
    path = get_testdata_file("693_UNCR.dcm")
    if path is None:
        pytest.skip("needs pydicom-data (the 'data' extra)")
    return Path(path)


def test_dicom_embed_then_detect_dicom_png_jpeg(
    key_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _ct()
    marked = tmp_path / "marked.dcm"
    code, _, err = run(capsys, "watermark", "embed", str(source), "-o", str(marked), "--payload", "424242",
                       "--key-file", str(key_file))
    assert code == 0, err
    before, after = pydicom.dcmread(source), pydicom.dcmread(marked)
    assert after.PatientID == before.PatientID and after.SOPInstanceUID == before.SOPInstanceUID
    assert (after.BitsStored, after.PixelRepresentation) == (before.BitsStored, before.PixelRepresentation)
    assert after.pixel_array.dtype == np.int16 and not np.array_equal(after.pixel_array, before.pixel_array)

    # A windowed 8-bit PNG export and a JPEG of it, with no tags at all.
    window = np.clip((after.pixel_array.astype(np.float64) - 864) / 400 * 255, 0, 255).astype(np.uint8)
    png, jpeg = tmp_path / "export.png", tmp_path / "export.jpg"
    cv2.imwrite(str(png), window)
    cv2.imwrite(str(jpeg), window, [cv2.IMWRITE_JPEG_QUALITY, 75])

    code, out, err = run(capsys, "watermark", "detect", str(marked), str(png), str(jpeg), str(source),
                         "--format", "jsonl", "--key-file", str(key_file))
    assert code == 1, err  # a mark was found
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["path"] for line in lines] == [str(marked), str(png), str(jpeg), str(source)]
    for line in lines[:3]:
        assert line["present"] is True and line["payload"] == 424242 and line["key_id"] == "site-a"
        assert line["false_alarm_probability"] <= 1e-9
    assert lines[3]["present"] is False and lines[3]["payload"] is None and lines[3]["key_id"] is None

    code, out, _ = run(capsys, "watermark", "detect", str(source), "--key-file", str(key_file))
    assert code == 0 and "ABSENT" in out


def test_png_embed_keeps_format(key_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pixels = pydicom.dcmread(_ct()).pixel_array
    source = tmp_path / "in.png"
    cv2.imwrite(str(source), (pixels.astype(np.int32) + 2048).clip(0, 65535).astype(np.uint16))
    out_path = tmp_path / "out.png"
    assert run(capsys, "watermark", "embed", str(source), "-o", str(out_path), "--payload", "7",
               "--key-file", str(key_file))[0] == 0
    assert cv2.imread(str(out_path), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    code, out, _ = run(capsys, "watermark", "detect", str(out_path), "--key-file", str(key_file))
    assert code == 1 and "payload 7" in out


def test_bad_input_exits_2(key_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    assert run(capsys, "watermark", "detect", str(junk), "--key-file", str(key_file))[0] == 2
    assert run(capsys, "watermark", "detect", str(tmp_path / "missing.dcm"), "--key-file", str(key_file))[0] == 2
    bad_key = tmp_path / "bad.key"
    bad_key.write_bytes(b"xx")
    code, _, err = run(capsys, "watermark", "detect", str(junk), "--key-file", str(bad_key))
    assert code == 2 and "bad.key" in err


def test_embed_in_a_signed_file_drops_or_renews_the_signature(
    keyed_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Marking changes Pixel Data: the old signature would verify as INVALID, so it goes (or is made anew)."""
    signed, marked, resigned = tmp_path / "signed.dcm", tmp_path / "marked.dcm", tmp_path / "resigned.dcm"
    assert run_cli(capsys, "sign", _ct(), "-o", signed, "--key", "second")[0] == 0
    # No --key-file: the key store's current watermark key.
    code, out, err = run_cli(capsys, "watermark", "embed", signed, "-o", marked, "--payload", "9")
    assert code == 0 and "removed 2 signature(s)" in err and "medverify sign" in err  # the full one and the binding
    assert "DigitalSignaturesSequence" not in pydicom.dcmread(marked)
    assert not [e for e in pydicom.dcmread(marked) if e.tag.group == 0x0011]  # nor the pixel binding they signed
    code, out, err = run_cli(capsys, "watermark", "embed", signed, "-o", resigned, "--payload", "9", "--sign", "second")
    assert code == 0 and "signed again with key 'second'" in err

    code, out, _ = run_cli(capsys, "verify", "--no-audit", "--checks", "signature", "--format", "jsonl", marked,
                           resigned)  # fmt: skip
    unsigned, valid = jsonl(out)
    assert unsigned["signature"]["status"] == "UNSIGNED"
    assert valid["signature"]["status"] == "VALID" and valid["verdict"] == "AUTHENTIC"
    code, out, _ = run_cli(capsys, "watermark", "detect", marked, resigned, "--format", "jsonl")
    assert code == 1
    for line in jsonl(out):
        assert line["present"] is True and line["payload"] == 9 and line["key_id"] == "watermark-1"


def test_detect_goes_on_after_a_bad_file_and_says_too_small(
    key_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    small = get_testdata_file("MR_small.dcm")  # 64x64: under the mark's minimum of 128x128
    assert small is not None
    code, out, _ = run_cli(capsys, "watermark", "detect", junk, small, _ct(), "--format", "jsonl",
                           "--key-file", key_file)
    assert code == 2  # an unreadable input, though the others were checked
    bad, too_small, absent = jsonl(out)
    assert bad["status"] == "ERROR" and bad["present"] is False and "junk.png" in bad["error"]
    assert too_small["status"] == "TOO_SMALL" and too_small["present"] is False and too_small["payload"] is None
    assert absent["status"] == "ABSENT" and absent["key_id"] is None


def test_rotated_keys_are_all_tried(keyed_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first, second = tmp_path / "first.dcm", tmp_path / "second.dcm"
    assert run_cli(capsys, "watermark", "embed", _ct(), "-o", first, "--payload", "1")[0] == 0
    code, out, _ = run_cli(capsys, "watermark", "rotate")
    assert code == 0 and "'watermark-2'" in out
    assert run_cli(capsys, "watermark", "embed", _ct(), "-o", second, "--payload", "2")[0] == 0
    code, out, _ = run_cli(capsys, "watermark", "detect", first, second, "--format", "jsonl")
    assert code == 1
    assert [(line["key_id"], line["payload"]) for line in jsonl(out)] == [("watermark-1", 1), ("watermark-2", 2)]
