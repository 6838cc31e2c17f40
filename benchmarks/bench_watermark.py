"""Watermark robustness, imperceptibility, false alarms and speed on real sample images.

Images: every single-channel clinical image (CT, MR, CR, DX, MG, NM, US, XA, PT) among pydicom's and
pydicom-data's test files that decodes, is at least ``--min-side`` pixels on each side (default 256: detection
needs 128, and a 60% crop of 256 is 154; see :mod:`provenance.watermark`), one per SOP Instance UID, up to two
frames of a multi-frame file. Each image is marked ``--repeat`` times (default 3) with a fresh key and a random
64-bit payload, as ``medverify watermark embed`` marks a DICOM file (its BitsStored and its own VOI window, none
when it has none), then attacked; a trial counts when the decoded payload equals the embedded one bit for bit
(PRESENT with the right key id).

Attacks (each on the marked stored pixels):

* ``stripped``: all tags stripped: the pixels written to a bare DICOM file with nothing else and read back;
* ``png8``: export to 8-bit PNG through a window: the file's VOI window (first value), else CT W400/L40 from the
  rescale, else the 1st-99th percentiles;
* ``jpeg75``: the same 8-bit windowed export, JPEG quality 75 (OpenCV/libjpeg);
* ``resize0.5`` / ``resize2``: cv2.resize to half (INTER_AREA) and twice (INTER_LINEAR) the size, re-rounded;
* ``crop60``: the central 60% of each side;
* ``noise``: additive Gaussian noise at the image's own noise level (the robust MAD estimate of the finest
  wavelet-like residual, as in Donoho's estimator; at least one stored unit), i.e. a second acquisition's noise.

Imperceptibility: PSNR over the stored range (2**BitsStored - 1) and over the image's own 0.1-99.9 percentile
range. A PNG of one marked image (windowed) and of the 20x amplified difference is written next to the JSON.

False alarms: ``--patches`` (default 10,000) unmarked real patches of 128x128 and 256x256 pixels cut from the
same images at many offsets, each detected with one key; any PRESENT is a false alarm. The theoretical bound the
detector states is also printed.

Speed: embed + detect of a 512x512 16-bit CT (693_UNCR), median of 20 runs.

    nice -n 10 python benchmarks/bench_watermark.py --repeat 5   # the README's figures; --patches 10000
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from provenance.watermark import WatermarkKey, WatermarkStatus, detect, display_window, embed

MODALITIES = {"CT", "MR", "CR", "DX", "MG", "NM", "US", "XA", "PT"}
ATTACKS = ("none", "stripped", "png8", "jpeg75", "resize0.5", "resize2", "crop60", "noise")
TARGET_SUCCESS = 0.99
TARGET_PSNR_DB = 50.0
TARGET_PFA = 1e-9
TARGET_MS = 50.0


class Image:
    """A sample image, the window its 8-bit export uses, and the file's own VOI window (what embed is told)."""

    def __init__(self, name: str, modality: str, pixels: npt.NDArray[Any], bits: int, window: tuple[float, float],
                 voi: tuple[float, float] | None):
        self.name, self.modality, self.pixels, self.bits = name, modality, pixels, bits
        self.window, self.voi = window, voi

    def embed(self, key: WatermarkKey, payload: int, pixels: npt.NDArray[Any] | None = None) -> npt.NDArray[Any]:
        """Mark as ``medverify watermark embed`` does: with the file's BitsStored and VOI window."""
        target = self.pixels if pixels is None else pixels
        return embed(target, key, payload, bits_stored=self.bits, window=self.voi)


def _functional(ds: Dataset, sequence: str) -> Dataset:
    """The shared functional group item ``sequence`` of an enhanced (multi-frame) image, else the dataset."""
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and sequence in shared[0]:
        return shared[0][sequence][0]  # type: ignore[no-any-return]
    return ds


def _window(ds: Dataset, pixels: npt.NDArray[Any]) -> tuple[float, float]:
    rescale = _functional(ds, "PixelValueTransformationSequence")
    slope = float(rescale.get("RescaleSlope", 1) or 1)
    intercept = float(rescale.get("RescaleIntercept", 0) or 0)
    voi = _functional(ds, "FrameVOILUTSequence")
    center, width = voi.get("WindowCenter"), voi.get("WindowWidth")
    if center is not None and width is not None:
        c = float(center[0] if isinstance(center, pydicom.multival.MultiValue) else center)
        w = float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width)
        if w > 1:
            return (c - w / 2 - intercept) / slope, (c + w / 2 - intercept) / slope
    if ds.get("Modality") == "CT":
        return (40 - 200 - intercept) / slope, (40 + 200 - intercept) / slope
    lo, hi = np.percentile(pixels, [1, 99])
    return float(lo), float(max(hi, lo + 1))


