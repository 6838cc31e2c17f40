"""SQLAlchemy 2 models of the audit database; the Alembic migrations in ``migrations/`` create them."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from verifier.audit.entry import normalize_time

__all__ = ["Base", "CheckpointRow", "HeadRow", "RecordRow", "UTCDateTime"]


class UTCDateTime(sa.types.TypeDecorator[dt.datetime]):
    """A timestamp stored in UTC and always read back as an aware UTC datetime (SQLite keeps no zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        value = normalize_time(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: sa.Dialect) -> dt.datetime | None:
        return None if value is None else normalize_time(value)


_JSON = sa.JSON(none_as_null=True)


class Base(DeclarativeBase):
    pass


class RecordRow(Base):
    """One audit record. ``id`` is the 1-based position in the log: leaf index + 1."""

    __tablename__ = "audit_records"

    id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    leaf_hash: Mapped[str] = mapped_column(sa.String(64))
    #: Tree head after this record was appended (lets ``verify`` name the first rewritten record).
    tree_root: Mapped[str] = mapped_column(sa.String(64))
    recorded_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    event: Mapped[str] = mapped_column(sa.String(64))
    channel: Mapped[str] = mapped_column(sa.String(16), index=True)
    path: Mapped[str | None] = mapped_column(sa.Text)
    sop_instance_uid: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    file_sha256: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    os_user: Mapped[str | None] = mapped_column(sa.Text)
    host: Mapped[str | None] = mapped_column(sa.Text)
    peer_ae_title: Mapped[str | None] = mapped_column(sa.Text)
    peer_address: Mapped[str | None] = mapped_column(sa.Text)
    api_token_id: Mapped[str | None] = mapped_column(sa.Text)
    signature_report: Mapped[dict[str, Any] | None] = mapped_column(_JSON)
    watermark_report: Mapped[dict[str, Any] | None] = mapped_column(_JSON)
    detection_report: Mapped[dict[str, Any] | None] = mapped_column(_JSON)
    model_tag: Mapped[str | None] = mapped_column(sa.Text)
    policy_version: Mapped[str | None] = mapped_column(sa.Text)
    verdict: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    action: Mapped[str | None] = mapped_column(sa.String(32))
    details: Mapped[dict[str, Any]] = mapped_column(_JSON)


class HeadRow(Base):
    """The single row (``id = 1``) holding the log's identity and running tree state; appends lock it."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    log_id: Mapped[str] = mapped_column(sa.String(36))
    tree_size: Mapped[int] = mapped_column(sa.BigInteger)
    root_hash: Mapped[str] = mapped_column(sa.String(64))
    #: JSON list of hex subtree roots (RFC 9162 compact range of [0, tree_size)), largest first.
    frontier: Mapped[str] = mapped_column(sa.Text)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class CheckpointRow(Base):
    """A signed tree head."""

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    log_id: Mapped[str] = mapped_column(sa.String(36))
    tree_size: Mapped[int] = mapped_column(sa.BigInteger, unique=True)
    root_hash: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    signature: Mapped[bytes] = mapped_column(sa.LargeBinary)
    certificate_pem: Mapped[str] = mapped_column(sa.Text)


records: sa.Table = RecordRow.__table__  # type: ignore[assignment]
head: sa.Table = HeadRow.__table__  # type: ignore[assignment]
checkpoints: sa.Table = CheckpointRow.__table__  # type: ignore[assignment]
