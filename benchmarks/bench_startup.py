"""Start-up: how long ``medverify --help`` and a one-file signature check take, against ``dcmsign`` on the same
file in the same run.

Each command is run ``--repeat`` times, interleaved (one run of each in turn, so that all of them meet the same
load on a shared machine), and the median and the best wall-clock times are kept:

* ``python``: ``python -c pass``, the interpreter's own start-up (site packages included): the floor under every
  medverify figure; and ``python -c "import pydicom, sqlalchemy, cryptography.x509"``, the libraries a one-file
  check cannot do without (reading the file, writing its audit record, the certificates): the floor under
  ``verify``;
* ``medverify --help``;
* ``medverify verify one.dcm --checks signature``: one signed CT (pydicom's ``CT_small.dcm``, signed by an
  acquisition key of a key store made for the benchmark), with its audit record written, as a script would run it
  once per file;
* ``medverify verify one.dcm``: every check (signature, watermark, detector; torch loads), for comparison;
* ``dcmsign``: ``dcmsign --verify +cf ca.pem one.dcm``.

medverify runs as its console script (the one beside this interpreter, else on PATH, else ``python -c``), with
the repository first on ``PYTHONPATH``. Python byte-code is cached in the work directory (``PYTHONPYCACHEPREFIX``)
and one warm-up run of each command fills it, as ``pip install`` does when it compiles an installed package;
``--no-bytecode-cache`` measures without (every module compiled at every start). ``--baseline DIR`` also times
the two medverify commands of another checkout (say, a worktree of the main branch) in the same interleaved runs,
for a before/after on the same load. Targets from the issue (medians):
``--help`` ≤ 0.25 s, ``verify --checks signature`` ≤ 0.5 s; the script exits 1 when one is missed. Figures are
printed and saved as JSON (default ``benchmarks/results/bench_startup.json``).

    python benchmarks/bench_startup.py --repeat 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydicom
from _shared import bytecode_env, medverify_command
from pydicom.data import get_testdata_file

from provenance.keys import PASSPHRASE_ENV, KeyRole, KeyStore
from provenance.models import SignatureProfile
from provenance.signature import sign_dataset

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "bench_startup.json"
#: The libraries a one-file check cannot do without (reading the file, the audit record, the certificates).
FLOOR_IMPORTS = "import pydicom, sqlalchemy, cryptography.x509"
TARGETS_S = {"medverify --help": 0.25, "medverify verify --checks signature": 0.5}
PASSPHRASE = "bench-startup-passphrase"  # a throw-away key store's


def _prepare(workdir: Path) -> tuple[Path, Path, dict[str, str]]:
    """A key store with an acquisition key, one file it signed, the CA for dcmsign, and the environment."""
    home = workdir / "home"
    store = KeyStore(home / "keys", lambda: PASSPHRASE.encode())
    store.init()
    store.ensure("scanner", KeyRole.ACQUISITION)
    source = get_testdata_file("CT_small.dcm")
    if source is None:
        raise SystemExit("pydicom's CT_small.dcm is missing; reinstall pydicom")
    ds = pydicom.dcmread(source)
    sign_dataset(ds, store.load_signing_key("scanner"), profile=SignatureProfile.CREATOR)
    one = workdir / "one.dcm"
    ds.save_as(one)
    ca = workdir / "ca.pem"
    ca.write_bytes(store.export_certificate("ca"))
    env = dict(os.environ)
    env.update(MEDVERIFY_HOME=str(home), OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1")
    env[PASSPHRASE_ENV] = PASSPHRASE
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return one, ca, env


def _run(cmd: Sequence[str], env: dict[str, str], expect: int) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != expect:
        raise SystemExit(f"{' '.join(cmd)}: exit {proc.returncode}, expected {expect}\n{proc.stderr[-2000:]}")
    return elapsed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=20, help="runs per command (default 20)")
    parser.add_argument("--skip-all-checks", action="store_true", help="do not time verify with every check")
    parser.add_argument("--no-bytecode-cache", action="store_true", help="compile every module at every start")
    parser.add_argument("--baseline", type=Path, help="another checkout whose medverify is timed alongside")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    dcmsign = shutil.which("dcmsign")
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        workdir = Path(tmp)
        one, ca, env = _prepare(workdir)
        env = bytecode_env(env, None if args.no_bytecode_cache else workdir / "pycache")
        mv = medverify_command()
        commands: dict[str, tuple[list[str], int]] = {
            "python -c pass": ([sys.executable, "-c", "pass"], 0),
            "python: import pydicom, sqlalchemy, cryptography": ([sys.executable, "-c", FLOOR_IMPORTS], 0),
            "medverify --help": ([*mv, "--help"], 0),
            "medverify verify --checks signature": ([*mv, "verify", str(one), "--checks", "signature"], 0),
        }
        if not args.skip_all_checks:
            commands["medverify verify (every check)"] = ([*mv, "verify", str(one)], 0)
        if dcmsign is not None:
            commands["dcmsign --verify"] = ([dcmsign, "--verify", "+cf", str(ca), str(one)], 0)
        envs = {name: env for name in commands}
        if args.baseline is not None:
            base_env = {**env, "PYTHONPATH": str(args.baseline.resolve())}
            for name in ("medverify --help", "medverify verify --checks signature"):
                commands[f"baseline: {name}"] = commands[name]
                envs[f"baseline: {name}"] = base_env
        for name, (cmd, expect) in commands.items():  # warm-up: byte-code, the audit database, the page cache
            _run(cmd, envs[name], expect)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeat):
            for name, (cmd, expect) in commands.items():
                times[name].append(_run(cmd, envs[name], expect))

    rows: dict[str, dict[str, Any]] = {}
    print(f"\n{args.repeat} runs each, interleaved; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}")
    print(f"{'':<48}{'median s':>10}{'best s':>10}{'target':>9}")
    failed = False
    for name, runs in times.items():
        median = statistics.median(runs)
        target = TARGETS_S.get(name)
        verdict = None if target is None else ("PASS" if median <= target else "FAIL")
        failed = failed or verdict == "FAIL"
        rows[name] = {"median_s": median, "best_s": min(runs), "runs_s": runs, "target_s": target,
                      "verdict": verdict, "command": " ".join(commands[name][0])}  # fmt: skip
        shown = "" if target is None else f"≤ {target:.2f} {verdict}"
        print(f"{name:<48}{median:>10.3f}{min(runs):>10.3f}  {shown}")
    if "dcmsign --verify" in rows:
        ratio = rows["medverify verify --checks signature"]["median_s"] / rows["dcmsign --verify"]["median_s"]
        print(f"verify --checks signature takes {ratio:.1f}x dcmsign's time on the same file")
    report = {
        "benchmark": "bench_startup",
        "repeat": args.repeat,
        "bytecode_cache": not args.no_bytecode_cache,
        "baseline": str(args.baseline.resolve()) if args.baseline is not None else None,
        "medverify_command": " ".join(mv),
        "results": rows,
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_1min_at_end": os.getloadavg()[0],
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {args.output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
