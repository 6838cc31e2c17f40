"""Counts over the audit log for monitoring: records per event, channel, verdict and action."""

from __future__ import annotations

import dataclasses

import sqlalchemy as sa

from verifier.audit import _db
from verifier.audit._schema import records
from verifier.audit.log import AuditLog

__all__ = ["RecordCount", "record_counts"]


@dataclasses.dataclass(frozen=True)
class RecordCount:
    event: str
    channel: str
    verdict: str
    action: str
    count: int


def record_counts(log: AuditLog) -> list[RecordCount]:
    """How many records there are per (event, channel, verdict, action); a missing verdict or action is ""."""
    stmt = sa.select(
        records.c.event, records.c.channel, records.c.verdict, records.c.action, sa.func.count()
    ).group_by(records.c.event, records.c.channel, records.c.verdict, records.c.action)
    engine = log._engine
    with _db.db_errors(log.url), _db.read_transaction(engine) as conn:
        rows = conn.execute(stmt).all()
    return [RecordCount(str(e), str(c), str(v or ""), str(a or ""), int(str(n))) for e, c, v, a, n in rows]
