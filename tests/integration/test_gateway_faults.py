"""The DICOM gateway under faults, load and TLS, with real processes and real peers (issue #10).

``medverify gateway`` runs as its own process and forwards to DCMTK's storescp (the PACS). Senders are pynetdicom
SCUs in threads (one association each, several instances per association, TCP_NODELAY), which see each C-STORE's
status, or DCMTK's storescu where a real DICOM TLS client is the point.

* SIGKILL: the gateway is killed with ``kill -9`` while associations are open and restarted on the same spool and
  audit database; senders send again what got no answer. The rules checked:
  every instance answered Success reaches the PACS; every instance the PACS got has a ``forward-queued`` record
  (nothing is forwarded unrecorded); an instance answered Success at its first attempt has exactly one record;
  one whose attempt was cut by the kill has at most one record per attempt (an unanswered attempt may have been
  recorded; then the PACS may get it twice, which it overwrites); no staged temporary is left; ``audit verify``
  passes.
* Load: 10 associations x 20 instances at once: all answered Success, one record each, all delivered
  (``benchmarks/bench_gateway_load.py`` does 50 x 40 and measures the added latency).
* Audit database unavailable: a real PostgreSQL server is stopped mid-run; C-STOREs get 0xA700, nothing of them is
  forwarded or left in the spool; when it is back, instances are accepted again.
* Disk full: the spool on a 2 MiB tmpfs (root only; a failure in CI without it), the PACS down so nothing drains:
  0xA700 once full, whole files only, one record per instance; accepted again when the PACS drains the spool.
* TLS: ``--tls-cert/--tls-key/--tls-ca`` with a test CA; DCMTK's storescu over TLS with a client certificate is
  accepted, plain DICOM and a client certificate from another CA are refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fixtures_faults import TLS_KEY_PASSPHRASE, Pg
from intake_peers import dcmtk_tool, free_port, sender_env, stop_process, wait_port
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from testkit import TEST_KEY_PASSPHRASE

from verifier.audit import AuditLog

pytestmark = pytest.mark.dcmtk

REPO = Path(__file__).resolve().parents[2]
CALLER = "STORESCU"


# ------------------------------------------------------------------------------------------------- helpers


def reuid_copies(n: int, out: Path) -> dict[str, Path]:
    """``n`` copies of pydicom's CT_small.dcm (a real CT image, ~40 KB), each with its own SOP Instance UID."""
    out.mkdir(parents=True, exist_ok=True)
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    files: dict[str, Path] = {}
    for _ in range(n):
        uid = generate_uid()
        template.SOPInstanceUID = template.file_meta.MediaStorageSOPInstanceUID = uid
        buffer = io.BytesIO()
        template.save_as(buffer, enforce_file_format=True)
        files[uid] = out / f"{uid}.dcm"
        files[uid].write_bytes(buffer.getvalue())
    return files


def gateway_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDVERIFY_")}
    env.update(MEDVERIFY_HOME=str(home), MEDVERIFY_KEY_PASSPHRASE=TEST_KEY_PASSPHRASE, OMP_NUM_THREADS="1", **extra)
    return env


class GatewayProcess:
    """``medverify gateway`` as a child process that a test can kill -9 and start again on the same state."""

    def __init__(self, home: Path, port: int, pacs_port: int, *args: str, spool: Path | None = None, **env: str):
        self.home, self.port, self.log = home, port, home / "gateway.log"
        self.cmd = [
            sys.executable, "-c", "from verifier.cli import app_main; app_main()", "gateway",
            "--listen", f"127.0.0.1:{port}", "--ae-title", "MEDVERIFY", "--forward", f"127.0.0.1:{pacs_port}:PACS",
            "--spool", str(spool or home / "spool"), "--quarantine", str(home / "quarantine"),
            "--allow", f"{CALLER}@127.0.0.1", "--checks", "signature", "--retry-max", "0.5", "-v", *args,
        ]  # fmt: skip
        self.env = gateway_env(home, **env)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        try:
            wait_port(self.port, timeout=120, proc=self.proc)
        except BaseException:
            print(self.log.read_text(errors="replace")[-4000:])
            raise

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()  # SIGKILL: no handler, no shutdown, no flush
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_process(self.proc)

    def __enter__(self) -> GatewayProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def pacs(directory: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """DCMTK's storescp as the PACS; ``+uf``: a second copy of an instance gets a file of its own."""
    directory.mkdir(parents=True, exist_ok=True)
    cmd = [dcmtk_tool("storescp"), "-aet", "PACS", "+xa", "+uf", "-od", str(directory), str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=sender_env())
    try:
        wait_port(port, proc=proc)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def delivered(directory: Path) -> Counter[str]:
    """SOP Instance UID -> how many complete copies the PACS holds."""
    counts: Counter[str] = Counter()
    for path in directory.iterdir() if directory.is_dir() else ():
        if path.is_file() and not path.name.startswith("."):
            counts[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)] += 1
    return counts


