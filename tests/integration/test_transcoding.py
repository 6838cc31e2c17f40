"""Signed images re-encoded by the real tools a PACS uses: ``medverify sign``, then DCMTK's dcmcrle, dcmcjpls and
dcmcjpeg, and GDCM's gdcmconv for JPEG 2000 (DCMTK's free edition has no JPEG 2000 encoder), then
``medverify verify``.

Lossless re-encodings must verify AUTHENTIC by the pixel binding; lossy ones, and a changed pixel re-encoded
losslessly, TAMPERED; a dcmsign signature (which has no pixel binding) re-encoded losslessly, TRANSCODED. dcmsign
itself still verifies what medverify signed. pydicom's own encoders are in ``tests/unit/provenance``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from testkit import jsonl, require_tool
from testkit import run_cli as run

pytestmark = [pytest.mark.dcmtk, pytest.mark.usefixtures("dcmtk")]

#: (id, command before the input and output paths, the transfer syntax it writes)
LOSSLESS = [
    ("dcmcrle", ["dcmcrle"], RLELossless),
    ("dcmcjpls", ["dcmcjpls"], JPEGLSLossless),
    ("dcmcjpeg+e1", ["dcmcjpeg", "+e1"], JPEGLosslessSV1),
    ("gdcmconv-j2k", ["gdcmconv", "--j2k"], JPEG2000Lossless),
]
LOSSY = [
    ("dcmcjpeg+ee", ["dcmcjpeg", "+ee"], JPEGExtended12Bit),
    ("dcmcjpeg+ee+un", ["dcmcjpeg", "+ee", "+un"], JPEGExtended12Bit),  # keeps the SOP Instance UID
    ("dcmcjpls-near", ["dcmcjpls", "+en", "+md", "3"], JPEGLSNearLossless),
    ("gdcmconv-j2k-lossy", ["gdcmconv", "--j2k", "--lossy", "-q", "30"], JPEG2000),
]


def reencode(command: list[str], src: Path, out: Path, syntax: str) -> Path:
    require_tool(command[0])
    result = subprocess.run([*command, src, out], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert pydicom.dcmread(out, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    return out


def ct12(path: Path) -> Path:
    """pydicom's CT test image as 12-bit unsigned pixels (what JPEG's 12-bit lossy process accepts)."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    pixels = np.clip(ds.pixel_array.astype(np.int32) + 1024, 0, 4095).astype(np.uint16)
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.RescaleIntercept = 12, 11, 0, -1024
    del ds.PixelPaddingValue
    ds.PixelData = pixels.tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path)
    return path


