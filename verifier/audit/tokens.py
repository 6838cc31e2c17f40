"""API tokens of the HTTP API, kept in the audit database (table ``api_tokens``, migration 0004).

A token reads ``mv_<id>_<secret>``: ``id`` is 16 hex digits that name the token in listings and audit records
(``api_token_id``), ``secret`` is 256 random bits (URL-safe base64). Only the SHA-256 of the whole token is
stored, and the token is shown once, when it is created.

Why a plain SHA-256 and not a password hash (bcrypt, scrypt, Argon2): those make guessing a *low-entropy* password
from a stolen hash slow. A 256-bit random secret cannot be guessed however fast the hash is, so a slow hash would
only add tens of milliseconds to every request (and a cheap way to load the server) without making a stolen
database any more useful. The presented token's hash is compared with :func:`hmac.compare_digest`, and a token id
that does not exist is compared against a dummy hash, so the time taken does not tell which part was wrong.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import re
import secrets
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from verifier.audit import _db
from verifier.audit._orm import Base
from verifier.audit._schema import UTCDateTime
from verifier.audit.entry import utc_now
from verifier.audit.log import AuditLog
from verifier.errors import InputError

__all__ = [
    "ApiTokenRow",
    "AuthResult",
    "AuthStatus",
    "IssuedToken",
    "TokenInfo",
    "TokenScope",
    "TokenStore",
    "hash_token",
]

_TOKEN_FORMAT = re.compile(r"mv_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
_ID_FORMAT = re.compile(r"[0-9a-f]{16}")
#: Compared against when the presented id is unknown, so that path costs the same as a wrong secret.
_DUMMY_HASH = hashlib.sha256(b"medverify: no such token").hexdigest()
#: ``last_used_at`` is written at most this often per token (it is a write on every request otherwise).
_LAST_USED_RESOLUTION = dt.timedelta(minutes=1)


class TokenScope(StrEnum):
    """What a token may do. ``admin`` may do everything the others may."""

    VERIFY = "verify"
    AUDIT_READ = "audit-read"
    #: Look at the quarantine and release or reject what is in it (the review pages and /v1/quarantine).
    REVIEW = "review"
    ADMIN = "admin"

    def allows(self, needed: TokenScope) -> bool:
        return self is TokenScope.ADMIN or self is needed

    @property
    def can_look(self) -> bool:
        """May see the quarantine (review pages, /v1/quarantine): review, audit-read and admin tokens."""
        return self in (TokenScope.REVIEW, TokenScope.AUDIT_READ, TokenScope.ADMIN)


class ApiTokenRow(Base):
    """One API token: its id, name, scope, lifetime and the SHA-256 of the token (never the token)."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    name: Mapped[str] = mapped_column(sa.Text)
    scope: Mapped[str] = mapped_column(sa.String(32))
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


api_tokens: sa.Table = ApiTokenRow.__table__  # type: ignore[assignment]


