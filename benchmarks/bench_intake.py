"""PACS intake latency: what the DICOM gateway and the Orthanc plugin add to each C-STORE (issue #8).

The corpus is N DICOM files of 512x512 16-bit CT (pydicom's CT_small tiled), each with a fresh SOP Instance UID
and signed by an ``acquisition`` key, so that every one runs the whole signature check and is accepted. One
sender (a pynetdicom SCU with TCP_NODELAY, one association, files sent as they are on disk) times each C-STORE
from request to response; the first ``--warmup`` instances are not counted.

Scenarios (each against fresh storage; "full" = every check the pipeline has: ``--checks`` with all of
:class:`verifier.checker.Check`):

* ``storescp``: straight to DCMTK's storescp (the PACS), the baseline of the gateway;
* ``gateway signature`` / ``gateway full``: through ``medverify gateway`` (check, audit record, fsync'd spool,
  answer), forwarding to that storescp;
* ``orthanc``: straight to Orthanc 1.10 without the plugin, the baseline of the plugin;
* ``orthanc+plugin signature`` / ``orthanc+plugin full``: Orthanc with the script of
  ``medverify orthanc install-plugin``.

``check ms`` is the median time medverify itself spent per instance (parse, checks; from the ``check_ms`` of the
audit records): on a loaded machine the round trips wander, this part much less.

Orthanc runs in a private network namespace (``unshare -n``, root only) and the sender joins it with
``nsenter``; ``--no-orthanc`` skips those rows. Targets: signature-only adds at most 10 ms to the median,
the full pipeline at most 100 ms. Figures are printed and saved as JSON (``benchmarks/results/bench_intake.json``).

    nice -n 10 python benchmarks/bench_intake.py --n 100
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _shared import private_network

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "bench_intake.json"
PASSPHRASE = "bench-intake-passphrase-0123456789"
SIDE = 512
TARGET_SIGNATURE_MS = 10.0
TARGET_FULL_MS = 100.0
PYTHON_PLUGIN = "/usr/share/orthanc/plugins/libOrthancPython.so"


# ------------------------------------------------------------------------------------------------ sender


def send(port: int, called: str, files: list[Path], warmup: int) -> list[float]:
    """C-STORE each file over one association; milliseconds from request to response, warm-up dropped."""
    from pynetdicom import AE, _config
    from pynetdicom.dsutils import split_dataset

    from verifier.intake.queue import set_no_delay

    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title="BENCHSCU")
    for sop_class, syntax in sorted({_context(split_dataset, f) for f in files}):
        ae.add_requested_context(sop_class, [syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        raise SystemExit(f"no association with {called} on port {port}")
    set_no_delay(assoc)
    times: list[float] = []
    try:
        for path in files:
            start = time.perf_counter()
            status = assoc.send_c_store(path)
            elapsed = (time.perf_counter() - start) * 1000.0
            if int(status.get("Status", -1)) != 0:
                raise SystemExit(f"{path.name}: status {status.get('Status')!r}, not Success")
            times.append(elapsed)
    finally:
        assoc.release()
    return times[warmup:]


def _context(split_dataset: Any, path: Path) -> tuple[str, str]:
    meta, _offset = split_dataset(path)
    return str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)


# ------------------------------------------------------------------------------------------------ corpus


def build_corpus(workdir: Path, n: int) -> tuple[Path, Path]:
    """Signed 512x512 CT files and a medverify home whose key store trusts them (and has a watermark key)."""
    import numpy as np
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from provenance.keys import KeyAlgorithm, KeyRole, KeyStore
    from provenance.models import SignatureProfile
    from provenance.signature import sign_dataset

    home, files = workdir / "home", workdir / "files"
    files.mkdir(parents=True)
    store = KeyStore(home / "keys", lambda: PASSPHRASE.encode())
    store.init()
    store.create("acq", KeyRole.ACQUISITION, KeyAlgorithm("rsa-2048"))
    store.watermark_key()
    signer = store.load_signing_key("acq")
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    pixels = template.pixel_array
    reps = (-(-SIDE // pixels.shape[0]), -(-SIDE // pixels.shape[1]))
    template.PixelData = np.ascontiguousarray(np.tile(pixels, reps)[:SIDE, :SIDE]).tobytes()
    template.Rows = template.Columns = SIDE
    template.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for i in range(n):
        ds = copy.deepcopy(template)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        sign_dataset(ds, signer, profile=SignatureProfile.BASE)
        ds.save_as(files / f"img{i:05d}.dcm", enforce_file_format=True)
    return home, files


# ------------------------------------------------------------------------------------------------ peers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(check: Any, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start within {timeout} s")
        time.sleep(0.2)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def _process(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _dcmtk(name: str) -> str:
    path = f"/usr/bin/{name}"  # pynetdicom installs scripts of the same names earlier on PATH
    if not os.access(path, os.X_OK):
        raise SystemExit(f"DCMTK's {name} is needed ({path})")
    return path


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDVERIFY_")}
    # TCP_NODELAY=1: Debian's DCMTK (storescp, and Orthanc's DICOM server) leaves Nagle on otherwise.
    env.update(MEDVERIFY_HOME=str(home), MEDVERIFY_KEY_PASSPHRASE=PASSPHRASE, OMP_NUM_THREADS="1", TCP_NODELAY="1")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def _sender_cmd(port: int, called: str, files: Path, n: int, warmup: int) -> list[str]:
    return [sys.executable, __file__, "send", "--port", str(port), "--called", called, "--files", str(files),
            "--limit", str(n), "--warmup", str(warmup)]  # fmt: skip


def _run_sender(cmd: list[str], env: dict[str, str], log: Path | None = None) -> list[float]:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        server = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
        raise SystemExit(f"sender failed: {done.stderr[-2000:]}\n{server}")
    return [float(x) for x in json.loads(done.stdout.strip().splitlines()[-1])]


def detector_bundle(work: Path, given: Path | None) -> Path | None:
    """The detector bundle of the full pipeline: ``--model``, else the shipped one, else a tiny one trained here
    (3 steps on the sample corpus: its accuracy means nothing, its inference cost is what a CNN+classical
    ensemble of the ``tiny`` preset costs)."""
    import detectors

    if given is not None:
        return given
    if (Path(detectors.__file__).parent / "checkpoints" / "detector" / "config.json").is_file():
        return None
    from detectors.data import build_sample_corpus
    from verifier.cli import main as cli_main

    corpus, bundle = work / "detector-corpus", work / "detector-bundle"
    build_sample_corpus(corpus)
    code = cli_main(["train", "detector", "--corpus", str(corpus), "--generators", "vae,tamper", "--preset", "tiny",
                     "--steps", "3", "--batch-size", "8", "--threads", "1", "--out", str(bundle)])  # fmt: skip
    if code != 0:
        raise SystemExit("could not train the tiny detector bundle for the full pipeline; pass --model")
    return bundle


def _model_args(checks: str | None, model: Path | None) -> list[str]:
    return ["--model", str(model)] if checks and "detector" in checks and model is not None else []


def run_gateway_rows(
    work: Path, home: Path, files: Path, n: int, warmup: int, full: str, model: Path | None
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    env = _env(home)
    for label, checks in (("storescp", None), ("gateway signature", "signature"), ("gateway full", full)):
        pacs_dir = work / f"pacs-{label.replace(' ', '-')}"
        pacs_dir.mkdir()
        pacs_port = _free_port()
        pacs_cmd = [_dcmtk("storescp"), "-aet", "PACS", "+xa", "-od", str(pacs_dir), str(pacs_port)]
        with _process(pacs_cmd, env, work / "storescp.log"):
            _wait(lambda p=pacs_port: _listening(p), "storescp")
            if checks is None:
                times = _run_sender(_sender_cmd(pacs_port, "PACS", files, n, warmup), env)
                rows.append(_row(label, times, None, "signature"))
                continue
            gw_port = _free_port()
            gw_cmd = [
                sys.executable, "-c", "from verifier.cli import app_main; app_main()", "gateway",
                "--listen", f"127.0.0.1:{gw_port}", "--forward", f"127.0.0.1:{pacs_port}:PACS",
                "--quarantine", str(work / "quarantine"), "--spool", str(work / f"spool-{checks}"),
                "--allow", "BENCHSCU@127.0.0.1", "--checks", checks, "--retry-max", "1", "-v",
                *_model_args(checks, model),
            ]  # fmt: skip
            last, _ = _check_ms(home, 0)
            with _process(gw_cmd, env, work / "gateway.log"):
                _wait(lambda p=gw_port: _listening(p), "medverify gateway")
                started = time.perf_counter()
                times = _run_sender(_sender_cmd(gw_port, "MEDVERIFY", files, n, warmup), env, work / "gateway.log")
                _wait(lambda d=pacs_dir: len(list(d.iterdir())) >= n, "forwarding", timeout=600)
                drain = time.perf_counter() - started
            _, check_ms = _check_ms(home, last)
            rows.append(_row(label, times, rows[0], checks, forwarded_all_s=round(drain, 2), check_median_ms=check_ms))
    return rows


def run_orthanc_rows(
    work: Path, home: Path, files: Path, n: int, warmup: int, full: str, model: Path | None
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    env = _env(home)
    with private_network() as ns:
        for label, checks in (("orthanc", None), ("orthanc+plugin signature", "signature"),
                              ("orthanc+plugin full", full)):  # fmt: skip
            cfg_dir = work / f"orthanc-{label.replace(' ', '-').replace('+', '-')}"
            cfg_dir.mkdir()
            config = cfg_dir / "orthanc.json"
            config.write_text(json.dumps({
                "Name": "bench", "StorageDirectory": str(cfg_dir / "db"), "IndexDirectory": str(cfg_dir / "db"),
                "HttpPort": 8042, "DicomPort": 4242, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
                "AuthenticationEnabled": False, "DicomCheckCalledAet": False, "Plugins": [],
            }))  # fmt: skip
            if checks is not None:
                subprocess.run(
                    [sys.executable, "-c", "from verifier.cli import app_main; app_main()", "orthanc",
                     "install-plugin", "--config", str(config), "--checks", checks,
                     "--quarantine", str(work / "quarantine"), *_model_args(checks, model)],
                    env=env, check=True, capture_output=True,
                )  # fmt: skip
            log = cfg_dir / "orthanc.log"
            last, _ = _check_ms(home, 0)
            with _process([*ns, "Orthanc", str(config)], env, log):
                _wait(lambda lg=log: "Orthanc has started" in lg.read_text(errors="replace"), "Orthanc")
                if checks is not None and "medverify: checking every upload" not in log.read_text(errors="replace"):
                    raise SystemExit(f"the plugin did not start; see {log}")
                times = _run_sender([*ns, *_sender_cmd(4242, "ORTHANC", files, n, warmup)], env, log)
            extra = {"check_median_ms": _check_ms(home, last)[1]} if checks is not None else {}
            rows.append(_row(label, times, rows[0] if rows else None, checks or "signature", **extra))
    return rows


def _check_ms(home: Path, after: int) -> tuple[int, float | None]:
    """(last audit id, median of the in-process check time of the intake records after ``after``): the part of
    the added latency that is medverify's own work, whatever the machine's load does to the round trip."""
    import sqlite3

    db = home / "audit.db"
    if not db.exists():
        return after, None
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT id, details FROM audit_records WHERE id > ? AND channel = 'intake'", (after,))
        found = [(i, json.loads(d).get("intake", {}).get("check_ms")) for i, d in rows]
        last = conn.execute("SELECT max(id) FROM audit_records").fetchone()[0] or after
    values = [v for _i, v in found if isinstance(v, int | float)]
    return int(last), (round(statistics.median(values), 2) if values else None)


def _row(label: str, times: list[float], baseline: dict[str, Any] | None, checks: str, **extra: Any) -> dict[str, Any]:
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    row: dict[str, Any] = {
        "scenario": label,
        "checks": None if baseline is None else checks,
        "n": len(times),
        "median_ms": round(statistics.median(times), 2),
        "p99_ms": round(p99, 2),
        "mean_ms": round(statistics.fmean(times), 2),
        **extra,
    }
    if baseline is not None:
        row["added_median_ms"] = round(row["median_ms"] - baseline["median_ms"], 2)
        row["added_p99_ms"] = round(row["p99_ms"] - baseline["p99_ms"], 2)
        target = TARGET_SIGNATURE_MS if checks == "signature" else TARGET_FULL_MS
        row["target_added_median_ms"] = target
        row["meets_target"] = row["added_median_ms"] <= target
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    s = sub.add_parser("send", help="(internal) the timed sender")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--called", required=True)
    s.add_argument("--files", type=Path, required=True)
    s.add_argument("--limit", type=int, required=True)
    s.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--n", type=int, default=100, help="timed instances per scenario")
    parser.add_argument("--warmup", type=int, default=5, help="untimed instances sent first")
    parser.add_argument("--no-orthanc", action="store_true", help="skip the Orthanc rows")
    parser.add_argument("--model", type=Path, help="detector bundle of the full pipeline (default: see above)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    if args.command == "send":
        files = sorted(args.files.glob("*.dcm"))[: args.limit]
        print(json.dumps(send(args.port, args.called, files, args.warmup)))
        return 0

    from verifier.checker import Check

    full = ",".join(c.value for c in Check)
    total = args.n + args.warmup
    with tempfile.TemporaryDirectory(prefix="bench-intake-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        home, files = build_corpus(work, total)
        print(f"built {total} signed 512x512 files in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        model = detector_bundle(work, args.model) if "detector" in full else None
        rows = run_gateway_rows(work, home, files, total, args.warmup, full, model)
        if not args.no_orthanc:
            if shutil.which("Orthanc") is None or not Path(PYTHON_PLUGIN).exists():
                raise SystemExit("Orthanc and orthanc-python are needed (apt-get install orthanc orthanc-python)")
            rows += run_orthanc_rows(work, home, files, total, args.warmup, full, model)
        model_note = "shipped bundle" if model is None else (
            str(args.model) if args.model is not None else "tiny bundle trained by the benchmark (3 steps)"
        )

    print(f"{'scenario':<26} {'checks':<28} {'median ms':>10} {'p99 ms':>9} {'added median':>13} {'added p99':>10}"
          f" {'check ms':>9}")  # fmt: skip
    for r in rows:
        added = f"{r['added_median_ms']:>+13.2f} {r['added_p99_ms']:>+10.2f}" if "added_median_ms" in r else ""
        check = f" {r['check_median_ms']:>9.2f}" if r.get("check_median_ms") is not None else ""
        line = f"{r['scenario']:<26} {r['checks'] or '-':<28} {r['median_ms']:>10.2f} {r['p99_ms']:>9.2f}"
        print(f"{line} {added}{check}")
    result = {
        "benchmark": "bench_intake",
        "n": args.n,
        "warmup": args.warmup,
        "image": f"{SIDE}x{SIDE} 16-bit CT, signed (acquisition key, RSA-2048)",
        "full_checks": full,
        "detector_model": model_note if "detector" in full else None,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
