"""``medverify serve --workers 2`` on one PostgreSQL audit database (issue #24), with real processes.

Two uvicorn worker processes share the port, the STOW-RS store and the audit log. 40 STOW-RS uploads from 8
threads at once: every one answered 200, recorded exactly once (matched by its ``X-Request-ID``), stored whole, and
``medverify audit verify`` finds one valid Merkle log.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import re
from pathlib import Path

import pydicom
from fixtures_postgres import PostgresServer
from test_api_faults import distinct_instances, leftovers, make_home, records, serving, upload


def test_two_api_workers_share_one_postgres_log(
    tmp_path: Path, signing_keystore_template: Path, postgres_server: PostgresServer
) -> None:
    db_url = postgres_server.create_database()
    home = make_home(tmp_path, signing_keystore_template, db_url=db_url)
    store = home.path / "intake" / "stow"
    instances = distinct_instances(40)
    uids = [str(pydicom.dcmread(io.BytesIO(d)).SOPInstanceUID) for d in instances]
    with serving(home, "--workers", "2", "--checks", "signature") as srv:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            attempts = list(pool.map(lambda i: upload(srv.url, home, instances[i], i), range(len(instances))))
        log = srv.log.read_text(errors="replace")
    workers = set(re.findall(r"Started server process \[(\d+)\]", log))
    assert len(workers) >= 2, log[-3000:]  # the supervisor's two workers
    assert [a.status for a in attempts] == [200] * len(instances)
    assert [a.stored for a in attempts] == [[uid] for uid in uids]

    by_request: dict[str, list[object]] = {}
    for record in records(db_url):
        rid = (record.entry.details.get("intake") or {}).get("request_id")
        if rid is not None:
            by_request.setdefault(rid, []).append(record)
    assert sorted(by_request) == sorted(a.request_id for a in attempts)
    assert all(len(v) == 1 for v in by_request.values()), "a request was recorded twice"
    kept = sorted(p.name for p in store.rglob("*.dcm") if p.is_file())
    assert kept == sorted(f"{hashlib.sha256(d).hexdigest()}.dcm" for d in instances)
    assert not leftovers(store)
    done = home.cli("audit", "verify")
    assert done.returncode == 0, done.stdout + done.stderr
