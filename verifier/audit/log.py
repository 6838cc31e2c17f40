"""The tamper-evident audit log (:class:`AuditLog`) and the result of checking it."""

from __future__ import annotations

import dataclasses
import datetime as dt
import fnmatch
import json
from collections.abc import Iterable, Iterator
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from cryptography import x509

from verifier.audit import _db
from verifier.audit._schema import checkpoints, head, records
from verifier.audit.checkpoint import (
    CheckpointSigner,
    InclusionProof,
    SignedCheckpoint,
    TrustedCertificates,
    is_trusted,
)
from verifier.audit.entry import (
    AuditEntry,
    AuditReceipt,
    AuditRecord,
    Channel,
    normalize_time,
    rfc3339,
    utc_now,
)
from verifier.audit.merkle import (
    canonical_encoding,
    frontier_append,
    frontier_root,
    inclusion_path,
    leaf_hash,
    tree_root,
)
from verifier.errors import AuditError

__all__ = ["AuditLog", "AuditStatus", "AuditVerification"]

#: Entry field -> column, in entry order. ``when`` is stored as ``recorded_at``.
_FIELD_COLUMNS: tuple[tuple[str, str], ...] = tuple(
    (f.name, "recorded_at" if f.name == "when" else f.name) for f in dataclasses.fields(AuditEntry)
)
_VERIFY_BATCH = 5000

# Built once: the append path is hot (thousands per second) and statement construction is not free.
_LOCK_HEAD = sa.select(head).where(head.c.id == 1).with_for_update()
_INSERT_RECORDS = sa.insert(records)
_INSERT_CHECKPOINT = sa.insert(checkpoints)
_UPDATE_HEAD = (
    sa.update(head)
    .where(head.c.id == 1)
    .values(
        tree_size=sa.bindparam("new_size"),
        root_hash=sa.bindparam("new_root"),
        frontier=sa.bindparam("new_frontier"),
        updated_at=sa.bindparam("new_time"),
    )
)


class AuditStatus(StrEnum):
    """What :meth:`AuditLog.verify` found."""

    #: Every record, the head and every checkpoint agree, and every checkpoint is signed by a trusted key.
    VALID = "valid"
    #: A record was edited, deleted, inserted or moved (``first_bad_record_id`` names the first).
    TAMPERED = "tampered"
    #: A checkpoint's signature is bad, or it signs a tree head the records do not give.
    BAD_CHECKPOINT = "bad-checkpoint"
    #: A checkpoint is correctly signed, but by a certificate the caller does not trust.
    UNTRUSTED_CHECKPOINT = "untrusted-checkpoint"


@dataclasses.dataclass(frozen=True, kw_only=True)
class AuditVerification:
    """Result of recomputing the whole log. Read ``status``; this object has no truth value."""

    status: AuditStatus
    records_checked: int
    checkpoints_checked: int
    #: Records in the log head (what the log claims to hold).
    tree_size: int
    #: Tree head recomputed from the records, hex.
    root_hash: str
    #: The first record found bad (a missing one is named by the id it should have had).
    first_bad_record_id: int | None = None
    #: Tree size of the checkpoint found bad, if a checkpoint was.
    bad_checkpoint_size: int | None = None
    reason: str = ""
    #: Records newer than the latest signed checkpoint; they rest on the unsigned head row alone.
    unanchored_records: int = 0

    def __bool__(self) -> bool:
        raise TypeError("read AuditVerification.status instead of testing the result as a bool")

    def to_json_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["status"] = self.status.value
        return out


class _Problem(Exception):
    def __init__(self, status: AuditStatus, reason: str, record: int | None = None, cp: int | None = None):
        super().__init__(reason)
        self.status, self.reason, self.record, self.checkpoint = status, reason, record, cp


def _row_fields(row: sa.Row[Any]) -> dict[str, Any]:
    """The JSON fields of a stored record exactly as the canonical encoding uses them."""
    fields = {name: row._mapping[column] for name, column in _FIELD_COLUMNS}
    when = fields["when"]
    fields["when"] = rfc3339(when) if isinstance(when, dt.datetime) else when
    return fields


def _entry_columns(entry: AuditEntry) -> dict[str, Any]:
    values = {column: getattr(entry, name) for name, column in _FIELD_COLUMNS}
    values["channel"] = entry.channel.value
    return values


