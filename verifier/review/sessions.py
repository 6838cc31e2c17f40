"""Browser sessions of the review pages: a token typed once into the token prompt, kept server-side.

The browser holds only a random session id (cookie ``mv_session``: HttpOnly, SameSite=Strict, Secure over HTTPS);
the API token stays in this process's memory and is checked against the token store on every request, so a revoked
or expired token stops working at once. Each session has its own form token (``csrf``) that every form posts back.
Sessions end after :data:`SESSION_TTL` or at logout, and all of them when the server stops.
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
import time

__all__ = ["COOKIE", "SESSION_TTL", "Session", "Sessions"]

COOKIE = "mv_session"
#: Seconds a session lasts (a working day).
SESSION_TTL = 8 * 3600.0


@dataclasses.dataclass(frozen=True)
class Session:
    id: str
    token: str = dataclasses.field(repr=False)
    csrf: str = dataclasses.field(repr=False)
    started: float = 0.0


class Sessions:
    """Session id -> :class:`Session`, in memory, thread-safe."""

    def __init__(self, ttl: float = SESSION_TTL, limit: int = 10000) -> None:
        self.ttl = ttl
        self.limit = limit
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def start(self, token: str) -> Session:
        session = Session(secrets.token_urlsafe(32), token, secrets.token_urlsafe(24), time.monotonic())
        with self._lock:
            self._expire()
            if len(self._sessions) >= self.limit:  # drop the oldest rather than grow without bound
                oldest = min(self._sessions.values(), key=lambda s: s.started)
                del self._sessions[oldest.id]
            self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None and time.monotonic() - session.started > self.ttl:
                del self._sessions[session_id]
                return None
            return session

    def end(self, session_id: str | None) -> None:
        with self._lock:
            self._sessions.pop(session_id or "", None)

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, s in self._sessions.items() if now - s.started > self.ttl]:
            del self._sessions[key]
