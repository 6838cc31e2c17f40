"""HTTP API latency and throughput: what ``medverify serve`` adds to the signature check of one file (issue #8).

The corpus is N DICOM files of 512x512 16-bit CT (pydicom's CT_small tiled, about 520 KB each), each with a fresh
SOP Instance UID and signed by an ``acquisition`` key, so every file runs the whole signature check and is
accepted. A fresh medverify home (key store, SQLite audit log, one ``verify`` token) is made in a temporary
directory; ``medverify serve`` runs on a free loopback port, and one httpx client (keep-alive) sends:

* ``verify single``: one ``POST /v1/verify`` (application/dicom) per file, timed from request to response;
* ``stow single``: one ``POST /dicomweb/studies`` (multipart/related, one instance) per file, stored (fsync'd);
* ``verify batch``: all N files in one multipart ``POST /v1/verify``; figure: files/s;
* ``in-process``: :meth:`Intake.check` per file in this interpreter, without HTTP or audit record — the
  floor the API stands on.

The first ``--warmup`` requests of each kind are not counted. Each file checked writes one audit record (SQLite,
synchronous=NORMAL) before the answer. Figures are printed and saved as JSON (``benchmarks/results/bench_api.json``).

    nice -n 10 python benchmarks/bench_api.py --n 100

``--load`` (issue #10) measures concurrent uploads instead: for each client count C (``--clients 8,32``), a fresh
server gets ``--uploads`` STOW-RS uploads (one instance each, ``--side``-pixel signed CT, all distinct) from C
threads, each with its own keep-alive connection and an ``X-Request-ID``. Figures: answers by status, uploads/s,
p50/p99 latency; checks: every upload answered 200, exactly one audit record per request id, every instance in the
store, ``medverify audit verify`` passes. Saved to ``benchmarks/results/bench_api_load.json``.

    nice -n 10 python benchmarks/bench_api.py --load --uploads 1000 --clients 8,32
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "bench_api.json"
PASSPHRASE = "bench-api-passphrase-0123456789"
SIDE = 512


def make_corpus(home: Path, n: int, side: int = SIDE) -> list[bytes]:
    import numpy as np
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    from provenance.keys import KeyAlgorithm, KeyRole, KeyStore
    from provenance.signature import sign_dataset

    store = KeyStore(home / "keys", PASSPHRASE.encode)
    store.init()
    if "scanner" not in {k.name for k in store.list()}:
        store.create("scanner", KeyRole.ACQUISITION, KeyAlgorithm.RSA_2048)
    signer = store.load_signing_key("scanner")
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    tile = base.pixel_array
    pixels = np.tile(tile, (side // tile.shape[0] + 1, side // tile.shape[1] + 1))[:side, :side]
    out = []
    for i in range(n):
        ds = copy.deepcopy(base)
        ds.Rows, ds.Columns = side, side
        ds.PixelData = np.ascontiguousarray(pixels).astype(tile.dtype).tobytes()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        sign_dataset(ds, signer)
        path = home / f"f{i}.dcm"
        ds.save_as(path)
        out.append(path.read_bytes())
    return out


def summary(ms: list[float]) -> dict[str, float]:
    ms = sorted(ms)
    return {
        "n": len(ms),
        "median_ms": round(statistics.median(ms), 2),
        "p95_ms": round(ms[min(len(ms) - 1, int(0.95 * len(ms)))], 2),
        "mean_ms": round(statistics.fmean(ms), 2),
    }


def related(parts: list[bytes], boundary: str = "bench-boundary-7f3a") -> tuple[bytes, dict[str, str]]:
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n" for p in parts)
    body += f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}


def start_server(cli: list[str], env: dict[str, str], *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [*cli, "serve", "--listen", f"127.0.0.1:{port}", *extra],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/v1/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise SystemExit("the server did not start") from None
            time.sleep(0.2)


def percentile(sorted_ms: list[float], q: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))]


def load_run(work: Path, env: dict[str, str], cli: list[str], corpus: list[bytes], clients: int) -> dict[str, Any]:
    """``len(corpus)`` STOW-RS uploads from ``clients`` threads against a fresh server, audit log and store."""
    import concurrent.futures
    import hashlib

    import httpx

    from verifier.audit import AuditLog

    db = work / f"audit-c{clients}.db"
    store = work / f"stow-c{clients}"
    run_env = {**env, "MEDVERIFY_DB_URL": f"sqlite:///{db}"}
    token = subprocess.run(
        [*cli, "tokens", "create", f"load-{clients}", "--scope", "verify"],
        env=run_env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    proc, url = start_server(cli, run_env, "--store-dir", str(store))
    local = threading.local()

    def send(i: int) -> tuple[int | None, float]:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=300)
        body, headers = related([corpus[i]])
        start = time.perf_counter()
        try:
            r = local.client.post("/dicomweb/studies", content=body, headers={**headers, "X-Request-ID": f"u{i}"})
            status: int | None = r.status_code
        except httpx.TransportError:
            status = None
        return status, (time.perf_counter() - start) * 1000

    try:
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            answers = list(pool.map(send, range(len(corpus))))
        seconds = time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    statuses: dict[str, int] = {}
    for status, _ in answers:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    ms = sorted(t for _, t in answers)
    with AuditLog.open(f"sqlite:///{db}", migrate=False) as log:
        ids = [(log.get(i).entry.details.get("intake") or {}).get("request_id") for i in range(1, log.size() + 1)]
    per_request = [x for x in ids if x is not None]
    kept = {p.name for p in store.rglob("*.dcm")}
    missing = sum(f"{hashlib.sha256(d).hexdigest()}.dcm" not in kept for d in corpus)
    verified = subprocess.run([*cli, "audit", "verify"], env=run_env, capture_output=True, text=True)
    return {
        "clients": clients,
        "uploads": len(corpus),
        "answers": statuses,
        "unanswered": statuses.get("None", 0),
        "records": len(per_request),
        "duplicate_records": len(per_request) - len(set(per_request)),
        "missing_from_store": missing,
        "audit_verify_exit": verified.returncode,
        "seconds": round(seconds, 2),
        "uploads_per_s": round(len(corpus) / seconds, 1),
        "p50_ms": round(percentile(ms, 0.50), 1),
        "p99_ms": round(percentile(ms, 0.99), 1),
        "max_ms": round(ms[-1], 1),
    }


def load_main(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="bench-api-load-"))
    home = work / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDVERIFY_")}
    env.update(MEDVERIFY_HOME=str(home), MEDVERIFY_KEY_PASSPHRASE=PASSPHRASE, OMP_NUM_THREADS="1")
    cli = [sys.executable, "-c", "from verifier.cli import app_main; app_main()"]
    try:
        print(f"making {args.uploads} signed {args.side}x{args.side} CT files ...", flush=True)
        corpus = make_corpus(home, args.uploads, side=args.side)
        rows = []
        for clients in args.clients:
            print(f"{clients} clients ...", flush=True)
            rows.append(load_run(work, env, cli, corpus, clients))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'clients':>7} {'uploads':>7} {'200':>5} {'other':>5} {'records':>7} {'dup':>4} {'missing':>7} "
          f"{'verify':>6} {'up/s':>6} {'p50 ms':>7} {'p99 ms':>7}")  # fmt: skip
    ok = True
    for r in rows:
        other = r["uploads"] - r["answers"].get("200", 0)
        print(f"{r['clients']:>7} {r['uploads']:>7} {r['answers'].get('200', 0):>5} {other:>5} {r['records']:>7} "
              f"{r['duplicate_records']:>4} {r['missing_from_store']:>7} {r['audit_verify_exit']:>6} "
              f"{r['uploads_per_s']:>6.1f} {r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f}")  # fmt: skip
        ok &= other == 0 and r["records"] == r["uploads"] and not r["duplicate_records"]
        ok &= not r["missing_from_store"] and r["audit_verify_exit"] == 0
    result = {
        "benchmark": "bench_api --load",
        "side": args.side,
        "file_bytes": len(corpus[0]),
        "rows": rows,
        "all_answered_and_recorded": ok,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
    }
    output = args.output if args.output != DEFAULT_OUTPUT else DEFAULT_OUTPUT.with_name("bench_api_load.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'every upload answered 200 and recorded once' if ok else 'FAILED: see above'}; saved {output}")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="files in the corpus")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--load", action="store_true", help="concurrent STOW-RS uploads instead (issue #10)")
    parser.add_argument("--uploads", type=int, default=1000, help="--load: uploads per client count")
    parser.add_argument(
        "--clients", type=lambda v: [int(x) for x in v.split(",")], default=[8, 32], help="--load: e.g. 8,32"
    )
    parser.add_argument("--side", type=int, default=128, help="--load: image side in pixels (128: ~40 KB files)")
    args = parser.parse_args(argv)
    if args.load:
        return load_main(args)
    import httpx

    work = Path(tempfile.mkdtemp(prefix="bench-api-"))
    home = work / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDVERIFY_")}
    env.update(MEDVERIFY_HOME=str(home), MEDVERIFY_KEY_PASSPHRASE=PASSPHRASE, OMP_NUM_THREADS="1")
    os.environ.update(MEDVERIFY_HOME=str(home), MEDVERIFY_KEY_PASSPHRASE=PASSPHRASE)
    cli = [sys.executable, "-c", "from verifier.cli import app_main; app_main()"]
    proc = None
    try:
        print(f"making {args.n} signed {SIDE}x{SIDE} CT files ...", flush=True)
        corpus = make_corpus(home, args.n)
        token = subprocess.run(
            [*cli, "tokens", "create", "bench", "--scope", "verify"],
            env=env, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip

        from verifier.intake.decide import Peer
        from verifier.settings import Settings
        from verifier.setup import open_intake

        intake = open_intake(Settings.load(env), audit=False)
        from verifier.audit import Channel

        peer = Peer(channel=Channel.API, address="bench")
        in_process = []
        for i, data in enumerate(corpus):
            start = time.perf_counter()
            decision = intake.check(data, peer)
            elapsed = (time.perf_counter() - start) * 1000
            if decision.result.verdict.status.value != "AUTHENTIC":
                raise SystemExit(f"file {i} is {decision.result.verdict.status.value}, not AUTHENTIC")
            if i >= args.warmup:
                in_process.append(elapsed)

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen(
            [*cli, "serve", "--listen", f"127.0.0.1:{port}", "--max-body-mb", "1024"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("the server did not start") from None
                time.sleep(0.2)

        auth = {"Authorization": f"Bearer {token}"}
        rows: dict[str, Any] = {"in-process check": summary(in_process)}
        with httpx.Client(base_url=url, headers=auth, timeout=120) as client:
            for name, path in (("verify single", "/v1/verify"), ("stow single", "/dicomweb/studies")):
                times = []
                for i, data in enumerate(corpus):
                    if path == "/v1/verify":
                        body, headers = data, {"Content-Type": "application/dicom"}
                    else:
                        body, headers = related([data])
                    start = time.perf_counter()
                    r = client.post(path, content=body, headers=headers)
                    elapsed = (time.perf_counter() - start) * 1000
                    if r.status_code != 200:
                        raise SystemExit(f"{name}: HTTP {r.status_code}: {r.text[:300]}")
                    if i >= args.warmup:
                        times.append(elapsed)
                rows[name] = summary(times)
            body, headers = related(corpus)
            start = time.perf_counter()
            r = client.post("/v1/verify", content=body, headers=headers)
            seconds = time.perf_counter() - start
            verdicts = {x["verdict"] for x in r.json()["results"]}
            if r.status_code != 200 or verdicts != {"AUTHENTIC"}:
                raise SystemExit(f"batch: HTTP {r.status_code}, verdicts {verdicts}")
            rows["verify batch"] = {
                "n": len(corpus),
                "seconds": round(seconds, 2),
                "files_per_s": round(len(corpus) / seconds, 1),
            }
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)

    overhead = rows["verify single"]["median_ms"] - rows["in-process check"]["median_ms"]
    result = {
        "benchmark": "bench_api",
        "n": args.n,
        "file_bytes": len(corpus[0]),
        "rows": rows,
        "api_overhead_median_ms": round(overhead, 2),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
    }
    print(f"{'scenario':<18} {'n':>5} {'median ms':>10} {'p95 ms':>8} {'files/s':>8}")
    for name, row in rows.items():
        if "median_ms" in row:
            print(f"{name:<18} {row['n']:>5} {row['median_ms']:>10.2f} {row['p95_ms']:>8.2f} {'':>8}")
        else:
            print(f"{name:<18} {row['n']:>5} {'':>10} {'':>8} {row['files_per_s']:>8.1f}")
    print(f"HTTP + token + audit record add {overhead:.2f} ms to the median check ({len(corpus[0]):,}-byte files)")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
