"""Alembic environment for the audit database.

medverify runs migrations itself (:func:`verifier.audit._db.upgrade`) and hands Alembic an open connection in
``config.attributes["connection"]``; with the plain ``alembic`` tool, ``sqlalchemy.url`` is used instead.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from verifier.audit._orm import Base

config = context.config


def _run(connection: sa.Connection) -> None:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("the audit database migrations run online only")

_connection = config.attributes.get("connection")
if _connection is not None:
    _run(_connection)
else:
    _engine = sa.create_engine(config.get_main_option("sqlalchemy.url") or "")
    with _engine.begin() as _conn:
        _run(_conn)
    _engine.dispose()
