"""The one pixel reader: transfer syntaxes decode to the same pixels, physical units, limits before decoding."""

from __future__ import annotations

from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from detectors.data.reader import DEFAULT_MAX_DECODED_BYTES, ImageData, read_image, sniff_format
from detectors.errors import DetectorsError, ImageDecodeError, ImageTooLargeError

# (reference, lossless variants): every grayscale transfer-syntax sample must decode to the reference pixels.
LOSSLESS = [
    ("MR_small.dcm", ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm",
                      "MR_small_bigendian.dcm", "MR_small_expb.dcm", "MR_small_implicit.dcm"]),
    ("emri_small.dcm", ["emri_small_RLE.dcm", "emri_small_big_endian.dcm", "emri_small_jpeg_ls_lossless.dcm",
                        "emri_small_jpeg_2k_lossless.dcm"]),
    ("MR2_UNCR.dcm", ["MR2_J2KR.dcm"]),
    ("RG3_UNCR.dcm", ["RG3_J2KR.dcm"]),
    ("693_UNCR.dcm", ["693_J2KR.dcm"]),
    ("liver.dcm", ["liver_expb.dcm"]),  # 1-bit packed
    ("rtdose.dcm", ["rtdose_rle.dcm", "rtdose_expb.dcm"]),  # 32-bit
]
LOSSY = [("MR2_UNCI.dcm", "MR2_J2KI.dcm"), ("RG1_UNCI.dcm", "RG1_J2KI.dcm")]


def _get(dicom_sample: dict[str, Path], name: str) -> Path:
    if name not in dicom_sample:
        pytest.skip(f"{name} is not installed")
    return dicom_sample[name]


@pytest.mark.parametrize(("reference", "variants"), LOSSLESS, ids=[r for r, _ in LOSSLESS])
def test_lossless_transfer_syntaxes_decode_to_the_reference_pixels(
    dicom_sample: dict[str, Path], reference: str, variants: list[str]
) -> None:
    expected = read_image(_get(dicom_sample, reference))
    for name in variants:
        image = read_image(_get(dicom_sample, name))
        assert image.frames.shape == expected.frames.shape, name
        np.testing.assert_array_equal(image.frames, expected.frames, err_msg=name)


@pytest.mark.parametrize(("reference", "variant"), LOSSY, ids=[r for r, _ in LOSSY])
def test_lossy_jpeg2000_matches_its_decompressed_reference(
    dicom_sample: dict[str, Path], reference: str, variant: str
) -> None:
    # The *_UNCI files are the irreversible codestream decoded by another toolkit: equal up to rounding.
    expected = read_image(_get(dicom_sample, reference)).frames
    actual = read_image(_get(dicom_sample, variant)).frames
    assert np.abs(actual - expected).max() <= 1.0


def test_jpeg_lossless_and_deflate_decode(dicom_sample: dict[str, Path]) -> None:
    for name in ("JPEG-LL.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm", "image_dfl.dcm", "JPGExtended.dcm"):
        image = read_image(_get(dicom_sample, name))
        assert image.n_frames == 1 and image.frames.std() > 0, name


def test_ct_rescale_gives_hounsfield_units(dicom_sample: dict[str, Path]) -> None:
    path = _get(dicom_sample, "CT_small.dcm")
    raw = pydicom.dcmread(path).pixel_array.astype(np.float32)
    image = read_image(path)
    assert image.modality == "CT"
    np.testing.assert_array_equal(image.frames[0], raw - 1024.0)  # slope 1, intercept -1024
    assert -1100 < image.frames.min() < 0 < image.frames.max() < 3000
    assert image.pixel_spacing == pytest.approx((0.661468, 0.661468))
    assert image.source_id.startswith("patient:") and "1CT1" not in image.source_id


def test_multiframe_gives_n_frames_and_selected_frames(dicom_sample: dict[str, Path]) -> None:
    path = _get(dicom_sample, "emri_small.dcm")
    image = read_image(path)
    assert image.frames.shape == (10, 64, 64) and image.total_frames == 10
    assert image.frames.dtype == np.float32
    some = read_image(path, frame_indices=[0, 9])
    np.testing.assert_array_equal(some.frames, image.frames[[0, 9]])
    assert some.frame_indices == (0, 9)
    with pytest.raises(ImageDecodeError, match="out of range"):
        read_image(path, frame_indices=[10])


def test_enhanced_ct_functional_groups(dicom_sample: dict[str, Path]) -> None:
    image = read_image(_get(dicom_sample, "eCT_Supplemental.dcm"))
    assert image.n_frames == 2 and image.modality == "CT"
    assert image.pixel_spacing is not None and image.window is not None


def test_accepts_a_parsed_dataset(dicom_sample: dict[str, Path]) -> None:
    path = _get(dicom_sample, "MR_small.dcm")
    ds = pydicom.dcmread(path)
    from_ds = read_image(ds)
    np.testing.assert_array_equal(from_ds.frames, read_image(path).frames)
    assert from_ds.sop_instance_uid == ds.SOPInstanceUID
    assert from_ds.window == (600.0, 1600.0)
    assert "_pixel_array" not in ds.__dict__ or ds.__dict__["_pixel_array"] is None  # nothing cached


