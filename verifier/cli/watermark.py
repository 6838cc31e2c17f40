"""``medverify watermark``: mark the pixels of a DICOM or PNG image, and look for the mark in DICOM, PNG, JPEG.

The keys are the key store's watermark keys (``embed`` uses the current one, ``detect`` tries every generation;
both need the key store passphrase), or, with ``--key-file``, one key file made by ``watermark keygen``
(:meth:`provenance.watermark.WatermarkKey.to_bytes`, mode 0600) for research outside the product.
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

from provenance.keys import KeyStore
from provenance.watermark import (
    WatermarkError,
    WatermarkKey,
    WatermarkReport,
    WatermarkStatus,
    detect,
    display_window,
    embed,
)
from verifier.cli import _common, app
from verifier.errors import InputError
from verifier.setup import open_keystore

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
    Path | None,
    typer.Option("--key-file", help="A watermark key file from `watermark keygen` (default: the key store's keys)."),
]


def load_key(path: Path) -> WatermarkKey:
    """Read a watermark key file; a missing, unreadable or malformed file is an :class:`InputError`."""
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
    # The same reading as the checks of verify, scan and claims audit (verifier.exports): one path, one answer.
    from detectors.data import decode_raster
    from detectors.errors import DetectorsError
    from verifier.exports import stored_grey

    try:
        data = path.read_bytes()
        return stored_grey(decode_raster(data, where=str(path)))
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    except DetectorsError as exc:
        raise InputError(f"cannot read image {path}: {exc.diagnostics()}") from None


@wm_app.command("keygen")
def keygen_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Key file to create.")],
    key_id: Annotated[str, typer.Option("--key-id", help="Key id reported by detect.")] = "wm-1",
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing key file.")] = False,
) -> None:
    """Create a stand-alone watermark key file (mode 0600) for --key-file; the product uses the key store's."""
    path = out
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


@wm_app.command("rotate")
def rotate_command() -> None:
    """Start a new watermark key generation in the key store; marks made with older ones are still found."""
    key = _store().rotate_watermark_key()
    _common.console.print(f"new watermark key {key.key_id!r} (fingerprint {key.fingerprint}); generate marks "
                          "with it from now on, detect tries every generation", highlight=False, markup=False)


@wm_app.command("embed")
def embed_command(
    file: Annotated[Path, typer.Argument(help="DICOM or PNG image to mark.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output file (DICOM in, DICOM out; PNG in, PNG out).")],
    payload: Annotated[int, typer.Option("--payload", help="64-bit payload, e.g. the audit record id.")],
    key_file: KeyFileOption = None,
    sign: Annotated[
        str | None,
        typer.Option("--sign", help="Re-sign the marked DICOM file with this key store signing key."),
    ] = None,
) -> None:
    """Mark the pixels of FILE and write OUT; every other element of a DICOM file is kept.

    Marking changes the pixels, so the signatures over them no longer hold: they are removed (and the command
    says so), and ``--sign KEY`` signs the marked file anew.
    """
    if not 0 <= payload < 2**64:
        raise InputError("--payload must be in [0, 2**64)")
    key = load_key(key_file) if key_file is not None else _store().watermark_key()
    if _is_dicom(file):
        removed = _embed_dicom(file, out, key, payload, sign)
        if removed:
            _common.err_console.print(
                f"note: removed {removed} signature(s) of {file} that covered the old pixels"
                + (f"; signed again with key {sign!r}" if sign else "; sign the output anew (`medverify sign`)"),
                highlight=False, markup=False,
            )
    else:
        if sign is not None:
            raise InputError("--sign applies to DICOM files only")
        pixels = read_pixels(file)
        if pixels.dtype not in (np.uint8, np.uint16):
            raise InputError(f"{file}: only 8- and 16-bit PNG images can be marked")
        marked: npt.NDArray[Any] = _embed(pixels, key, payload)
        if not cv2.imwrite(str(out), marked):
            raise InputError(f"cannot write {out}")
    _common.console.print(f"{out}: marked with key {key.key_id!r}, payload {payload}", highlight=False, markup=False)


def _store() -> KeyStore:
    return open_keystore(_common.settings())


