"""The audit database's tables, in SQLAlchemy Core; the Alembic migrations in ``migrations/`` create them.

The log itself (:mod:`verifier.audit.log`) needs no ORM, so these tables are plain :class:`~sqlalchemy.Table`
objects: importing ``sqlalchemy.orm`` would double the start-up cost of every command that writes one record.
The tables that do use the ORM (scan state, API tokens, the claims image index) declare their classes on
:class:`verifier.audit._orm.Base`, which shares :data:`metadata` with these tables.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from verifier.audit.entry import normalize_time

__all__ = ["UTCDateTime", "checkpoints", "head", "metadata", "records"]


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

#: Every table of the audit database (the ORM tables join it through ``verifier.audit._orm.Base``).
metadata = sa.MetaData()

#: One audit record. ``id`` is the 1-based position in the log: leaf index + 1.
records = sa.Table(
    "audit_records",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("leaf_hash", sa.String(64), nullable=False),
    #: Tree head after this record was appended (lets ``verify`` name the first rewritten record).
    sa.Column("tree_root", sa.String(64), nullable=False),
    sa.Column("recorded_at", UTCDateTime, nullable=False, index=True),
    sa.Column("event", sa.String(64), nullable=False),
    sa.Column("channel", sa.String(16), nullable=False, index=True),
    sa.Column("path", sa.Text),
    sa.Column("sop_instance_uid", sa.String(64), index=True),
    sa.Column("file_sha256", sa.String(64), index=True),
    sa.Column("os_user", sa.Text),
    sa.Column("host", sa.Text),
    sa.Column("peer_ae_title", sa.Text),
    sa.Column("peer_address", sa.Text),
    sa.Column("api_token_id", sa.Text),
    sa.Column("signature_report", _JSON),
    sa.Column("watermark_report", _JSON),
    sa.Column("detection_report", _JSON),
    sa.Column("model_tag", sa.Text),
    sa.Column("policy_version", sa.Text),
    sa.Column("verdict", sa.String(64), index=True),
    sa.Column("action", sa.String(32)),
    sa.Column("details", _JSON, nullable=False),
)

#: The single row (``id = 1``) holding the log's identity and running tree state; appends lock it.
head = sa.Table(
    "audit_head",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("log_id", sa.String(36), nullable=False),
    sa.Column("tree_size", sa.BigInteger, nullable=False),
    sa.Column("root_hash", sa.String(64), nullable=False),
    #: JSON list of hex subtree roots (RFC 9162 compact range of [0, tree_size)), largest first.
    sa.Column("frontier", sa.Text, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

#: A signed tree head.
checkpoints = sa.Table(
    "audit_checkpoints",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("log_id", sa.String(36), nullable=False),
    sa.Column("tree_size", sa.BigInteger, nullable=False, unique=True),
    sa.Column("root_hash", sa.String(64), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("signature", sa.LargeBinary, nullable=False),
    sa.Column("certificate_pem", sa.Text, nullable=False),
)
