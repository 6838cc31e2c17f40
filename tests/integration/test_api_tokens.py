"""API tokens in a real audit database: the store (hashing, states, revocation) and ``medverify tokens``."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from testkit import jsonl
from testkit import run_cli as run

from verifier.audit import AuditLog
from verifier.audit.tokens import AuthStatus, TokenScope, TokenStore, api_tokens
from verifier.errors import InputError


@pytest.fixture
def log(tmp_path: Path) -> AuditLog:
    return AuditLog.open(f"sqlite:///{tmp_path / 'audit.db'}")


def test_token_form_storage_and_states(log: AuditLog) -> None:
    store = TokenStore(log)
    issued = store.create("orthanc", "verify")
    prefix, token_id, secret = issued.token.split("_", 2)
    assert (prefix, token_id) == ("mv", issued.info.id) and len(token_id) == 16 and len(secret) == 43
    assert issued.token not in repr(issued)
    with log._engine.connect() as conn:
        row = conn.execute(sa.select(api_tokens)).one()
    assert row.token_hash == hashlib.sha256(issued.token.encode()).hexdigest()
    assert secret not in json.dumps([str(v) for v in row])

    ok = store.authenticate(issued.token)
    assert ok.status is AuthStatus.OK and ok.token is not None and ok.token.scope is TokenScope.VERIFY
    assert ok.token.last_used_at is not None
    with pytest.raises(TypeError):
        bool(ok)
    for bad in (None, "", "mv_x", issued.token + "x", issued.token[:-1] + ("a" if secret[-1] != "a" else "b")):
        assert store.authenticate(bad).status is AuthStatus.INVALID, bad

    info, changed = store.revoke(issued.info.id)
    assert changed and info.state() == "revoked"
    assert store.revoke(issued.token) == (store.get(issued.info.id), False)  # the whole token works too
    assert store.authenticate(issued.token).status is AuthStatus.REVOKED

    later = store.create("auditor", TokenScope.AUDIT_READ, expires_in=dt.timedelta(days=1))
    assert later.info.expires_at is not None
    assert store.authenticate(later.token).status is AuthStatus.OK
    with log._engine.begin() as conn:
        conn.execute(sa.update(api_tokens).values(expires_at=dt.datetime(2020, 1, 1)))
    assert store.authenticate(later.token).status is AuthStatus.EXPIRED
    assert [t.state() for t in store.list()] == ["revoked", "expired"]


def test_scopes_and_bad_arguments(log: AuditLog) -> None:
    assert TokenScope.ADMIN.allows(TokenScope.VERIFY) and TokenScope.ADMIN.allows(TokenScope.AUDIT_READ)
    assert not TokenScope.VERIFY.allows(TokenScope.AUDIT_READ)
    assert not TokenScope.AUDIT_READ.allows(TokenScope.VERIFY)
    store = TokenStore(log)
    for name in ("", "   ", "a\nb", "x" * 201):
        with pytest.raises(InputError):
            store.create(name, "verify")
    with pytest.raises(InputError, match="unknown scope"):
        store.create("x", "root")
    with pytest.raises(InputError):
        store.create("x", "verify", expires_in=dt.timedelta(0))
    with pytest.raises(InputError):
        store.revoke("../../etc")
    with pytest.raises(InputError, match="no API token"):
        store.revoke("0" * 16)


def test_tokens_cli_shows_the_token_once_and_audits_create_and_revoke(
    cli_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "tokens", "create", "ci", "--scope", "admin")
    assert code == 0, err
    token = out.strip()
    assert token.startswith("mv_") and "shown only now" in err
    token_id = token.split("_")[1]

    code, out, err = run(capsys, "tokens", "list", "--format", "jsonl")
    assert code == 0 and token not in out
    (listed,) = jsonl(out)
    assert (listed["id"], listed["scope"], listed["state"]) == (token_id, "admin", "active")

    assert run(capsys, "tokens", "revoke", token_id)[0] == 0
    code, out, _ = run(capsys, "tokens", "revoke", token_id)
    assert code == 0 and "already revoked" in out
    assert run(capsys, "tokens", "create", "x", "--scope", "superuser")[0] == 2
    assert run(capsys, "tokens", "revoke", "nope")[0] == 2

    code, out, _ = run(capsys, "audit", "list", "--format", "jsonl", "--oldest-first")
    records = [r for r in jsonl(out) if r["event"] == "token"]
    assert [r["details"]["action"] for r in records] == ["create", "revoke"]
    assert {r["api_token_id"] for r in records} == {token_id}
    assert token not in out