def load_images(min_side: int) -> list[Image]:
    images: list[Image] = []
    seen: set[str] = set()
    for path in sorted(get_testdata_files("*.dcm"), key=lambda p: ("UNC" not in p, p)):
        try:
            ds = pydicom.dcmread(path)
            if ds.get("Modality") not in MODALITIES or ds.get("SamplesPerPixel", 1) != 1:
                continue
            if ds.get("PhotometricInterpretation") not in ("MONOCHROME1", "MONOCHROME2"):
                continue
            # One per acquired image: the test files hold the same instance in several transfer syntaxes.
            uid = "/".join(str(ds.get(k, "")) for k in ("StudyInstanceUID", "SeriesInstanceUID", "InstanceNumber",
                                                        "Rows", "Columns")) or path
            if uid in seen:
                continue
            array = ds.pixel_array
        except Exception:  # noqa: BLE001 - a test file we cannot decode is skipped
            continue
        frames = [array] if array.ndim == 2 else list(array[:2])
        for i, frame in enumerate(frames):
            if min(frame.shape) < min_side or frame.dtype.itemsize > 2 or np.ptp(frame) == 0:
                continue
            frame = np.ascontiguousarray(frame).astype(frame.dtype.newbyteorder("="))
            bits = int(ds.get("BitsStored", frame.dtype.itemsize * 8))
            name = Path(path).name + (f"[{i}]" if array.ndim == 3 else "")
            images.append(Image(name, str(ds.Modality), frame, bits, _window(ds, frame), display_window(ds)))
        seen.add(uid)
    return images


def to8(pixels: npt.NDArray[Any], window: tuple[float, float]) -> npt.NDArray[np.uint8]:
    lo, hi = window
    return np.clip((pixels.astype(np.float64) - lo) / (hi - lo) * 255 + 0.5, 0, 255).astype(np.uint8)


def png_roundtrip(image8: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    _ok, buf = cv2.imencode(".png", image8)
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)  # type: ignore[no-any-return]


def jpeg_roundtrip(image8: npt.NDArray[np.uint8], quality: int = 75) -> npt.NDArray[np.uint8]:
    _ok, buf = cv2.imencode(".jpg", image8, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)  # type: ignore[no-any-return]