def _embed(
    pixels: npt.NDArray[Any], key: WatermarkKey, payload: int, bits: int | None = None,
    window: tuple[float, float] | None = None,
) -> npt.NDArray[Any]:
    return embed(pixels, key, payload, bits_stored=bits, window=window)


def _embed_dicom(file: Path, out: Path, key: WatermarkKey, payload: int, sign: str | None) -> int:
    """Mark every frame; drop the signatures the new pixels break (and re-sign if asked). Returns how many."""
    import pydicom

    from provenance.signature import sign_dataset, strip_signatures

    try:
        ds = pydicom.dcmread(file)
        pixels = ds.pixel_array
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"cannot read DICOM pixels from {file}: {type(exc).__name__}") from None
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise InputError(f"{file}: the watermark needs single-channel images")
    signer = _store().load_signing_key(sign) if sign is not None else None
    bits = int(ds.get("BitsStored", pixels.dtype.itemsize * 8))
    window = display_window(ds)
    frames = [pixels] if pixels.ndim == 2 else list(pixels)
    marked = np.stack([_embed(f, key, payload, bits, window) for f in frames])
    marked = marked[0] if pixels.ndim == 2 else marked
    # Written uncompressed (a lossy re-encode would weaken the mark); BitsStored and PixelRepresentation kept.
    ds.set_pixel_data(marked, ds.PhotometricInterpretation, bits, generate_instance_uid=False)
    removed = len(ds.get("DigitalSignaturesSequence") or ())
    strip_signatures(ds)  # the top-level signatures cover Pixel Data: they would now verify as INVALID
    if signer is not None:
        sign_dataset(ds, signer)
    try:
        ds.save_as(out, enforce_file_format=True)
    except OSError as exc:
        raise InputError(f"cannot write {out}: {exc.strerror}") from None
    return removed


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
        "details": report.details if present or report.status is WatermarkStatus.TOO_SMALL else {},
    }


@wm_app.command("detect")
def detect_command(
    files: Annotated[list[Path], typer.Argument(help="DICOM, PNG or JPEG files.")],
    output_format: Annotated[str, typer.Option("--format", "-f", help="Output: text or jsonl.")] = "text",
    key_file: KeyFileOption = None,
) -> int:
    """Look for the mark in each FILE with the key file, else every watermark key of the key store.

    Exit 0: no mark found; 1: a mark found in at least one file; 2: a file could not be read (the others are
    still checked, and the unreadable one gets its own line).
    """
    if output_format not in ("text", "jsonl"):
        raise InputError("--format must be text or jsonl")
    keys = [load_key(key_file)] if key_file is not None else _store().watermark_keys()
    if not keys:
        raise InputError("the key store has no watermark key yet (medverify generate makes one); or use --key-file")
    found = errors = False
    for path in files:
        try:
            report = detect(read_pixels(path), keys)
        except (InputError, WatermarkError) as exc:
            errors = True
            _print_error(path, str(exc), output_format)
            continue
        line = _line(path, report)
        found = found or line["present"]
        if output_format == "jsonl":
            _common.console.print(json.dumps(line), soft_wrap=True, highlight=False, markup=False)
        elif line["present"]:
            payload = "unreadable" if report.payload is None else str(report.payload)
            _common.console.print(
                f"{path}: PRESENT key {report.key_id!r} payload {payload} "
                f"(false alarm probability {report.false_alarm_probability:.2e})", highlight=False, markup=False)
        elif report.status is WatermarkStatus.TOO_SMALL:
            _common.console.print(f"{path}: TOO_SMALL ({report.details['reason']})", highlight=False, markup=False)
        else:
            _common.console.print(f"{path}: ABSENT (best false alarm probability "
                                  f"{report.false_alarm_probability:.2e})", highlight=False, markup=False)
    return 2 if errors else 1 if found else 0


def _print_error(path: Path, message: str, output_format: str) -> None:
    if output_format == "jsonl":
        line = {"path": str(path), "present": False, "status": "ERROR", "false_alarm_probability": None,
                "payload": None, "key_id": None, "error": message}
        _common.console.print(json.dumps(line), soft_wrap=True, highlight=False, markup=False)
    else:
        _common.err_console.print(f"{path}: error: {message}", highlight=False, markup=False)
