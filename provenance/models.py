"""Results of provenance checks: frozen objects with a status enum, never a bare bool (ARCHITECTURE.md, "Reports
and decisions")."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

__all__ = [
    "MacAlgorithm",
    "PixelBinding",
    "PixelBindingStatus",
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
    #: The MAC does not match, and the Pixel Data is no longer in the encoding it was signed in: the file was
    #: re-encoded after signing (e.g. by a PACS that compresses), and the signature covers the original encoding.
    #: Neither intact nor proven altered; a pixel binding (:class:`PixelBinding`) may still vouch for the pixels.
    TRANSCODED = "TRANSCODED"


# The file's status is that of its worst signature, in this order.
_SEVERITY = {
    SignatureStatus.INVALID: 7,
    SignatureStatus.MALFORMED: 6,
    SignatureStatus.REVOKED: 5,
    SignatureStatus.EXPIRED: 4,
    SignatureStatus.UNTRUSTED_SIGNER: 3,
    SignatureStatus.TRANSCODED: 2,
    SignatureStatus.VALID: 1,
    SignatureStatus.UNSIGNED: 0,
}


class PixelBindingStatus(enum.StrEnum):
    """Outcome of checking the signed digest of the decoded pixel values against the pixels of the file now."""

    #: The decoded pixels (and Rows, Columns, Bits Stored, Photometric Interpretation, rescale) are those signed.
    MATCH = "MATCH"
    #: They differ: a pixel, a dimension or the rescale changed, or a lossy re-encoding changed the values.
    MISMATCH = "MISMATCH"
    #: The pixels of the file now cannot be decoded (no decoder for its transfer syntax, or damaged data).
    UNDECODABLE = "UNDECODABLE"


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
    #: Whether this is a binding signature: one over a pixel binding and everything but the pixel encoding
    #: (:mod:`provenance.pixelbinding`), made beside a full signature by the same key.
    pixel_binding: bool = False

    def to_dict(self) -> dict[str, Any]:
        # Field by field, not dataclasses.asdict: that deep-copies ``covered`` (one string per signed element,
        # hundreds) only to drop it, which cost the gateway about 2 ms of every audit record.
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "covered"}
        out["status"] = self.status.value
        out["profiles"] = list(self.profiles)
        out["reasons"] = list(self.reasons)
        out["covered_count"] = len(self.covered)
        return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class PixelBinding(_NoBool):
    """What checking a signed pixel binding found: it is checked only where no intact signature covers the Pixel
    Data as it is now encoded (after a re-encoding), and only under a signature whose MAC matches."""

    status: PixelBindingStatus
    #: The Digital Signature UID of the intact signature that covers the binding.
    signature_uid: str | None
    #: Transfer syntax at signing (recorded in the binding) and now, as UIDs.
    signed_transfer_syntax: str
    transfer_syntax: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["status"] = self.status.value
        return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class SignatureReport(_NoBool):
    """Every signature of one file, and the present elements that no valid signature covers."""

    status: SignatureStatus
    signatures: tuple[SignatureInfo, ...] = ()
    uncovered: tuple[UncoveredElement, ...] = ()
    #: Whether the Pixel Data as it is now is vouched for: covered by an intact signature, or decoded and found
    #: equal to a signed pixel binding (``pixel_binding`` then says so). None without Pixel Data.
    pixel_data_covered: bool | None = None
    #: The signed pixel binding's check, where it was needed (the Pixel Data re-encoded since signing).
    pixel_binding: PixelBinding | None = None
    reasons: tuple[str, ...] = ()

    @classmethod
    def combine(
        cls,
        signatures: tuple[SignatureInfo, ...],
        uncovered: tuple[UncoveredElement, ...],
        pixel_data_covered: bool | None,
        pixel_binding: PixelBinding | None = None,
    ) -> SignatureReport:
        """Build the file report; its status is that of the worst signature, or INVALID when the pixel binding
        shows that the pixels changed."""
        if not signatures:
            return cls(
                status=SignatureStatus.UNSIGNED,
                pixel_data_covered=pixel_data_covered,
                reasons=("the file carries no digital signature",),
            )
        status = max((s.status for s in signatures), key=_SEVERITY.__getitem__)
        if pixel_binding is not None and pixel_binding.status is PixelBindingStatus.MISMATCH:
            status = SignatureStatus.INVALID  # the pixels are proven to differ from those signed
        reasons: list[str] = []
        for sig in signatures:
            if sig.status is not SignatureStatus.VALID:
                where = f" in {sig.location}" if sig.location else ""
                reasons.extend(f"signature {sig.uid or '?'}{where}: {r}" for r in sig.reasons)
        if pixel_binding is not None:
            reasons.append(f"pixel binding {pixel_binding.status.value}: {pixel_binding.reason}")
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
            pixel_binding=pixel_binding,
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
        if self.uncovered or self.pixel_data_covered is False:
            return True
        # A signature over the original encoding is no problem when the signed pixel binding vouches for the pixels.
        vouched = self.pixel_binding is not None and self.pixel_binding.status is PixelBindingStatus.MATCH
        return any(
            s.status is not SignatureStatus.VALID and not (vouched and s.status is SignatureStatus.TRANSCODED)
            for s in self.signatures
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "signer": self.signer,
            "signatures": [s.to_dict() for s in self.signatures],
            "uncovered": [u.to_dict() for u in self.uncovered],
            "pixel_data_covered": self.pixel_data_covered,
            "pixel_binding": self.pixel_binding.to_dict() if self.pixel_binding is not None else None,
            "reasons": list(self.reasons),
        }