def wait_delivered(directory: Path, uids: set[str], timeout: float = 60.0) -> Counter[str]:
    deadline = time.monotonic() + timeout
    while True:
        time.sleep(0.3)
        got = delivered(directory)
        if uids <= set(got) or time.monotonic() > deadline:
            return got


def intake_records(db_url: str) -> list[Any]:
    with AuditLog.open(db_url, migrate=False) as log:
        return [r.entry for r in log.query(channel="intake")]


def audit_verify(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from verifier.cli import app_main; app_main()", "audit", "verify"],
                          env=env, capture_output=True, text=True, timeout=180, cwd=REPO)  # fmt: skip


def leftovers(spool: Path) -> list[Path]:
    return sorted(spool.glob(".incoming-*"))


@dataclasses.dataclass(frozen=True)
class Answer:
    uid: str
    status: int | None  # None: no answer (the association broke)
    comment: str
    ms: float


class Senders:
    """Threads, each with its own association, sending its share of the instances one C-STORE after another.

    With ``retry``, an instance that got no answer or 0xA7xx is sent again (on a new association if the old one
    broke; connection attempts repeat while nothing listens), as a modality would; without, every instance is sent
    once. ``on_answer`` sees every answer (the tests use it to time a kill)."""

    def __init__(self, port: int, shares: list[list[tuple[str, Path]]], *, retry: bool, deadline_s: float = 90.0):
        self.port, self.shares, self.retry = port, shares, retry
        self.deadline = time.monotonic() + deadline_s
        self.answers: list[Answer] = []
        self.lock = threading.Lock()
        self.successes = 0
        self.enough = threading.Event()
        self.kill_after: int | None = None

    def run(self) -> list[Answer]:
        from pynetdicom import _config

        _config.STORE_SEND_CHUNKED_DATASET = True  # send the file's bytes as they are
        try:
            threads = [threading.Thread(target=self._send, args=(share,)) for share in self.shares]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = False
        return self.answers

    def _send(self, share: list[tuple[str, Path]]) -> None:
        from pynetdicom import AE
        from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

        from verifier.intake.queue import set_no_delay

        ae = AE(ae_title=CALLER)
        ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1"])
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
        pending = deque(share)
        assoc: Any = None
        while pending and time.monotonic() < self.deadline:
            if assoc is None or not assoc.is_established:
                assoc = ae.associate("127.0.0.1", self.port, ae_title="MEDVERIFY")
                if not assoc.is_established:
                    assoc = None
                    time.sleep(0.2)
                    continue
                set_no_delay(assoc)
            uid, path = pending[0]
            start = time.perf_counter()
            try:
                rsp = assoc.send_c_store(path)
            except (RuntimeError, OSError):
                rsp = pydicom.Dataset()
            ms = (time.perf_counter() - start) * 1000.0
            code = int(rsp.Status) if "Status" in rsp else None
            answer = Answer(uid, code, str(rsp.get("ErrorComment", "") or ""), ms)
            with self.lock:
                self.answers.append(answer)
                self.successes += code == 0
                if self.kill_after is not None and self.successes >= self.kill_after:
                    self.enough.set()
            if code is None:
                assoc = None
            if self.retry and (code is None or 0xA700 <= code <= 0xA7FF):
                time.sleep(0.05)
                continue
            pending.popleft()
        if assoc is not None and assoc.is_established:
            assoc.release()


def split(files: dict[str, Path], ways: int) -> list[list[tuple[str, Path]]]:
    items = list(files.items())
    return [items[i::ways] for i in range(ways)]


@pytest.fixture
def home(signing_home: Path) -> Path:
    return signing_home


# ---------------------------------------------------------------------------------------------------- SIGKILL


