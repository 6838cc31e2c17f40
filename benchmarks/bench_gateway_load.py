"""Gateway under load: many concurrent DICOM associations through ``medverify gateway`` (issue #10).

N instances (pydicom's CT_small, 128x128 CT, each with a fresh SOP Instance UID and signed by an acquisition key, so
that every one runs the whole signature check and is accepted) are split over A concurrent associations (default
50 x 40 = 2,000). Senders are pynetdicom SCUs, one thread per association, spread over S processes (TCP_NODELAY, the
file's bytes sent as they are); each times every C-STORE from request to response.

Two runs with the same senders:

* ``storescp``: straight to DCMTK's storescp (``--fork``: one process per association), the baseline;
* ``gateway``: through ``medverify gateway --checks signature`` (check, audit record, fsync'd spool, answer),
  forwarding to that storescp.

Checked, not just timed: every C-STORE answered (Success), as many ``intake`` audit records as instances with the
instances' UIDs, every instance delivered to the PACS, ``medverify audit verify`` passes. The added latency is the
gateway's percentile minus the baseline's. A C-STORE without an answer within 30 s makes pynetdicom abort the
association; its remaining instances count as unanswered (seen in the storescp run under this load, most likely
pynetdicom's reactor thread taking a response before ``send_c_store`` sees it, pynetdicom issue #435; the
percentiles are then over the answered C-STOREs).

With A associations each waiting for its answer before the next C-STORE, a round trip is about A / throughput once
the gateway is saturated (Little's law): at 50 associations the percentiles measure queueing, and ``inst/s`` is the
capacity. ``bench_intake.py`` gives the added latency of one association. Figures are printed and saved as JSON
(``benchmarks/results/bench_gateway_load.json``).

    nice -n 10 python benchmarks/bench_gateway_load.py                       # 50 associations, 2,000 instances
    nice -n 10 python benchmarks/bench_gateway_load.py --associations 10 --instances 200
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import multiprocessing
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "bench_gateway_load.json"
PASSPHRASE = "bench-gateway-load-passphrase-0123456789"
CALLER = "LOADSCU"


# ------------------------------------------------------------------------------------------------ corpus


def build_corpus(work: Path, n: int) -> tuple[Path, dict[str, Path]]:
    """A medverify home whose key store trusts the instances, and ``n`` signed re-UID'd CT_small files."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    from provenance.keys import KeyAlgorithm, KeyRole, KeyStore
    from provenance.models import SignatureProfile
    from provenance.signature import sign_dataset

    home, out = work / "home", work / "files"
    out.mkdir(parents=True)
    store = KeyStore(home / "keys", lambda: PASSPHRASE.encode())
    store.init()
    store.create("acq", KeyRole.ACQUISITION, KeyAlgorithm("rsa-2048"))
    signer = store.load_signing_key("acq")
    files: dict[str, Path] = {}
    for _ in range(n):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        sign_dataset(ds, signer, profile=SignatureProfile.BASE)
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        files[str(ds.SOPInstanceUID)] = out / f"{ds.SOPInstanceUID}.dcm"
        files[str(ds.SOPInstanceUID)].write_bytes(buffer.getvalue())
    return home, files


# ------------------------------------------------------------------------------------------------ senders


def _association(port: int, called: str, share: list[str], start: float) -> list[tuple[str, int | None, float]]:
    """One association sending ``share`` (file paths) one after another; (path, status, ms) per C-STORE."""
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

    from verifier.intake.queue import set_no_delay

    ae = AE(ae_title=CALLER)
    ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1"])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    time.sleep(max(0.0, start - time.time()))  # every association of every process opens at once
    for attempt in range(5):  # a refused or failed association is tried again, as a modality would
        assoc = ae.associate("127.0.0.1", port, ae_title=called)
        if assoc.is_established:
            break
        time.sleep(0.5 * (attempt + 1))
    else:
        return [(path, None, 0.0) for path in share]
    set_no_delay(assoc)
    out: list[tuple[str, int | None, float]] = []
    try:
        for path in share:
            if not assoc.is_established:  # aborted (by the peer, or a C-STORE got no answer in 30 s)
                out.append((path, None, 0.0))
                continue
            t0 = time.perf_counter()
            rsp = assoc.send_c_store(path)
            out.append((path, int(rsp.Status) if "Status" in rsp else None, (time.perf_counter() - t0) * 1000.0))
    finally:
        if assoc.is_established:
            assoc.release()
    return out