@pytest.fixture
def signed(keyed_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A 12-bit CT signed by ``medverify sign`` with the acquisition key ``second``."""
    out = tmp_path / "signed.dcm"
    code, stdout, stderr = run(capsys, "sign", ct12(tmp_path / "ct12.dcm"), "-o", out, "--key", "second")
    assert code == 0, stdout + stderr
    assert "pixel binding" in stdout
    return out


def verify(capsys: pytest.CaptureFixture[str], path: Path, *options: str | Path) -> dict[str, object]:
    code, stdout, stderr = run(capsys, "verify", "--format", "jsonl", *options, path)
    (line,) = jsonl(stdout)
    assert code == (0 if line["action"] == "accept" else 1), stdout + stderr
    return line


def dcmsign_verify(path: Path, ca: Path) -> tuple[bool, str]:
    result = subprocess.run(["dcmsign", "--verify", "+cf", ca, path], capture_output=True, text=True, check=False)
    output = result.stdout + result.stderr
    return result.returncode == 0 and "Verification : OK" in output and "FAILED" not in output, output


@pytest.mark.parametrize(("command", "syntax"), [c[1:] for c in LOSSLESS], ids=[c[0] for c in LOSSLESS])
def test_lossless_reencoding_is_authentic_by_the_pixel_binding(
    signed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str], syntax: str
) -> None:
    line = verify(capsys, reencode(command, signed, tmp_path / "reencoded.dcm", syntax))
    assert (line["verdict"], line["action"]) == ("AUTHENTIC", "accept"), line["reasons"]
    report = line["signature"]
    assert isinstance(report, dict)
    assert [s["status"] for s in report["signatures"]] == ["TRANSCODED", "VALID"]
    assert report["pixel_binding"]["status"] == "MATCH"
    assert report["pixel_binding"]["transfer_syntax"] == syntax
    assert report["uncovered"] == [] and report["pixel_data_covered"] is True
    expected = "signature: pixel binding MATCH: pixels unchanged since signing; re-encoded losslessly"
    assert any(str(r).startswith(expected) for r in line["reasons"]), line["reasons"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(("command", "syntax"), [c[1:] for c in LOSSY], ids=[c[0] for c in LOSSY])
def test_lossy_reencoding_is_tampered(
    signed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str], syntax: str
) -> None:
    line = verify(capsys, reencode(command, signed, tmp_path / "lossy.dcm", syntax))
    assert (line["verdict"], line["action"]) == ("TAMPERED", "reject"), line["reasons"]
    report = line["signature"]
    assert isinstance(report, dict) and report["status"] == "INVALID"
    # Either the pixels are found to differ, or the encoder's other changes (new UID, DERIVED) break the binding.
    binding = report["pixel_binding"]
    assert (binding is not None and binding["status"] == "MISMATCH") or report["signatures"][1]["status"] == "INVALID"


def test_changed_pixel_then_lossless_reencoding_is_tampered(
    signed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ds = pydicom.dcmread(signed)
    pixels = ds.pixel_array.copy()
    pixels[10, 20] += 1
    ds.PixelData = pixels.tobytes()
    ds.save_as(tmp_path / "edited.dcm")
    line = verify(capsys, reencode(["dcmcrle"], tmp_path / "edited.dcm", tmp_path / "edited-rle.dcm", RLELossless))
    assert (line["verdict"], line["action"]) == ("TAMPERED", "reject"), line["reasons"]
    report = line["signature"]
    assert isinstance(report, dict) and report["pixel_binding"]["status"] == "MISMATCH"
    assert [s["status"] for s in report["signatures"]] == ["TRANSCODED", "VALID"]


def test_dcmsign_verifies_what_medverify_signed(signed: Path, keyed_home: Path) -> None:
    from testkit import TEST_KEY_PASSPHRASE

    from provenance.keys import KeyStore

    ca = keyed_home / "ca.pem"
    ca.write_bytes(KeyStore(keyed_home / "keys", lambda: TEST_KEY_PASSPHRASE.encode()).export_certificate("ca"))
    passed, output = dcmsign_verify(signed, ca)
    assert passed and output.count("Verification : OK") == 2, output
    # After a lossless re-encoding dcmsign cannot compute the MAC: it does not claim tampering either.
    rle = reencode(["dcmcrle"], signed, signed.with_name("rle.dcm"), RLELossless)
    passed, output = dcmsign_verify(rle, ca)
    assert not passed and "transfer syntax" in output, output


def test_dcmsign_signature_reencoded_losslessly_is_transcoded(
    keyed_home: Path, openssl_pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, theirs = ct12(tmp_path / "ct12.dcm"), tmp_path / "dcmsign.dcm"
    result = subprocess.run(
        ["dcmsign", "--sign", openssl_pki / "rsa.key", openssl_pki / "rsa.pem", "-pw", "+m2", src, theirs],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    trust = ("--trust", openssl_pki / "ca.pem")
    assert verify(capsys, theirs, *trust)["verdict"] == "AUTHENTIC"
    line = verify(capsys, reencode(["dcmcjpls"], theirs, tmp_path / "jls.dcm", JPEGLSLossless), *trust)
    assert (line["verdict"], line["action"]) == ("TRANSCODED", "flag"), line["reasons"]
    report = line["signature"]
    assert isinstance(report, dict)
    assert [s["status"] for s in report["signatures"]] == ["TRANSCODED"] and report["pixel_binding"] is None
    messages = " ".join(map(str, line["reasons"]))  # type: ignore[call-overload]
    assert "re-encoded after signing" in messages and "no pixel binding" in messages


def test_text_output_names_the_reencoding(signed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(signed, tmp_path / "copy.dcm")
    rle = reencode(["dcmcjpls"], tmp_path / "copy.dcm", tmp_path / "jls.dcm", JPEGLSLossless)
    code, stdout, _ = run(capsys, "verify", rle)
    assert code == 0
    assert stdout.startswith("AUTHENTIC")
    assert "TRANSCODED by" in stdout and "pixel binding," in stdout
    assert "re-encoded losslessly (JPEGLSLossless, signed as ExplicitVRLittleEndian)" in stdout


@pytest.mark.parametrize(("command", "syntax"), [c[1:] for c in LOSSLESS], ids=[c[0] for c in LOSSLESS])
def test_colour_image_reencoded_losslessly_is_authentic(
    keyed_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str], syntax: str
) -> None:
    """An RGB image (pydicom's SC_rgb.dcm): the binding is over the decoded samples, whatever the encoder does
    with the Planar Configuration or a colour transform."""
    signed = tmp_path / "rgb-signed.dcm"
    code, stdout, stderr = run(capsys, "sign", get_testdata_file("SC_rgb.dcm"), "-o", signed, "--key", "second")
    assert code == 0, stdout + stderr
    line = verify(capsys, reencode(command, signed, tmp_path / "rgb.dcm", syntax))
    assert (line["verdict"], line["action"]) == ("AUTHENTIC", "accept"), line["reasons"]
    assert line["signature"]["pixel_binding"]["status"] == "MATCH"  # type: ignore[index]
