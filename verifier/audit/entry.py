"""What one audit record says: :class:`AuditEntry` (written by the application), :class:`AuditRecord` (read).

An entry is validated when it is built, so nothing that cannot be encoded canonically reaches the database.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import getpass
import json
import math
import re
import socket
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

__all__ = ["AuditEntry", "AuditReceipt", "AuditRecord", "Channel", "EventKind", "JsonObject"]

#: A JSON object as stored in the report and ``details`` columns.
JsonObject = Mapping[str, Any]

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class Channel(StrEnum):
    """Through which part of medverify the event came."""

    CLI = "cli"
    SCAN = "scan"
    INTAKE = "intake"
    API = "api"
    CLAIMS = "claims"
    GENERATE = "generate"
    KEYS = "keys"


class EventKind(StrEnum):
    """What kind of event a record is about. Other lowercase words are accepted too."""

    VERIFY = "verify"
    SIGN = "sign"
    GENERATE = "generate"
    KEY = "key"
    SCAN = "scan"
    INTAKE = "intake"
    CLAIM = "claim"


_EVENT_WORD = re.compile(r"[a-z][a-z0-9_.-]{0,63}")


def utc_now() -> dt.datetime:
    """The current time, UTC, microsecond precision."""
    return dt.datetime.now(dt.UTC)


def normalize_time(value: dt.datetime) -> dt.datetime:
    """``value`` as an aware UTC datetime; naive values are taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def _check_json(name: str, value: Any) -> None:
    """Raise ``ValueError`` unless ``value`` is plain JSON (str keys, finite numbers, no other types)."""
    if value is None or isinstance(value, bool | str | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{name} holds a non-finite number, which JSON cannot carry")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{name} has a non-string key {key!r}")
            _check_json(f"{name}.{key}", item)
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_json(f"{name}[{i}]", item)
        return
    raise ValueError(f"{name} holds a {type(value).__name__}, which is not JSON")


def _plain(value: Any) -> Any:
    """A deep copy of JSON ``value`` made of dicts and lists only (so stored and encoded forms agree)."""
    return json.loads(json.dumps(value, allow_nan=False))


@dataclasses.dataclass(frozen=True, kw_only=True)
class AuditEntry:
    """One event to record. Every field but ``event`` and ``channel`` is optional.

    Report fields hold the structured reports (``SignatureReport``, ``WatermarkReport``, ``DetectionReport``)
    as JSON objects; the verdict and its reasons are summarised by ``verdict`` and ``action``.
    """

    event: str
    channel: Channel
    #: When the event happened; defaults to the moment the entry is built.
    when: dt.datetime = dataclasses.field(default_factory=utc_now)
    path: str | None = None
    sop_instance_uid: str | None = None
    #: SHA-256 of the file, lowercase hex.
    file_sha256: str | None = None
    os_user: str | None = None
    host: str | None = None
    peer_ae_title: str | None = None
    peer_address: str | None = None
    api_token_id: str | None = None
    signature_report: JsonObject | None = None
    watermark_report: JsonObject | None = None
    detection_report: JsonObject | None = None
    model_tag: str | None = None
    policy_version: str | None = None
    verdict: str | None = None
    action: str | None = None
    details: JsonObject = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        event = str(self.event)
        if not _EVENT_WORD.fullmatch(event):
            raise ValueError(f"event must be a short lowercase word, not {self.event!r}")
        object.__setattr__(self, "event", event)
        try:
            object.__setattr__(self, "channel", Channel(self.channel))
        except ValueError:
            raise ValueError(
                f"channel must be one of {', '.join(c.value for c in Channel)}, not {self.channel!r}"
            ) from None
        if not isinstance(self.when, dt.datetime):
            raise TypeError("when must be a datetime")
        object.__setattr__(self, "when", normalize_time(self.when))
        if self.file_sha256 is not None:
            digest = self.file_sha256.lower()
            if not _SHA256_HEX.fullmatch(digest):
                raise ValueError("file_sha256 must be 64 hexadecimal digits")
            object.__setattr__(self, "file_sha256", digest)
        for name in _TEXT_FIELDS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a string or None")
            if value is not None and "\x00" in value:
                raise ValueError(f"{name} must not contain NUL characters")
        for name in ("signature_report", "watermark_report", "detection_report", "details"):
            value = getattr(self, name)
            if value is None and name != "details":
                continue
            if not isinstance(value, Mapping):
                raise TypeError(f"{name} must be a JSON object")
            _check_json(name, value)
            object.__setattr__(self, name, _plain(value))

    def with_local_actor(self) -> AuditEntry:
        """A copy with ``os_user`` and ``host`` filled from this process where they are not set."""
        user, host = local_actor()
        if self.os_user is not None:
            user = self.os_user
        return dataclasses.replace(self, os_user=user, host=self.host or host)

    def to_json_dict(self) -> dict[str, Any]:
        """The fields as JSON values (``when`` as RFC 3339 UTC with microseconds)."""
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "when":
                value = rfc3339(value)
            elif field.name == "channel":
                value = value.value
            out[field.name] = value
        return out


@functools.cache
def local_actor() -> tuple[str, str]:
    """Who this process runs as, for the ``os_user`` and ``host`` of its records: asked once per process (the
    lookups cost more than building an entry)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no LOGNAME: say so rather than fail
        user = "unknown"
    return user, socket.gethostname()


_TEXT_FIELDS = (
    "path",
    "sop_instance_uid",
    "os_user",
    "host",
    "peer_ae_title",
    "peer_address",
    "api_token_id",
    "model_tag",
    "policy_version",
    "verdict",
    "action",
)


def rfc3339(value: dt.datetime) -> str:
    """``value`` in UTC as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (always six fraction digits)."""
    return normalize_time(value).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AuditReceipt:
    """What :meth:`AuditLog.append` hands back: where the record went and its leaf hash."""

    id: int
    leaf_index: int
    #: RFC 9162 leaf hash of the record's canonical encoding, lowercase hex.
    leaf_hash: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class AuditRecord:
    """A stored record as read back from the database (not yet checked; see :meth:`AuditLog.verify`)."""

    id: int
    leaf_index: int
    leaf_hash: str
    entry: AuditEntry

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "leaf_index": self.leaf_index,
            "leaf_hash": self.leaf_hash,
            **self.entry.to_json_dict(),
        }
