"""Generated images written as DICOM: valid for dciodvfy, declared synthetic, signed so that dcmsign agrees."""

from __future__ import annotations

import datetime as dt
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from testkit import dciodvfy_errors, require_tool

from provenance.declaration import SyntheticDeclaration, read_declaration
from provenance.keys import KeyStore
from provenance.models import SignatureStatus
from provenance.signature import verify_dataset
from verifier.errors import InputError
from verifier.synthetic import MODALITIES, build_synthetic_dataset, write_synthetic


@pytest.fixture(scope="module")
def real_mr() -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(get_testdata_file("MR_small.dcm"))


def _pixels(ds: pydicom.Dataset) -> np.ndarray:
    arr = ds.pixel_array.astype(np.float64)
    return (arr - arr.min()) / (arr.max() - arr.min())


def _declaration(kind: str, source: pydicom.Dataset | None = None) -> SyntheticDeclaration:
    return SyntheticDeclaration(
        generator="vae",
        generator_version="test",
        model_sha256="0123456789abcdef" * 4,
        seed=42,
        generated_at=dt.datetime(2026, 11, 25, 12, 0, 0, 123456, tzinfo=dt.UTC),
        kind=kind,
        source_sop_class_uid=str(source.SOPClassUID) if source is not None else None,
        source_sop_instance_uid=str(source.SOPInstanceUID) if source is not None else None,
    )


@pytest.mark.parametrize("modality", sorted(MODALITIES))
@pytest.mark.parametrize("kind", ["sample", "paired"])
def test_generated_file_is_valid_declared_and_signed(
    modality: str, kind: str, real_mr: pydicom.Dataset, keystore: KeyStore, tmp_path: Path
) -> None:
    source = real_mr if kind == "paired" else None
    ds = build_synthetic_dataset(_pixels(real_mr), modality=modality, declaration=_declaration(kind, source))
    out = tmp_path / f"{modality}_{kind}.dcm"
    write_synthetic(ds, out, keystore.load_signing_key("generator"))

    back = pydicom.dcmread(out)
    assert back.Modality == modality
    assert list(back.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert back.DerivationCodeSequence[0].CodeValue == "SYNTHETIC"
    assert back.SyntheticData == "YES"
    declaration = read_declaration(back)
    assert declaration is not None
    assert declaration == _declaration(kind, source)
    if kind == "paired":
        assert back.SourceImageSequence[0].ReferencedSOPInstanceUID == real_mr.SOPInstanceUID
    assert back.PatientID != real_mr.PatientID  # never the source patient's identity
    stored = back.pixel_array
    assert stored.max() <= (1 << back.BitsStored) - 1 and stored.max() > 2900

    report = verify_dataset(back, keystore.trust_policy())
    assert report.status is SignatureStatus.VALID
    assert report.signatures[0].role == "generator"
    assert report.uncovered == () and report.pixel_data_covered is True
    assert any(tag.replace("(", "").replace(",", "").replace(")", "").upper() == "0008001C"
               for tag in report.signatures[0].covered)  # Synthetic Data is under the signature

    assert dciodvfy_errors(out) == []  # the standard flag keeps the file valid for its IOD

    ca = tmp_path / "ca.pem"
    ca.write_bytes(keystore.export_certificate("ca"))
    dcmsign = subprocess.run(
        [require_tool("dcmsign"), "--verify", "+cf", str(ca), str(out)], capture_output=True, text=True, check=False
    )
    assert dcmsign.returncode == 0 and "Verification : OK" in dcmsign.stdout + dcmsign.stderr


def test_edited_declaration_breaks_the_signature(real_mr: pydicom.Dataset, keystore: KeyStore, tmp_path: Path) -> None:
    ds = build_synthetic_dataset(_pixels(real_mr), modality="MR", declaration=_declaration("sample"))
    out = tmp_path / "synthetic.dcm"
    write_synthetic(ds, out, keystore.load_signing_key("generator"))
    forged = pydicom.dcmread(out)
    forged.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    del forged.DerivationDescription
    assert verify_dataset(forged, keystore.trust_policy()).status is SignatureStatus.INVALID
    unflagged = pydicom.dcmread(out)
    unflagged.SyntheticData = "NO"  # the standard flag is under the signature like the rest
    assert verify_dataset(unflagged, keystore.trust_policy()).status is SignatureStatus.INVALID


@pytest.mark.parametrize(
    "pixels", [np.zeros((4, 4)), np.zeros((2, 64, 64)), np.full((32, 32), np.nan)], ids=["tiny", "3d", "nan"]
)
def test_bad_arrays_are_refused(pixels: np.ndarray) -> None:
    with pytest.raises(InputError):
        build_synthetic_dataset(pixels, modality="MR", declaration=_declaration("sample"))


def test_unknown_modality_is_refused() -> None:
    with pytest.raises(InputError, match="unsupported modality"):
        build_synthetic_dataset(np.zeros((32, 32)), modality="XX", declaration=_declaration("sample"))


def test_value_range_puts_a_fake_on_its_sources_scale() -> None:
    ramp = np.tile(np.linspace(0.0, 1.0, 64), (64, 1))
    narrow = build_synthetic_dataset(ramp, modality="MR", declaration=_declaration("sample"), value_range=(-200, 1400))
    assert (narrow.BitsStored, int(narrow.pixel_array.min()), int(narrow.pixel_array.max())) == (12, 0, 1400)
    assert (float(narrow.WindowCenter), float(narrow.WindowWidth)) == (600.0, 1600.0)
    wide = build_synthetic_dataset(ramp, modality="CR", declaration=_declaration("sample"), value_range=(100, 40000))
    assert (wide.BitsStored, wide.HighBit, int(wide.pixel_array.max())) == (16, 15, 40000)
    default = build_synthetic_dataset(ramp, modality="MR", declaration=_declaration("sample"))
    assert int(default.pixel_array.max()) == 4095
    for bad in [(5.0, 5.0), (0.0, float("inf")), (-10.0, -1.0), (70000.0, 80000.0)]:
        with pytest.raises(InputError, match="value range"):
            build_synthetic_dataset(ramp, modality="MR", declaration=_declaration("sample"), value_range=bad)
