"""The pixel binding: signed images re-encoded with pydicom's own encoders (RLE, JPEG 2000), losslessly and not.

Lossless: the full signature is TRANSCODED (its MAC is over the original encoding), the binding signature is VALID
and the decoded pixels match: the pixels are vouched for. Lossy, or a pixel changed: the binding does not match.
The DCMTK and GDCM encoders, dcmsign and the CLI are in ``tests/integration/test_transcoding.py``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import FileDataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from provenance.keys import KeyStore, SigningKey
from provenance.models import PixelBindingStatus, SignatureReport, SignatureStatus
from provenance.pixelbinding import digest_pixels, read_binding
from provenance.signature import sign_dataset, verify_dataset
from provenance.trust import TrustPolicy


@pytest.fixture(scope="module")
def store(signing_keystore_template: Path) -> KeyStore:
    from testkit import TEST_KEY_PASSPHRASE

    return KeyStore(signing_keystore_template, lambda: TEST_KEY_PASSPHRASE.encode())


@pytest.fixture(scope="module")
def key(store: KeyStore) -> SigningKey:
    return store.load_signing_key("second")  # an acquisition key


@pytest.fixture(scope="module")
def policy(store: KeyStore) -> TrustPolicy:
    return store.trust_policy()


def ct12() -> FileDataset:
    """pydicom's CT test image as a 12-bit unsigned image (the form JPEG's 12-bit lossy process accepts)."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    pixels = np.clip(ds.pixel_array.astype(np.int32) + 1024, 0, 4095).astype(np.uint16)
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.RescaleIntercept = 12, 11, 0, -1024
    del ds.PixelPaddingValue
    ds.PixelData = pixels.tobytes()
    return ds


def signed(ds: FileDataset, key: SigningKey) -> bytes:
    sign_dataset(ds, key)
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def reread(data: bytes) -> FileDataset:
    return pydicom.dcmread(io.BytesIO(data))


def written(ds: FileDataset) -> FileDataset:
    out = io.BytesIO()
    ds.save_as(out)
    return reread(out.getvalue())


def check(ds: FileDataset, policy: TrustPolicy) -> SignatureReport:
    return verify_dataset(ds, policy)


def assert_vouched(report: SignatureReport, now: str) -> None:
    assert [s.status for s in report.signatures] == [SignatureStatus.TRANSCODED, SignatureStatus.VALID], report.reasons
    assert "re-encoded after signing" in report.signatures[0].reasons[0]
    assert report.pixel_binding is not None and report.pixel_binding.status is PixelBindingStatus.MATCH
    assert report.pixel_binding.reason.startswith("pixels unchanged since signing; re-encoded losslessly")
    assert (report.pixel_binding.transfer_syntax, report.pixel_binding.signed_transfer_syntax) == (
        now,
        ExplicitVRLittleEndian,
    )
    assert report.pixel_binding.signature_uid == report.signatures[1].uid
    assert report.pixel_data_covered is True
    assert report.uncovered == ()
    assert report.problem_found is False


@pytest.mark.parametrize(
    ("syntax", "plugin"),
    [(RLELossless, "pydicom"), (RLELossless, "pylibjpeg"), (JPEG2000Lossless, "pylibjpeg")],
    ids=["rle-pydicom", "rle-pylibjpeg", "j2k-lossless"],
)
def test_lossless_reencoding_is_vouched_for(key: SigningKey, policy: TrustPolicy, syntax: str, plugin: str) -> None:
    original = signed(ct12(), key)
    assert check(reread(original), policy).status is SignatureStatus.VALID
    ds = reread(original)
    ds.compress(syntax, encoding_plugin=plugin, generate_instance_uid=False)
    assert_vouched(check(written(ds), policy), syntax)


def test_multiframe_and_implicit_vr(key: SigningKey, policy: TrustPolicy) -> None:
    """A 10-frame MR read as Implicit VR: signed, it is written as Explicit VR (for dcmsign), and every frame is
    bound."""
    ds = pydicom.dcmread(get_testdata_file("emri_small.dcm"))
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian and int(ds.NumberOfFrames) == 10
    ds = written(ds)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    implicit = written(ds)
    data = signed(implicit, key)
    assert reread(data).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    recorded = read_binding(reread(data))
    assert recorded is not None and recorded.facts.frames == 10
    assert recorded.transfer_syntax == ExplicitVRLittleEndian
    ds = reread(data)
    ds.compress(RLELossless, generate_instance_uid=False)
    assert_vouched(check(written(ds), policy), RLELossless)
    # The last frame changed by one grey level: the binding no longer matches.
    ds = reread(data)
    pixels = ds.pixel_array.copy()
    pixels[9, 5, 5] ^= 1
    ds.compress(RLELossless, pixels, generate_instance_uid=False)
    report = check(written(ds), policy)
    assert report.pixel_binding is not None and report.pixel_binding.status is PixelBindingStatus.MISMATCH


