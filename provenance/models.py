"""Results of provenance checks: frozen objects with a status enum, never a bare bool (ARCHITECTURE.md, "Reports
and decisions")."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

__all__ = [
    "MacAlgorithm",
    "SignatureInfo",
    "SignatureProfile",
    "SignatureReport",
    "SignatureStatus",
    "UncoveredElement",
]


class SignatureStatus(enum.StrEnum):
    """Outcome of checking one signature, or a whole file's signatures."""

    VALID = "VALID"
    INVALID = "INVALID"
    UNSIGNED = "UNSIGNED"
    UNTRUSTED_SIGNER = "UNTRUSTED_SIGNER"
    REVOKED = "REVOKED"
    EXPIRED = "EXPIRED"
    MALFORMED = "MALFORMED"


# The file's status is that of its worst signature, in this order.
_SEVERITY = {
    SignatureStatus.INVALID: 6,
    SignatureStatus.MALFORMED: 5,
    SignatureStatus.REVOKED: 4,
    SignatureStatus.EXPIRED: 3,
    SignatureStatus.UNTRUSTED_SIGNER: 2,
    SignatureStatus.VALID: 1,
    SignatureStatus.UNSIGNED: 0,
}


class SignatureProfile(enum.StrEnum):
    """Digital signature profiles of PS3.15 Annex C that medverify signs with."""

    NONE = "none"
    BASE = "base"
    CREATOR = "creator"
    AUTHORIZATION = "authorization"


class MacAlgorithm(enum.StrEnum):
    """MAC algorithms, by their DICOM defined terms (PS3.3 C.12.1.1.3.1.1)."""

    RIPEMD160 = "RIPEMD160"
    SHA1 = "SHA1"
    MD5 = "MD5"
    SHA256 = "SHA256"
    SHA384 = "SHA384"
    SHA512 = "SHA512"


class _NoBool:
    def __bool__(self) -> bool:
        raise TypeError(f"{type(self).__name__} has no truth value; compare its .status instead")


@dataclasses.dataclass(frozen=True, kw_only=True)
class UncoveredElement:
    """A data element present in the file that no intact signature (one whose MAC matches) covers."""

    tag: str
    keyword: str

    def to_dict(self) -> dict[str, str]:
        return {"tag": self.tag, "keyword": self.keyword}


@dataclasses.dataclass(frozen=True, kw_only=True)
class SignatureInfo(_NoBool):
    """One Digital Signatures Sequence item and what checking it found."""

    status: SignatureStatus
    location: str = ""
    uid: str | None = None
    mac_id: int | None = None
    datetime: str | None = None
    signer: str | None = None
    issuer: str | None = None
    role: str | None = None
    signer_fingerprint: str | None = None
    key_type: str | None = None
    mac_algorithm: str | None = None
    profiles: tuple[str, ...] = ()
    covered: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["status"] = self.status.value
        out["profiles"] = list(self.profiles)
        out["reasons"] = list(self.reasons)
        out["covered_count"] = len(self.covered)
        del out["covered"]
        return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class SignatureReport(_NoBool):
    """Every signature of one file, and the present elements that no valid signature covers."""

    status: SignatureStatus
    signatures: tuple[SignatureInfo, ...] = ()
    uncovered: tuple[UncoveredElement, ...] = ()
    pixel_data_covered: bool | None = None
    reasons: tuple[str, ...] = ()

    @classmethod
    def combine(
        cls,
        signatures: tuple[SignatureInfo, ...],
        uncovered: tuple[UncoveredElement, ...],
        pixel_data_covered: bool | None,
    ) -> SignatureReport:
        """Build the file report; its status is that of the worst signature."""
        if not signatures:
            return cls(
                status=SignatureStatus.UNSIGNED,
                pixel_data_covered=pixel_data_covered,
                reasons=("the file carries no digital signature",),
            )
        status = max((s.status for s in signatures), key=_SEVERITY.__getitem__)
        reasons: list[str] = []
        for sig in signatures:
            if sig.status is not SignatureStatus.VALID:
                where = f" in {sig.location}" if sig.location else ""
                reasons.extend(f"signature {sig.uid or '?'}{where}: {r}" for r in sig.reasons)
        if pixel_data_covered is False:
            reasons.append("Pixel Data is not covered by any intact signature")
        if uncovered:
            shown = ", ".join(f"{u.tag} {u.keyword}".strip() for u in uncovered[:8])
            more = f" and {len(uncovered) - 8} more" if len(uncovered) > 8 else ""
            reasons.append(f"{len(uncovered)} element(s) not covered by any intact signature: {shown}{more}")
        return cls(
            status=status,
            signatures=signatures,
            uncovered=uncovered,
            pixel_data_covered=pixel_data_covered,
            reasons=tuple(reasons),
        )

    @property
    def signer(self) -> str | None:
        """Subject of the first valid signature, else of the first signature."""
        for sig in self.signatures:
            if sig.status is SignatureStatus.VALID:
                return sig.signer
        return self.signatures[0].signer if self.signatures else None

    @property
    def problem_found(self) -> bool:
        """Whether the signatures show a problem: one not valid, or a signed file with uncovered content."""
        if self.status is SignatureStatus.UNSIGNED:
            return False
        return self.status is not SignatureStatus.VALID or bool(self.uncovered) or self.pixel_data_covered is False

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "signer": self.signer,
            "signatures": [s.to_dict() for s in self.signatures],
            "uncovered": [u.to_dict() for u in self.uncovered],
            "pixel_data_covered": self.pixel_data_covered,
            "reasons": list(self.reasons),
        }
