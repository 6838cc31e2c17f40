"""AuditLog on SQLite and on a real PostgreSQL server: appends, queries, proofs, and tampering found by verify.

Tampering is done the way an intruder with database access would: plain SQL on the tables.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from audit_testkit import KeySigner, make_entry, make_signer

from verifier.audit import (
    AuditEntry,
    AuditLog,
    AuditStatus,
    Channel,
    InclusionProof,
    ProofStatus,
    SignedCheckpoint,
    check_proof,
)
from verifier.audit.merkle import canonical_encoding, frontier_append, frontier_root, leaf_hash
from verifier.errors import AuditError, DatabaseUnavailableError


@pytest.fixture
def raw(audit_db_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(audit_db_url)
    yield engine
    engine.dispose()


def _fill(log: AuditLog, n: int = 12) -> None:
    log.append_many([make_entry(i) for i in range(1, n + 1)])


def _sql(engine: sa.Engine, statement: str, **params: object) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(statement), params)


def test_append_receipts_and_read_back(audit_log: AuditLog) -> None:
    r1 = audit_log.append(make_entry(1))
    rest = audit_log.append_many([make_entry(i) for i in range(2, 8)])
    assert (r1.id, r1.leaf_index) == (1, 0)
    assert [r.id for r in rest] == list(range(2, 8))
    assert audit_log.size() == 7
    record = audit_log.get(3)
    assert record.entry == make_entry(3, when=record.entry.when)
    assert record.leaf_hash == rest[1].leaf_hash
    assert record.entry.details == {"n": 3, "ünïcode": "Ærø"}
    assert record.entry.when.tzinfo is dt.UTC
    with pytest.raises(AuditError):
        audit_log.get(99)
    # A checkpoint was signed automatically at 5 records (interval 5).
    latest = audit_log.latest_checkpoint()
    assert latest is not None and latest.tree_size == 5 and latest.signature_valid()
    assert audit_log.append_many([]) == []


def test_queries(audit_log: AuditLog) -> None:
    _fill(audit_log)
    assert [r.id for r in audit_log.query(verdict="NO_EVIDENCE")] == [3, 6, 9, 12]
    assert [r.id for r in audit_log.query(channel=Channel.SCAN)] == [2, 4, 6, 8, 10, 12]
    assert [r.id for r in audit_log.query(path_glob="/archive/study1/*")] == [1, 4, 7, 10]
    assert [r.id for r in audit_log.query(path_glob="/archive/study[12]/img000?.dcm", limit=3)] == [1, 2, 4]
    assert [r.id for r in audit_log.query(limit=2, newest_first=True)] == [12, 11]
    when = audit_log.get(5).entry.when
    assert next(r.id for r in audit_log.query(since=when)) == 5
    assert [r.id for r in audit_log.query(until=when)] == [1, 2, 3, 4]
    assert list(audit_log.query(event="sign")) == []


def test_verify_valid_log(audit_log: AuditLog, signer: KeySigner) -> None:
    empty = audit_log.verify(trusted=[signer.certificate])
    assert empty.status is AuditStatus.VALID and empty.records_checked == 0
    _fill(audit_log)
    result = audit_log.verify(trusted=[signer.certificate])
    assert result.status is AuditStatus.VALID
    assert (result.records_checked, result.checkpoints_checked, result.unanchored_records) == (12, 2, 2)
    assert result.first_bad_record_id is None
    with pytest.raises(TypeError):
        bool(result)
    with pytest.raises(AuditError):
        audit_log.verify(trusted=[])
    assert audit_log.verify(trusted=lambda cert, at: True).status is AuditStatus.VALID


@pytest.mark.parametrize(
    ("statement", "first_bad"),
    [
        ("UPDATE audit_records SET verdict = 'AUTHENTIC' WHERE id = 6", 6),
        ("UPDATE audit_records SET path = '/elsewhere.dcm' WHERE id = 2", 2),
        ("UPDATE audit_records SET file_sha256 = NULL WHERE id = 9", 9),
        ("UPDATE audit_records SET os_user = 'mallory' WHERE id = 11", 11),
        (
            'UPDATE audit_records SET details = \'{"n": 4, "\\u00fcn\\u00efcode": "\\u00c6r\\u00f8", "x": 1}\' '
            "WHERE id = 4",
            4,
        ),
        ("UPDATE audit_records SET recorded_at = recorded_at + INTERVAL '1 second' WHERE id = 7", 7),
        ("DELETE FROM audit_records WHERE id = 8", 8),
        ("DELETE FROM audit_records WHERE id = 12", 12),
        ("UPDATE audit_records SET leaf_hash = tree_root WHERE id = 3", 3),
    ],
    ids=["verdict", "path", "sha256", "actor", "details", "time", "delete-middle", "delete-last", "leaf-hash"],
)
def test_edits_and_deletions_are_found(
    audit_log: AuditLog, raw: sa.Engine, signer: KeySigner, statement: str, first_bad: int
) -> None:
    _fill(audit_log)
    if "INTERVAL" in statement and raw.dialect.name == "sqlite":
        statement = "UPDATE audit_records SET recorded_at = '2001-01-01 00:00:00.000000' WHERE id = 7"
    _sql(raw, statement)
    result = audit_log.verify(trusted=[signer.certificate])
    assert result.status is AuditStatus.TAMPERED, result
    assert result.first_bad_record_id == first_bad, result.reason


def test_inserted_record_is_found(audit_log: AuditLog, raw: sa.Engine, signer: KeySigner) -> None:
    _fill(audit_log)
    with raw.begin() as conn:
        row = dict(conn.execute(sa.text("SELECT * FROM audit_records WHERE id = 12")).mappings().one())
        row["id"] = 13
        columns = ", ".join(row)
        conn.execute(
            sa.text(f"INSERT INTO audit_records ({columns}) VALUES ({', '.join(':' + c for c in row)})"),
            {k: json.dumps(v) if isinstance(v, dict) else v for k, v in row.items()},
        )
    result = audit_log.verify(trusted=[signer.certificate])
    assert result.status is AuditStatus.TAMPERED
    assert result.first_bad_record_id == 13


def test_reordered_records_are_found(audit_log: AuditLog, raw: sa.Engine, signer: KeySigner) -> None:
    _fill(audit_log)
    with raw.begin() as conn:  # swap records 3 and 4, hashes and all
        conn.execute(sa.text("UPDATE audit_records SET id = 1000 WHERE id = 3"))
        conn.execute(sa.text("UPDATE audit_records SET id = 3 WHERE id = 4"))
        conn.execute(sa.text("UPDATE audit_records SET id = 4 WHERE id = 1000"))
    result = audit_log.verify(trusted=[signer.certificate])
    assert result.status is AuditStatus.TAMPERED
    assert result.first_bad_record_id == 3


def test_rewrite_with_recomputed_hashes_is_caught_by_the_signed_checkpoint(
    audit_log: AuditLog, raw: sa.Engine, signer: KeySigner
) -> None:
    _fill(audit_log)
    entries = [r.entry for r in audit_log.query()]
    entries[2] = dataclasses.replace(entries[2], verdict="AUTHENTIC", action="accept")  # record 3
    frontier: list[bytes] = []
    with raw.begin() as conn:
        conn.execute(sa.text("UPDATE audit_records SET verdict = 'AUTHENTIC', action = 'accept' WHERE id = 3"))
        for i, entry in enumerate(entries):
            leaf = leaf_hash(canonical_encoding(i, entry.to_json_dict()))
            frontier_append(frontier, i, leaf)
            conn.execute(
                sa.text("UPDATE audit_records SET leaf_hash = :l, tree_root = :r WHERE id = :id"),
                {"l": leaf.hex(), "r": frontier_root(frontier).hex(), "id": i + 1},
            )
        conn.execute(
            sa.text("UPDATE audit_head SET root_hash = :r, frontier = :f"),
            {"r": frontier_root(frontier).hex(), "f": json.dumps([h.hex() for h in frontier])},
        )
    result = audit_log.verify(trusted=[signer.certificate])
    assert result.status is AuditStatus.TAMPERED
    assert (result.first_bad_record_id, result.bad_checkpoint_size) == (1, 5)


def test_forged_and_untrusted_checkpoints(
    audit_log: AuditLog, raw: sa.Engine, signer: KeySigner, other_signer: KeySigner
) -> None:
    _fill(audit_log)
    assert audit_log.verify(trusted=[other_signer.certificate]).status is AuditStatus.UNTRUSTED_CHECKPOINT
    # Re-sign a checkpoint with another key but keep the trusted certificate: the signature does not verify.
    cp = audit_log.checkpoints()[0]
    forged = SignedCheckpoint.create(
        other_signer, log_id=cp.log_id, tree_size=cp.tree_size, root_hash=cp.root_hash, when=cp.created_at
    )
    _sql(raw, "UPDATE audit_checkpoints SET signature = :s WHERE tree_size = 5", s=forged.signature)
    result = audit_log.verify(trusted=[signer.certificate])
    assert result.status is AuditStatus.BAD_CHECKPOINT
    assert result.bad_checkpoint_size == 5


def test_checkpoint_root_edit_is_found(audit_log: AuditLog, raw: sa.Engine, signer: KeySigner) -> None:
    _fill(audit_log)
    _sql(raw, "UPDATE audit_checkpoints SET root_hash = :r WHERE tree_size = 10", r="0" * 64)
    assert audit_log.verify(trusted=[signer.certificate]).status is AuditStatus.BAD_CHECKPOINT


def test_on_demand_checkpoint_and_proofs(audit_log: AuditLog, signer: KeySigner, other_signer: KeySigner) -> None:
    _fill(audit_log, 13)
    with pytest.raises(AuditError, match="checkpoint"):
        audit_log.prove(13)  # newer than the latest checkpoint (10)
    cp = audit_log.checkpoint()
    assert cp.tree_size == 13 and audit_log.checkpoint() == cp
    cp = SignedCheckpoint.from_json_dict(json.loads(json.dumps(cp.to_json_dict())))
    for record_id in range(1, 14):
        proof = InclusionProof.from_json_dict(json.loads(json.dumps(audit_log.prove(record_id).to_json_dict())))
        assert check_proof(proof, cp, trusted=[signer.certificate]).status is ProofStatus.VALID
    proof = audit_log.prove(7)
    assert json.loads(proof.encoding)["verdict"] == "AUTHENTIC"
    older = audit_log.prove(3, tree_size=5)
    assert check_proof(older, cp, trusted=[signer.certificate]).status is ProofStatus.CHECKPOINT_MISMATCH
    assert check_proof(proof, cp, trusted=[other_signer.certificate]).status is ProofStatus.UNTRUSTED_SIGNER
    # An altered proof fails: another record's content, a changed path hash.
    swapped = dataclasses.replace(proof, encoding=proof.encoding.replace(b"AUTHENTIC", b"TAMPERED_"))
    assert check_proof(swapped, cp, trusted=[signer.certificate]).status is ProofStatus.INVALID_PATH
    first = proof.audit_path[0]
    bent = dataclasses.replace(
        proof, audit_path=(first[:-1] + ("0" if first[-1] != "0" else "1"), *proof.audit_path[1:])
    )
    assert check_proof(bent, cp, trusted=[signer.certificate]).status is ProofStatus.INVALID_PATH
    forged_cp = dataclasses.replace(
        cp,
        signature=other_signer.private_key.sign(
            cp.signed_text(),
            __import__("cryptography.hazmat.primitives.asymmetric.ec", fromlist=["ECDSA"]).ECDSA(
                __import__("cryptography.hazmat.primitives.hashes", fromlist=["SHA256"]).SHA256()
            ),
        ),
    )
    assert check_proof(proof, forged_cp, trusted=[signer.certificate]).status is ProofStatus.BAD_SIGNATURE


def test_checkpoint_needs_a_signer(audit_db_url: str) -> None:
    with AuditLog.open(audit_db_url) as log:
        log.append(make_entry(1))
        with pytest.raises(AuditError, match="signing key"):
            log.checkpoint()
        assert log.latest_checkpoint() is None


def test_reopening_keeps_the_log(audit_db_url: str, signer: KeySigner) -> None:
    with AuditLog.open(audit_db_url, checkpoint_signer=signer, checkpoint_interval=3) as log:
        log.append_many([make_entry(i) for i in range(4)])
        log_id = log.log_id()
    with AuditLog.open(audit_db_url, checkpoint_signer=signer, checkpoint_interval=3) as log:
        log.append_many([make_entry(i) for i in range(4)])
        assert log.log_id() == log_id and log.size() == 8
        assert [c.tree_size for c in log.checkpoints()] == [3, 6]
        assert log.verify(trusted=[signer.certificate]).status is AuditStatus.VALID


def test_unreachable_database_is_an_explicit_error(tmp_path: object) -> None:
    with pytest.raises(DatabaseUnavailableError, match="unavailable"):
        AuditLog.open("postgresql+psycopg://nobody@127.0.0.1:1/audit")
    with pytest.raises(DatabaseUnavailableError):
        AuditLog.open("sqlite:////proc/medverify-no-such-dir/audit.db")


def test_entry_validation() -> None:
    with pytest.raises(ValueError, match="sha256"):
        make_entry(1, file_sha256="abc")
    with pytest.raises(ValueError, match="channel"):
        make_entry(1, channel="carrier-pigeon")
    with pytest.raises(ValueError, match="non-finite"):
        make_entry(1, details={"x": float("nan")})
    with pytest.raises(ValueError, match="not JSON"):
        make_entry(1, details={"x": object()})
    with pytest.raises(ValueError):
        make_entry(1, event="Not A Word")
    local = AuditEntry(event="key", channel=Channel.KEYS).with_local_actor()
    assert local.os_user and local.host
    naive = make_entry(1, when=dt.datetime(2024, 1, 2, 3, 4, 5))
    assert naive.when == dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert make_signer().certificate is not None