def stripped_roundtrip(pixels: npt.NDArray[Any], bits: int) -> npt.NDArray[Any]:
    """Write the pixels alone (no patient, study or signature tags) to DICOM and read them back."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored, ds.HighBit = bits, bits - 1
    ds.PixelRepresentation = int(np.issubdtype(pixels.dtype, np.signedinteger))
    ds.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer).pixel_array


def resized(pixels: npt.NDArray[Any], factor: float) -> npt.NDArray[Any]:
    h, w = pixels.shape
    interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    out = cv2.resize(pixels.astype(np.float32), (round(w * factor), round(h * factor)), interpolation=interpolation)
    return np.rint(out).astype(pixels.dtype)


def cropped(pixels: npt.NDArray[Any], keep: float = 0.6) -> npt.NDArray[Any]:
    h, w = pixels.shape
    ch, cw = round(h * keep), round(w * keep)
    return pixels[(h - ch) // 2 : (h - ch) // 2 + ch, (w - cw) // 2 : (w - cw) // 2 + cw]


def noise_sigma(pixels: npt.NDArray[Any]) -> float:
    x = pixels.astype(np.float64)
    h, w = (x.shape[0] // 2) * 2, (x.shape[1] // 2) * 2
    x = x[:h, :w]
    diagonal = (x[0::2, 0::2] - x[0::2, 1::2] - x[1::2, 0::2] + x[1::2, 1::2]) / 2  # Haar HH band
    return max(1.0, float(np.median(np.abs(diagonal))) / 0.6745)


def noisy(pixels: npt.NDArray[Any], bits: int, rng: np.random.Generator) -> npt.NDArray[Any]:
    out = pixels.astype(np.float64) + rng.normal(0.0, noise_sigma(pixels), pixels.shape)
    if np.issubdtype(pixels.dtype, np.signedinteger):
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        lo, hi = 0, 2**bits - 1
    return np.clip(np.rint(out), lo, hi).astype(pixels.dtype)


def attack(name: str, img: Image, marked: npt.NDArray[Any], rng: np.random.Generator) -> npt.NDArray[Any]:
    if name == "none":
        return marked
    if name == "stripped":
        return stripped_roundtrip(marked, img.bits)
    if name == "png8":
        return png_roundtrip(to8(marked, img.window))
    if name == "jpeg75":
        return jpeg_roundtrip(to8(marked, img.window))
    if name == "resize0.5":
        return resized(marked, 0.5)
    if name == "resize2":
        return resized(marked, 2.0)
    if name == "crop60":
        return cropped(marked)
    if name == "noise":
        return noisy(marked, img.bits, rng)
    raise ValueError(name)


def psnr(a: npt.NDArray[Any], b: npt.NDArray[Any], peak: float) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak * peak / mse)


def robustness(images: list[Image], repeat: int, rng: np.random.Generator, out_dir: Path) -> dict[str, Any]:
    success = {a: 0 for a in ATTACKS}
    trials = 0
    failures: list[dict[str, Any]] = []
    psnr_stored: list[float] = []
    psnr_image: list[float] = []
    per_image: list[dict[str, Any]] = []
    for img in images:
        row: dict[str, Any] = {"image": img.name, "modality": img.modality, "shape": list(img.pixels.shape)}
        ok_row = {a: 0 for a in ATTACKS}
        for r in range(repeat):
            key = WatermarkKey.generate(f"bench-{r}")
            payload = int(rng.integers(0, 2**63)) * 2 + int(rng.integers(0, 2))
            marked = img.embed(key, payload)
            lo, hi = np.percentile(img.pixels, [0.1, 99.9])
            psnr_stored.append(psnr(img.pixels, marked, 2.0**img.bits - 1))
            psnr_image.append(psnr(img.pixels, marked, float(hi - lo)))
            trials += 1
            for name in ATTACKS:
                report = detect(attack(name, img, marked, rng), [key])
                ok = report.status is WatermarkStatus.PRESENT and report.payload == payload
                if ok:
                    success[name] += 1
                    ok_row[name] += 1
                else:
                    failures.append({"image": img.name, "attack": name, "score": round(report.score, 2),
                                     "status": report.status.value, "payload_ok": report.payload == payload})
        row.update({a: f"{ok_row[a]}/{repeat}" for a in ATTACKS})
        row["psnr_stored_db"] = round(min(psnr_stored[-repeat:]), 1)
        row["psnr_image_db"] = round(min(psnr_image[-repeat:]), 1)
        per_image.append(row)
        print(f"  {img.name:42s} {img.modality:3s} {img.pixels.shape!s:13s} "
              + " ".join(f"{a}:{ok_row[a]}" for a in ATTACKS), flush=True)
    _save_views(images, out_dir)
    return {
        "trials_per_attack": trials,
        "success_rate": {a: success[a] / trials for a in ATTACKS},
        "psnr_stored_db": {"min": min(psnr_stored), "median": float(np.median(psnr_stored))},
        "psnr_image_range_db": {"min": min(psnr_image), "median": float(np.median(psnr_image))},
        "per_image": per_image,
        "failures": failures,
    }


def _save_views(images: list[Image], out_dir: Path) -> None:
    """Windowed views of marked images and the 20x amplified difference, for a person to look at."""
    key = WatermarkKey.generate("view")
    for img in images[:4]:
        marked = img.embed(key, 12345)
        lo, hi = img.window
        diff = (marked.astype(np.float64) - img.pixels) * 20 * 255 / (hi - lo) + 128
        view = np.hstack([to8(img.pixels, img.window), to8(marked, img.window), np.clip(diff, 0, 255).astype(np.uint8)])
        cv2.imwrite(str(out_dir / f"bench_watermark_view_{Path(img.name).stem}.png"), view)


def false_alarms(images: list[Image], n: int, rng: np.random.Generator) -> dict[str, Any]:
    key = WatermarkKey.generate("null")
    other = WatermarkKey.generate("other")
    alarms, tried, worst = 0, 0, 0.0
    min_pfa = 1.0
    sides = (128, 256)
    while tried < n:
        img = images[tried % len(images)]
        side = sides[(tried // len(images)) % 2]
        h, w = img.pixels.shape
        if h < side or w < side:
            side = min(h, w)
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        patch = img.pixels[y : y + side, x : x + side]
        if tried % 10 == 9:  # a tenth of the patches carry another key's mark
            patch = img.embed(other, int(rng.integers(0, 2**63)), patch)
        report = detect(patch, [key])
        tried += 1
        alarms += report.status is WatermarkStatus.PRESENT or report.payload is not None
        worst = max(worst, abs(report.score))
        min_pfa = min(min_pfa, report.false_alarm_probability)
        if tried % 1000 == 0:
            print(f"  {tried} patches, {alarms} false alarms", flush=True)
    return {"patches": tried, "false_alarms": alarms, "max_abs_score": worst, "min_reported_pfa": min_pfa,
            "threshold_pfa": TARGET_PFA, "patch_sides": list(sides), "other_key_marked_fraction": 0.1}


def speed(repeat: int = 20) -> dict[str, Any]:
    path = next(p for p in get_testdata_files("693_UNCR.dcm"))
    pixels = pydicom.dcmread(path).pixel_array
    key = WatermarkKey.generate("speed")
    detect(embed(pixels, key, 1), [key])  # warm-up
    embed_ms, detect_ms, total = [], [], []
    for i in range(repeat):
        t0 = time.perf_counter()
        marked = embed(pixels, key, i)
        t1 = time.perf_counter()
        report = detect(marked, [key])
        t2 = time.perf_counter()
        assert report.payload == i
        embed_ms.append((t1 - t0) * 1e3)
        detect_ms.append((t2 - t1) * 1e3)
        total.append((t2 - t0) * 1e3)
    unmarked = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        detect(pixels, [key])
        unmarked.append((time.perf_counter() - t0) * 1e3)
    return {"image": "693_UNCR.dcm 512x512 int16", "embed_ms": float(np.median(embed_ms)),
            "detect_ms": float(np.median(detect_ms)), "embed_plus_detect_ms": float(np.median(total)),
            "detect_unmarked_ms": float(np.median(unmarked)), "cpu": platform.processor() or platform.machine()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--patches", type=int, default=10_000)
    parser.add_argument("--min-side", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/bench_watermark.json"))
    args = parser.parse_args(argv)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    cv2.setNumThreads(1)
    rng = np.random.default_rng(args.seed)
    images = load_images(args.min_side)
    print(f"{len(images)} images: " + ", ".join(sorted({i.modality for i in images})))
    print("robustness (payload decoded bit-exactly, per image out of --repeat):")
    robust = robustness(images, args.repeat, rng, args.output.parent)
    print("false alarms:")
    null = false_alarms(images, args.patches, rng)
    timing = speed()
    results = {"images": len(images), "modalities": sorted({i.modality for i in images}), "robustness": robust,
               "false_alarms": null, "speed": timing, "python": sys.version.split()[0]}
    args.output.write_text(json.dumps(results, indent=2))

    rates = robust["success_rate"]
    print(f"\n{'target':38s} {'measured':>22s}  pass")
    rows = [(f"payload exact after {a} (>= 99%)", f"{rates[a] * 100:.1f}% of {robust['trials_per_attack']}",
             rates[a] >= TARGET_SUCCESS) for a in ATTACKS]
    rows.append(("PSNR over stored range (>= 50 dB)", f"min {robust['psnr_stored_db']['min']:.1f} dB",
                 robust["psnr_stored_db"]["min"] >= TARGET_PSNR_DB))
    rows.append(("PSNR over image range (info)", f"min {robust['psnr_image_range_db']['min']:.1f} dB", True))
    rows.append((f"false alarms on {null['patches']} unmarked patches (0)", str(null["false_alarms"]),
                 null["false_alarms"] == 0))
    rows.append(("embed + detect 512x512 (<= 50 ms)", f"{timing['embed_plus_detect_ms']:.1f} ms",
                 timing["embed_plus_detect_ms"] <= TARGET_MS))
    for label, value, passed in rows:
        print(f"{label:38s} {value:>22s}  {'yes' if passed else 'NO'}")
    print(f"\nresults: {args.output}")
    return 0 if all(p for _, _, p in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
