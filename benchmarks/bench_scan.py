"""Archive scan speed: files/s of a read-only baseline, signature checks, the full scan with 1 and 2 workers, and
an incremental re-scan of the unchanged archive.

Run from the repository root: ``nice python benchmarks/bench_scan.py [--files 2000]``. The archive is built once
into ``--cache`` (default ``~/.cache/medverify/bench_scan/archive-N``): re-UID'd copies of real sample images from
pydicom's test files (CT, MR, RT dose; explicit and implicit VR), a quarter signed with an acquisition key of a key
store made for the benchmark, a tenth signed and then tampered (one pixel byte changed), one in twenty a generated
fake (256 x 256 samples of the shipped GAN written as ``medverify generate`` writes them: declared, watermarked,
signed by a generator key; half of them then laundered of signature and declaration), the rest unsigned, plus one
non-DICOM file per twenty. Figures are files/s over the DICOM files, best of ``--repeat`` runs, with the page cache
warm (every file is read once before timing):

- ``baseline_read``: pydicom reads every file and SHA-256 hashes its bytes, one process, nothing else;
- ``signature_only``: :meth:`verifier.checker.Checker.check` with the signature check, one process, no database
  (also timed over the signed and the unsigned files apart: ``signature_only_signed`` / ``_unsigned``, with the
  baseline of the same files);
- ``scan_signature_1_worker`` / ``_2_workers``: :class:`verifier.scan.Scanner` end to end with the signature
  check (walk, detection by content, one audit record and scan state per file in a fresh SQLite audit database);
- ``full_1_worker`` / ``full_2_workers``: the same with the full pipeline (signature, watermark and the shipped
  detector), on local processes: the scaling target is about these;
- ``incremental_rescan``: a scan again with ``incremental=True`` over the unchanged archive.

Prints the figures, saves ``benchmarks/results/bench_scan.json`` and exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# One torch thread per process, also here: the one-worker scan checks in this process, and the scaling figure
# compares one process on one core with two.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from provenance.keys import KeyAlgorithm, KeyRole, KeyStore
from provenance.signature import sign_dataset
from verifier.audit import AuditLog
from verifier.audit.scanstate import ScanStateStore
from verifier.checker import Check, Checker, parse_checks
from verifier.scan import LocalExecutor, Scanner

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bench_scan.json"
SOURCES = ("CT_small.dcm", "MR_small.dcm", "rtdose_1frame.dcm")
PASSPHRASE = b"bench-scan-passphrase"  # a throw-away key store made for this benchmark only
TARGETS = {"signature_vs_baseline": 0.5, "incremental_files_per_s": 2000.0, "scaling_1_to_2": 1.7}
ARCHIVE_VERSION = 2  # 2: generated fakes added


def build_archive(directory: Path, n: int, seed: int = 0) -> dict[str, Any]:
    """Write the archive (or reuse it if its manifest matches) and return the manifest."""
    manifest_path = directory / "manifest.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("files") == n and manifest.get("seed") == seed and manifest.get("version") == ARCHIVE_VERSION:
            return dict(manifest)
    if directory.exists():
        shutil.rmtree(directory)
    archive = directory / "archive"
    store = KeyStore(directory / "keys", lambda: PASSPHRASE)
    store.init()
    store.create("bench-acquisition", KeyRole("acquisition"), KeyAlgorithm("rsa-2048"))
    signer = store.load_signing_key("bench-acquisition")
    sources = [Path(get_testdata_file(name)).read_bytes() for name in SOURCES]
    rng = random.Random(seed)
    kinds = {"unsigned": 0, "signed": 0, "tampered": 0, "generated": 0, "generated_laundered": 0, "not_dicom": 0}
    fakes = _Fakes(store, directory)
    for i in range(n):
        r = rng.random()
        kind = "signed" if r < 0.25 else "tampered" if r < 0.35 else "generated" if r < 0.40 else "unsigned"
        path = archive / f"study{i // 100:03d}" / f"series{i % 4}" / f"{i:06d}"  # no extension
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "generated":
            laundered = fakes.write(path, seed=i, launder=bool(i % 2))
            kinds["generated_laundered" if laundered else "generated"] += 1
            continue
        ds = pydicom.dcmread(io.BytesIO(sources[i % len(sources)]))  # a fresh dataset: no signature carries over
        ds.SOPInstanceUID = generate_uid()
        if kind != "unsigned":
            sign_dataset(ds, signer)
        if kind == "tampered":
            data = bytearray(ds.PixelData)
            data[rng.randrange(len(data))] ^= 0x01
            ds.PixelData = bytes(data)
        ds.save_as(path)
        kinds[kind] += 1
        if i % 20 == 0:
            (path.parent / f"notes{i:06d}.txt").write_text("not DICOM\n")
            kinds["not_dicom"] += 1
    manifest = {"files": n, "seed": seed, "version": ARCHIVE_VERSION, "sources": list(SOURCES), "kinds": kinds,
                "archive": str(archive)}  # fmt: skip
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return manifest


class _Fakes:
    """Generated images written as ``medverify generate`` writes them, with the benchmark's own key store."""

    def __init__(self, store: KeyStore, directory: Path) -> None:
        import torch

        from verifier.generation import GenerationKeys, default_checkpoint, load_generator

        torch.set_num_threads(1)
        store.create("bench-generator", KeyRole("generator"), KeyAlgorithm("rsa-2048"))
        if default_checkpoint("gan") is None:  # pragma: no cover - the package ships it
            raise SystemExit("the shipped GAN checkpoint is missing")
        self.model = load_generator("gan")
        self.keys = GenerationKeys(
            signer=store.load_signing_key("bench-generator"), key_name="bench-generator",
            watermark_key=store.watermark_key(), log=AuditLog.open(f"sqlite:///{directory / 'generation-audit.db'}"),
        )  # fmt: skip

    def write(self, path: Path, *, seed: int, launder: bool) -> bool:
        from provenance.signature import strip_signatures
        from verifier.generation import generate_signed_image

        generate_signed_image(self.model, name="gan", seed=seed, path=path, modality="MR", keys=self.keys,
                              version="bench")  # fmt: skip
        if launder:  # what a forger does: signature and private declaration gone, the pixels (and mark) kept
            ds = pydicom.dcmread(path)
            strip_signatures(ds)
            for tag in [t for t in ds.keys() if t.group % 2 == 1]:
                del ds[tag]
            ds.save_as(path)
        return launder


