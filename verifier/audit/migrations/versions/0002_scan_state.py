"""Archive scan state: scan runs and the last known state of every scanned file.

These tables are bookkeeping for incremental and resumable scans (``medverify scan``); they are not part of the
Merkle log. The audit records of a scan are, and the scan state can always be rebuilt from them.

Revision ID: 0002_scan_state
Revises: 0001_initial
Create Date: 2025-01-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_scan_state"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "scan_runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("root", sa.Text, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("counts", sa.JSON),
        sa.Column("host", sa.Text),
        sa.Column("pid", sa.Integer),
        sa.Column("start_record", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_scan_runs_root_status", "scan_runs", ["root", "status"])
    op.create_table(
        "scan_files",
        sa.Column("root", sa.Text, primary_key=True),
        sa.Column("path", sa.Text, primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("mtime_ns", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64)),
        sa.Column("last_record_id", sa.BigInteger, nullable=False),
        sa.Column("last_run_id", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("scan_files")
    op.drop_index("ix_scan_runs_root_status", table_name="scan_runs")
    op.drop_table("scan_runs")
