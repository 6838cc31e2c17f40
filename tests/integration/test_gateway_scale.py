"""More than one gateway process on one audit log (issue #24), with real processes and a real PostgreSQL.

``medverify gateway --workers 2``: a supervisor and two worker processes listening on one port (SO_REUSEPORT),
each with its own spool, both appending to one PostgreSQL audit database. 20 associations send at once (pynetdicom
SCUs in threads, each retrying what got no answer, as a modality does), and one worker is killed with ``kill -9``
halfway: the supervisor starts it again on its spool. Checked: every instance answered Success, delivered to the
PACS (DCMTK's storescp), recorded once (or, for a C-STORE cut by the kill, at most once per attempt, as in
test_gateway_faults.py), both workers took instances, and ``medverify audit verify`` finds one valid Merkle log.

The issue asks for 2,000 instances from 20 associations; this test sends 200 (20 x 10) to stay fast in CI on two
shared cores. ``benchmarks/bench_gateway_load.py --workers 2 --db postgresql`` runs the full count.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from fixtures_postgres import PostgresServer
from intake_peers import free_port
from test_gateway_faults import (
    GatewayProcess,
    Senders,
    audit_verify,
    intake_records,
    leftovers,
    pacs,
    reuid_copies,
    split,
    wait_delivered,
)

pytestmark = pytest.mark.dcmtk

ASSOCIATIONS, EACH = 20, 10


def _wait_log(log: Path, pattern: str, count: int, timeout: float = 120.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.findall(pattern, log.read_text(errors="replace"))
        if len(found) >= count:
            return found
        time.sleep(0.2)
    pytest.fail(f"{pattern!r} not seen {count} time(s) in the gateway log:\n{log.read_text()[-3000:]}")


@pytest.fixture
def home(signing_home: Path) -> Path:
    return signing_home


def test_two_gateway_processes_one_postgres_log_survive_a_worker_killed(
    home: Path, tmp_path: Path, postgres_server: PostgresServer
) -> None:
    db_url = postgres_server.create_database()
    files = reuid_copies(ASSOCIATIONS * EACH, tmp_path / "send")
    pacs_dir, pacs_port, gw_port = tmp_path / "pacs", free_port(), free_port()
    gateway = GatewayProcess(home, gw_port, pacs_port, "--workers", "2", MEDVERIFY_DB_URL=db_url)
    senders = Senders(gw_port, split(files, ASSOCIATIONS), retry=True, deadline_s=240)
    senders.kill_after = len(files) // 3
    with pacs(pacs_dir, pacs_port):
        gateway.start()
        try:
            _wait_log(gateway.log, r"worker \d listening", 2)
            pids = _wait_log(gateway.log, r"pids (\d+), (\d+)", 1)[0]
            runner = threading.Thread(target=senders.run)
            runner.start()
            assert senders.enough.wait(180), gateway.log.read_text()[-3000:]
            os.kill(int(pids[1]), signal.SIGKILL)  # worker 2, mid-association; the supervisor restarts it
            runner.join(240)
            assert not runner.is_alive()
            answers = senders.answers
            succeeded = {a.uid for a in answers if a.status == 0}
            got = wait_delivered(pacs_dir, succeeded, timeout=120)
            assert gateway.proc is not None
            gateway.proc.send_signal(signal.SIGHUP)  # the supervisor passes it on: both workers reload
            _wait_log(gateway.log, r"reloaded trust and site policy \(SIGHUP\)", 2)
        finally:
            gateway.stop()
    log = gateway.log.read_text(errors="replace")
    assert "exited with status -9; starting it again" in log, log[-3000:]

    assert succeeded == set(files), f"{len(set(files) - succeeded)} instance(s) never got Success"
    assert {a.status for a in answers} <= {0, None}, Counter(a.status for a in answers)
    assert set(got) == succeeded, "an instance answered Success did not reach the PACS"
    spools = [home / "spool" / "worker-1", home / "spool" / "worker-2"]
    assert all(not list(s.glob("*.dcm")) and not leftovers(s) for s in spools)

    records = [r for r in intake_records(db_url) if r.event != "reload"]
    reloads = [r for r in intake_records(db_url) if r.event == "reload"]
    assert sorted(r.details["reload"]["trigger"] for r in reloads) == ["SIGHUP", "SIGHUP"], reloads
    per_uid = Counter(r.sop_instance_uid for r in records)
    attempts = Counter(a.uid for a in answers)
    cut = {a.uid for a in answers if a.status is None}
    for uid in files:
        if uid in cut:
            assert 1 <= per_uid[uid] <= attempts[uid], (uid, per_uid[uid], attempts[uid])
        else:
            assert per_uid[uid] == 1, (uid, per_uid[uid])
    accepted = Counter(r.details["intake"]["worker"] for r in records)  # both processes took instances
    assert set(accepted) == {1, 2}, accepted
    print(
        f"\n{len(files)} instances over {ASSOCIATIONS} associations to 2 workers (accepted {dict(accepted)}); worker 2 "
        f"killed with {len(cut)} C-STORE(s) in flight; {len(records)} records; {sum(got.values())} copies delivered"
    )
    done = audit_verify(gateway.env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(records) + len(reloads)} records" in done.stdout + done.stderr