def _sender_process(
    port: int, called: str, shares: list[list[str]], start: float
) -> list[tuple[str, int | None, float]]:
    """One process with one thread per association."""
    from pynetdicom import _config

    _config.STORE_SEND_CHUNKED_DATASET = True
    results: list[list[tuple[str, int | None, float]]] = [[] for _ in shares]

    def run(i: int) -> None:
        results[i] = _association(port, called, shares[i], start)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(shares))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r for rs in results for r in rs]


def send_load(port: int, called: str, files: list[Path], associations: int, processes: int) -> dict[str, Any]:
    shares = [[str(p) for p in files[i::associations]] for i in range(associations)]
    per_process = [shares[i::processes] for i in range(processes)]
    start = time.time() + 3.0  # time for the processes to import pynetdicom
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(processes, mp_context=context) as pool:
        futures = [pool.submit(_sender_process, port, called, s, start) for s in per_process]
        results = [r for f in futures for r in f.result()]
    wall = time.time() - start
    return {"results": results, "wall_s": wall}


# ------------------------------------------------------------------------------------------------ peers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(check: Any, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not happen within {timeout} s")
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


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDVERIFY_")}
    env.update(MEDVERIFY_HOME=str(home), MEDVERIFY_KEY_PASSPHRASE=PASSPHRASE, OMP_NUM_THREADS="1", TCP_NODELAY="1")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def _storescp(directory: Path, port: int) -> list[str]:
    path = "/usr/bin/storescp"  # pynetdicom installs a script of the same name earlier on PATH
    if not os.access(path, os.X_OK):
        raise SystemExit(f"DCMTK's storescp is needed ({path})")
    directory.mkdir(parents=True)
    return [path, "--fork", "-aet", "PACS", "+xa", "-od", str(directory), str(port)]


def _stored(directory: Path) -> int:
    return sum(1 for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))


