"""The declarative base of the audit database's ORM tables (scan state, API tokens, the claims image index).

It shares :data:`verifier.audit._schema.metadata` with the log's Core tables, so that one metadata describes the
whole database (the Alembic environment reads it). Only the modules that use the ORM import this one.
"""

from __future__ import annotations

from sqlalchemy.orm import DeclarativeBase

from verifier.audit._schema import metadata

__all__ = ["Base"]


class Base(DeclarativeBase):
    metadata = metadata