def hash_token(token: str) -> str:
    """The stored form of ``token``: SHA-256, lowercase hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclasses.dataclass(frozen=True, kw_only=True)
class TokenInfo:
    """What is known about a token without the token itself (safe to print and log)."""

    id: str
    name: str
    scope: TokenScope
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None
    last_used_at: dt.datetime | None

    def state(self, now: dt.datetime | None = None) -> str:
        """``active``, ``expired`` or ``revoked``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= (now or utc_now()):
            return "expired"
        return "active"

    def to_dict(self) -> dict[str, Any]:
        def iso(value: dt.datetime | None) -> str | None:
            return None if value is None else value.isoformat().replace("+00:00", "Z")

        return {
            "id": self.id,
            "name": self.name,
            "scope": self.scope.value,
            "state": self.state(),
            "created_at": iso(self.created_at),
            "expires_at": iso(self.expires_at),
            "revoked_at": iso(self.revoked_at),
            "last_used_at": iso(self.last_used_at),
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class IssuedToken:
    """A newly created token: the secret ``token`` exists only here and is shown once."""

    info: TokenInfo
    token: str = dataclasses.field(repr=False)


class AuthStatus(StrEnum):
    OK = "ok"
    #: No token, a token of the wrong form, an unknown id or a wrong secret (the caller cannot tell which).
    INVALID = "invalid"
    EXPIRED = "expired"
    REVOKED = "revoked"


@dataclasses.dataclass(frozen=True, kw_only=True)
class AuthResult:
    """The outcome of :meth:`TokenStore.authenticate`; read ``status`` (this object has no truth value)."""

    status: AuthStatus
    token: TokenInfo | None = None

    def __bool__(self) -> bool:
        raise TypeError("read AuthResult.status instead of testing the result as a bool")


def _info(row: sa.Row[Any]) -> TokenInfo:
    return TokenInfo(
        id=row.id,
        name=row.name,
        scope=TokenScope(row.scope),
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )


class TokenStore:
    """Create, list, revoke and check API tokens in the audit database of ``log``."""

    def __init__(self, log: AuditLog) -> None:
        self._engine: sa.Engine = log._engine
        self._url: str = log._url

    def create(self, name: str, scope: TokenScope | str, *, expires_in: dt.timedelta | None = None) -> IssuedToken:
        """Make a token; the returned :class:`IssuedToken` is the only place its secret ever appears."""
        name = name.strip()
        if not name or len(name) > 200 or any(ord(c) < 32 for c in name):
            raise InputError("a token name must be 1 to 200 printable characters")
        try:
            scope = TokenScope(scope)
        except ValueError:
            raise InputError(f"unknown scope {scope!r}; use {', '.join(s.value for s in TokenScope)}") from None
        if expires_in is not None and expires_in <= dt.timedelta(0):
            raise InputError("a token's lifetime must be positive")
        now = utc_now()
        token_id = secrets.token_hex(8)
        token = f"mv_{token_id}_{secrets.token_urlsafe(32)}"
        info = TokenInfo(
            id=token_id,
            name=name,
            scope=scope,
            created_at=now,
            expires_at=None if expires_in is None else now + expires_in,
            revoked_at=None,
            last_used_at=None,
        )
        with _db.db_errors(self._url), _db.write_transaction(self._engine) as conn:
            conn.execute(
                sa.insert(api_tokens).values(
                    id=info.id,
                    name=info.name,
                    scope=info.scope.value,
                    token_hash=hash_token(token),
                    created_at=info.created_at,
                    expires_at=info.expires_at,
                )
            )
        return IssuedToken(info=info, token=token)

    def list(self) -> list[TokenInfo]:
        """Every token, oldest first (revoked and expired ones too)."""
        with _db.db_errors(self._url), self._engine.connect() as conn:
            rows = conn.execute(sa.select(api_tokens).order_by(api_tokens.c.created_at, api_tokens.c.id)).all()
        return [_info(r) for r in rows]

    def get(self, token_id: str) -> TokenInfo:
        with _db.db_errors(self._url), self._engine.connect() as conn:
            row = conn.execute(sa.select(api_tokens).where(api_tokens.c.id == token_id)).first()
        if row is None:
            raise InputError(f"there is no API token {token_id!r}")
        return _info(row)

    def revoke(self, token_id: str) -> tuple[TokenInfo, bool]:
        """Revoke a token at once; ``True`` if this call revoked it (``False``: it already was).

        Accepts the id or the whole token."""
        match = _TOKEN_FORMAT.fullmatch(token_id)
        token_id = match.group(1) if match else token_id.strip()
        if not _ID_FORMAT.fullmatch(token_id):
            raise InputError("a token id is 16 hexadecimal digits (see `medverify tokens list`)")
        with _db.db_errors(self._url), _db.write_transaction(self._engine) as conn:
            changed = conn.execute(
                sa.update(api_tokens)
                .where(api_tokens.c.id == token_id, api_tokens.c.revoked_at.is_(None))
                .values(revoked_at=utc_now())
            ).rowcount
        return self.get(token_id), changed == 1

    def authenticate(self, presented: str | None) -> AuthResult:
        """Check a presented token. Runs in about the same time whichever part of a bad token is wrong."""
        match = _TOKEN_FORMAT.fullmatch(presented or "")
        token_id = match.group(1) if match else ""
        with _db.db_errors(self._url), self._engine.connect() as conn:
            row = conn.execute(sa.select(api_tokens).where(api_tokens.c.id == token_id)).first() if match else None
        stored = row.token_hash if row is not None else _DUMMY_HASH
        good = hmac.compare_digest(stored.encode(), hash_token(presented or "").encode())
        if row is None or not good:
            return AuthResult(status=AuthStatus.INVALID)
        info = _info(row)
        now = utc_now()
        if info.revoked_at is not None:
            return AuthResult(status=AuthStatus.REVOKED, token=info)
        if info.expires_at is not None and info.expires_at <= now:
            return AuthResult(status=AuthStatus.EXPIRED, token=info)
        if info.last_used_at is None or now - info.last_used_at >= _LAST_USED_RESOLUTION:
            with _db.db_errors(self._url), _db.write_transaction(self._engine) as conn:
                conn.execute(sa.update(api_tokens).where(api_tokens.c.id == info.id).values(last_used_at=now))
            info = dataclasses.replace(info, last_used_at=now)
        return AuthResult(status=AuthStatus.OK, token=info)
