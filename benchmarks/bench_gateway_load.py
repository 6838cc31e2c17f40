"""Intake at hospital scale: throughput and added latency under many associations (issues #10, #24).

N instances (pydicom's CT_small, 128x128 CT, each with a fresh SOP Instance UID and signed by an acquisition key, so
that every one runs the whole signature check and is accepted) are split over A concurrent associations. Senders
are pynetdicom SCUs, one thread per association, spread over S processes (TCP_NODELAY, the file's bytes sent as
they are); each times every C-STORE from request to response. The senders run as a subprocess of this script
(``send``), so that they can be pinned to a core (``--pin``) or join Orthanc's network namespace.

Peers, measured in the same run, at every association count of ``--associations`` (default 1, 20 and 50):

* ``storescp``: straight to DCMTK's storescp (``--fork``: one process per association), the baseline;
* ``orthanc+plugin``: Orthanc with the script of ``medverify orthanc install-plugin`` (in a private network
  namespace, as in bench_intake.py: Orthanc's DICOM port listens on every address; root only; ``--no-orthanc``
  skips it);
* ``gateway x1``: ``medverify gateway`` (check, audit record, fsync'd spool, answer), forwarding to a storescp;
* ``gateway xN``: ``medverify gateway --workers N`` (``--workers``, default 2);
* ``baseline x1``, ``baseline xN``: with ``--baseline PATH``, the same gateways run from the code of another
  checkout (a worktree of main), so that a change is measured against what it changes in one run, on one load.

The gateways record into ``--db``: ``sqlite`` (a file per run) or ``postgresql`` (a durable throw-away server,
fsync on, started here from the PostgreSQL binaries as tests/fixtures_postgres.py does). Checked, not just timed,
for every gateway run: every C-STORE answered Success, one ``intake`` audit record per instance, every instance
delivered to the PACS, ``medverify audit verify`` passes. The added latency of a row is its percentile minus the
storescp row's at the same association count. A C-STORE without an answer within 30 s makes pynetdicom abort the
association; its remaining instances count as unanswered (seen with storescp under load, pynetdicom issue #435).

With A associations each waiting for its answer, a round trip is about A / throughput once the peer is saturated
(Little's law): at 20 or 50 associations the percentiles measure queueing and ``inst/s`` is the capacity.
``--pin`` runs the senders on CPU 0 and the peer (and its PACS) on CPU 1 (taskset), so that the figures say what one
core of checking gives when the senders do not compete with it. ``--profile`` samples the one-process gateway at
the largest association count with py-spy (every thread; ``pip install py-spy``), saves the collapsed stacks
(``benchmarks/results/bench_gateway_load.pyspy.txt``) and prints where the time went. The machine's load average
is saved with the figures: on a shared machine they are noisy. Figures are printed and saved as JSON
(``benchmarks/results/bench_gateway_load.json``).

    nice -n 10 python benchmarks/bench_gateway_load.py                             # 1/20/50 associations, 2,000
    nice -n 10 python benchmarks/bench_gateway_load.py --associations 20 --instances 600 --db postgresql
    nice -n 10 python benchmarks/bench_gateway_load.py --associations 20 --instances 600 --pin --no-orthanc
    nice -n 10 python benchmarks/bench_gateway_load.py --associations 1,20 --instances 600 --baseline ../main-copy
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
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from _shared import private_network

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "bench_gateway_load.json"
PASSPHRASE = "bench-gateway-load-passphrase-0123456789"
CALLER = "LOADSCU"
PYTHON_PLUGIN = "/usr/share/orthanc/plugins/libOrthancPython.so"
TARGET_PER_S_20 = 150.0
TARGET_ADDED_P50_1_MS = 10.0


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
    from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

    from verifier.intake._reactor import requestor_ae
    from verifier.intake.queue import set_no_delay

    # As the gateway's forwarder: the association blocks instead of polling every millisecond, and does not lose
    # responses to pynetdicom issue #435 (which left whole runs with unanswered C-STOREs before).
    ae = requestor_ae(CALLER)
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
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _env(home: Path, db_url: str | None = None, code: Path = REPO_ROOT) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDVERIFY_")}
    env.update(MEDVERIFY_HOME=str(home), MEDVERIFY_KEY_PASSPHRASE=PASSPHRASE, OMP_NUM_THREADS="1", TCP_NODELAY="1")
    if db_url:
        env["MEDVERIFY_DB_URL"] = db_url
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code), env.get("PYTHONPATH", "")]))
    return env


def _storescp(directory: Path, port: int) -> list[str]:
    path = "/usr/bin/storescp"  # pynetdicom installs a script of the same name earlier on PATH
    if not os.access(path, os.X_OK):
        raise SystemExit(f"DCMTK's storescp is needed ({path})")
    directory.mkdir(parents=True)
    return [path, "--fork", "-aet", "PACS", "+xa", "-od", str(directory), str(port)]


def _stored(directory: Path) -> int:
    return sum(1 for p in directory.rglob("*") if p.is_file() and not p.name.startswith("."))


def _pin(cpu: int | None) -> list[str]:
    return ["taskset", "-c", str(cpu)] if cpu is not None else []


def _send(port: int, called: str, files: Path, associations: int, processes: int, env: dict[str, str],
          prefix: list[str]) -> dict[str, Any]:  # fmt: skip
    cmd = [*prefix, sys.executable, __file__, "send", "--port", str(port), "--called", called, "--files", str(files),
           "--associations", str(associations), "--processes", str(min(processes, associations))]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"sender failed: {done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@contextmanager
def _postgres() -> Iterator[Any]:
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from fixtures_postgres import running_postgres

    with running_postgres(durable=True) as server:
        yield server


def _gateway_cmd(work: Path, label: str, port: int, pacs_port: int, checks: str, associations: int,
                 workers: int) -> list[str]:  # fmt: skip
    return [
        sys.executable, "-c", "from verifier.cli import app_main; app_main()", "gateway",
        "--listen", f"127.0.0.1:{port}", "--forward", f"127.0.0.1:{pacs_port}:PACS",
        "--quarantine", str(work / f"quarantine-{label}"), "--spool", str(work / f"spool-{label}"),
        "--allow", f"{CALLER}@127.0.0.1", "--checks", checks, "--retry-max", "1",
        "--max-associations", str(max(64, associations + 4)), "--workers", str(workers),
    ]  # fmt: skip


@contextmanager
def _sampling(pid: int, out: Path) -> Iterator[None]:
    """py-spy samples every thread of process ``pid`` (where the gateway works: one thread per association) while
    the block runs; the collapsed stacks go to ``out``."""
    cmd = ["py-spy", "record", "--pid", str(pid), "--rate", "50", "--format", "raw", "--output", str(out),
           "--nonblocking"]  # fmt: skip
    spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        yield
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            spy.wait(timeout=60)
        except subprocess.TimeoutExpired:
            spy.kill()


#: Where the gateway's time goes, by the innermost frame of ours or of a library that names the work.
_PROFILE_PARTS = (
    ("signature check (RSA verify, MAC over the data set)", ("provenance/signature", "provenance/",
                                                             "cryptography/")),
    ("audit record (SQLAlchemy, psycopg/sqlite, Merkle hashing)", ("verifier/audit/", "sqlalchemy/", "psycopg/",
                                                                    "sqlite3/")),
    ("spool and quarantine (write, fsync, rename)", ("verifier/intake/queue.py",)),
    ("parsing the DICOM data set (pydicom)", ("pydicom/",)),
    ("DICOM network (pynetdicom: PDUs, DIMSE, association threads)", ("pynetdicom/",)),
    ("other medverify (checker, policy, result)", ("verifier/", "detectors/")),
)


def _summarise_profile(path: Path) -> dict[str, Any]:
    """Samples per part (a stack counts for the first part, in the order above, that any of its frames names)."""
    totals: dict[str, int] = {name: 0 for name, _ in _PROFILE_PARTS}
    totals["other (interpreter, threads, sockets)"] = 0
    leaves: dict[str, int] = {}
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = stack.split(";")
        part = next((name for name, keys in _PROFILE_PARTS if any(k in f for f in frames for k in keys)), None)
        totals[part or "other (interpreter, threads, sockets)"] += n
        leaf = frames[-1].split(" (")[0] + " " + frames[-1].rsplit("/", 1)[-1].rstrip(")")
        leaves[leaf] = leaves.get(leaf, 0) + n
    top = sorted(leaves.items(), key=lambda kv: -kv[1])[:12]
    return {
        "samples": samples,
        "parts_percent": {k: round(100.0 * v / max(samples, 1), 1) for k, v in totals.items()},
        "top_leaves_percent": {k: round(100.0 * v / max(samples, 1), 1) for k, v in top},
    }


def _check_gateway(row: dict[str, Any], db_url: str, env: dict[str, str], uids: set[str], pacs_dir: Path) -> None:
    import pydicom

    from verifier.audit import AuditLog

    with AuditLog.open(db_url, migrate=False) as log:
        recorded = [r.entry.sop_instance_uid for r in log.query(channel="intake")]
        size = log.size()
    delivered = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                 for p in pacs_dir.rglob("*") if p.is_file() and not p.name.startswith(".")}  # fmt: skip
    verify = subprocess.run(
        [sys.executable, "-c", "from verifier.cli import app_main; app_main()", "audit", "verify"],
        env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    row |= {
        "audit_records": len(recorded),
        "records_once_each": sorted(recorded) == sorted(uids),
        "all_delivered": delivered == uids,
        "audit_verify_ok": verify.returncode == 0,
        "log_size": size,
    }


def run_level(args: argparse.Namespace, work: Path, home: Path, files: Path, uids: set[str], associations: int,
              pg: Any) -> list[dict[str, Any]]:  # fmt: skip
    """Every peer at one association count."""
    rows: list[dict[str, Any]] = []
    sender_pin, server_pin = _pin(0 if args.pin else None), _pin(1 if args.pin else None)
    peers = ["storescp", *(["orthanc+plugin"] if not args.no_orthanc else []), "gateway x1"]
    peers += ["baseline x1"] if args.baseline else []
    peers += [f"gateway x{args.workers}"] if args.workers > 1 else []
    peers += [f"baseline x{args.workers}"] if args.workers > 1 and args.baseline else []
    for label in peers:
        tag = f"{label.replace(' ', '-').replace('+', '-')}-{associations}"
        pacs_dir, pacs_port = work / f"pacs-{tag}", _free_port()
        print(f"{label}: {associations} association(s), {len(uids)} instances ...", flush=True)
        with _process([*server_pin, *_storescp(pacs_dir, pacs_port)], _env(home), work / "storescp.log"):
            _wait(lambda p=pacs_port: _listening(p), "storescp")
            if label == "storescp":
                load = _send(pacs_port, "PACS", files, associations, args.processes, _env(home), sender_pin)
                row = _row(label, associations, load)
                _wait(lambda d=pacs_dir, k=row["success"]: _stored(d) >= k, "storing", timeout=300)
            elif label == "orthanc+plugin":
                row = _orthanc_row(args, work / f"orthanc-{tag}", home, files, associations, sender_pin, server_pin)
            else:
                workers = int(label.split("x")[1])
                db_url = pg.create_database() if pg is not None else f"sqlite:///{work / f'audit-{tag}.db'}"
                env = _env(home, db_url, args.baseline if label.startswith("baseline") else REPO_ROOT)
                gw_port = _free_port()
                cmd = [*server_pin, *_gateway_cmd(work, tag, gw_port, pacs_port, args.checks, associations, workers)]
                prof = None
                if args.profile and label == "gateway x1" and associations == max(args.associations):
                    prof = args.output.with_suffix(".pyspy.txt")
                with _process(cmd, env, work / f"gateway-{tag}.log") as proc:
                    _wait(lambda p=gw_port: _listening(p), "medverify gateway")
                    time.sleep(3.0 if workers > 1 else 0.5)  # every worker listening and warmed up
                    with _sampling(proc.pid, prof) if prof is not None else nullcontext():
                        load = _send(gw_port, "MEDVERIFY", files, associations, args.processes, _env(home, db_url),
                                     sender_pin)  # fmt: skip
                    row = _row(label, associations, load)
                    started = time.perf_counter()
                    _wait(lambda d=pacs_dir, k=row["success"]: _stored(d) >= k, "forwarding", timeout=900)
                    row["forward_drain_s"] = round(time.perf_counter() - started, 2)
                log_text = (work / f"gateway-{tag}.log").read_text(errors="replace")
                row["group_commit"] = [line.split("; ")[1] for line in log_text.splitlines()
                                       if "gateway stopped:" in line and "transactions" in line]  # fmt: skip
                _check_gateway(row, db_url, env, uids, pacs_dir)
                if prof is not None and prof.exists():
                    row["profile"] = {"file": str(prof), **_summarise_profile(prof)}
        rows.append(row)
    base = rows[0]
    for row in rows[1:]:
        for q in ("p50", "p90", "p99"):
            if row[f"{q}_ms"] is not None and base[f"{q}_ms"] is not None:
                row[f"added_{q}_ms"] = round(row[f"{q}_ms"] - base[f"{q}_ms"], 2)
    return rows


def _orthanc_row(args: argparse.Namespace, cfg_dir: Path, home: Path, files: Path, associations: int,
                 sender_pin: list[str], server_pin: list[str]) -> dict[str, Any]:  # fmt: skip
    if not (Path("/usr/sbin/Orthanc").exists() and Path(PYTHON_PLUGIN).exists()):
        raise SystemExit("Orthanc and orthanc-python are needed (apt-get install orthanc orthanc-python)")
    with private_network() as ns:
        cfg_dir.mkdir()
        config = cfg_dir / "orthanc.json"
        config.write_text(json.dumps({
            "Name": "bench", "StorageDirectory": str(cfg_dir / "db"), "IndexDirectory": str(cfg_dir / "db"),
            "HttpPort": 8042, "DicomPort": 4242, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "DicomCheckCalledAet": False, "Plugins": [],
            "DicomThreadsCount": max(4, min(associations, 32)),
        }))  # fmt: skip
        env = _env(home, f"sqlite:///{cfg_dir / 'audit.db'}")
        subprocess.run(
            [sys.executable, "-c", "from verifier.cli import app_main; app_main()", "orthanc", "install-plugin",
             "--config", str(config), "--checks", args.checks, "--quarantine", str(cfg_dir / "quarantine")],
            env=env, check=True, capture_output=True,
        )  # fmt: skip
        log = cfg_dir / "orthanc.log"
        with _process([*server_pin, *ns, "Orthanc", str(config)], env, log):
            _wait(lambda: "Orthanc has started" in log.read_text(errors="replace"), "Orthanc")
            if "medverify: checking every upload" not in log.read_text(errors="replace"):
                raise SystemExit(f"the plugin did not start; see {log}")
            load = _send(4242, "ORTHANC", files, associations, args.processes, env, [*sender_pin, *ns])
        row = _row("orthanc+plugin", associations, load)
        from verifier.audit import AuditLog

        with AuditLog.open(f"sqlite:///{cfg_dir / 'audit.db'}", migrate=False) as audit:
            row["audit_records"] = sum(1 for _ in audit.query(channel="intake"))
        return row


# ------------------------------------------------------------------------------------------------ figures


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _row(label: str, associations: int, load: dict[str, Any]) -> dict[str, Any]:
    times = [ms for _path, status, ms in load["results"] if status == 0]
    n = len(load["results"])
    return {
        "run": label,
        "associations": associations,
        "instances": n,
        "success": len(times),
        "unanswered": sum(status is None for _p, status, _ms in load["results"]),
        "p50_ms": round(_percentile(times, 0.50), 2) if times else None,
        "p90_ms": round(_percentile(times, 0.90), 2) if times else None,
        "p99_ms": round(_percentile(times, 0.99), 2) if times else None,
        "max_ms": round(max(times), 2) if times else None,
        "mean_ms": round(statistics.fmean(times), 2) if times else None,
        "wall_s": round(load["wall_s"], 2),
        "per_s": round(len(times) / load["wall_s"], 1),
    }


def _print_profile(row: dict[str, Any]) -> None:
    profile = row["profile"]
    print(f"\nwhere the one-process gateway's CPU time went at {row['associations']} associations "
          f"(py-spy, {profile['samples']} samples of busy threads, {profile['file']}):")  # fmt: skip
    for name, pct in profile["parts_percent"].items():
        print(f"  {pct:5.1f} %  {name}")
    print("  busiest innermost functions:")
    for name, pct in profile["top_leaves_percent"].items():
        print(f"  {pct:5.1f} %  {name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    s = sub.add_parser("send", help="(internal) the timed senders")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--called", required=True)
    s.add_argument("--files", type=Path, required=True)
    s.add_argument("--associations", type=int, required=True)
    s.add_argument("--processes", type=int, required=True)
    parser.add_argument("--associations", default="1,20,50", help="comma-separated association counts")
    parser.add_argument("--instances", type=int, default=2000, help="instances sent at each association count")
    parser.add_argument("--processes", type=int, default=5, help="sender processes (associations spread over them)")
    parser.add_argument("--workers", type=int, default=2, help="the N of the 'gateway xN' row (1: no such row)")
    parser.add_argument("--checks", default="signature")
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite", help="the gateways' audit database")
    parser.add_argument("--no-orthanc", action="store_true", help="skip the Orthanc rows")
    parser.add_argument("--pin", action="store_true", help="senders on CPU 0, the peer on CPU 1 (taskset)")
    parser.add_argument("--profile", action="store_true", help="cProfile the one-process gateway at the top count")
    parser.add_argument("--baseline", type=Path, help="also run the gateway rows with the code of this checkout "
                        "(e.g. a worktree of main), as 'baseline xN', in the same run")  # fmt: skip
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    if args.command == "send":
        paths = sorted(args.files.glob("*.dcm"))
        print(json.dumps(send_load(args.port, args.called, paths, args.associations, args.processes)))
        return 0
    args.associations = [int(a) for a in str(args.associations).split(",")]
    if not all(1 <= a <= args.instances for a in args.associations):
        raise SystemExit("need 1 <= every --associations <= --instances")

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-gateway-load-") as tmp:
        work = Path(tmp)
        print(f"building {args.instances} signed instances ...", flush=True)
        home, files = build_corpus(work, args.instances)
        files_dir = next(iter(files.values())).parent
        rows: list[dict[str, Any]] = []
        with _postgres() if args.db == "postgresql" else nullcontext() as pg:
            for associations in args.associations:
                rows += run_level(args, work, home, files_dir, set(files), associations, pg)
    report = {
        "instances": args.instances,
        "sender_processes": args.processes,
        "checks": args.checks,
        "db": args.db,
        "workers": args.workers,
        "pinned": args.pin,
        "baseline": str(args.baseline) if args.baseline else None,
        "targets": {"per_s_at_20": TARGET_PER_S_20, "added_p50_at_1_ms": TARGET_ADDED_P50_1_MS},
        "machine": {
            "cpus": os.cpu_count(),
            "load_1min_before": round(load_before, 2),
            "load_1min_after": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
        },
        "rows": rows,
    }
    header = (f"{'run':<15} {'assoc':>5} {'ok/sent':>11} {'inst/s':>7} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'+p50 ms':>8} {'+p99 ms':>8}  checked")  # fmt: skip
    print(header)
    ok = True
    for r in rows:
        checked = ""
        if "records_once_each" in r:
            good = r["success"] == r["instances"] and r["records_once_each"] and r["all_delivered"]
            good = good and r["audit_verify_ok"]
            ok &= good
            checked = f"{'ok' if good else 'FAILED'} ({r['audit_records']} records, {'; '.join(r['group_commit'])})"
        print(f"{r['run']:<15} {r['associations']:>5} {r['success']:>5}/{r['instances']:<5} {r['per_s']:>7} "
              f"{r['p50_ms']!s:>8} {r['p99_ms']!s:>8} {r.get('added_p50_ms', '')!s:>8} "
              f"{r.get('added_p99_ms', '')!s:>8}  {checked}")  # fmt: skip
    print(f"load average {report['machine']['load_1min_before']} before, {report['machine']['load_1min_after']} "
          f"after, on {os.cpu_count()} CPUs; pinned: {args.pin}; audit database: {args.db}")  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(f"saved {args.output}")
    for r in rows:
        if r.get("profile"):
            _print_profile(r)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))
    raise SystemExit(main())
