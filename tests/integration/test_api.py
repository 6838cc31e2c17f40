"""The HTTP API end to end: ``medverify serve`` runs as a real uvicorn server on 127.0.0.1 (a subprocess) and is
spoken to over real HTTP with httpx; tokens are made with the real ``medverify tokens`` command.

One server serves the whole module (it takes seconds to start); each test counts the audit records it causes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from testkit import TEST_KEY_PASSPHRASE, free_port

from provenance.declaration import SyntheticDeclaration
from provenance.keys import KeyStore
from provenance.signature import sign_dataset
from verifier.audit import AuditLog
from verifier.audit.search import AuditQuery, search
from verifier.synthetic import build_synthetic_dataset, write_synthetic

MAX_BODY_MB = 1.0
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Server:
    url: str
    home: Path
    env: dict[str, str]
    tokens: dict[str, tuple[str, str]]  # scope -> (id, token)
    pid: int = 0  # of the running server

    def audit_size(self) -> int:
        with AuditLog.open(f"sqlite:///{self.home / 'audit.db'}", migrate=False) as log:
            return log.size()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", "from verifier.cli import app_main; app_main()", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def new_token(self, name: str, scope: str) -> tuple[str, str]:
        done = self.cli("tokens", "create", name, "--scope", scope, "--format", "json")
        assert done.returncode == 0, done.stderr
        info = json.loads(done.stdout)
        return info["id"], info["token"]

    def auth(self, scope: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[scope][1]}"}


def new_home(root: Path, keys: Path) -> Server:
    """A medverify home with a copy of the test key store and one token of each scope (made by the CLI)."""
    home = root / "home"
    home.mkdir(parents=True)
    shutil.copytree(keys, home / "keys")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDVERIFY_")}
    env.update(MEDVERIFY_HOME=str(home), MEDVERIFY_KEY_PASSPHRASE=TEST_KEY_PASSPHRASE, OMP_NUM_THREADS="1")
    srv = Server(url="", home=home, env=env, tokens={})
    for scope in ("verify", "audit-read", "admin"):
        srv.tokens[scope] = srv.new_token(f"test-{scope}", scope)
    return srv


@contextlib.contextmanager
def serving(srv: Server, *args: str) -> Iterator[Server]:
    """``medverify serve`` on a free loopback port until the block ends; the log may hold no token."""
    port = free_port()
    srv.url = f"http://127.0.0.1:{port}"
    log_path = srv.home / "serve.log"
    log = open(log_path, "ab")  # closed after the server stops
    proc = subprocess.Popen(
        [sys.executable, "-c", "from verifier.cli import app_main; app_main()", "serve", "--listen",
         f"127.0.0.1:{port}", *args],
        env=srv.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
    )  # fmt: skip
    srv.pid = proc.pid
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited ({proc.returncode}): {log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{srv.url}/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        yield srv
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    served_log = log_path.read_text()
    for _, token in srv.tokens.values():
        assert token not in served_log


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, signing_keystore_template: Path) -> Iterator[Server]:
    srv = new_home(tmp_path_factory.mktemp("api"), signing_keystore_template)
    with serving(srv, "--max-body-mb", str(MAX_BODY_MB)):
        yield srv


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, signing_keystore_template: Path) -> dict[str, bytes]:
    """real (unsigned CT), signed (acquisition key), tampered (signed, then a pixel changed), generated, junk."""
    d = tmp_path_factory.mktemp("api-files")
    store = KeyStore(signing_keystore_template, lambda: TEST_KEY_PASSPHRASE.encode())
    out: dict[str, bytes] = {"real": Path(get_testdata_file("CT_small.dcm")).read_bytes()}

    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    sign_dataset(ds, store.load_signing_key("second"))
    ds.save_as(d / "signed.dcm")
    out["signed"] = (d / "signed.dcm").read_bytes()

    data = bytearray(ds.PixelData)
    data[len(data) // 3] ^= 0x10
    ds.PixelData = bytes(data)
    ds.save_as(d / "tampered.dcm")
    out["tampered"] = (d / "tampered.dcm").read_bytes()

    pixels = np.linspace(0.0, 1.0, 64 * 64).reshape(64, 64)
    declaration = SyntheticDeclaration(
        generator="vae",
        generator_version="test",
        model_sha256="ab" * 32,
        seed=7,
        generated_at=dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC),
    )
    generated = build_synthetic_dataset(pixels, modality="CT", declaration=declaration)
    write_synthetic(generated, d / "generated.dcm", store.load_signing_key("generator"))
    out["generated"] = (d / "generated.dcm").read_bytes()
    out["junk"] = b"this is not a DICOM file\n" * 20
    return out


def related(parts: list[bytes], boundary: str = "mv-test-boundary") -> tuple[bytes, dict[str, str]]:
    body = (
        b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n" for p in parts)
        + f"--{boundary}--\r\n".encode()
    )
    return body, {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}


def post(server: Server, path: str, scope: str | None, **kwargs: Any) -> httpx.Response:
    headers = {**(server.auth(scope) if scope else {}), **kwargs.pop("headers", {})}
    return httpx.post(f"{server.url}{path}", headers=headers, timeout=60, **kwargs)


DICOM = {"Content-Type": "application/dicom"}

# ------------------------------------------------------------------------------------------------ schema


def test_served_schema_is_the_committed_one(server: Server) -> None:
    served = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
    committed = json.loads((REPO / "verifier" / "api" / "openapi.json").read_text())
    assert served == committed, "regenerate: medverify serve --openapi > verifier/api/openapi.json"
    assert set(served["paths"]) == {
        "/v1/health", "/v1/verify", "/v1/audit", "/v1/audit/verify", "/v1/audit/{record_id}", "/dicomweb/studies",
        "/v1/claims/audit", "/v1/quarantine",
        "/v1/quarantine/{entry_id}", "/v1/quarantine/{entry_id}/release", "/v1/quarantine/{entry_id}/reject",
    }  # fmt: skip


# ------------------------------------------------------------------------------------------------ tokens


def test_no_bad_revoked_or_wrong_scope_token_is_refused_before_anything_is_checked(
    server: Server, files: dict[str, bytes]
) -> None:
    before = server.audit_size()
    body = files["real"]

    r = post(server, "/v1/verify", None, content=body, headers=DICOM)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    token = server.tokens["verify"][1]
    for bad in (token[:-1] + ("A" if token[-1] != "A" else "B"), f"mv_{'0' * 16}_{token.rsplit('_', 1)[1]}", "x"):
        r = post(server, "/v1/verify", None, content=body, headers={**DICOM, "Authorization": f"Bearer {bad}"})
        assert r.status_code == 401, bad
        assert "invalid_token" in r.headers["www-authenticate"]
    # Basic auth is not a bearer token.
    r = post(server, "/v1/verify", None, content=body, headers={**DICOM, "Authorization": f"Basic {token}"})
    assert r.status_code == 401

    r = post(server, "/v1/verify", "audit-read", content=body, headers=DICOM)
    assert r.status_code == 403 and "needs verify" in r.json()["detail"]
    r = post(server, "/dicomweb/studies", "audit-read", content=b"x", headers=related([b"x"])[1])
    assert r.status_code == 403
    r = httpx.get(f"{server.url}/v1/audit/1", headers=server.auth("verify"), timeout=10)
    assert r.status_code == 403 and "needs audit-read" in r.json()["detail"]

    victim_id, victim = server.new_token("revoke-me", "verify")
    ok = post(server, "/v1/verify", None, content=body, headers={**DICOM, "Authorization": f"Bearer {victim}"})
    assert ok.status_code == 200
    assert server.cli("tokens", "revoke", victim_id).returncode == 0
    r = post(server, "/v1/verify", None, content=body, headers={**DICOM, "Authorization": f"Bearer {victim}"})
    assert r.status_code == 401 and "revoked" in r.json()["detail"]

    # Only the one accepted request left a record.
    assert server.audit_size() == before + 1 + 2  # + the token's create and revoke records


def test_expired_token_is_refused_and_health_needs_none(server: Server) -> None:
    import sqlite3

    token_id, token = server.new_token("short-lived", "audit-read")
    url = f"{server.url}/v1/audit/1"
    assert httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code == 200
    with sqlite3.connect(server.home / "audit.db") as db:
        db.execute("UPDATE api_tokens SET expires_at = '2020-01-01 00:00:00.000000' WHERE id = ?", (token_id,))
    r = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 401 and "expired" in r.json()["detail"]
    assert httpx.get(url, timeout=10).status_code == 401
    health = httpx.get(f"{server.url}/v1/health", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_tokens_are_stored_hashed_and_listed_without_secrets(server: Server) -> None:
    import sqlite3

    with sqlite3.connect(server.home / "audit.db") as db:
        rows = dict(db.execute("SELECT id, token_hash FROM api_tokens").fetchall())
    for token_id, token in server.tokens.values():
        assert rows[token_id] == hashlib.sha256(token.encode()).hexdigest()
    dump = (server.home / "audit.db").read_bytes()
    listing = server.cli("tokens", "list", "--format", "jsonl")
    assert listing.returncode == 0
    listed = {json.loads(line)["id"]: json.loads(line) for line in listing.stdout.splitlines()}
    for token_id, token in server.tokens.values():
        secret = token.split("_", 2)[2].encode()  # mv_<id>_<secret>: the secret itself may hold "_"
        assert secret not in dump
        assert token not in listing.stdout
        assert listed[token_id]["state"] == "active"


# ------------------------------------------------------------------------------------------------ /v1/verify


def test_verify_one_file_and_read_its_audit_record(server: Server, files: dict[str, bytes]) -> None:
    before = server.audit_size()
    r = post(server, "/v1/verify", "verify", content=files["real"], headers=DICOM)
    assert r.status_code == 200, r.text
    (result,) = r.json()["results"]
    assert (result["verdict"], result["action"], result["status"]) == ("NO_EVIDENCE", "accept", "UNSIGNED")
    assert result["sha256"] == hashlib.sha256(files["real"]).hexdigest()
    assert server.audit_size() == before + 1

    record = httpx.get(f"{server.url}/v1/audit/{result['audit_id']}", headers=server.auth("audit-read"), timeout=10)
    assert record.status_code == 200, record.text
    rec = record.json()
    assert rec["id"] == result["audit_id"]
    assert (rec["channel"], rec["event"], rec["verdict"], rec["action"]) == ("api", "verify", "NO_EVIDENCE", "accept")
    assert rec["api_token_id"] == server.tokens["verify"][0]
    assert rec["file_sha256"] == result["sha256"]
    assert rec["peer_address"].startswith("127.0.0.1:")
    assert server.tokens["verify"][1] not in record.text
    # admin may read too; a record that does not exist is 404; a non-number is 422.
    assert httpx.get(f"{server.url}/v1/audit/{rec['id']}", headers=server.auth("admin"), timeout=10).json() == rec
    missing = httpx.get(f"{server.url}/v1/audit/{10**12}", headers=server.auth("audit-read"), timeout=10)
    assert missing.status_code == 404
    assert httpx.get(f"{server.url}/v1/audit/x", headers=server.auth("audit-read"), timeout=10).status_code == 422


def test_search_and_verify_the_audit_log(server: Server, files: dict[str, bytes]) -> None:
    """GET /v1/audit searches newest first, a page at a time; GET /v1/audit/verify recomputes the log; both need
    audit-read (or admin), like GET /v1/audit/{id}."""
    for _ in range(3):
        assert post(server, "/v1/verify", "verify", content=files["real"], headers=DICOM).status_code == 200
    url = f"{server.url}/v1/audit"
    reader = server.auth("audit-read")
    assert httpx.get(url, headers=server.auth("verify"), timeout=10).status_code == 403
    assert httpx.get(url, timeout=10).status_code == 401
    assert httpx.get(f"{url}/verify", headers=server.auth("verify"), timeout=10).status_code == 403

    query = {"verdict": "no_evidence", "action": "accept", "limit": 2}
    first = httpx.get(url, params=query, headers=reader, timeout=10)
    assert first.status_code == 200, first.text
    page = first.json()
    total = page["total"]
    assert total >= 3 and len(page["records"]) == 2 and page["offset"] == 0 and page["next_cursor"]
    ids = [r["id"] for r in page["records"]]
    assert ids == sorted(ids, reverse=True) and ids[0] == server.audit_size()  # the newest record comes first
    assert all((r["verdict"], r["action"]) == ("NO_EVIDENCE", "accept") for r in page["records"])
    seen = list(ids)
    cursor = page["next_cursor"]
    while cursor:
        more = httpx.get(url, params={"verdict": "NO_EVIDENCE", "action": "accept", "limit": 2, "cursor": cursor},
                         headers=reader, timeout=10).json()  # fmt: skip
        assert more["offset"] == len(seen) and more["total"] == total
        seen += [r["id"] for r in more["records"]]
        cursor = more["next_cursor"]
    assert len(seen) == total == len(set(seen)) and seen == sorted(seen, reverse=True)

    since = page["records"][0]["when"]
    only_newest = httpx.get(url, params={"since": since, "channel": "api"}, headers=reader, timeout=10).json()
    assert [r["id"] for r in only_newest["records"]] == [ids[0]]
    assert httpx.get(url, params={"until": "2000-01-01"}, headers=reader, timeout=10).json()["total"] == 0

    typo = httpx.get(url, params={"verdict": "TAMPERD"}, headers=reader, timeout=10)
    assert typo.status_code == 400 and "did you mean TAMPERED" in typo.json()["detail"]
    assert "NO_EVIDENCE" in typo.json()["detail"]
    for bad in ({"action": "nothing"}, {"channel": "mail"}, {"since": "yesterday"}, {"cursor": "abc"}):
        assert httpx.get(url, params=bad, headers=reader, timeout=10).status_code == 400, bad
    assert httpx.get(url, params={"limit": 0}, headers=reader, timeout=10).status_code == 422

    verified = httpx.get(f"{url}/verify", headers=server.auth("admin"), timeout=60)
    assert verified.status_code == 200, verified.text
    result = verified.json()
    assert result["status"] == "valid" and result["records_checked"] == result["tree_size"] >= total


def test_verify_several_files_in_multipart_bodies(server: Server, files: dict[str, bytes]) -> None:
    names = ["generated", "tampered", "signed", "real", "junk"]
    expected = {
        "generated": ("DECLARED_SYNTHETIC", "quarantine"),
        "tampered": ("TAMPERED", "reject"),
        "signed": ("AUTHENTIC", "accept"),
        "real": ("NO_EVIDENCE", "accept"),
        "junk": ("UNREADABLE", "reject"),
    }
    before = server.audit_size()
    # multipart/form-data, as curl -F sends it
    r = post(server, "/v1/verify", "admin", files=[("file", (f"{n}.dcm", files[n])) for n in names])
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [(x["verdict"], x["action"]) for x in results] == [expected[n] for n in names]
    assert [x["path"].rsplit("/", 1)[1] for x in results] == [f"{n}.dcm" for n in names]
    assert results[2]["signature"]["status"] == "VALID"
    assert results[4]["error"] and "DICM" in results[4]["error"]
    # multipart/related, as a DICOMweb client sends it
    body, headers = related([files[n] for n in names])
    r = post(server, "/v1/verify", "verify", content=body, headers=headers)
    assert r.status_code == 200, r.text
    again = r.json()["results"]
    assert [(x["verdict"], x["action"]) for x in again] == [expected[n] for n in names]
    ids = [x["audit_id"] for x in results + again]
    assert len(set(ids)) == 10
    assert server.audit_size() == before + 10


def test_concurrent_requests_each_get_their_records(server: Server, files: dict[str, bytes]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    before = server.audit_size()
    body, headers = related([files["signed"], files["real"]])

    def one(i: int) -> httpx.Response:
        path, scope = ("/v1/verify", "verify") if i % 2 else ("/dicomweb/studies", "admin")
        return post(server, path, scope, content=body, headers=headers)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(8)))
    assert [a.status_code for a in answers] == [200] * 8, [a.text for a in answers if a.status_code != 200]
    ids = [x["audit_id"] for a in answers[1::2] for x in a.json()["results"]]
    assert len(set(ids)) == 8
    assert server.audit_size() == before + 16


def test_oversized_and_malformed_bodies_are_refused_without_a_record(server: Server, files: dict[str, bytes]) -> None:
    before = server.audit_size()
    limit = int(MAX_BODY_MB * 1024**2)
    big = files["real"] + b"\0" * (limit + 1 - len(files["real"]))
    r = post(server, "/v1/verify", "verify", content=big, headers=DICOM)
    assert r.status_code == 413, r.text

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while reading
        for _ in range(limit // 65536 + 2):
            yield b"\0" * 65536

    r = post(server, "/v1/verify", "verify", content=chunks(), headers=DICOM)
    assert r.status_code == 413, r.text
    body, headers = related([files["real"], files["real"]])
    r = post(server, "/dicomweb/studies", "verify", content=body + b"\0" * limit, headers=headers)
    assert r.status_code == 413

    body, headers = related([files["real"]])
    cut = body[: len(body) // 2]  # no closing boundary
    assert post(server, "/v1/verify", "verify", content=cut, headers=headers).status_code == 400
    assert post(server, "/dicomweb/studies", "verify", content=cut, headers=headers).status_code == 400
    no_boundary = {"Content-Type": "multipart/related; type=application/dicom"}
    assert post(server, "/v1/verify", "verify", content=body, headers=no_boundary).status_code == 400
    empty = {"Content-Type": "multipart/related; boundary=abc"}
    assert post(server, "/v1/verify", "verify", content=b"--abc--\r\n", headers=empty).status_code == 400
    assert post(server, "/v1/verify", "verify", content=b"", headers=DICOM).status_code == 400
    r = post(server, "/v1/verify", "verify", content=files["real"], headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    assert post(server, "/v1/verify", "verify", content=files["real"]).status_code == 415  # no Content-Type
    assert server.audit_size() == before


# ------------------------------------------------------------------------------------------------ STOW-RS

FAILED, REFERENCED, FAILURE_REASON = "00081198", "00081199", "00081197"
SOP_INSTANCE = "00081155"


def items(payload: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    return list(payload.get(tag, {}).get("Value", []))


def uid_of(data: bytes) -> str:
    import io

    return str(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID)


def test_stow_stores_accepted_instances_and_refuses_the_rest(server: Server, files: dict[str, bytes]) -> None:
    store = server.home / "intake" / "stow"
    before = server.audit_size()
    names = ["real", "generated", "signed", "tampered", "junk"]
    body, headers = related([files[n] for n in names])
    r = post(server, "/dicomweb/studies", "verify", content=body, headers=headers)
    assert r.status_code == 202, r.text  # some stored, some refused
    assert r.headers["content-type"].startswith("application/dicom+json")
    payload = r.json()
    assert payload["00081190"] == {"vr": "UR"}  # Retrieve URL: Type 2, empty (no WADO-RS here)
    assert all(i["00081190"] == {"vr": "UR"} for i in items(payload, REFERENCED))
    stored = [i[SOP_INSTANCE]["Value"][0] for i in items(payload, REFERENCED)]
    assert stored == [uid_of(files["real"]), uid_of(files["signed"])]
    failed = {
        i.get(SOP_INSTANCE, {}).get("Value", ["?"])[0]: i[FAILURE_REASON]["Value"][0] for i in items(payload, FAILED)
    }
    assert failed == {uid_of(files["generated"]): 0x0110, uid_of(files["tampered"]): 0x0110, "?": 0xC000}
    assert server.audit_size() == before + 5

    def path_of(name: str, area: str) -> Path:
        digest = hashlib.sha256(files[name]).hexdigest()
        return store / area / digest[:2] / f"{digest}.dcm"

    for name in ("real", "signed"):
        assert path_of(name, "accepted").read_bytes() == files[name]
    assert path_of("generated", "quarantine").read_bytes() == files["generated"]
    kept = {p.name for p in store.rglob("*.dcm")}
    assert kept == {
        path_of(n, a).name for n, a in [("real", "accepted"), ("signed", "accepted"), ("generated", "quarantine")]
    }

    with AuditLog.open(f"sqlite:///{server.home / 'audit.db'}", migrate=False) as log:
        records = [log.get(i) for i in range(before + 1, before + 6)]
    outcomes = [r.entry.details["intake"]["outcome"] for r in records]
    assert outcomes == ["stored", "quarantined", "stored", "rejected", "rejected"]
    assert {r.entry.channel.value for r in records} == {"api"}
    assert {r.entry.event for r in records} == {"intake"}
    assert {r.entry.api_token_id for r in records} == {server.tokens["verify"][0]}


def _claim_files(site: tuple[str, str]) -> tuple[bytes, bytes]:
    """CT_small labelled as a chest CT of patient DOE^JOHN, and a FHIR bundle of claim c1 that names it
    (``c1/ct.dcm``) with the SNOMED CT body site ``site``."""
    from verifier.claims.samples import fhir_claim_bundle

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientName, ds.PatientSex, ds.PatientBirthDate, ds.BodyPartExamined = "DOE^JOHN", "M", "19700101", "CHEST"
    ds.StudyDate = "20240301"
    out = io.BytesIO()
    ds.save_as(out)
    says = {"family": "Doe", "given": "John", "gender": "male", "birth": "1970-01-01", "date": "2024-03-01",
            "created": "2024-03-04", "site": site, "icd10": ("J18.9", "Pneumonia")}  # fmt: skip
    return out.getvalue(), json.dumps(fhir_claim_bundle("c1", "c1/ct.dcm", ds, says)).encode()


def test_a_fhir_claim_audited_over_the_api(server: Server) -> None:
    """POST /v1/claims/audit: a bundle and its image, findings as JSON or FHIR; bad bundles refused unrecorded."""
    image, bundle = _claim_files(("72696002", "Knee region structure"))  # the bundle bills a knee

    def send(bundle: bytes, *images: tuple[str, bytes], output: str = "json") -> httpx.Response:
        parts = [("bundle", ("claim.json", bundle, "application/fhir+json"))]
        parts += [("file", (name, data, "application/dicom")) for name, data in images]
        return post(server, f"/v1/claims/audit?format={output}", "verify", files=parts)

    before = server.audit_size()
    r = send(bundle, ("c1/ct.dcm", image))
    assert r.status_code == 200, r.text
    (claim,) = r.json()["claims"]
    (finding,) = claim["findings"]
    assert finding["kind"] == "fhir_body_site_mismatch" and finding["evidence"]["body_parts"] == {"ct.dcm": "CHEST"}
    assert "ImagingStudy/study-c1.series[0].bodySite" in finding["message"]
    (audited,) = claim["files"]
    assert re.fullmatch(r"api:127\.0\.0\.1:\d+/c1/ct\.dcm", audited["path"]), audited["path"]
    assert server.audit_size() == before + 2  # the image's record and the claim's summary

    r = send(bundle, ("ct.dcm", image), output="fhir")  # the URL's last segment names the file too
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/fhir+json"), r.text
    from fhir.resources.R4B.bundle import Bundle

    resources = [e.resource for e in Bundle.model_validate_json(r.content).entry]
    issue, provenance = (next(x for x in resources if x.get_resource_type() == kind)
                         for kind in ("DetectedIssue", "Provenance"))  # fmt: skip
    assert issue.code.coding[0].code == "fhir_body_site_mismatch"
    assert {ref.reference for ref in issue.implicated} == {"Claim/c1", "ImagingStudy/study-c1"}
    record_id = next(e.valueInteger for e in provenance.extension if e.url.endswith("audit-record-id"))
    record = httpx.get(f"{server.url}/v1/audit/{record_id}", headers=server.auth("audit-read"), timeout=10).json()
    assert record["channel"] == "claims" and record["details"]["claim"]["id"] == "c1"

    # Refused before anything is checked or recorded: bad FHIR, an attachment not sent, a file no claim names.
    size = server.audit_size()
    for answer, says in [
        (send(b'{"resourceType": "Bundle", "type": "nonsense-type", "entry": 3}', ("c1/ct.dcm", image)),
         "not valid FHIR R4"),
        (send(bundle), "'c1/ct.dcm' does not resolve: no file was sent under that name"),
        (send(bundle, ("c1/ct.dcm", image), ("extra.dcm", image)), "attached to no claim of the bundle: extra.dcm"),
        (post(server, "/v1/claims/audit", "verify", files=[("file", ("c1/ct.dcm", image, "application/dicom"))]),
         "exactly one FHIR bundle part"),
    ]:  # fmt: skip
        assert answer.status_code == 422 and says in answer.json()["detail"], answer.text
    assert server.audit_size() == size
    empty = send(b'{"resourceType": "Bundle", "type": "collection"}')  # no Claim: nothing to audit, nothing recorded
    assert empty.status_code == 200 and empty.json()["claims"] == [] and server.audit_size() == size
    assert post(server, "/v1/claims/audit", "verify", content=image, headers=DICOM).status_code == 415
    assert post(server, "/v1/claims/audit", None, files=[("bundle", ("b.json", bundle))]).status_code == 401


def test_stow_status_200_when_all_stored_and_409_when_none(server: Server, files: dict[str, bytes]) -> None:
    body, headers = related([files["signed"]])
    r = post(server, "/dicomweb/studies", "verify", content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert FAILED not in r.json() and len(items(r.json(), REFERENCED)) == 1

    body, headers = related([files["tampered"], files["junk"]])
    r = post(server, "/dicomweb/studies", "admin", content=body, headers=headers)
    assert r.status_code == 409, r.text
    assert REFERENCED not in r.json() and len(items(r.json(), FAILED)) == 2

    # Only multipart/related of application/dicom is STOW-RS here.
    assert post(server, "/dicomweb/studies", "verify", content=files["real"], headers=DICOM).status_code == 415
    json_parts = {"Content-Type": 'multipart/related; type="application/dicom+json"; boundary=x'}
    assert post(server, "/dicomweb/studies", "verify", content=b"--x--", headers=json_parts).status_code == 415


# ------------------------------------------------------------------------------------------------ fuzzing


def test_schemathesis_finds_no_server_error(server: Server, tmp_path: Path) -> None:
    """Schemathesis generates requests from the served schema (valid and invalid, fixed seed, bounded count);
    no answer may be a 5xx, and status codes, content types and JSON bodies must match the schema."""
    pytest.importorskip("schemathesis")
    hooks = Path(__file__).with_name("schemathesis_hooks.py")
    # /v1/quarantine/{entry_id} answers 404 to every made-up id (none is in quarantine here): not a missing fixture.
    shown = ["missing_auth", "base_url_mismatch", "validation_mismatch", "missing_deserializer",
             "unused_openapi_auth", "unsupported_regex", "method_not_allowed"]  # fmt: skip
    (tmp_path / "schemathesis.toml").write_text(f"warnings = {json.dumps(shown)}\n")
    done = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", f"{server.url}/openapi.json",
         "--header", f"Authorization: Bearer {server.tokens['admin'][1]}",
         "--max-examples", "50", "--seed", "1", "--workers", "1", "--generation-database", "none", "--no-color",
         "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"],
        env={**server.env, "SCHEMATHESIS_HOOKS": str(hooks)}, cwd=tmp_path, capture_output=True, text=True,
        timeout=500,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "No issues found" in done.stdout


# ------------------------------------------------------------------------------------------------ forwarding


def test_stow_forwards_what_it_stores_to_a_pacs(
    tmp_path: Path, signing_keystore_template: Path, files: dict[str, bytes]
) -> None:
    """With --forward, STOW-RS also sends each stored instance to a real DCMTK storescp (the PACS) by C-STORE."""
    from intake_peers import dcmtk_tool, wait_port

    received = tmp_path / "pacs"
    received.mkdir()
    pacs_port = free_port()
    pacs = subprocess.Popen(
        [dcmtk_tool("storescp"), "-aet", "PACS", "+xa", "-od", str(received), str(pacs_port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_port(pacs_port, proc=pacs)
        srv = new_home(tmp_path, signing_keystore_template)
        with serving(srv, "--forward", f"127.0.0.1:{pacs_port}:PACS", "--ae-title", "MVAPI"):
            body, headers = related([files["signed"], files["tampered"], files["real"]])
            r = post(srv, "/dicomweb/studies", "verify", content=body, headers=headers)
            assert r.status_code == 202, r.text
            deadline = time.monotonic() + 60
            while len(list(received.iterdir())) < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
        got = sorted(str(pydicom.dcmread(f).SOPInstanceUID) for f in received.iterdir())
        assert got == sorted([uid_of(files["signed"]), uid_of(files["real"])])
        assert not list((srv.home / "intake" / "stow" / "spool").glob("*.dcm")), "the spool is emptied"
        with AuditLog.open(f"sqlite:///{srv.home / 'audit.db'}", migrate=False) as log:
            intake = [r.entry for r in log.query(event="intake")]
        assert [e.details["intake"].get("forward") for e in intake] == [
            f"PACS@127.0.0.1:{pacs_port}",
            None,
            f"PACS@127.0.0.1:{pacs_port}",
        ]
    finally:
        pacs.terminate()
        pacs.wait(timeout=30)


# ------------------------------------------------------------------------------------------------ reloading


@dataclass(frozen=True)
class _PemSigner:
    private_key: Any
    certificate: Any


def test_trust_revocation_and_policy_changes_reach_a_running_server(
    tmp_path: Path, signing_keystore_template: Path, openssl_pki: Path, files: dict[str, bytes]
) -> None:
    """`keys trust`, `keys revoke` and an edited policy file count from the next request of a running server, and
    SIGHUP reads them again; each reload is an audit record (event reload, channel api)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    signer = _PemSigner(
        load_pem_private_key((openssl_pki / "rsa.key").read_bytes(), password=None),
        x509.load_pem_x509_certificate((openssl_pki / "rsa.pem").read_bytes()),
    )
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    sign_dataset(ds, signer)
    ds.save_as(tmp_path / "external.dcm")
    external = (tmp_path / "external.dcm").read_bytes()
    policy = tmp_path / "policy.toml"
    policy.write_text('version = "site-1"\n')
    srv = new_home(tmp_path / "reload", signing_keystore_template)

    def verify(data: bytes) -> dict[str, Any]:
        r = post(srv, "/v1/verify", "verify", content=data, headers=DICOM)
        assert r.status_code == 200, r.text
        result: dict[str, Any] = r.json()["results"][0]
        return result

    def reloads() -> list[dict[str, Any]]:
        with AuditLog.open(f"sqlite:///{srv.home / 'audit.db'}", migrate=False) as log:
            page = search(log, AuditQuery(events=("reload",)), limit=None, newest_first=False)
        return [r.to_json_dict() for r in page.records]

    with serving(srv, "--checks", "signature", "--policy", str(policy)):
        before = verify(external)
        assert before["signature"]["signatures"][0]["status"] == "UNTRUSTED_SIGNER"
        assert verify(files["signed"])["verdict"] == "AUTHENTIC"
        assert reloads() == []

        # What `medverify keys trust` and `keys revoke` do, done here in-process (a CLI start costs seconds).
        store = KeyStore(srv.home / "keys", lambda: TEST_KEY_PASSPHRASE.encode())
        store.trust((openssl_pki / "ca.pem").read_bytes())
        after = verify(external)
        assert after["signature"]["signatures"][0]["status"] == "VALID", after
        [trusted] = reloads()
        assert trusted["channel"] == "api" and trusted["policy_version"] == "site-1"
        assert trusted["details"]["reload"]["changed"] == ["trust store and revocations"]
        assert trusted["id"] < after["audit_id"]  # recorded before the first check under the new trust

        store.revoke("second")  # the acquisition key of files["signed"]
        revoked = verify(files["signed"])
        assert revoked["signature"]["signatures"][0]["status"] == "REVOKED" and revoked["verdict"] != "AUTHENTIC"

        policy.write_text('version = "site-2"\n[actions]\nNO_EVIDENCE = "quarantine"\n')
        quarantined = verify(files["real"])
        assert (quarantined["action"], quarantined["policy_version"]) == ("quarantine", "site-2")
        assert [r["details"]["reload"]["changed"] for r in reloads()[1:]] == [
            ["trust store and revocations"], ["site policy"]
        ]

        policy.write_text("version = ")  # caught half-written: the previous policy stays, and the log says so
        assert verify(files["real"])["policy_version"] == "site-2"
        assert "error" in reloads()[-1]["details"]["reload"]

        policy.write_text('version = "site-2"\n[actions]\nNO_EVIDENCE = "quarantine"\n')
        count = len(reloads())
        os.kill(srv.pid, signal.SIGHUP)
        deadline = time.monotonic() + 30
        while len(reloads()) == count and time.monotonic() < deadline:
            time.sleep(0.2)
        assert reloads()[-1]["details"]["reload"]["trigger"] == "SIGHUP"
        assert verify(files["real"])["action"] == "quarantine"
