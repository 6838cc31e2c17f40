"""Initial audit schema: records, head row, signed checkpoints.

Revision ID: 0001_initial
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid

import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_records",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("leaf_hash", sa.String(64), nullable=False),
        sa.Column("tree_root", sa.String(64), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("path", sa.Text),
        sa.Column("sop_instance_uid", sa.String(64)),
        sa.Column("file_sha256", sa.String(64)),
        sa.Column("os_user", sa.Text),
        sa.Column("host", sa.Text),
        sa.Column("peer_ae_title", sa.Text),
        sa.Column("peer_address", sa.Text),
        sa.Column("api_token_id", sa.Text),
        sa.Column("signature_report", sa.JSON),
        sa.Column("watermark_report", sa.JSON),
        sa.Column("detection_report", sa.JSON),
        sa.Column("model_tag", sa.Text),
        sa.Column("policy_version", sa.Text),
        sa.Column("verdict", sa.String(64)),
        sa.Column("action", sa.String(32)),
        sa.Column("details", sa.JSON, nullable=False),
    )
    for column in ("recorded_at", "channel", "sop_instance_uid", "file_sha256", "verdict"):
        op.create_index(f"ix_audit_records_{column}", "audit_records", [column])
    head = op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("log_id", sa.String(36), nullable=False),
        sa.Column("tree_size", sa.BigInteger, nullable=False),
        sa.Column("root_hash", sa.String(64), nullable=False),
        sa.Column("frontier", sa.Text, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "audit_checkpoints",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("log_id", sa.String(36), nullable=False),
        sa.Column("tree_size", sa.BigInteger, nullable=False, unique=True),
        sa.Column("root_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("signature", sa.LargeBinary, nullable=False),
        sa.Column("certificate_pem", sa.Text, nullable=False),
    )
    now = dt.datetime.now(dt.UTC)
    if op.get_bind().dialect.name == "sqlite":
        now = now.replace(tzinfo=None)
    op.bulk_insert(
        head,
        [
            {
                "id": 1,
                "log_id": str(uuid.uuid4()),
                "tree_size": 0,
                "root_hash": hashlib.sha256(b"").hexdigest(),
                "frontier": "[]",
                "updated_at": now,
            }
        ],
    )


def downgrade() -> None:
    op.drop_table("audit_checkpoints")
    op.drop_table("audit_head")
    op.drop_table("audit_records")
