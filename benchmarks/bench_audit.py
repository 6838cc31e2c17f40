"""Audit log speed: appends/s with 1 and 8 writers on SQLite and PostgreSQL, and ``verify`` of 100,000 records.

Run from the repository root: ``python benchmarks/bench_audit.py [--records 100000]``. Prints the figures and
saves them to ``benchmarks/results/bench_audit.json``. Every append is a single record in its own transaction.
SQLite runs in WAL mode with ``synchronous=NORMAL`` (commits are atomic; a power cut may lose the newest
commits). PostgreSQL is a throw-away local server with default durability (fsync on, synchronous_commit on).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

from verifier.audit import AuditEntry, AuditLog, AuditStatus, Channel  # noqa: E402


class _Signer:
    def __init__(self) -> None:
        self.private_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench audit")])
        now = dt.datetime.now(dt.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.private_key.public_key())
            .serial_number(1)
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .sign(self.private_key, hashes.SHA256())
        )


def _entry(i: int) -> AuditEntry:
    return AuditEntry(
        event="verify",
        channel=Channel.SCAN,
        path=f"/archive/{i // 1000}/{i}.dcm",
        sop_instance_uid=f"1.2.826.0.1.3680043.8.498.{i}",
        file_sha256=f"{i:064x}",
        os_user="bench",
        host="bench-host",
        signature_report={"status": "UNSIGNED", "signatures": []},
        watermark_report={"present": False, "false_alarm_probability": 1e-9},
        detection_report={"synthetic_score": 0.0123, "tamper_score": 0.004, "model_tag": "cnn.resnet18"},
        model_tag="cnn.resnet18@1",
        policy_version="default-1",
        verdict="NO_EVIDENCE",
        action="flag",
        details={"i": i},
    )


def _writer(url: str, count: int, offset: int) -> float:
    entries = [_entry(offset + i) for i in range(count)]
    with AuditLog.open(url, migrate=False) as log:
        log.append(entries[0])
        start = time.perf_counter()
        for entry in entries[1:]:
            log.append(entry)
        return time.perf_counter() - start


def appends_per_second(url: str, writers: int, per_writer: int) -> float:
    AuditLog.open(url).close()
    if writers == 1:
        return (per_writer - 1) / _writer(url, per_writer, 0)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(writers) as pool:
        start = time.perf_counter()
        pool.starmap(_writer, [(url, per_writer, w * per_writer) for w in range(writers)])
        elapsed = time.perf_counter() - start
    return writers * per_writer / elapsed  # includes the process start-up: a lower bound


def verify_seconds(url: str, records: int, signer: _Signer) -> dict[str, Any]:
    with AuditLog.open(url, checkpoint_signer=signer, checkpoint_interval=1000) as log:
        batch = 5000
        for start in range(0, records, batch):
            log.append_many(_entry(i) for i in range(start, min(records, start + batch)))
        t0 = time.perf_counter()
        result = log.verify(trusted=[signer.certificate])
        elapsed = time.perf_counter() - t0
        if result.status is not AuditStatus.VALID:
            raise SystemExit(f"verify failed: {result.reason}")
        t0 = time.perf_counter()
        log.prove(records // 2)
        prove = time.perf_counter() - t0
    return {"records": records, "verify_s": round(elapsed, 2), "prove_s": round(prove, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--appends", type=int, default=3000, help="appends for the one-writer runs")
    parser.add_argument("--per-writer", type=int, default=500, help="appends per writer for the 8-writer runs")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    signer = _Signer()
    results: dict[str, Any] = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": multiprocessing.cpu_count(), "python": platform.python_version()},
        "notes": "single-record appends, each its own transaction; SQLite WAL synchronous=NORMAL; "
        "PostgreSQL fsync on; 8-writer figures include process start-up",
    }
    backends: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        n = 0

        def sqlite_url() -> str:
            nonlocal n
            n += 1
            return f"sqlite:///{tmp}/bench{n}.db"

        backends["sqlite"] = {
            "appends_per_s_1_writer": round(appends_per_second(sqlite_url(), 1, args.appends)),
            "appends_per_s_8_writers": round(appends_per_second(sqlite_url(), 8, args.per_writer)),
            **verify_seconds(sqlite_url(), args.records, signer),
        }
        print("sqlite", backends["sqlite"], flush=True)
    if not args.no_postgres:
        from fixtures_postgres import find_pg_bin, running_postgres

        if find_pg_bin() is None:
            print("postgresql: server binaries not found, skipped")
        else:
            with running_postgres(durable=True) as server:
                backends["postgresql"] = {
                    "appends_per_s_1_writer": round(appends_per_second(server.create_database(), 1, args.appends)),
                    "appends_per_s_8_writers": round(appends_per_second(server.create_database(), 8, args.per_writer)),
                    **verify_seconds(server.create_database(), args.records, signer),
                }
            print("postgresql", backends["postgresql"], flush=True)
    results["backends"] = backends
    out = ROOT / "benchmarks" / "results" / "bench_audit.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