def test_sigkill_with_open_associations_loses_and_duplicates_nothing(home: Path, tmp_path: Path) -> None:
    n, ways, kill_after = 120, 6, 30
    files = reuid_copies(n, tmp_path / "send")
    pacs_dir, pacs_port, gw_port = tmp_path / "pacs", free_port(), free_port()
    senders = Senders(gw_port, split(files, ways), retry=True)
    senders.kill_after = kill_after
    gateway = GatewayProcess(home, gw_port, pacs_port)
    with pacs(pacs_dir, pacs_port):
        gateway.start()
        try:
            runner = threading.Thread(target=senders.run)
            runner.start()
            assert senders.enough.wait(120), gateway.log.read_text()[-3000:]
            gateway.kill()  # kill -9 with six associations open, C-STOREs in flight
            spooled_at_kill = len(list((home / "spool").glob("*.dcm")))
            staged_at_kill = len(leftovers(home / "spool"))
            time.sleep(0.5)  # the senders find nothing listening and keep trying
            gateway.start()  # same port, spool and audit database; stale staged copies are removed first
            runner.join(180)
            assert not runner.is_alive()
            answers = senders.answers
            succeeded = {a.uid for a in answers if a.status == 0}
            got = wait_delivered(pacs_dir, succeeded)
        finally:
            gateway.stop()

    unanswered = [a for a in answers if a.status is None]
    assert unanswered, "the kill came when no C-STORE was in flight; nothing was tested"
    assert {a.status for a in answers} <= {0, None}, Counter(a.status for a in answers)
    assert succeeded == set(files), "an instance never got Success"
    assert set(got) == succeeded, "an instance answered Success did not reach the PACS"
    assert not list((home / "spool").glob("*.dcm")) and not leftovers(home / "spool")

    records = intake_records(f"sqlite:///{home / 'audit.db'}")
    per_uid = Counter(r.sop_instance_uid for r in records)
    assert all(r.details["intake"]["outcome"] == "forward-queued" for r in records)
    attempts = Counter(a.uid for a in answers)
    cut = {a.uid for a in unanswered}
    for uid in files:
        if uid in cut:  # one attempt per answer plus the cut one(s): at most one record each, at least one
            assert 1 <= per_uid[uid] <= attempts[uid], (uid, per_uid[uid], attempts[uid])
        else:
            assert per_uid[uid] == 1, (uid, per_uid[uid])  # answered at once: exactly one record
    assert all(per_uid[uid] >= 1 for uid in got)  # nothing reached the PACS without a record
    twice = sum(per_uid[u] > 1 for u in cut)
    print(
        f"\n{n} instances over {ways} associations; killed after {kill_after} Success with {len(cut)} C-STORE(s) "
        f"in flight, {spooled_at_kill} queued and {staged_at_kill} staged on disk; {twice} cut instance(s) "
        f"recorded twice (once for the unanswered attempt); {sum(got.values())} copies of {n} delivered "
        "(at least once: a forwarder killed between the PACS's answer and the spool removal sends again)"
    )
    done = audit_verify(gateway.env)
    assert done.returncode == 0, done.stdout + done.stderr


# -------------------------------------------------------------------------------------------------------- load


def test_ten_concurrent_associations_all_answered_recorded_and_delivered(home: Path, tmp_path: Path) -> None:
    ways, each = 10, 20
    files = reuid_copies(ways * each, tmp_path / "send")
    pacs_dir, pacs_port, gw_port = tmp_path / "pacs", free_port(), free_port()
    with pacs(pacs_dir, pacs_port), GatewayProcess(home, gw_port, pacs_port) as gateway:
        answers = Senders(gw_port, split(files, ways), retry=False).run()
        got = wait_delivered(pacs_dir, set(files))
    assert len(answers) == len(files)
    assert [a for a in answers if a.status != 0] == []
    # Delivery is at least once: now and then pynetdicom's reactor thread takes a C-STORE response off the queue
    # before the forwarder's send_c_store sees it ("Received unexpected C-STORE service message", pynetdicom issue
    # #435), the forwarder times out and sends the instance again; the PACS overwrites it by UID.
    assert set(got) == set(files), sorted(set(files) - set(got))
    print(f"\n{len(files)} instances, {sum(got.values())} copies delivered")
    records = intake_records(f"sqlite:///{home / 'audit.db'}")
    assert sorted(r.sop_instance_uid for r in records) == sorted(files)
    assert {r.peer_ae_title for r in records} == {CALLER}
    assert len({r.peer_address for r in records}) == ways  # one association (source port) per sender
    done = audit_verify(gateway.env)
    assert done.returncode == 0, done.stdout + done.stderr


# ------------------------------------------------------------------------------------- database unavailable