def test_colour_becomes_luminance(dicom_sample: dict[str, Path]) -> None:
    rgb = read_image(_get(dicom_sample, "US1_UNCR.dcm"))
    assert rgb.is_color and rgb.frames.shape == (1, 480, 640)
    arr = pydicom.dcmread(_get(dicom_sample, "US1_UNCR.dcm")).pixel_array.astype(np.float32)
    np.testing.assert_allclose(rgb.frames[0], 0.299 * arr[..., 0] + 0.587 * arr[..., 1] + 0.114 * arr[..., 2],
                               atol=1e-3)
    palette = read_image(_get(dicom_sample, "OBXXXX1A.dcm"))
    assert palette.is_color and palette.frames.shape == (1, 600, 800)
    ybr = read_image(_get(dicom_sample, "color3d_jpeg_baseline.dcm"), frame_indices=[0])
    assert ybr.is_color and ybr.frames.shape == (1, 480, 640)


def test_unreadable_inputs_raise_typed_errors(dicom_sample: dict[str, Path], tmp_path: Path) -> None:
    for name in ("MR_truncated.dcm", "rtplan.dcm", "JPEG2000-embedded-sequence-delimiter.dcm"):
        path = dicom_sample.get(name)
        if path is not None:
            with pytest.raises(ImageDecodeError):
                read_image(path)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not an image at all" * 10)
    with pytest.raises(DetectorsError):
        read_image(junk)
    with pytest.raises(ImageDecodeError):
        read_image(tmp_path / "missing.dcm")
    assert sniff_format(junk) is None


def _huge_header(tmp_path: Path) -> Path:
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = "1.2.840.10008.5.1.4.1.1.4", "1.2.3.4", "MR"
    ds.Rows = ds.Columns = 65535
    ds.NumberOfFrames = 1000
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 16, 16, 15
    ds.PixelRepresentation, ds.PhotometricInterpretation = 0, "MONOCHROME2"
    ds.PixelData = b"\x00\x00" * 8  # a header that lies: decoding would be the attack
    path = tmp_path / "huge.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_size_limit_refuses_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _huge_header(tmp_path)
    with pytest.raises(ImageTooLargeError) as info:
        read_image(path)
    assert info.value.limit_bytes == DEFAULT_MAX_DECODED_BYTES
    assert info.value.size_bytes == 65535 * 65535 * 1000 * 4
    assert isinstance(info.value, ImageDecodeError) and isinstance(info.value, DetectorsError)
    monkeypatch.setenv("MEDVERIFY_MAX_DECODED_BYTES", "1000")
    with pytest.raises(ImageTooLargeError):
        read_image(pydicom.dcmread(path))


def test_size_limit_applies_to_every_format(tmp_path: Path, dicom_sample: dict[str, Path]) -> None:
    png = tmp_path / "a.png"
    cv2.imwrite(str(png), np.zeros((100, 100), np.uint16))
    with pytest.raises(ImageTooLargeError):
        read_image(png, max_bytes=1000)
    nii = tmp_path / "a.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 20), np.int16), np.eye(4)), nii)
    with pytest.raises(ImageTooLargeError):
        read_image(nii, max_bytes=1000)
    with pytest.raises(ImageTooLargeError):
        read_image(_get(dicom_sample, "MR_small.dcm"), max_bytes=1000)


def test_nifti_volume_becomes_axial_slices(tmp_path: Path) -> None:
    volume = np.zeros((40, 50, 6), dtype=np.int16)
    for k in range(6):
        volume[:, :, k] = k * 100
    volume[5, 7, 2] = 999  # x=5, y=7
    affine = np.diag([0.8, 0.9, 3.0, 1.0])
    path = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(volume, affine), path)
    image = read_image(path, modality="mr")
    assert isinstance(image, ImageData)
    assert image.format == "nifti" and image.modality == "MR"
    assert image.frames.shape == (6, 50, 40) and image.total_frames == 6
    assert image.pixel_spacing == pytest.approx((0.9, 0.8))
    assert [float(image.frames[k].min()) for k in (0, 3)] == [0.0, 300.0]
    # Radiological display: rows are y flipped (anterior up), columns are x.
    assert image.frames[2][50 - 1 - 7, 5] == 999
    assert read_image(path, frame_indices=[4]).frames.shape == (1, 50, 40)
    assert sniff_format(path) == "nifti"


def test_nifti_4d_takes_the_first_volume(tmp_path: Path) -> None:
    data = np.stack([np.full((8, 8, 3), 1.0, np.float32), np.full((8, 8, 3), 2.0, np.float32)], axis=-1)
    path = tmp_path / "series.nii"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    image = read_image(path)
    assert image.frames.shape == (3, 8, 8) and float(image.frames.max()) == 1.0


def test_png_16_bit_and_colour_jpeg(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 65535, size=(70, 90), dtype=np.uint16)
    png = tmp_path / "x.png"
    assert cv2.imwrite(str(png), grey)
    image = read_image(png)
    assert image.format == "png" and image.bits_stored == 16 and not image.is_color
    np.testing.assert_array_equal(image.frames[0], grey.astype(np.float32))

    bgr = np.zeros((64, 80, 3), np.uint8)
    bgr[..., 2] = 200  # red
    jpg = tmp_path / "x.jpg"
    assert cv2.imwrite(str(jpg), bgr, [cv2.IMWRITE_JPEG_QUALITY, 100])
    colour = read_image(jpg, modality="DX")
    assert colour.is_color and colour.format == "jpeg" and colour.modality == "DX"
    assert abs(float(colour.frames.mean()) - 0.299 * 200) < 3
    assert colour.source_id.startswith("file:")


def test_data_package_never_imports_the_application_or_crypto() -> None:
    import ast

    import detectors.data

    package = Path(detectors.data.__file__).parent
    for source in [*package.glob("*.py"), package.parent / "errors.py"]:
        for node in ast.walk(ast.parse(source.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                top = name.split(".")[0]
                assert top not in {"verifier", "provenance", "cryptography", "sqlalchemy"}, f"{source}: {name}"
