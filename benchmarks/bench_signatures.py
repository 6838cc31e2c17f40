"""Provenance-only verification speed: one ``medverify verify`` call against one ``dcmsign --verify`` per file.

The corpus is N signed DICOM files of about 500 KB each, made from pydicom's bundled CT and MR test images by
tiling their pixel data up to 512x512 16-bit, each with a fresh SOP Instance UID, signed with the creator profile
by the ``generator`` key of a key store made for the benchmark (with the pixel binding, as medverify signs by
default: two signatures a file). It is built once into a cache directory and
reused while its manifest matches.

Three timings, each the best wall-clock time of ``--repeat`` runs:

* ``medverify``: one ``medverify verify --checks signature --format jsonl`` process over the whole directory,
  counting one VALID line per file (interpreter start-up and trust-policy loading included). It runs as the
  console script beside this interpreter, with the repository's code first on ``PYTHONPATH`` as the caller set
  it, and Python byte-code cached in the work directory after one warm-up run, as ``pip install`` compiles an
  installed package (``--no-bytecode-cache``: every module compiled at every start, as on a machine that sets
  ``PYTHONDONTWRITEBYTECODE`` over packages installed with ``--no-compile``). ``--baseline DIR`` times the
  same command with another checkout's code (say, a worktree of the main branch) right after, for a
  before/after under the same load;
* ``dcmsign``: ``dcmsign --verify +cf ca.pem FILE`` once per file, sequentially, each exiting 0 and printing
  ``Verification : OK``;
* ``in-process``: :meth:`verifier.checker.Checker.check` per file in this interpreter, the per-file cost without
  start-up.

The issue's target is at least 5x dcmsign's files/s for the ``medverify`` row. Figures are printed as a table
and saved as JSON (default ``benchmarks/results/bench_signatures.json``).

    python benchmarks/bench_signatures.py --n 200 --repeat 3
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from _shared import bytecode_env, medverify_command
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from provenance.keys import PASSPHRASE_ENV, KeyStore, passphrase_source
from provenance.models import SignatureProfile
from provenance.signature import sign_dataset
from verifier.checker import Check, Checker

TARGET_RATIO = 5.0
SIDE = 512
SOURCES = ("CT_small.dcm", "MR_small.dcm")
#: Bump when the way the corpus is made changes, so that an old cache is rebuilt (3: files carry the pixel binding
#: that medverify signs by default since issue #27).
CORPUS_VERSION = 3
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WORKDIR = Path.home() / ".cache" / "medverify" / "bench_signatures"
DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "bench_signatures.json"


# ------------------------------------------------------------------------------------------------ corpus


def _tiled(ds: pydicom.Dataset, side: int) -> np.ndarray:
    """The image's pixels repeated to ``side`` x ``side``, in its stored dtype."""
    pixels = ds.pixel_array
    reps = (-(-side // pixels.shape[0]), -(-side // pixels.shape[1]))
    return np.ascontiguousarray(np.tile(pixels, reps)[:side, :side])


def _templates(side: int) -> list[tuple[pydicom.Dataset, bytes]]:
    out = []
    for name in SOURCES:
        path = get_testdata_file(name)
        if path is None:
            raise SystemExit(f"pydicom test file {name} is missing; reinstall pydicom")
        ds = pydicom.dcmread(path)
        pixels = _tiled(ds, side)
        ds.Rows = side
        ds.Columns = side
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        out.append((ds, pixels.tobytes()))
    return out


def _passphrase(workdir: Path) -> str:
    """The key store passphrase, kept next to it (mode 0600) so that a cached corpus stays usable."""
    path = workdir / "passphrase"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def _manifest(n: int, side: int) -> dict[str, Any]:
    return {"version": CORPUS_VERSION, "n": n, "side": side, "sources": list(SOURCES), "profile": "creator"}


def build_corpus(workdir: Path, n: int, side: int, *, rebuild: bool) -> tuple[Path, Path, Path]:
    """Make (or reuse) the signed files; return the file directory, the MEDVERIFY_HOME and the CA PEM."""
    files_dir, home, ca_pem = workdir / "files", workdir / "home", workdir / "ca.pem"
    manifest_path = workdir / "manifest.json"
    manifest = _manifest(n, side)
    if not rebuild and manifest_path.exists() and ca_pem.exists():
        if json.loads(manifest_path.read_text()) == manifest and len(list(files_dir.glob("*.dcm"))) == n:
            return files_dir, home, ca_pem
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(files_dir, ignore_errors=True)
    manifest_path.unlink(missing_ok=True)
    files_dir.mkdir()
    passphrase = _passphrase(workdir)
    store = KeyStore(home / "keys", passphrase_source(env={PASSPHRASE_ENV: passphrase}))
    store.init()
    signer = store.load_signing_key("generator")
    ca_pem.write_bytes(store.export_certificate("ca"))
    templates = _templates(side)
    started = time.perf_counter()
    for i in range(n):
        template, pixel_bytes = templates[i % len(templates)]
        ds = copy.deepcopy(template)  # sign_dataset adds to the sequences in place
        ds.PixelData = pixel_bytes
        uid = generate_uid()
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.InstanceNumber = i + 1
        sign_dataset(ds, signer, profile=SignatureProfile.CREATOR)
        ds.save_as(files_dir / f"img{i:05d}.dcm", enforce_file_format=True)
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"built {n} signed files in {time.perf_counter() - started:.1f} s into {files_dir}", file=sys.stderr)
    return files_dir, home, ca_pem


# ------------------------------------------------------------------------------------------------ timings


def _env(home: Path, workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["MEDVERIFY_HOME"] = str(home)
    env[PASSPHRASE_ENV] = _passphrase(workdir)
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env


def _supports_no_audit(cmd: Sequence[str], env: dict[str, str]) -> bool:
    """``--no-audit`` is used where the installed CLI has it (the audit database is being wired into verify)."""
    proc = subprocess.run(
        [*cmd, "verify", "--help"], env={**env, "COLUMNS": "200"}, capture_output=True, text=True, check=False
    )
    return "--no-audit" in proc.stdout


def _best(repeat: int, run: Callable[[], None]) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times), times


def time_medverify(cmd: list[str], files: list[Path], env: dict[str, str], repeat: int) -> tuple[float, list[float]]:
    def run() -> None:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
        valid = sum(1 for line in lines if line["status"] == "VALID" and line["signature"]["status"] == "VALID")
        # Exit 1 is expected: the corpus is signed with a generator key, so the default site policy quarantines
        # the files as declared synthetic. What is timed here is that every signature checks out.
        if proc.returncode not in (0, 1) or valid != len(files):
            raise SystemExit(
                f"medverify verify: exit {proc.returncode}, {valid}/{len(files)} VALID\n{proc.stderr[-2000:]}"
            )

    return _best(repeat, run)


def time_dcmsign(files: list[Path], ca_pem: Path, env: dict[str, str], repeat: int) -> tuple[float, list[float]]:
    exe = shutil.which("dcmsign")
    if exe is None:
        raise SystemExit("dcmsign not found; install dcmtk")

    def run() -> None:
        for path in files:
            proc = subprocess.run(
                [exe, "--verify", "+cf", str(ca_pem), str(path)], env=env, capture_output=True, text=True, check=False
            )
            if proc.returncode != 0 or "Verification : OK" not in proc.stdout + proc.stderr:
                raise SystemExit(f"dcmsign --verify {path}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}")

    return _best(repeat, run)


def time_in_process(
    files: list[Path], home: Path, workdir: Path, repeat: int
) -> tuple[tuple[float, list[float]], tuple[float, list[float]]]:
    """Wall-clock and CPU time (this process's) of checking every file; CPU time is the steadier figure on a
    machine shared with other work."""
    store = KeyStore(home / "keys", passphrase_source(env={PASSPHRASE_ENV: _passphrase(workdir)}))
    checker = Checker(checks=frozenset({Check.SIGNATURE}), trust=store.trust_policy())
    cpu: list[float] = []

    def run() -> None:
        started = time.process_time()
        for path in files:
            result = checker.check(path)
            if result.status != "VALID":
                raise SystemExit(f"Checker.check {path}: {result.status} {result.reasons}")
        cpu.append(time.process_time() - started)

    wall = _best(repeat, run)
    return wall, (min(cpu), cpu)


# ------------------------------------------------------------------------------------------------ main


def _tool_version(cmd: list[str]) -> str:
    proc = subprocess.run([*cmd, "--version"], capture_output=True, text=True, check=False)
    return (proc.stdout.strip().splitlines() or ["?"])[0]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="number of signed files (default 200)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per timing; the best is kept (default 3)")
    parser.add_argument(
        "--workdir", type=Path, default=DEFAULT_WORKDIR, help=f"corpus cache (default {DEFAULT_WORKDIR})"
    )
    parser.add_argument("--side", type=int, default=SIDE, help="image rows and columns (default 512: ~512 KB)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the corpus even if the cache matches")
    parser.add_argument("--skip-dcmsign", action="store_true", help="time medverify only (no ratio)")
    parser.add_argument("--no-bytecode-cache", action="store_true", help="compile every module at every start")
    parser.add_argument("--baseline", type=Path, help="another checkout whose medverify is timed after this one's")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file")
    args = parser.parse_args(argv)
    if args.n < 1 or args.repeat < 1:
        parser.error("--n and --repeat must be at least 1")

    workdir = args.workdir.expanduser().resolve()
    files_dir, home, ca_pem = build_corpus(workdir, args.n, args.side, rebuild=args.rebuild)
    files = sorted(files_dir.glob("*.dcm"))
    mean_kb = sum(f.stat().st_size for f in files) / len(files) / 1024
    env = _env(home, workdir)

    env = bytecode_env(env, None if args.no_bytecode_cache else workdir / "pycache")
    mv = medverify_command()
    no_audit = _supports_no_audit(mv, env)
    mv_cmd = [*mv, "verify", "--checks", "signature", "--format", "jsonl", *(["--no-audit"] if no_audit else [])]
    for path in files:  # warm the page cache so that neither tool pays for the first read
        path.read_bytes()
    baseline_env = None
    if args.baseline is not None:
        baseline_env = {**env, "PYTHONPATH": str(args.baseline.resolve())}
    for warm_env in filter(None, (env, baseline_env)):  # and fill the byte-code cache, as an installation does
        subprocess.run([*mv_cmd, str(files[0])], env=warm_env, capture_output=True, check=False)

    rows: dict[str, dict[str, Any]] = {}

    def record(name: str, timing: tuple[float, list[float]], command: str) -> None:
        best, all_times = timing
        rows[name] = {
            "files_per_s": len(files) / best,
            "best_s": best,
            "ms_per_file": 1000 * best / len(files),
            "runs_s": all_times,
            "command": command,
        }

    record("medverify", time_medverify([*mv_cmd, str(files_dir)], files, env, args.repeat), " ".join([*mv_cmd, "DIR"]))
    if baseline_env is not None:
        timing = time_medverify([*mv_cmd, str(files_dir)], files, baseline_env, args.repeat)
        record("baseline", timing, f"the same with PYTHONPATH={args.baseline}")
    if not args.skip_dcmsign:
        record("dcmsign", time_dcmsign(files, ca_pem, env, args.repeat), "dcmsign --verify +cf ca.pem FILE (per file)")
    wall, cpu = time_in_process(files, home, workdir, args.repeat)
    record("in-process", wall, "verifier.checker.Checker.check per file")
    record("in-process-cpu", cpu, "the same, CPU time of the process")

    ratio = rows["medverify"]["files_per_s"] / rows["dcmsign"]["files_per_s"] if "dcmsign" in rows else None
    verdict = "n/a" if ratio is None else ("PASS" if ratio >= TARGET_RATIO else "FAIL")

    print(
        f"\n{len(files)} signed files, {mean_kb:.0f} KB each, best of {args.repeat}; {os.cpu_count()} CPUs; load "
        f"average {os.getloadavg()[0]:.2f}; byte-code {'not ' if args.no_bytecode_cache else ''}cached"
    )
    print(f"{'':<12}{'files/s':>10}{'ms/file':>10}{'best s':>10}")
    for name, row in rows.items():
        print(f"{name:<12}{row['files_per_s']:>10.1f}{row['ms_per_file']:>10.2f}{row['best_s']:>10.2f}")
    if ratio is not None:
        print(f"ratio medverify/dcmsign: {ratio:.2f}x (target >= {TARGET_RATIO:.0f}x): {verdict}")
        inproc = rows["in-process"]["files_per_s"] / rows["dcmsign"]["files_per_s"]
        print(f"ratio in-process/dcmsign: {inproc:.2f}x")

    report = {
        "benchmark": "bench_signatures",
        "n_files": len(files),
        "mean_file_kb": mean_kb,
        "repeat": args.repeat,
        "no_audit_flag": no_audit,
        "bytecode_cache": not args.no_bytecode_cache,
        "load_average": os.getloadavg(),
        "results": rows,
        "ratio_medverify_over_dcmsign": ratio,
        "target_ratio": TARGET_RATIO,
        "verdict": verdict,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "dcmsign": _tool_version(["dcmsign"]) if shutil.which("dcmsign") else None,
        },
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {args.output}")
    return 0 if verdict != "FAIL" else 1


if __name__ == "__main__":
    sys.exit(main())
