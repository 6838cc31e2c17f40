"""``medverify watermark``: mark the pixels of a DICOM or PNG image, and look for the mark in DICOM, PNG, JPEG.

The key file holds one watermark key (:meth:`provenance.watermark.WatermarkKey.to_bytes`), mode 0600; the
default is ``keys_dir/watermark.key``. Integration with the key store comes later.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import cv2
import numpy as np
import numpy.typing as npt
import typer

from provenance.watermark import WatermarkError, WatermarkKey, WatermarkReport, WatermarkStatus, detect, embed
from verifier.cli import _common, app
from verifier.errors import InputError

__all__ = ["load_key", "read_pixels", "wm_app"]

wm_app = typer.Typer(
    help="Embed and detect the invisible, keyed pixel watermark (survives tag stripping, 8-bit export, JPEG, "
    "resizing and cropping); its 64-bit payload points to the audit record.",
    no_args_is_help=True,
)
app.add_typer(wm_app, name="watermark", help="Embed and detect the invisible pixel watermark.")

_DICOM_SUFFIXES = {".dcm", ".dicom", ""}
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}

KeyFileOption = Annotated[
    Path | None, typer.Option("--key-file", help="Watermark key file (default: keys_dir/watermark.key).")
]


def _default_key_file() -> Path:
    return _common.settings().keys_dir / "watermark.key"


def load_key(path: Path | None) -> WatermarkKey:
    """Read a watermark key file; a missing, unreadable or malformed file is an :class:`InputError`."""
    path = path or _default_key_file()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read watermark key file {path}: {exc.strerror}; "
                         "create one with `medverify watermark keygen`") from None
    try:
        return WatermarkKey.from_bytes(data)
    except WatermarkError as exc:
        raise InputError(f"{path}: {exc}") from None


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in _IMAGE_SUFFIXES:
        return False
    try:
        with path.open("rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM" or path.suffix.lower() in _DICOM_SUFFIXES
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None


def read_pixels(path: Path) -> npt.NDArray[Any]:
    """The single-channel pixels of a DICOM (first frame), PNG or JPEG file (stored values, 8 or 16 bit)."""
    if not path.is_file():
        raise InputError(f"no such file: {path}")
    if _is_dicom(path):
        import pydicom

        try:
            ds = pydicom.dcmread(path)
            pixels = ds.pixel_array
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for bad input
            raise InputError(f"cannot read DICOM pixels from {path}: {type(exc).__name__}") from None
        if int(ds.get("SamplesPerPixel", 1)) != 1:
            raise InputError(f"{path}: the watermark needs single-channel images")
        return pixels if pixels.ndim == 2 else pixels[0]
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputError(f"cannot read image {path}")
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY if image.shape[2] == 3 else cv2.COLOR_BGRA2GRAY)
    result: npt.NDArray[Any] = image
    return result


@wm_app.command("keygen")
def keygen_command(
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Key file to create (default: keys_dir/watermark.key).")
    ] = None,
    key_id: Annotated[str, typer.Option("--key-id", help="Key id reported by detect.")] = "wm-1",
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing key file.")] = False,
) -> None:
    """Create a watermark key file (mode 0600)."""
    path = out or _default_key_file()
    if path.exists() and not force:
        raise InputError(f"{path} exists; use --force to replace it (marks made with the old key stay detectable "
                         "only with the old key)")
    path.parent.mkdir(parents=True, exist_ok=True)
    key = WatermarkKey.generate(key_id)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.to_bytes())
    os.chmod(path, 0o600)
    _common.console.print(f"watermark key {key_id!r} (fingerprint {key.fingerprint}) written to {path}")


@wm_app.command("embed")
def embed_command(
    file: Annotated[Path, typer.Argument(help="DICOM or PNG image to mark.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output file (DICOM in, DICOM out; PNG in, PNG out).")],
    payload: Annotated[int, typer.Option("--payload", help="64-bit payload, e.g. the audit record id.")],
    key_file: KeyFileOption = None,
) -> None:
    """Mark the pixels of FILE and write OUT; every other element of a DICOM file is kept."""
    key = load_key(key_file)
    if not 0 <= payload < 2**64:
        raise InputError("--payload must be in [0, 2**64)")
    if _is_dicom(file):
        _embed_dicom(file, out, key, payload)
    else:
        pixels = read_pixels(file)
        if pixels.dtype not in (np.uint8, np.uint16):
            raise InputError(f"{file}: only 8- and 16-bit PNG images can be marked")
        marked: npt.NDArray[Any] = embed(pixels, key, payload)
        if not cv2.imwrite(str(out), marked):
            raise InputError(f"cannot write {out}")
    _common.console.print(f"{out}: marked with key {key.key_id!r}, payload {payload}")


def _embed_dicom(file: Path, out: Path, key: WatermarkKey, payload: int) -> None:
    import pydicom

    try:
        ds = pydicom.dcmread(file)
        pixels = ds.pixel_array
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"cannot read DICOM pixels from {file}: {type(exc).__name__}") from None
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise InputError(f"{file}: the watermark needs single-channel images")
    bits = int(ds.get("BitsStored", pixels.dtype.itemsize * 8))
    frames = [pixels] if pixels.ndim == 2 else list(pixels)
    marked = np.stack([embed(f, key, payload, bits_stored=bits) for f in frames])
    marked = marked[0] if pixels.ndim == 2 else marked
    # Written uncompressed (a lossy re-encode would weaken the mark); BitsStored and PixelRepresentation kept.
    ds.set_pixel_data(marked, ds.PhotometricInterpretation, bits, generate_instance_uid=False)
    try:
        ds.save_as(out, enforce_file_format=True)
    except OSError as exc:
        raise InputError(f"cannot write {out}: {exc.strerror}") from None


def _line(path: Path, report: WatermarkReport) -> dict[str, Any]:
    present = report.status is WatermarkStatus.PRESENT
    return {
        "path": str(path),
        "present": present,
        "status": report.status.value,
        "false_alarm_probability": report.false_alarm_probability,
        "payload": report.payload,
        "key_id": report.key_id,
        "score": round(report.score, 3),
        "details": report.details if present else {},
    }


@wm_app.command("detect")
def detect_command(
    files: Annotated[list[Path], typer.Argument(help="DICOM, PNG or JPEG files.")],
    output_format: Annotated[str, typer.Option("--format", "-f", help="Output: text or jsonl.")] = "text",
    key_file: KeyFileOption = None,
) -> int:
    """Look for the mark in each FILE. Exit 0: no mark found; 1: a mark found in at least one file."""
    if output_format not in ("text", "jsonl"):
        raise InputError("--format must be text or jsonl")
    key = load_key(key_file)
    found = False
    for path in files:
        report = detect(read_pixels(path), [key])
        line = _line(path, report)
        found = found or line["present"]
        if output_format == "jsonl":
            _common.console.print(json.dumps(line), soft_wrap=True, highlight=False, markup=False)
        elif line["present"]:
            payload = "unreadable" if report.payload is None else str(report.payload)
            _common.console.print(
                f"{path}: PRESENT key {report.key_id!r} payload {payload} "
                f"(false alarm probability {report.false_alarm_probability:.2e})", highlight=False, markup=False)
        else:
            _common.console.print(f"{path}: ABSENT (best false alarm probability "
                                  f"{report.false_alarm_probability:.2e})", highlight=False, markup=False)
    return 1 if found else 0
