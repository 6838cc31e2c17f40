"""Image index for claim audits: perceptual and exact hashes of every image seen, so that an image reused across
claims is found also when the two claims were audited months apart.

Like the scan state, this table is bookkeeping next to the Merkle log, not part of it: every row names the audit
record it came from, and the index can be rebuilt from the files.

Revision ID: 0003_image_index
Revises: 0002_scan_state
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_image_index"
down_revision = "0002_scan_state"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "image_index",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("record_id", sa.BigInteger),
        sa.Column("claim_id", sa.Text),
        sa.Column("path", sa.Text),
        sa.Column("sop_instance_uid", sa.String(64)),
        sa.Column("file_sha256", sa.String(64)),
        sa.Column("pixel_sha256", sa.String(64)),
        sa.Column("phash", sa.String(64)),
        sa.Column("dhash", sa.String(64)),
        sa.Column("patient_key", sa.String(64)),
        sa.Column("study_instance_uid", sa.String(64)),
        sa.Column("study_date", sa.String(8)),
        sa.Column("body_part", sa.Text),
        # A 96x96 rank-equalised uint8 thumbnail: confirms near-duplicates of later audits (normalised
        # cross-correlation) and shows the earlier image next to the new one in the report.
        sa.Column("match_view", sa.LargeBinary),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_image_index_claim_id", "image_index", ["claim_id"])
    op.create_index("ix_image_index_pixel_sha256", "image_index", ["pixel_sha256"])
    op.create_index("ix_image_index_phash", "image_index", ["phash"])
    op.create_index("ix_image_index_sop_instance_uid", "image_index", ["sop_instance_uid"])
    op.create_index("ix_image_index_study_instance_uid", "image_index", ["study_instance_uid"])
    op.create_index("ix_image_index_file_sha256", "image_index", ["file_sha256"])
    # Multi-index hashing: each 64-bit pHash of each central-crop scale, split into four 16-bit bands; a near
    # duplicate shares a band (up to one bit) with its source, so a lookup probes four indexes, never the table.
    op.create_table(
        "image_hashes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("image_id", sa.Integer, sa.ForeignKey("image_index.id"), nullable=False),
        sa.Column("scale", sa.SmallInteger, nullable=False),
        sa.Column("phash", sa.String(16), nullable=False),
        sa.Column("b0", sa.Integer, nullable=False),
        sa.Column("b1", sa.Integer, nullable=False),
        sa.Column("b2", sa.Integer, nullable=False),
        sa.Column("b3", sa.Integer, nullable=False),
    )
    for band in ("b0", "b1", "b2", "b3"):
        op.create_index(f"ix_image_hashes_{band}", "image_hashes", [band])


def downgrade() -> None:
    for band in ("b0", "b1", "b2", "b3"):
        op.drop_index(f"ix_image_hashes_{band}", table_name="image_hashes")
    op.drop_table("image_hashes")
    for name in ("file_sha256", "study_instance_uid", "sop_instance_uid", "phash", "pixel_sha256", "claim_id"):
        op.drop_index(f"ix_image_index_{name}", table_name="image_index")
    op.drop_table("image_index")