def test_audit_database_down_answers_a700_forwards_nothing_and_recovers(
    home: Path, tmp_path: Path, stoppable_postgres: tuple[Pg, str]
) -> None:
    pg, db_url = stoppable_postgres
    files = reuid_copies(9, tmp_path / "send")
    before, during, after = (dict(list(files.items())[i : i + 3]) for i in (0, 3, 6))
    pacs_dir, pacs_port, gw_port = tmp_path / "pacs", free_port(), free_port()
    with pacs(pacs_dir, pacs_port), GatewayProcess(home, gw_port, pacs_port, MEDVERIFY_DB_URL=db_url) as gateway:
        first = Senders(gw_port, split(before, 1), retry=False).run()
        pg.stop()
        outage = Senders(gw_port, split(during, 1), retry=False).run()
        time.sleep(1.5)  # the forwarder had its chance to send anything wrongly queued
        assert not list((home / "spool").glob("*.dcm")) and not leftovers(home / "spool")
        pg.start()
        last = Senders(gw_port, split(after, 1), retry=False).run()  # the gateway reconnects by itself
        got = wait_delivered(pacs_dir, set(before) | set(after))
    assert [a.status for a in first] == [0, 0, 0]
    assert [a.status for a in outage] == [0xA700] * 3, outage
    assert all("audit log unavailable" in a.comment for a in outage)
    assert [a.status for a in last] == [0, 0, 0], last
    assert set(got) == set(before) | set(after)  # nothing of the outage reached the PACS
    records = intake_records(db_url)
    assert sorted(r.sop_instance_uid for r in records) == sorted([*before, *after])
    done = audit_verify(gateway.env)
    assert done.returncode == 0, done.stdout + done.stderr


# ------------------------------------------------------------------------------------------------- disk full


def test_spool_disk_full_answers_a700_keeps_whole_files_and_recovers(
    home: Path, tmp_path: Path, small_disk: Path
) -> None:
    """The PACS is down, so the spool (on a 2 MiB tmpfs) fills; then the PACS comes back and drains it."""
    files = reuid_copies(80, tmp_path / "send")  # 80 x ~40 KB: twice what the disk holds
    spool = small_disk / "spool"
    pacs_dir, pacs_port, gw_port = tmp_path / "pacs", free_port(), free_port()
    with GatewayProcess(home, gw_port, pacs_port, spool=spool) as gateway:
        answers = Senders(gw_port, split(files, 1), retry=False).run()
        statuses = [a.status for a in answers]
        assert 0xA700 in statuses, "the disk never filled up"
        full = statuses.index(0xA700)
        assert full > 10 and statuses[full:] == [0xA700] * (len(files) - full), statuses
        assert all("spool unavailable" in a.comment for a in answers[full:]), answers[full]
        assert not leftovers(spool)  # nothing half-written stays
        queued = sorted(spool.glob("*.dcm"))
        assert len(queued) == full
        for path in queued:  # whole files only: the name carries the content's digest
            assert hashlib.sha256(path.read_bytes()).hexdigest()[:32] == path.stem.rsplit("-", 1)[1]
        with pacs(pacs_dir, pacs_port):
            got = wait_delivered(pacs_dir, {a.uid for a in answers[:full]})
            again = Senders(gw_port, split(dict([next(iter(files.items()))]), 1), retry=False).run()
            assert [a.status for a in again] == [0], again  # room again: accepted
    assert set(got) == {a.uid for a in answers[:full]}
    outcomes = [(r.sop_instance_uid, r.details["intake"]["outcome"]) for r in intake_records(
        f"sqlite:///{home / 'audit.db'}")]  # fmt: skip
    expected = [(a.uid, "forward-queued" if a.status == 0 else "refused") for a in answers]
    assert outcomes[: len(answers)] == expected
    assert len(outcomes) == len(answers) + 1
    print(f"\nspool full after {full} instances; {len(files) - full} answered 0xA700, then drained and accepted")
    done = audit_verify(gateway.env)
    assert done.returncode == 0, done.stdout + done.stderr


