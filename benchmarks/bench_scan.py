"""Archive scan speed: files/s of a read-only baseline, signature checks, the full scan with 1 and 2 workers, and
an incremental re-scan of the unchanged archive.

Run from the repository root: ``nice python benchmarks/bench_scan.py [--files 2000]``. The archive is built once
into ``--cache`` (default ``~/.cache/medverify/bench_scan/archive-N``): re-UID'd copies of real sample images from
pydicom's test files (CT, MR, RT dose; explicit and implicit VR), a quarter signed with an acquisition key of a key
store made for the benchmark, a tenth signed and then tampered (one pixel byte changed), the rest unsigned, plus
one non-DICOM file per twenty. Figures are files/s over the DICOM files, best of ``--repeat`` runs, with the page
cache warm (every file is read once before timing):

- ``baseline_read``: pydicom reads every file and SHA-256 hashes its bytes, one process, nothing else;
- ``signature_only``: :func:`verifier.pipeline.check_path` with the signature check, one process, no database;
- ``full_1_worker`` / ``full_2_workers``: :class:`verifier.scan.Scanner` end to end (walk, detection by content,
  every check, one audit record and scan state per file in a fresh SQLite audit database), on local processes;
- ``incremental_rescan``: the same scan again with ``incremental=True`` over the unchanged archive.

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

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from provenance.keys import KeyAlgorithm, KeyRole, KeyStore
from provenance.signature import sign_dataset
from verifier.audit import AuditLog
from verifier.audit.scanstate import ScanStateStore
from verifier.pipeline import Check, check_path, parse_checks
from verifier.scan import LocalExecutor, Scanner

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bench_scan.json"
SOURCES = ("CT_small.dcm", "MR_small.dcm", "rtdose_1frame.dcm")
PASSPHRASE = b"bench-scan-passphrase"  # a throw-away key store made for this benchmark only
TARGETS = {"signature_vs_baseline": 0.5, "incremental_files_per_s": 2000.0, "scaling_1_to_2": 1.7}


def build_archive(directory: Path, n: int, seed: int = 0) -> dict[str, Any]:
    """Write the archive (or reuse it if its manifest matches) and return the manifest."""
    manifest_path = directory / "manifest.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("files") == n and manifest.get("seed") == seed:
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
    kinds = {"unsigned": 0, "signed": 0, "tampered": 0, "not_dicom": 0}
    for i in range(n):
        ds = pydicom.dcmread(io.BytesIO(sources[i % len(sources)]))  # a fresh dataset: no signature carries over
        ds.SOPInstanceUID = generate_uid()
        r = rng.random()
        kind = "signed" if r < 0.25 else "tampered" if r < 0.35 else "unsigned"
        if kind != "unsigned":
            sign_dataset(ds, signer)
        if kind == "tampered":
            data = bytearray(ds.PixelData)
            data[rng.randrange(len(data))] ^= 0x01
            ds.PixelData = bytes(data)
        path = archive / f"study{i // 100:03d}" / f"series{i % 4}" / f"{i:06d}"  # no extension
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path)
        kinds[kind] += 1
        if i % 20 == 0:
            (path.parent / f"notes{i:06d}.txt").write_text("not DICOM\n")
            kinds["not_dicom"] += 1
    manifest = {"files": n, "seed": seed, "sources": list(SOURCES), "kinds": kinds, "archive": str(archive)}
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return manifest


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
    trust = KeyStore(cache / "keys", lambda: PASSPHRASE).trust_policy()
    for p in files:  # warm the page cache so that every figure reads from memory alike
        p.read_bytes()

    def baseline() -> int:
        for p in files:
            data = p.read_bytes()
            hashlib.sha256(data).hexdigest()
            pydicom.dcmread(io.BytesIO(data))
        return len(files)

    signature = parse_checks(Check.SIGNATURE.value)

    def signature_only() -> int:
        for p in files:
            check_path(p, checks=signature, policy=trust)
        return len(files)

    verdicts: dict[str, int] = {}
    workdir = Path(tempfile.mkdtemp(prefix="bench-scan-"))

    def full(workers: int, *, incremental: bool = False, db: Path | None = None) -> int:
        if db is None:
            db = workdir / f"audit-{time.monotonic_ns()}.db"
        with AuditLog.open(f"sqlite:///{db}") as log:
            scanner = Scanner(checks=parse_checks(None), trust=trust, state=ScanStateStore(log))
            plan = scanner.plan([archive], incremental=incremental)
            for _ in scanner.execute(plan, LocalExecutor(workers)):
                pass
            summary = scanner.finish(plan)
        if not incremental:
            verdicts.clear()
            verdicts.update(summary.verdicts)
            return summary.checked
        return summary.skipped_unchanged + summary.checked

    figures: dict[str, float] = {}
    try:
        for name, fn in (
            ("baseline_read", baseline),
            ("signature_only", signature_only),
            ("full_1_worker", lambda: full(1)),
            ("full_2_workers", lambda: full(2)),
        ):
            figures[name], count = best_of(args.repeat, fn)
            print(f"{name:<20} {figures[name]:9.1f} files/s  ({count} files)", flush=True)
        db = workdir / "incremental.db"
        full(2, db=db)
        figures["incremental_rescan"], count = best_of(args.repeat, lambda: full(1, incremental=True, db=db))
        print(f"{'incremental_rescan':<20} {figures['incremental_rescan']:9.1f} files/s  ({count} files)")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    ratios = {
        "signature_vs_baseline": figures["signature_only"] / figures["baseline_read"],
        "scaling_1_to_2": figures["full_2_workers"] / figures["full_1_worker"],
        "incremental_files_per_s": figures["incremental_rescan"],
    }
    met = {key: ratios[key] >= target for key, target in TARGETS.items()}
    print(f"signature-only / baseline: {ratios['signature_vs_baseline']:.2f} (target >= 0.5)")
    print(f"2 workers / 1 worker:      {ratios['scaling_1_to_2']:.2f} (target >= 1.7)")
    print(f"incremental re-scan:       {ratios['incremental_files_per_s']:.0f} files/s (target >= 2000)")
    print(f"verdicts of the full scan: {verdicts}")
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