def test_lossy_reencoding_fails_the_binding(key: SigningKey, policy: TrustPolicy) -> None:
    ds = reread(signed(ct12(), key))
    ds.compress(JPEG2000, j2k_cr=[20], generate_instance_uid=False)
    report = check(written(ds), policy)
    assert report.status is SignatureStatus.INVALID
    assert report.pixel_binding is not None and report.pixel_binding.status is PixelBindingStatus.MISMATCH
    assert "decoded pixel values differ" in report.pixel_binding.reason
    assert report.pixel_data_covered is False and report.problem_found is True


def test_one_pixel_changed_then_reencoded_losslessly(key: SigningKey, policy: TrustPolicy) -> None:
    ds = reread(signed(ct12(), key))
    pixels = ds.pixel_array.copy()
    pixels[64, 64] += 1
    ds.compress(RLELossless, pixels, generate_instance_uid=False)
    report = check(written(ds), policy)
    assert report.status is SignatureStatus.INVALID
    assert report.pixel_binding is not None and report.pixel_binding.status is PixelBindingStatus.MISMATCH


def test_changed_rescale_breaks_the_binding_signature(key: SigningKey, policy: TrustPolicy) -> None:
    ds = reread(signed(ct12(), key))
    ds.compress(RLELossless, generate_instance_uid=False)
    ds.RescaleIntercept = -1000
    report = check(written(ds), policy)
    assert [s.status for s in report.signatures] == [SignatureStatus.TRANSCODED, SignatureStatus.INVALID]
    assert report.pixel_binding is None and report.pixel_data_covered is False


def test_a_new_sop_instance_uid_is_a_different_instance(key: SigningKey, policy: TrustPolicy) -> None:
    """pydicom's compress() gives a new SOP Instance UID by default: the binding signature covers the UID."""
    ds = reread(signed(ct12(), key))
    ds.compress(RLELossless)
    report = check(written(ds), policy)
    assert report.signatures[1].status is SignatureStatus.INVALID


def test_undecodable_pixels_are_reported(key: SigningKey, policy: TrustPolicy) -> None:
    ds = reread(signed(ct12(), key))
    ds.compress(RLELossless, generate_instance_uid=False)
    ds.PixelData = encapsulate([b"\x01\x00\x00\x00" + b"\x00" * 60 + b"\x05garbage"])
    report = check(written(ds), policy)
    assert report.pixel_binding is not None, report.reasons
    assert report.pixel_binding.status is PixelBindingStatus.UNDECODABLE, report.pixel_binding.reason
    assert report.status is SignatureStatus.TRANSCODED and report.pixel_data_covered is False


def test_a_second_signer_keeps_the_first_binding(store: KeyStore, key: SigningKey, policy: TrustPolicy) -> None:
    first = reread(signed(ct12(), key))
    first.compress(RLELossless, generate_instance_uid=False)
    both = written(first)
    sign_dataset(both, store.load_signing_key("rsa"))
    report = check(written(both), policy)
    assert [s.status for s in report.signatures] == [SignatureStatus.TRANSCODED, SignatureStatus.VALID] + [
        SignatureStatus.VALID
    ] * 2
    assert [s.pixel_binding for s in report.signatures] == [False, True, False, True]


def test_unbound_signature_and_unsigned_file(key: SigningKey, policy: TrustPolicy) -> None:
    ds = ct12()
    sign_dataset(ds, key, bind_pixels=False)
    ds = written(ds)
    assert read_binding(ds) is None and len(ds.DigitalSignaturesSequence) == 1
    ds.compress(RLELossless, generate_instance_uid=False)
    report = check(written(ds), policy)
    assert report.status is SignatureStatus.TRANSCODED and report.pixel_binding is None
    assert report.pixel_data_covered is False and report.problem_found is True
    assert check(ct12(), policy).status is SignatureStatus.UNSIGNED


@pytest.mark.parametrize("signed_pixels", [False, True], ids=["unsigned", "signed"])
def test_digest_follows_the_documented_canonical_form(signed_pixels: bool) -> None:
    """12 bits stored in 16, with the 4 unused high bits set: they are not part of the image (PS3.5 8.1.1) and do
    not count; the digest is SHA-256 of the header text, then the values as little-endian 16-bit integers."""
    import hashlib

    ds = ct12()
    stored = ds.pixel_array.astype(np.int64)
    values = stored - 2048 if signed_pixels else stored  # within 12 bits, signed or not
    ds.PixelRepresentation = int(signed_pixels)
    ds.PixelData = ((values & 0x0FFF) | 0xF000).astype("<u2").tobytes()  # garbage in the unused bits
    facts, digest = digest_pixels(ds)
    header = (
        "MEDVERIFY-PIXELS-1\nrows=128\ncolumns=128\nframes=1\nsamples=1\nbits_stored=12\n"
        f"pixel_representation={int(signed_pixels)}\nphotometric=MONOCHROME2\nslope=1.0\nintercept=-1024.0\n"
    )
    expected = hashlib.sha256(header.encode() + values.astype("<i2" if signed_pixels else "<u2").tobytes())
    assert (facts.bits_stored, digest) == (12, expected.hexdigest())