# ------------------------------------------------------------------------------------------------ figures


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _row(label: str, load: dict[str, Any]) -> dict[str, Any]:
    times = [ms for _path, status, ms in load["results"] if status == 0]
    n = len(load["results"])
    return {
        "run": label,
        "instances": n,
        "success": len(times),
        "unanswered": sum(status is None for _p, status, _ms in load["results"]),
        "p50_ms": round(_percentile(times, 0.50), 2) if times else None,
        "p90_ms": round(_percentile(times, 0.90), 2) if times else None,
        "p99_ms": round(_percentile(times, 0.99), 2) if times else None,
        "max_ms": round(max(times), 2) if times else None,
        "mean_ms": round(statistics.fmean(times), 2) if times else None,
        "wall_s": round(load["wall_s"], 2),
        "per_s": round(n / load["wall_s"], 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--associations", type=int, default=50)
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--processes", type=int, default=5, help="sender processes (associations spread over them)")
    parser.add_argument("--checks", default="signature")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    if not 1 <= args.associations <= args.instances:
        raise SystemExit("need 1 <= --associations <= --instances")

    from verifier.audit import AuditLog

    with tempfile.TemporaryDirectory(prefix="bench-gateway-load-") as tmp:
        work = Path(tmp)
        print(f"building {args.instances} signed instances ...", flush=True)
        home, files = build_corpus(work, args.instances)
        env = _env(home)
        paths = list(files.values())
        rows = []
        for label in ("storescp", "gateway"):
            pacs_dir, pacs_port = work / f"pacs-{label}", _free_port()
            with _process(_storescp(pacs_dir, pacs_port), env, work / "storescp.log"):
                _wait(lambda p=pacs_port: _listening(p), "storescp")
                if label == "storescp":
                    print(f"{label}: {args.associations} associations ...", flush=True)
                    row = _row(label, send_load(pacs_port, "PACS", paths, args.associations, args.processes))
                    _wait(lambda d=pacs_dir, k=row["success"]: _stored(d) >= k, "storing", timeout=300)
                    rows.append(row)
                    continue
                gw_port = _free_port()
                gw_cmd = [
                    sys.executable, "-c", "from verifier.cli import app_main; app_main()", "gateway",
                    "--listen", f"127.0.0.1:{gw_port}", "--forward", f"127.0.0.1:{pacs_port}:PACS",
                    "--quarantine", str(work / "quarantine"), "--spool", str(work / "spool"),
                    "--allow", f"{CALLER}@127.0.0.1", "--checks", args.checks, "--retry-max", "1",
                    "--max-associations", str(max(64, args.associations + 4)),
                ]  # fmt: skip
                with _process(gw_cmd, env, work / "gateway.log"):
                    _wait(lambda p=gw_port: _listening(p), "medverify gateway")
                    print(f"{label}: {args.associations} associations ...", flush=True)
                    load = send_load(gw_port, "MEDVERIFY", paths, args.associations, args.processes)
                    row = _row(label, load)
                    started = time.perf_counter()
                    _wait(lambda d=pacs_dir, k=row["success"]: _stored(d) >= k, "forwarding", timeout=900)
                    row["forward_drain_s"] = round(time.perf_counter() - started, 2)
                delivered = {p.name.split(".", 1)[1] for p in pacs_dir.iterdir() if p.is_file()}
                with AuditLog.open(f"sqlite:///{home / 'audit.db'}", migrate=False) as log:
                    recorded = [r.entry.sop_instance_uid for r in log.query(channel="intake")]
                verify = subprocess.run(
                    [sys.executable, "-c", "from verifier.cli import app_main; app_main()", "audit", "verify"],
                    env=env, capture_output=True, text=True, timeout=600,
                )  # fmt: skip
                row |= {
                    "audit_records": len(recorded),
                    "records_match_instances": sorted(recorded) == sorted(files),
                    "all_delivered": delivered == set(files),
                    "audit_verify_ok": verify.returncode == 0,
                }
                rows.append(row)
    base, gw = rows
    added = {
        f"added_{q}_ms": round(gw[f"{q}_ms"] - base[f"{q}_ms"], 2)
        for q in ("p50", "p90", "p99")
        if gw[f"{q}_ms"] is not None and base[f"{q}_ms"] is not None
    }
    report = {
        "associations": args.associations,
        "instances": args.instances,
        "sender_processes": args.processes,
        "checks": args.checks,
        "machine": {
            "cpus": os.cpu_count(),
            "load_1min": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
        },
        "rows": rows,
        **added,
    }
    header = f"{'run':<9} {'ok/sent':>11} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} {'inst/s':>7}"
    print(header)
    for r in rows:
        print(f"{r['run']:<9} {r['success']:>5}/{r['instances']:<5} {r['p50_ms']:>8} {r['p90_ms']:>8} "
              f"{r['p99_ms']:>8} {r['max_ms']:>8} {r['per_s']:>7}")  # fmt: skip
    print(f"added by the gateway: p50 {added.get('added_p50_ms')} ms, p90 {added.get('added_p90_ms')} ms, "
          f"p99 {added.get('added_p99_ms')} ms")  # fmt: skip
    print(f"gateway: {gw['audit_records']} audit records (match the instances: {gw['records_match_instances']}), "
          f"all delivered: {gw['all_delivered']} (spool drained {gw['forward_drain_s']} s after the last answer), "
          f"audit verify: {'ok' if gw['audit_verify_ok'] else 'FAILED'}; "
          f"load average {report['machine']['load_1min']}")  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(f"saved {args.output}")
    ok = gw["success"] == gw["instances"] and gw["records_match_instances"] and gw["all_delivered"]
    return 0 if ok and gw["audit_verify_ok"] else 1


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))
    raise SystemExit(main())
