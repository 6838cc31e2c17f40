"""The HTTP API under faults and over TLS, with real processes and real peers (issue #10).

* TLS: ``medverify serve --tls-cert/--tls-key [--tls-client-ca]`` with a test CA made by the openssl CLI; the
  server key is encrypted and its passphrase comes from the environment.
* SIGKILL: the server is killed with ``kill -9`` while threads upload, restarted, and the unanswered uploads sent
  again; every answered upload has exactly one record (matched by its ``X-Request-ID``), no request id has two,
  every instance is in the store, no temporary is left, and ``medverify audit verify`` passes.
* Database unavailable: the audit database is a real PostgreSQL server that is stopped and started again.
* Disk full: the store and the SQLite audit database on a 2 MiB tmpfs (root only; a failure in CI if not root).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import io
import json
import os
import re
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from fixtures_faults import TLS_KEY_PASSPHRASE, Pg
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from testkit import TEST_KEY_PASSPHRASE, free_port

from verifier.audit import AuditLog

REPO = Path(__file__).resolve().parents[2]
REFERENCED, FAILED, SOP_INSTANCE, FAILURE_REASON = "00081199", "00081198", "00081155", "00081197"


@dataclass
class Home:
    path: Path
    env: dict[str, str]
    tokens: dict[str, str] = field(default_factory=dict)  # scope -> token

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", "from verifier.cli import app_main; app_main()", *args],
            env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=180, cwd=REPO,
        )  # fmt: skip

    def auth(self, scope: str = "verify") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[scope]}"}


def make_home(root: Path, keys: Path, *, db_url: str | None = None, scopes: tuple[str, ...] = ("verify",)) -> Home:
    import shutil

    path = root / "home"
    path.mkdir(parents=True)
    shutil.copytree(keys, path / "keys")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDVERIFY_")}
    env.update(MEDVERIFY_HOME=str(path), MEDVERIFY_KEY_PASSPHRASE=TEST_KEY_PASSPHRASE, OMP_NUM_THREADS="1")
    if db_url is not None:
        env["MEDVERIFY_DB_URL"] = db_url
    home = Home(path=path, env=env)
    for scope in scopes:
        done = home.cli("tokens", "create", f"t-{scope}", "--scope", scope, "--format", "json")
        assert done.returncode == 0, done.stderr
        home.tokens[scope] = json.loads(done.stdout)["token"]
    return home


@dataclass
class Served:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path


@contextlib.contextmanager
def serving(
    home: Home, *args: str, scheme: str = "http", probe: dict[str, Any] | None = None, env: dict[str, str] | None = None
) -> Iterator[Served]:
    """``medverify serve`` on a free loopback port until the block ends (or until the test kills it)."""
    port = free_port()
    log_path = home.path / f"serve-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from verifier.cli import app_main; app_main()", "serve", "--listen",
             f"127.0.0.1:{port}", *args],
            env={**home.env, **(env or {})}, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
        )  # fmt: skip
    served = Served(url=f"{scheme}://127.0.0.1:{port}", proc=proc, log=log_path)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited ({proc.returncode}): {log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{served.url}/v1/health", timeout=2, **(probe or {})).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        yield served
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    text = log_path.read_text(errors="replace")
    for token in home.tokens.values():
        assert token not in text
    assert TLS_KEY_PASSPHRASE not in text and TEST_KEY_PASSPHRASE not in text


def related(parts: list[bytes], boundary: str = "mv-fault-boundary") -> tuple[bytes, dict[str, str]]:
    body = (
        b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n" for p in parts)
        + f"--{boundary}--\r\n".encode()
    )
    return body, {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}


def distinct_instances(n: int) -> list[bytes]:
    """``n`` copies of the real CT_small.dcm, each with its own SOP Instance UID (so its own SHA-256)."""
    out = []
    for _ in range(n):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        uid = generate_uid()
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        buf = io.BytesIO()
        ds.save_as(buf)
        out.append(buf.getvalue())
    return out


def records(db_url: str) -> list[Any]:
    with AuditLog.open(db_url, migrate=False) as log:
        return [log.get(i) for i in range(1, log.size() + 1)]


def leftovers(store: Path) -> list[Path]:
    return [p for p in store.rglob("*") if p.is_file() and p.name.startswith(".incoming-")]


# --------------------------------------------------------------------------------------------------------- TLS


def client_context(pki: Path, cert: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if cert is not None:
        context.load_cert_chain(pki / f"{cert}.pem", pki / f"{cert}.key")
    return context


@pytest.fixture(scope="module")
def tls_home(tmp_path_factory: pytest.TempPathFactory, signing_keystore_template: Path) -> Home:
    return make_home(tmp_path_factory.mktemp("api-tls"), signing_keystore_template)


def test_https_with_the_test_ca_and_an_encrypted_key(tls_home: Home, tls_pki: Path) -> None:
    ctx = client_context(tls_pki)
    tls = ["--tls-cert", str(tls_pki / "server.pem"), "--tls-key", str(tls_pki / "server.key")]
    secret = {"MEDVERIFY_TLS_KEY_PASSPHRASE": TLS_KEY_PASSPHRASE}
    with serving(tls_home, *tls, scheme="https", probe={"verify": ctx}, env=secret) as srv:
        body = get_testdata_file("CT_small.dcm", read=False)
        r = httpx.post(f"{srv.url}/v1/verify", content=Path(str(body)).read_bytes(), timeout=60, verify=ctx,
                       headers={**tls_home.auth(), "Content-Type": "application/dicom"})  # fmt: skip
        assert r.status_code == 200, r.text
        assert r.json()["results"][0]["audit_id"] is not None
        plain = srv.url.replace("https://", "http://")
        with pytest.raises(httpx.TransportError):  # plain HTTP to a TLS port: no answer
            httpx.get(f"{plain}/v1/health", timeout=5)
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):  # a client without the CA
            httpx.get(f"{srv.url}/v1/health", timeout=5)
        assert "https://127.0.0.1" in srv.log.read_text()


def test_client_certificate_required_with_tls_client_ca(tls_home: Home, tls_pki: Path) -> None:
    ctx = client_context(tls_pki, "client")
    tls = ["--tls-cert", str(tls_pki / "server.pem"), "--tls-key", str(tls_pki / "server.key"),
           "--tls-client-ca", str(tls_pki / "ca.pem")]  # fmt: skip
    pass_file = tls_home.path / "tls-pass"
    pass_file.write_text(TLS_KEY_PASSPHRASE + "\n")
    pass_file.chmod(0o600)
    secret = {"MEDVERIFY_TLS_KEY_PASSPHRASE_FILE": str(pass_file)}
    with serving(tls_home, *tls, scheme="https", probe={"verify": ctx}, env=secret) as srv:
        r = httpx.get(f"{srv.url}/v1/audit/1", headers=tls_home.auth(), timeout=10, verify=ctx)
        assert r.status_code == 403  # TLS admitted the client; the token's scope decides the rest
        for refused in (client_context(tls_pki), client_context(tls_pki, "rogue-client")):
            with pytest.raises(httpx.TransportError):  # no client certificate, or one from another CA
                httpx.get(f"{srv.url}/v1/health", timeout=5, verify=refused)


def test_tls_misconfiguration_is_a_clear_error_that_never_shows_the_passphrase(tls_home: Home, tls_pki: Path) -> None:
    tls = ["serve", "--listen", f"127.0.0.1:{free_port()}", "--tls-cert", str(tls_pki / "server.pem"),
           "--tls-key", str(tls_pki / "server.key")]  # fmt: skip
    wrong = TLS_KEY_PASSPHRASE + "-wrong"
    for env, expected in (
        ({}, "MEDVERIFY_TLS_KEY_PASSPHRASE"),  # encrypted key, no passphrase: no prompt, a clear error
        ({"MEDVERIFY_TLS_KEY_PASSPHRASE": wrong}, "wrong passphrase"),
    ):
        done = tls_home.cli(*tls, env=env)
        assert done.returncode == 2, done.stderr
        assert expected in done.stderr
        assert wrong not in done.stderr + done.stdout and TLS_KEY_PASSPHRASE not in done.stderr + done.stdout
    done = tls_home.cli("serve", "--tls-client-ca", str(tls_pki / "ca.pem"))
    assert done.returncode == 2 and "--tls-client-ca needs --tls-cert" in done.stderr


# ---------------------------------------------------------------------------------------------------- SIGKILL


@dataclass
class Attempt:
    index: int  # which instance
    request_id: str
    status: int | None = None  # None: no answer (connection lost or refused)
    stored: list[str] = field(default_factory=list)


def upload(url: str, home: Home, data: bytes, index: int) -> Attempt:
    attempt = Attempt(index=index, request_id=f"kill-{index}-{uuid.uuid4().hex[:12]}")
    body, headers = related([data])
    try:
        r = httpx.post(f"{url}/dicomweb/studies", content=body, timeout=120,
                       headers={**headers, **home.auth(), "X-Request-ID": attempt.request_id})  # fmt: skip
    except httpx.TransportError:
        return attempt
    attempt.status = r.status_code
    if r.status_code in (200, 202):
        attempt.stored = [i[SOP_INSTANCE]["Value"][0] for i in r.json().get(REFERENCED, {}).get("Value", [])]
    return attempt


@pytest.mark.parametrize("trigger", ["answers", "records"])
def test_sigkill_during_concurrent_uploads_loses_and_duplicates_nothing(
    tmp_path: Path, signing_keystore_template: Path, trigger: str
) -> None:
    """``answers``: kill once 12 uploads are answered. ``records``: kill the moment the 12th upload's record is
    committed (the log is polled), which tends to land between a record and its answer."""
    n, threads, kill_after = 48, 4, 12
    home = make_home(tmp_path, signing_keystore_template)
    store = home.path / "intake" / "stow"
    db_url = f"sqlite:///{home.path / 'audit.db'}"
    instances = distinct_instances(n)
    uids = [pydicom.dcmread(io.BytesIO(d)).SOPInstanceUID for d in instances]
    attempts: list[Attempt] = []
    lock = threading.Lock()
    answered = threading.Event()

    with serving(home) as srv:

        def send(i: int) -> None:
            a = upload(srv.url, home, instances[i], i)
            with lock:
                attempts.append(a)
                if sum(x.status is not None for x in attempts) >= kill_after:
                    answered.set()

        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            futures = [pool.submit(send, i) for i in range(n)]
            if trigger == "answers":
                assert answered.wait(300), "no answers before the kill"
            else:
                with AuditLog.open(db_url, migrate=False) as log:
                    target, deadline = log.size() + kill_after, time.monotonic() + 300
                    while log.size() < target:
                        assert time.monotonic() < deadline, "no records before the kill"
                        time.sleep(0.001)
            srv.proc.kill()  # SIGKILL: no shutdown handler runs
            srv.proc.wait()
            for f in futures:
                f.result()
    first = list(attempts)
    lost = sorted({a.index for a in first if a.status is None})
    assert lost, "the kill came after every upload was answered; nothing was tested"
    assert all(a.status == 200 for a in first if a.status is not None)

    with serving(home) as srv:  # restart: stale temporaries are removed before listening
        assert not leftovers(store)
        again = [upload(srv.url, home, instances[i], i) for i in lost]
    assert all(a.status == 200 for a in again), [a.status for a in again]

    by_request: dict[str, list[Any]] = {}
    for record in records(db_url):
        rid = (record.entry.details.get("intake") or {}).get("request_id")
        if rid is not None:
            by_request.setdefault(rid, []).append(record)
    every = first + again
    assert all(len(v) == 1 for v in by_request.values()), "a request was recorded twice"
    answered_ok = [a for a in every if a.status == 200]
    for a in answered_ok:
        (record,) = by_request[a.request_id]  # an answered upload has exactly one record
        assert record.entry.details["intake"]["outcome"] == "stored"
        assert a.stored == [uids[a.index]]
        stored = store / record.entry.details["intake"]["stored_as"]
        assert stored.read_bytes() == instances[a.index]
    # Every instance was answered as stored once in the end; the store holds each, whole, and nothing else.
    assert sorted(a.index for a in answered_ok) == list(range(n))
    kept = sorted(p.name for p in store.rglob("*") if p.is_file())
    assert kept == sorted(f"{hashlib.sha256(d).hexdigest()}.dcm" for d in instances)
    # An unanswered request may have been recorded (killed between record and answer), at most once.
    unanswered_recorded = [a for a in every if a.status is None and a.request_id in by_request]
    assert len(by_request) == len(answered_ok) + len(unanswered_recorded)
    removed = re.search(r"removed (\d+) unfinished", srv.log.read_text())
    print(
        f"\nkill on {trigger}: {n} uploads, {len(lost)} unanswered at the kill, "
        f"{len(unanswered_recorded)} of them recorded, {removed.group(1) if removed else 0} temporaries removed"
    )

    done = home.cli("audit", "verify")
    assert done.returncode == 0, done.stdout + done.stderr


# ------------------------------------------------------------------------------------ database unavailable


def test_database_stopped_gives_503_and_recovers_when_it_is_back(
    tmp_path: Path, signing_keystore_template: Path, stoppable_postgres: tuple[Pg, str]
) -> None:
    pg, db_url = stoppable_postgres
    home = make_home(tmp_path, signing_keystore_template, db_url=db_url)
    ct = Path(str(get_testdata_file("CT_small.dcm"))).read_bytes()
    one = distinct_instances(2)
    dicom = {"Content-Type": "application/dicom"}
    with serving(home) as srv:

        def verify() -> httpx.Response:
            return httpx.post(f"{srv.url}/v1/verify", content=ct, headers={**home.auth(), **dicom}, timeout=60)

        def stow(data: bytes) -> httpx.Response:
            body, headers = related([data])
            return httpx.post(f"{srv.url}/dicomweb/studies", content=body, headers={**home.auth(), **headers},
                              timeout=60)  # fmt: skip

        assert verify().status_code == 200
        before = len(records(db_url))
        pg.stop()
        for r in (verify(), stow(one[0])):
            assert r.status_code == 503, r.text
            assert "unavailable" in r.json()["detail"]
        assert httpx.get(f"{srv.url}/v1/health", timeout=10).status_code == 200  # the server itself lives on
        # medverify verify: an explicit error, exit code 2, no result printed as if recorded.
        sample = tmp_path / "ct.dcm"
        sample.write_bytes(ct)
        done = home.cli("verify", str(sample), "--format", "jsonl")
        assert done.returncode == 2, done.stdout + done.stderr
        assert "unavailable" in done.stderr
        pg.start()
        r = verify()
        assert r.status_code == 200, r.text  # the engine reconnected (pool_pre_ping)
        assert stow(one[1]).status_code == 200
    after = records(db_url)
    # Only what was answered 200 is in the log; nothing from the outage.
    assert len(after) == before + 2
    assert not list((home.path / "intake" / "stow").rglob(f"{hashlib.sha256(one[0]).hexdigest()}*"))
    done = home.cli("audit", "verify")
    assert done.returncode == 0, done.stdout + done.stderr


# ----------------------------------------------------------------------------------------------- disk full


@pytest.mark.parametrize("full", ["store", "store-and-database"])
def test_disk_full(tmp_path: Path, signing_keystore_template: Path, small_disk: Path, full: str) -> None:
    """The store fills up (507, FailureReason A700, a ``store-failed`` record) or, with the SQLite audit database on
    the same small disk, the database does (503, no record, nothing stored); never a partial file, the log verifies.
    """
    db_file = (small_disk if full == "store-and-database" else tmp_path) / "audit.db"
    db_url = f"sqlite:///{db_file}"
    home = make_home(tmp_path, signing_keystore_template, db_url=db_url)
    store = small_disk / "stow"
    instances = distinct_instances(400)  # 400 x ~40 KB: more than the 2 MiB disk holds
    statuses: list[int] = []
    with serving(home, "--store-dir", str(store)) as srv:
        for data in instances:
            body, headers = related([data])
            r = httpx.post(f"{srv.url}/dicomweb/studies", content=body, headers={**home.auth(), **headers},
                           timeout=60)  # fmt: skip
            statuses.append(r.status_code)
            if r.status_code != 200:
                assert r.status_code in (503, 507), r.text
                if r.status_code == 507:  # the store refused: A700, out of resources
                    assert r.json()[FAILED]["Value"][0][FAILURE_REASON]["Value"] == [0xA700]
                else:
                    assert "unavailable" in r.json()["detail"]
                if len([s for s in statuses if s != 200]) >= 5:
                    break
        failures = [s for s in statuses if s != 200]
        assert failures, "the disk never filled up"
        assert httpx.get(f"{srv.url}/v1/health", timeout=10).status_code == 200  # still up, answering
    stored = statuses.index(failures[0])
    assert statuses[stored:] == failures  # once full, it stays refused (nothing was kept that took space)
    if full == "store":
        assert set(failures) == {507}
    assert not leftovers(store)
    kept = sorted(p.name for p in store.rglob("*") if p.is_file())
    assert kept == sorted(f"{hashlib.sha256(d).hexdigest()}.dcm" for d in instances[:stored])
    for p in store.rglob("*.dcm"):  # whole files only
        assert hashlib.sha256(p.read_bytes()).hexdigest() + ".dcm" == p.name
    outcomes = [(r.entry.details.get("intake") or {}).get("outcome") for r in records(db_url)]
    outcomes = [o for o in outcomes if o is not None]
    assert outcomes[:stored] == ["stored"] * stored
    assert outcomes[stored:] == (["store-failed"] * len(failures) if full == "store" else [])
    print(f"\n{full} full: {stored} stored, then {failures}")
    done = home.cli("audit", "verify")
    assert done.returncode == 0, done.stdout + done.stderr