def _row_record(row: sa.Row[Any]) -> AuditRecord:
    m = row._mapping
    try:
        entry = AuditEntry(**{name: m[column] for name, column in _FIELD_COLUMNS})
    except (TypeError, ValueError) as error:
        raise AuditError(
            f"audit record {m['id']} is malformed ({error}); run `medverify audit verify`"
        ) from error
    return AuditRecord(id=m["id"], leaf_index=m["id"] - 1, leaf_hash=m["leaf_hash"], entry=entry)


def _glob_to_like(pattern: str) -> str:
    out = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        elif ch == "[":
            end = pattern.find("]", i + 1)
            out.append("_" if end > 0 else "[")
            i = end if end > 0 else i
        elif ch in "%_\\":
            out.append("\\" + ch)
        else:
            out.append(ch)
        i += 1
    return "".join(out)


class AuditLog:
    """An append-only, RFC 9162 Merkle-tree audit log in SQLite or PostgreSQL.

    Open it with :meth:`open`. Records are only ever appended; medverify never updates or deletes them.
    Appends from many processes are serialised on the head row (SQLite ``BEGIN IMMEDIATE``, PostgreSQL
    ``SELECT ... FOR UPDATE``), which keeps the running tree state, so an append costs O(log n).
    """

    def __init__(
        self,
        engine: sa.Engine,
        url: str,
        *,
        checkpoint_signer: CheckpointSigner | None,
        checkpoint_interval: int,
    ) -> None:
        if checkpoint_interval < 1:
            raise ValueError("checkpoint_interval must be at least 1")
        self._engine = engine
        self._url = url
        self._signer = checkpoint_signer
        self._interval = checkpoint_interval

    @classmethod
    def open(
        cls,
        url: str,
        *,
        checkpoint_signer: CheckpointSigner | None = None,
        checkpoint_interval: int = 1000,
        migrate: bool = True,
    ) -> AuditLog:
        """Connect to the database at ``url``, creating and migrating it if needed.

        With a ``checkpoint_signer``, a signed checkpoint is written whenever the log reaches a multiple of
        ``checkpoint_interval`` records; without one, someone holding the key must call :meth:`checkpoint`.
        Raises :class:`DatabaseUnavailableError` if the database cannot be reached.
        """
        engine = _db.make_engine(url)
        with _db.db_errors(url):
            if migrate:
                if not _db.is_at_head(engine) and _db.current_revision(engine) != _db.head_revision():
                    _db.upgrade(engine)
            else:
                with engine.connect():
                    pass
        return cls(engine, url, checkpoint_signer=checkpoint_signer, checkpoint_interval=checkpoint_interval)

    @property
    def url(self) -> str:
        """The database URL with any password hidden."""
        return _db.redact(self._url)

    @property
    def backend(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._engine.dialect.name

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- writing -------------------------------------------------------------------------------------------

    def append(self, entry: AuditEntry) -> AuditReceipt:
        """Record one event in its own transaction."""
        return self.append_many([entry])[0]

    def append_many(self, entries: Iterable[AuditEntry]) -> list[AuditReceipt]:
        """Record several events in one transaction: all of them or, on error, none."""
        batch = list(entries)
        if not batch:
            return []
        for entry in batch:
            if not isinstance(entry, AuditEntry):
                raise TypeError("append takes AuditEntry objects")
        receipts: list[AuditReceipt] = []
        with _db.db_errors(self._url), _db.write_transaction(self._engine) as conn:
            state = conn.execute(_LOCK_HEAD).one()
            size: int = state.tree_size
            frontier = [bytes.fromhex(h) for h in json.loads(state.frontier)]
            rows: list[dict[str, Any]] = []
            signed: list[SignedCheckpoint] = []
            root = b""
            for entry in batch:
                leaf = leaf_hash(canonical_encoding(size, entry.to_json_dict()))
                frontier_append(frontier, size, leaf)
                size += 1
                root = frontier_root(frontier)
                rows.append(
                    {"id": size, "leaf_hash": leaf.hex(), "tree_root": root.hex(), **_entry_columns(entry)}
                )
                receipts.append(AuditReceipt(id=size, leaf_index=size - 1, leaf_hash=leaf.hex()))
                if self._signer is not None and size % self._interval == 0:
                    signed.append(
                        SignedCheckpoint.create(
                            self._signer,
                            log_id=state.log_id,
                            tree_size=size,
                            root_hash=root.hex(),
                            when=utc_now(),
                        )
                    )
            conn.execute(_INSERT_RECORDS, rows)
            conn.execute(
                _UPDATE_HEAD,
                {
                    "new_size": size,
                    "new_root": root.hex(),
                    "new_frontier": json.dumps([h.hex() for h in frontier]),
                    "new_time": utc_now(),
                },
            )
            for cp in signed:
                conn.execute(_INSERT_CHECKPOINT, _checkpoint_row(cp))
        return receipts

    def checkpoint(self) -> SignedCheckpoint:
        """Sign the current tree head now (or return the checkpoint already signed at this size)."""
        if self._signer is None:
            raise AuditError("no audit signing key was given; cannot write a checkpoint")
        with _db.db_errors(self._url), _db.write_transaction(self._engine) as conn:
            state = conn.execute(_LOCK_HEAD).one()
            existing = conn.execute(
                sa.select(checkpoints).where(checkpoints.c.tree_size == state.tree_size)
            ).first()
            if existing is not None:
                return _checkpoint_from_row(existing)
            cp = SignedCheckpoint.create(
                self._signer,
                log_id=state.log_id,
                tree_size=state.tree_size,
                root_hash=state.root_hash,
                when=utc_now(),
            )
            conn.execute(_INSERT_CHECKPOINT, _checkpoint_row(cp))
        return cp

    # -- reading -------------------------------------------------------------------------------------------

    def size(self) -> int:
        """How many records the log head says the log holds."""
        with _db.db_errors(self._url), self._engine.connect() as conn:
            return int(conn.execute(sa.select(head.c.tree_size).where(head.c.id == 1)).scalar_one())

    def log_id(self) -> str:
        """The log's identity, a UUID chosen when the database was created; checkpoints name it."""
        with _db.db_errors(self._url), self._engine.connect() as conn:
            return str(conn.execute(sa.select(head.c.log_id).where(head.c.id == 1)).scalar_one())

    def latest_checkpoint(self) -> SignedCheckpoint | None:
        """The signed checkpoint with the largest tree size, if any."""
        with _db.db_errors(self._url), self._engine.connect() as conn:
            row = conn.execute(
                sa.select(checkpoints).order_by(checkpoints.c.tree_size.desc()).limit(1)
            ).first()
        return None if row is None else _checkpoint_from_row(row)

    def checkpoints(self) -> list[SignedCheckpoint]:
        """Every signed checkpoint, oldest first."""
        with _db.db_errors(self._url), self._engine.connect() as conn:
            rows = conn.execute(sa.select(checkpoints).order_by(checkpoints.c.tree_size)).all()
        return [_checkpoint_from_row(r) for r in rows]

    def get(self, record_id: int) -> AuditRecord:
        """The record with ``record_id``; :class:`AuditError` if there is none."""
        with _db.db_errors(self._url), self._engine.connect() as conn:
            row = conn.execute(sa.select(records).where(records.c.id == record_id)).first()
        if row is None:
            raise AuditError(f"there is no audit record {record_id}")
        return _row_record(row)

    def query(
        self,
        *,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        verdict: str | None = None,
        channel: Channel | str | None = None,
        event: str | None = None,
        path_glob: str | None = None,
        sha256: str | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> Iterator[AuditRecord]:
        """Records matching every given filter, in log order (``since`` inclusive, ``until`` exclusive).

        ``path_glob`` is a shell pattern (``*``, ``?``, ``[...]``) matched case-sensitively on the whole path.
        """
        stmt = sa.select(records)
        if since is not None:
            stmt = stmt.where(records.c.recorded_at >= normalize_time(since))
        if until is not None:
            stmt = stmt.where(records.c.recorded_at < normalize_time(until))
        if verdict is not None:
            stmt = stmt.where(records.c.verdict == verdict)
        if channel is not None:
            stmt = stmt.where(records.c.channel == str(Channel(channel)))
        if event is not None:
            stmt = stmt.where(records.c.event == event)
        if sha256 is not None:
            stmt = stmt.where(records.c.file_sha256 == sha256.lower())
        if path_glob is not None:
            stmt = stmt.where(records.c.path.like(_glob_to_like(path_glob), escape="\\"))
        stmt = stmt.order_by(records.c.id.desc() if newest_first else records.c.id)
        if limit is not None and limit < 0:
            raise ValueError("limit must not be negative")
        if limit is not None and path_glob is None:
            stmt = stmt.limit(limit)
        count = 0
        with _db.db_errors(self._url), _db.read_transaction(self._engine) as conn:
            for row in conn.execution_options(yield_per=1000).execute(stmt):
                if limit is not None and count >= limit:
                    return
                if path_glob is not None and not fnmatch.fnmatchcase(row.path or "", path_glob):
                    continue
                count += 1
                yield _row_record(row)

    # -- proving and checking ------------------------------------------------------------------------------

    def prove(self, record_id: int, *, tree_size: int | None = None) -> InclusionProof:
        """An inclusion proof of ``record_id`` in the tree of ``tree_size`` records.

        ``tree_size`` defaults to the latest signed checkpoint, so the proof can be checked against it; it
        must be the size of some checkpoint. Raises :class:`AuditError` when the stored log does not match.
        """
        with _db.db_errors(self._url), _db.read_transaction(self._engine) as conn:
            if tree_size is None:
                row = conn.execute(
                    sa.select(checkpoints).order_by(checkpoints.c.tree_size.desc()).limit(1)
                ).first()
            else:
                row = conn.execute(sa.select(checkpoints).where(checkpoints.c.tree_size == tree_size)).first()
            if row is None:
                raise AuditError(
                    "there is no signed checkpoint"
                    + ("" if tree_size is None else f" of size {tree_size}")
                    + " to prove against; run `medverify audit checkpoint` first"
                )
            cp = _checkpoint_from_row(row)
            if not 1 <= record_id <= cp.tree_size:
                raise AuditError(
                    f"record {record_id} is not covered by the checkpoint of {cp.tree_size} records"
                    + ("; run `medverify audit checkpoint` first" if record_id > cp.tree_size else "")
                )
            record = conn.execute(sa.select(records).where(records.c.id == record_id)).first()
            hashes: Iterable[Any] = conn.execute(
                sa.select(records.c.leaf_hash).where(records.c.id <= cp.tree_size).order_by(records.c.id)
            ).scalars()
            leaves = [bytes.fromhex(str(h)) for h in hashes]
        if record is None or len(leaves) != cp.tree_size:
            raise AuditError("the stored log does not match its checkpoint; run `medverify audit verify`")
        encoding = canonical_encoding(record_id - 1, _row_fields(record))
        if leaf_hash(encoding) != leaves[record_id - 1] or tree_root(leaves).hex() != cp.root_hash:
            raise AuditError("the stored log does not match its checkpoint; run `medverify audit verify`")
        return InclusionProof(
            log_id=cp.log_id,
            record_id=record_id,
            leaf_index=record_id - 1,
            tree_size=cp.tree_size,
            encoding=encoding,
            audit_path=tuple(h.hex() for h in inclusion_path(record_id - 1, leaves)),
            root_hash=cp.root_hash,
        )

    def verify(self, *, trusted: TrustedCertificates) -> AuditVerification:
        """Recompute every leaf hash and tree head and check them against the head row and every checkpoint.

        Finds edited, deleted, inserted and reordered records. ``trusted`` says which certificates may sign
        checkpoints (pinned certificates, or a callable such as a trust policy check); an empty list is
        refused.
        Records edited *together with* every stored hash after them are found by the first signed checkpoint
        that covers them (and only then: records after the latest checkpoint rest on the unsigned head row).
        """
        if not callable(trusted) and not trusted:
            raise AuditError("no trusted checkpoint certificate was given; refusing to trust any signer")
        checked = 0
        cps_checked = 0
        frontier: list[bytes] = []
        root = frontier_root(frontier)
        size = 0
        tree_size = 0
        latest_cp = 0
        try:
            with _db.db_errors(self._url), _db.read_transaction(self._engine) as conn:
                state = conn.execute(sa.select(head).where(head.c.id == 1)).one()
                tree_size = state.tree_size
                cp_rows = conn.execute(sa.select(checkpoints).order_by(checkpoints.c.tree_size)).all()
                pending = [self._checked_checkpoint(r, state.log_id, trusted) for r in cp_rows]
                latest_cp = pending[-1].tree_size if pending else 0
                cp_pos = 0
                previous_cp = 0
                stmt = sa.select(records).order_by(records.c.id)
                for row in conn.execution_options(yield_per=_VERIFY_BATCH).execute(stmt):
                    expected = size + 1
                    if row.id != expected:
                        raise _Problem(
                            AuditStatus.TAMPERED,
                            f"record {expected} is missing (deleted); the next stored record is {row.id}",
                            expected,
                        )
                    if row.id > tree_size:
                        raise _Problem(
                            AuditStatus.TAMPERED,
                            f"record {row.id} is beyond the log head of {tree_size} records (inserted)",
                            row.id,
                        )
                    leaf = leaf_hash(canonical_encoding(size, _row_fields(row)))
                    if leaf.hex() != row.leaf_hash:
                        raise _Problem(
                            AuditStatus.TAMPERED,
                            f"record {row.id} does not match its leaf hash (edited, or moved from elsewhere)",
                            row.id,
                        )
                    frontier_append(frontier, size, leaf)
                    size += 1
                    root = frontier_root(frontier)
                    if root.hex() != row.tree_root:
                        raise _Problem(
                            AuditStatus.TAMPERED,
                            f"the tree head after record {row.id} is not the stored one "
                            "(the record was rewritten together with its leaf hash)",
                            row.id,
                        )
                    checked += 1
                    while cp_pos < len(pending) and pending[cp_pos].tree_size == size:
                        cp = pending[cp_pos]
                        if cp.root_hash != root.hex():
                            raise _Problem(
                                AuditStatus.TAMPERED,
                                f"the signed checkpoint of {size} records does not match the records: a "
                                f"record in {previous_cp + 1}..{size} was rewritten with the stored hashes",
                                previous_cp + 1,
                                size,
                            )
                        previous_cp = size
                        cp_pos += 1
                        cps_checked += 1
                if cp_pos < len(pending):
                    raise _Problem(
                        AuditStatus.TAMPERED,
                        f"a signed checkpoint covers {pending[cp_pos].tree_size} records, but {size} remain "
                        "(records deleted)",
                        size + 1,
                        pending[cp_pos].tree_size,
                    )
                if size != tree_size:
                    raise _Problem(
                        AuditStatus.TAMPERED,
                        f"the log head says {tree_size} records but {size} remain (records deleted)",
                        size + 1,
                    )
                if root.hex() != state.root_hash or [h.hex() for h in frontier] != json.loads(state.frontier):
                    raise _Problem(AuditStatus.TAMPERED, "the log head does not match the records", None)
        except _Problem as problem:
            return AuditVerification(
                status=problem.status,
                records_checked=checked,
                checkpoints_checked=cps_checked,
                tree_size=tree_size,
                root_hash=root.hex(),
                first_bad_record_id=problem.record,
                bad_checkpoint_size=problem.checkpoint,
                reason=problem.reason,
                unanchored_records=max(tree_size - latest_cp, 0),
            )
        return AuditVerification(
            status=AuditStatus.VALID,
            records_checked=checked,
            checkpoints_checked=cps_checked,
            tree_size=tree_size,
            root_hash=root.hex(),
            reason=f"{checked} records and {cps_checked} signed checkpoints are consistent",
            unanchored_records=max(tree_size - latest_cp, 0),
        )

    @staticmethod
    def _checked_checkpoint(row: sa.Row[Any], log_id: str, trusted: TrustedCertificates) -> SignedCheckpoint:
        size = row.tree_size
        try:
            cp = _checkpoint_from_row(row)
        except (AuditError, ValueError) as error:
            raise _Problem(
                AuditStatus.BAD_CHECKPOINT, f"checkpoint of {size} records is malformed: {error}", None, size
            ) from error
        if cp.log_id != log_id:
            raise _Problem(
                AuditStatus.BAD_CHECKPOINT, f"checkpoint of {size} records names another log", None, size
            )
        if not cp.signature_valid():
            raise _Problem(
                AuditStatus.BAD_CHECKPOINT, f"checkpoint of {size} records has a bad signature", None, size
            )
        if not is_trusted(cp.certificate, cp.created_at, trusted):
            raise _Problem(
                AuditStatus.UNTRUSTED_CHECKPOINT,
                f"checkpoint of {size} records is signed by an untrusted certificate "
                f"({cp.certificate.subject.rfc4514_string()})",
                None,
                size,
            )
        return cp


def _checkpoint_row(cp: SignedCheckpoint) -> dict[str, Any]:
    return {
        "log_id": cp.log_id,
        "tree_size": cp.tree_size,
        "root_hash": cp.root_hash,
        "created_at": cp.created_at,
        "signature": cp.signature,
        "certificate_pem": cp.certificate_pem,
    }


def _checkpoint_from_row(row: sa.Row[Any]) -> SignedCheckpoint:
    try:
        cert = x509.load_pem_x509_certificate(row.certificate_pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as error:
        raise AuditError(f"checkpoint of {row.tree_size} records holds an unreadable certificate") from error
    return SignedCheckpoint(
        log_id=row.log_id,
        tree_size=row.tree_size,
        root_hash=row.root_hash,
        created_at=row.created_at,
        signature=bytes(row.signature),
        certificate=cert,
    )