def test_quarantine_disk_full_answers_a700_with_one_record_each(home: Path, tmp_path: Path, small_disk: Path) -> None:
    """A site policy that quarantines unsigned images, the quarantine on a 2 MiB tmpfs: each instance is kept (with
    its record, which its verdict file names) or refused with 0xA700 and one ``refused`` record; no partial file."""
    policy = tmp_path / "policy.toml"
    policy.write_text('version = "quarantine-unsigned-1"\n[actions]\nNO_EVIDENCE = "quarantine"\n')
    files = reuid_copies(80, tmp_path / "send")
    quarantine = small_disk / "quarantine"
    gw_port = free_port()
    args = ["--policy", str(policy), "--quarantine", str(quarantine)]  # the later --quarantine wins
    with GatewayProcess(home, gw_port, free_port(), *args) as gateway:
        answers = Senders(gw_port, split(files, 1), retry=False).run()
    statuses = [a.status for a in answers]
    assert 0xA700 in statuses, "the disk never filled up"
    full = statuses.index(0xA700)
    assert full > 10 and statuses[full:] == [0xA700] * (len(files) - full), statuses
    assert all("quarantine store unavailable" in a.comment for a in answers[full:]), answers[full]
    assert not list(quarantine.glob(".incoming-*"))
    kept = sorted(quarantine.glob("*.dcm"))
    assert len(kept) == full
    records = intake_records(f"sqlite:///{home / 'audit.db'}")
    assert [(r.sop_instance_uid, r.details["intake"]["outcome"]) for r in records] == [
        (a.uid, "quarantined" if a.status == 0 else "refused") for a in answers
    ]
    ids = {r.sop_instance_uid: r for r in records}
    for path in kept:  # whole, named by content, and the verdict file names its record
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.stem
        verdict = json.loads(path.with_suffix(".json").read_text())
        assert verdict["verdict"] == "NO_EVIDENCE" and isinstance(verdict["audit_id"], int)
        assert (
            ids[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)].details["intake"]["quarantine_file"]
            == path.name
        )
    done = audit_verify(gateway.env)
    assert done.returncode == 0, done.stdout + done.stderr


# --------------------------------------------------------------------------------------------------------- TLS


def _storescu_tls(port: int, path: Path, *tls: str) -> subprocess.CompletedProcess[str]:
    cmd = [dcmtk_tool("storescu"), *tls, "-aet", CALLER, "-aec", "MEDVERIFY", "127.0.0.1", str(port), str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=sender_env())


def test_dicom_tls_with_client_certificates(home: Path, tmp_path: Path, tls_pki: Path) -> None:
    files = list(reuid_copies(4, tmp_path / "send").items())
    pacs_dir, pacs_port, gw_port = tmp_path / "pacs", free_port(), free_port()
    pki = tls_pki
    tls = ["--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"), "--tls-ca", str(pki / "ca.pem")]
    secret = {"MEDVERIFY_TLS_KEY_PASSPHRASE": TLS_KEY_PASSPHRASE}
    with pacs(pacs_dir, pacs_port), GatewayProcess(home, gw_port, pacs_port, *tls, **secret) as gateway:
        client = ["+tls", str(pki / "client.key"), str(pki / "client.pem"), "-pw", "+cf", str(pki / "ca.pem")]
        ok = _storescu_tls(gw_port, files[0][1], *client)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        plain = _storescu_tls(gw_port, files[1][1])  # plain DICOM to the TLS port
        assert plain.returncode != 0
        rogue = ["+tls", str(pki / "rogue-client.key"), str(pki / "rogue-client.pem"), "-pw",
                 "+cf", str(pki / "ca.pem")]  # fmt: skip
        refused = _storescu_tls(gw_port, files[2][1], *rogue)  # a client certificate from another CA
        assert refused.returncode != 0
        untrusting = ["+tls", str(pki / "client.key"), str(pki / "client.pem"), "-pw",
                      "+cf", str(pki / "rogue-ca.pem")]  # fmt: skip
        wrong_ca = _storescu_tls(gw_port, files[3][1], *untrusting)  # the client does not trust the server
        assert wrong_ca.returncode != 0
        got = wait_delivered(pacs_dir, {files[0][0]})
    assert set(got) == {files[0][0]}
    records = intake_records(f"sqlite:///{home / 'audit.db'}")
    assert [r.sop_instance_uid for r in records] == [files[0][0]]  # the refused connections sent nothing
    log = gateway.log.read_text(errors="replace")
    assert "(DICOM TLS, client certificates required)" in log
    assert TLS_KEY_PASSPHRASE not in log


def test_dicom_tls_misconfiguration_is_a_clear_error(home: Path, tls_pki: Path) -> None:
    base = GatewayProcess(home, free_port(), free_port())
    run = [*base.cmd, "--tls-cert", str(tls_pki / "server.pem"), "--tls-key", str(tls_pki / "server.key")]
    wrong = TLS_KEY_PASSPHRASE + "-wrong"
    cases: list[tuple[dict[str, str], str]] = [
        ({}, "MEDVERIFY_TLS_KEY_PASSPHRASE"),  # an encrypted key and no passphrase: no prompt, a clear error
        ({"MEDVERIFY_TLS_KEY_PASSPHRASE": wrong}, "passphrase"),
    ]
    for extra, expected in cases:
        done = subprocess.run(run, env={**base.env, **extra}, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stdout + done.stderr
        assert expected in done.stderr and wrong not in done.stdout + done.stderr
    done = subprocess.run([*base.cmd, "--tls-ca", str(tls_pki / "ca.pem")], env=base.env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and "--tls-ca needs --tls-cert" in done.stderr