def best_of(repeat: int, fn: Callable[[], int]) -> tuple[float, int]:
    """Best files/s of ``repeat`` runs of ``fn`` (which returns the number of files it handled)."""
    best = 0.0
    count = 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        count = fn()
        best = max(best, count / (time.perf_counter() - t0))
    return best, count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=2000, help="DICOM files in the archive (at least 2000)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--skip-full", action="store_true", help="no full-pipeline scans (the detector is slow)")
    args = parser.parse_args(argv)
    # rtdose_1frame.dcm has a UID pydicom warns about on every read; the warning would drown the figures.
    warnings.filterwarnings("ignore", message="Invalid value for VR UI", category=UserWarning)
    if args.files < 2000:
        parser.error("--files must be at least 2000")
    cache = args.cache or Path.home() / ".cache" / "medverify" / "bench_scan" / f"archive-{args.files}"
    t0 = time.perf_counter()
    manifest = build_archive(cache, args.files)
    print(f"archive: {manifest['archive']} {manifest['kinds']} (ready in {time.perf_counter() - t0:.1f} s)")
    archive = Path(manifest["archive"])
    files = sorted(p for p in archive.rglob("*") if p.is_file() and not p.name.endswith(".txt"))
    keys = KeyStore(cache / "keys", lambda: PASSPHRASE)
    trust = keys.trust_policy()
    watermark_keys = keys.watermark_keys()
    for p in files:  # warm the page cache so that every figure reads from memory alike
        p.read_bytes()
    signed_files = [p for p in files if b"\xfa\xff\xfa\xff" in p.read_bytes()]  # a Digital Signatures Sequence
    unsigned_files = sorted(set(files) - set(signed_files))

    def baseline(subset: list[Path] = files) -> int:
        for p in subset:
            data = p.read_bytes()
            hashlib.sha256(data).hexdigest()
            pydicom.dcmread(io.BytesIO(data))
        return len(subset)

    signature = parse_checks(Check.SIGNATURE.value)
    signature_checker = Checker(checks=signature, trust=trust)

    def signature_only(subset: list[Path] = files) -> int:
        for p in subset:
            signature_checker.check(p)
        return len(subset)

    verdicts: dict[str, dict[str, int]] = {}
    workdir = Path(tempfile.mkdtemp(prefix="bench-scan-"))
    all_checks = parse_checks("signature,watermark,detector")

    def scan(workers: int, checks: frozenset[Check], *, incremental: bool = False, db: Path | None = None) -> int:
        if db is None:
            db = workdir / f"audit-{time.monotonic_ns()}.db"
        with AuditLog.open(f"sqlite:///{db}") as log:
            checker = Checker(checks=checks, trust=trust, watermark_keys=tuple(watermark_keys))
            scanner = Scanner(checker, state=ScanStateStore(log))
            plan = scanner.plan([archive], incremental=incremental)
            for _ in scanner.execute(plan, LocalExecutor(workers)):
                pass
            summary = scanner.finish(plan)
        if not incremental:
            verdicts[",".join(sorted(c.value for c in checks))] = dict(summary.verdicts)
            return summary.checked
        return summary.skipped_unchanged + summary.checked

    figures: dict[str, float] = {}
    try:
        for name, fn in (
            ("baseline_read", baseline),
            ("signature_only", signature_only),
            ("baseline_read_signed", lambda: baseline(signed_files)),
            ("signature_only_signed", lambda: signature_only(signed_files)),
            ("baseline_read_unsigned", lambda: baseline(unsigned_files)),
            ("signature_only_unsigned", lambda: signature_only(unsigned_files)),
            ("scan_signature_1_worker", lambda: scan(1, signature)),
            ("scan_signature_2_workers", lambda: scan(2, signature)),
            ("full_1_worker", lambda: scan(1, all_checks)),
            ("full_2_workers", lambda: scan(2, all_checks)),
        ):
            if name.startswith("full") and args.skip_full:
                continue
            repeat = min(2, args.repeat) if name.startswith("full") else args.repeat
            figures[name], count = best_of(repeat, fn)
            print(f"{name:<26} {figures[name]:9.1f} files/s  ({count} files)", flush=True)
        db = workdir / "incremental.db"
        scan(2, signature, db=db)
        figures["incremental_rescan"], count = best_of(args.repeat, lambda: scan(1, signature, incremental=True, db=db))
        print(f"{'incremental_rescan':<26} {figures['incremental_rescan']:9.1f} files/s  ({count} files)")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    full = "full" if not args.skip_full else "scan_signature"
    ratios = {
        "signature_vs_baseline": figures["signature_only"] / figures["baseline_read"],
        "signature_vs_baseline_signed": figures["signature_only_signed"] / figures["baseline_read_signed"],
        "signature_vs_baseline_unsigned": figures["signature_only_unsigned"] / figures["baseline_read_unsigned"],
        "scaling_1_to_2": figures[f"{full}_2_workers"] / figures[f"{full}_1_worker"],
        "scan_signature_scaling_1_to_2": figures["scan_signature_2_workers"] / figures["scan_signature_1_worker"],
        "incremental_files_per_s": figures["incremental_rescan"],
    }
    met = {key: ratios[key] >= target for key, target in TARGETS.items()}
    print(f"signature-only / baseline: {ratios['signature_vs_baseline']:.2f} (target >= 0.5; "
          f"signed files {ratios['signature_vs_baseline_signed']:.2f}, "
          f"unsigned {ratios['signature_vs_baseline_unsigned']:.2f})")  # fmt: skip
    print(f"2 workers / 1 worker:      {ratios['scaling_1_to_2']:.2f} (target >= 1.7; {full} pipeline; "
          f"signature-only scan {ratios['scan_signature_scaling_1_to_2']:.2f})")  # fmt: skip
    print(f"incremental re-scan:       {ratios['incremental_files_per_s']:.0f} files/s (target >= 2000)")
    for checks_name, counts in verdicts.items():
        print(f"verdicts ({checks_name}): {counts}")
    result = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "nice python benchmarks/bench_scan.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": len(os.sched_getaffinity(0)),
            "load_avg_at_end": os.getloadavg(),
        },
        "archive": manifest,
        "repeat": args.repeat,
        "files_per_s": {k: round(v, 1) for k, v in figures.items()},
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "targets": TARGETS,
        "targets_met": met,
        "verdicts": verdicts,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {RESULTS.relative_to(ROOT)}")
    return 0 if all(met.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
