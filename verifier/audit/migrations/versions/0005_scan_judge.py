"""Scan state keyed on what judged each file, and the verdict it got.

``scan_files.judge`` is the digest of the checks, trust store and revocations, site policy, watermark keys and
detector model a file was last checked with (:class:`verifier.judge.Judge`); an incremental scan checks a file again
when it differs, not only when the file's bytes changed. ``verdict`` and ``action`` are the file's last ones, so that
a scan's summary and exit code cover the files it skipped too. ``scan_runs.judge`` keeps the parts of the judge a
run used, so that a later scan can say what changed. Rows written before this migration have no judge: the next
incremental scan checks their files again.

Revision ID: 0005_scan_judge
Revises: 0004_api_tokens
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_scan_judge"
down_revision = "0004_api_tokens"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("scan_files") as batch:
        batch.add_column(sa.Column("judge", sa.String(64)))
        batch.add_column(sa.Column("verdict", sa.String(64)))
        batch.add_column(sa.Column("action", sa.String(32)))
    with op.batch_alter_table("scan_runs") as batch:
        batch.add_column(sa.Column("judge", sa.JSON))


def downgrade() -> None:
    with op.batch_alter_table("scan_runs") as batch:
        batch.drop_column("judge")
    with op.batch_alter_table("scan_files") as batch:
        batch.drop_column("action")
        batch.drop_column("verdict")
        batch.drop_column("judge")
