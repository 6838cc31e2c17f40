"""The watermark in the product: keys in the key store, every generated image marked, detection in verify."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from testkit import TEST_KEY_PASSPHRASE

from provenance.errors import PassphraseError
from provenance.keys import KeyStore
from provenance.watermark import embed
from verifier.cli import main


def test_watermark_keys_are_encrypted_and_rotate(keystore: KeyStore, keystore_dir: Path) -> None:
    first = keystore.watermark_key()
    assert keystore.watermark_key().fingerprint == first.fingerprint  # created once, then reused
    stored = keystore_dir / "watermark" / "1.json"
    assert stored.stat().st_mode & 0o777 == 0o600
    assert first.to_bytes() not in stored.read_bytes()
    second = keystore.rotate_watermark_key()
    assert [k.key_id for k in keystore.watermark_keys()] == [second.key_id, first.key_id]
    with pytest.raises(PassphraseError) as info:
        KeyStore(keystore_dir, lambda: b"wrong passphrase").watermark_keys()
    assert "wrong passphrase" not in info.value.diagnostics()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keystore_dir: Path) -> Path:
    monkeypatch.setenv("MEDVERIFY_HOME", str(keystore_dir.parent))
    monkeypatch.setenv("MEDVERIFY_KEY_PASSPHRASE", TEST_KEY_PASSPHRASE)
    return keystore_dir.parent


def test_generated_images_are_marked_with_their_audit_record(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "synthetic"
    real = get_testdata_file("MR_small.dcm")
    assert main(["generate", "tamper", "--from", str(real), "-o", str(out), "--seed", "2"]) == 0
    (path,) = out.glob("*.dcm")
    capsys.readouterr()
    assert main(["audit", "list", "--format", "jsonl", "--channel", "generate"]) == 0
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert record["details"]["watermark_key_id"] == "watermark-1"
    # The stored pixels differ from the generator's own output: the mark is in them, under the signature.
    ds = pydicom.dcmread(path)
    assert hashlib.sha256(ds.PixelData).hexdigest() != record["details"]["pixel_sha256"]
    assert main(["verify", "--no-audit", "--format", "jsonl", "--checks", "signature,watermark", str(path)]) == 1
    line = json.loads(capsys.readouterr().out)
    assert line["watermark"] is not None and "present" in line["watermark"]
    assert line["verdict"] == "DECLARED_SYNTHETIC"


def test_stripped_file_with_our_mark_is_declared_synthetic_from_the_watermark(
    home: Path, keystore: KeyStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file whose tags (and signature) were stripped is still found by the mark in its pixels."""
    name = "693_UNCR.dcm"  # 512x512 CT from pydicom-data: large enough for the mark (small images are not)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = get_testdata_file(name)
    if source is None:
        pytest.skip(f"{name} needs pydicom-data (the 'data' extra)")
    ds = pydicom.dcmread(source)
    pixels = ds.pixel_array
    marked = embed(pixels, keystore.watermark_key(), 4242, bits_stored=int(ds.BitsStored))
    ds.PixelData = np.asarray(marked, dtype=pixels.dtype).tobytes()
    path = tmp_path / "stripped.dcm"
    ds.save_as(path)
    code = main(["verify", "--no-audit", "--format", "jsonl", "--checks", "signature,watermark", str(path)])
    line = json.loads(capsys.readouterr().out)
    assert line["watermark"]["present"] is True and line["watermark"]["payload"] == 4242
    assert line["verdict"] == "DECLARED_SYNTHETIC" and code == 1
    assert any("recovered from watermark" in reason for reason in line["reasons"])
    # Without the watermark check the same file shows no evidence.
    assert main(["verify", "--no-audit", "--format", "jsonl", "--checks", "signature", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["verdict"] == "NO_EVIDENCE"


def test_marked_pixels_under_a_broken_signature_are_tampered(
    home: Path, keystore: KeyStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Our mark found, but the signature over the pixels no longer verifies: the file was changed after signing."""
    name = "693_UNCR.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = get_testdata_file(name)
    if source is None:
        pytest.skip(f"{name} needs pydicom-data (the 'data' extra)")
    signed = tmp_path / "signed.dcm"
    assert main(["sign", source, "-o", str(signed)]) == 0
    ds = pydicom.dcmread(signed)
    marked = embed(ds.pixel_array, keystore.watermark_key(), 77, bits_stored=int(ds.BitsStored))
    ds.PixelData = np.asarray(marked, dtype=ds.pixel_array.dtype).tobytes()  # the signature is left in place
    path = tmp_path / "tampered.dcm"
    ds.save_as(path)
    capsys.readouterr()
    code = main(["verify", "--no-audit", "--format", "jsonl", "--checks", "signature,watermark", str(path)])
    line = json.loads(capsys.readouterr().out)
    assert line["watermark"]["present"] is True and line["watermark"]["payload"] == 77
    assert line["verdict"] == "TAMPERED" and code != 0


def test_every_generated_image_carries_a_mark_that_reads_back_after_stripping(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """GAN samples are noisier than the mark at the 50 dB cap: generation strengthens it until it reads back."""
    from provenance.signature import strip_signatures

    out = tmp_path / "gan"
    assert main(["generate", "gan", "--count", "2", "--modality", "MR", "--size", "256", "-o", str(out)]) == 0
    capsys.readouterr()
    for path in sorted(out.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        strip_signatures(ds)
        for tag in [t for t in ds.keys() if t.group % 2 == 1]:  # the private declaration goes too
            del ds[tag]
        assert ds.SyntheticData == "YES"
        del ds.SyntheticData  # and the standard flag: only the pixels are left to say what it is
        stripped = tmp_path / f"stripped-{path.name}"
        ds.save_as(stripped)
        assert main(["verify", "--format", "jsonl", "--checks", "signature,watermark", str(stripped)]) == 1
        line = json.loads(capsys.readouterr().out)
        assert line["verdict"] == "DECLARED_SYNTHETIC", line["reasons"]
        assert line["watermark"]["payload"] is not None
        assert any("recovered from watermark" in reason for reason in line["reasons"])
