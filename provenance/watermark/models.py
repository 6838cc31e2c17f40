"""Watermark keys and reports: a secret with a key id, and a frozen result whose status is an enum."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import secrets
import struct
from typing import Any

from provenance.errors import ProvenanceError

__all__ = ["WatermarkError", "WatermarkKey", "WatermarkReport", "WatermarkStatus"]

SECRET_BYTES = 32
_MAGIC = b"MVWK"
_VERSION = 1
_ID_STR, _ID_INT = 0, 1


class WatermarkError(ProvenanceError):
    """A watermark key or image cannot be used (bad key bytes, wrong image shape, bad payload ...)."""


class WatermarkKey:
    """The secret of the watermark (32 random bytes) and its key id.

    The key id is what :func:`~provenance.watermark.detect` reports for a found mark, so that keys can rotate:
    detection tries every key it is given. The secret never appears in ``repr``, ``str`` or an error message.
    """

    __slots__ = ("_derived", "_key_id", "_secret")

    def __init__(self, secret: bytes, key_id: str | int) -> None:
        if not isinstance(secret, bytes | bytearray) or len(secret) != SECRET_BYTES:
            raise WatermarkError(f"a watermark key secret must be {SECRET_BYTES} bytes")
        if isinstance(key_id, bool) or not isinstance(key_id, str | int):
            raise WatermarkError("a watermark key id must be a str or an int")
        if isinstance(key_id, int) and not 0 <= key_id < 2**63:
            raise WatermarkError("an integer watermark key id must be in [0, 2**63)")
        if isinstance(key_id, str) and not 0 < len(key_id.encode()) <= 255:
            raise WatermarkError("a string watermark key id must be 1 to 255 bytes of UTF-8")
        self._secret = bytes(secret)
        self._key_id: str | int = key_id
        self._derived: object | None = None  # pattern tables, derived lazily by the core

    @classmethod
    def generate(cls, key_id: str | int) -> WatermarkKey:
        """A new key with a secret from the operating system's CSPRNG."""
        return cls(secrets.token_bytes(SECRET_BYTES), key_id)

    @property
    def key_id(self) -> str | int:
        return self._key_id

    @property
    def fingerprint(self) -> str:
        """A short, non-secret digest that tells keys apart in logs (16 hex digits)."""
        return hashlib.blake2b(self._secret, digest_size=8, person=b"mvwm-fingerprt").hexdigest()

    def derive(self, label: bytes) -> bytes:
        """32 bytes derived from the secret for ``label`` (keyed BLAKE2b); used to seed the keyed patterns."""
        return hashlib.blake2b(label, key=self._secret, digest_size=32, person=b"mvwm-derive-v1").digest()

    def to_bytes(self) -> bytes:
        """Serialised form for storage: magic, version, key id, secret. Contains the secret: store it encrypted."""
        if isinstance(self._key_id, int):
            ident = struct.pack(">BQ", _ID_INT, self._key_id)
        else:
            raw = self._key_id.encode()
            ident = struct.pack(">BB", _ID_STR, len(raw)) + raw
        return _MAGIC + bytes([_VERSION]) + ident + self._secret

    @classmethod
    def from_bytes(cls, data: bytes) -> WatermarkKey:
        """Parse :meth:`to_bytes` output; malformed input raises :class:`WatermarkError`."""
        data = bytes(data)
        if len(data) < 6 or data[:4] != _MAGIC or data[4] != _VERSION:
            raise WatermarkError("not a medverify watermark key (bad magic or version)")
        kind, rest = data[5], data[6:]
        key_id: str | int
        if kind == _ID_INT:
            if len(rest) != 8 + SECRET_BYTES:
                raise WatermarkError("malformed watermark key (wrong length)")
            key_id, secret = struct.unpack(">Q", rest[:8])[0], rest[8:]
        elif kind == _ID_STR:
            if not rest or len(rest) != 1 + rest[0] + SECRET_BYTES:
                raise WatermarkError("malformed watermark key (wrong length)")
            try:
                key_id = rest[1 : 1 + rest[0]].decode()
            except UnicodeDecodeError:
                raise WatermarkError("malformed watermark key (key id is not UTF-8)") from None
            secret = rest[1 + rest[0] :]
        else:
            raise WatermarkError("malformed watermark key (unknown key id type)")
        return cls(secret, key_id)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WatermarkKey):
            return NotImplemented
        return self._key_id == other._key_id and secrets.compare_digest(self._secret, other._secret)

    def __hash__(self) -> int:
        return hash((self._key_id, self.fingerprint))

    def __repr__(self) -> str:
        return f"WatermarkKey(key_id={self._key_id!r}, fingerprint={self.fingerprint!r})"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("WatermarkKey is not picklable; use to_bytes() and store the result encrypted")


class WatermarkStatus(enum.StrEnum):
    """Whether a watermark of one of the given keys is in the pixels.

    TOO_SMALL: the image is smaller than the mark's minimum size (:data:`~provenance.watermark.MIN_SIDE`
    pixels a side); nothing was tested, so the answer is neither present nor absent.
    """

    PRESENT = "PRESENT"
    ABSENT = "ABSENT"
    TOO_SMALL = "TOO_SMALL"


@dataclasses.dataclass(frozen=True, kw_only=True)
class WatermarkReport:
    """Outcome of :func:`~provenance.watermark.detect`.

    ``false_alarm_probability`` bounds the probability that an image *without* this mark (any image made without
    the key) scores at least as high, over all the hypotheses the detector tried (keys, scales, offsets). The
    status is PRESENT when it is at most the detector's threshold. ``payload`` is the decoded 64-bit payload when
    its check code matched, else None; it is always None unless the status is PRESENT. ``score`` is the
    synchronisation statistic (a z-score; negative when the image was inverted). ``details`` says where the mark
    was found: scale, offset, inversion, number of hypotheses, whether the check code matched.
    """

    status: WatermarkStatus
    false_alarm_probability: float
    payload: int | None
    key_id: str | int | None
    score: float
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status is not WatermarkStatus.PRESENT and (self.payload is not None or self.key_id is not None):
            raise ValueError(f"a {self.status.value} watermark report carries no payload and no key id")
        if not 0.0 <= self.false_alarm_probability <= 1.0:
            raise ValueError("false_alarm_probability must be in [0, 1]")

    def __bool__(self) -> bool:
        raise TypeError("WatermarkReport has no truth value; compare its .status instead")

    @property
    def present(self) -> bool:
        return self.status is WatermarkStatus.PRESENT

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "present": self.present,
            "false_alarm_probability": self.false_alarm_probability,
            "payload": self.payload,
            "key_id": self.key_id,
            "score": self.score,
            "details": dict(self.details),
        }
