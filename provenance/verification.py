"""Verifying DICOM digital signatures (PS3.15 Annex C) as DCMTK's ``dcmsign`` makes them, and reporting what no
intact signature covers.

Every signature gets a status; the data elements present in the file that no intact signature covers (one whose
MAC matches, whatever its signer's trust, which is reported separately) are listed: ``dcmsign`` answers "valid"
after an unsigned element is added; medverify says which. Hostile input gives MALFORMED, never a traceback.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hmac
import struct
from collections.abc import Collection, Iterator
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import dsa, ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.uid import UID

from provenance._internal.macstream import (
    DIGITAL_SIGNATURES_SEQUENCE,
    MAC_PARAMETERS_SEQUENCE,
    PIXEL_DATA,
    UnsignableElementError,
    dictionary_vr,
    element_index,
    file_bytes,
    file_segments,
    is_signable_tag,
    raw_sequence_items,
)
from provenance._internal.sigitems import (
    CERT,
    CERT_TYPE,
    CERT_TYPE_X509,
    CREATOR_REQUIRED,
    DATA_ELEMENTS_SIGNED,
    DIGEST_INFO,
    MAC_ALGORITHM,
    MAC_ID,
    MAC_XFER,
    PREHASH,
    SIG_DATETIME,
    SIG_UID,
    SIGNATURE,
    default_tags,
    keyword,
    mac_digest,
    tag_str,
)
from provenance.models import (
    MacAlgorithm,
    PixelBinding,
    PixelBindingStatus,
    SignatureInfo,
    SignatureProfile,
    SignatureReport,
    SignatureStatus,
    UncoveredElement,
)
from provenance.pixelbinding import (
    ENCODING_TAGS,
    binding_tags,
    check_binding,
    pixel_encoding,
    read_binding,
    transfer_syntax_name,
)
from provenance.trust import TrustPolicy, TrustStatus, fingerprint_sha256

__all__ = ["verify_dataset"]


class _Malformed(Exception):
    """A signature's structure cannot be interpreted."""


@functools.lru_cache(maxsize=8192)
def _uncovered(tag: int) -> UncoveredElement:
    """One (immutable) report entry per tag: an invalid signature leaves every element of a file uncovered."""
    return UncoveredElement(tag=tag_str(tag), keyword=keyword(tag))


def _signed_tags(params: Dataset) -> list[int]:
    """Data Elements Signed; read straight from the raw little-endian bytes when possible (hundreds of tags)."""
    raw = params.get_item(DATA_ELEMENTS_SIGNED)
    value = getattr(raw, "value", None)
    if isinstance(raw, RawDataElement) and raw.is_little_endian and isinstance(value, bytes):
        if len(value) % 4:
            raise ValueError("Data Elements Signed has a length that is not a multiple of 4")
        words = struct.unpack(f"<{len(value) // 2}H", value)
        return [(words[i] << 16) | words[i + 1] for i in range(0, len(words), 2)]
    return _tags_of(params[DATA_ELEMENTS_SIGNED].value)


def _item_value(item: Dataset, elements: dict[int, Any], tag: int) -> Any:
    """The value of ``tag`` in a signature or MAC Parameters item (None when absent). A raw little-endian element
    of a VR these items use (US, OB and plain ASCII UI, CS or DT) is decoded here as pydicom would decode it,
    without converting the item's element; other elements are converted by pydicom."""
    elem = elements.get(tag)
    if elem is None:
        return None
    if isinstance(elem, RawDataElement) and elem.is_little_endian:
        data = b"" if elem.value is None and not elem.length else elem.value
        vr = elem.VR or dictionary_vr(tag)
        if isinstance(data, bytes):
            if vr == "US" and len(data) == 2:
                return int.from_bytes(data, "little")
            if vr == "OB":
                return data
            if vr in ("UI", "CS", "DT") and data.isascii() and b"\\" not in data:
                return data.decode("ascii").rstrip(" \x00")
    return item[tag].value


def _tags_of(value: object) -> list[int]:
    if value is None or value == "":
        return []
    if isinstance(value, MultiValue | list | tuple):
        return [int(Tag(v)) for v in value]
    if isinstance(value, int | str | tuple):
        return [int(Tag(value))]
    raise TypeError(f"not a tag list: {type(value).__name__}")


@functools.lru_cache(maxsize=64)
def _explicit_little(xfer: str) -> bool:
    """Whether a MAC Calculation Transfer Syntax encodes elements as Explicit VR Little Endian.

    dcmsign uses the file's own (encapsulated) transfer syntax for compressed images; every encapsulated syntax
    encodes the elements themselves as Explicit VR Little Endian.
    """
    uid = UID(xfer)
    if not uid.is_transfer_syntax:
        return False
    return bool(uid.is_little_endian and not uid.is_implicit_VR)


def _der_sequence_length(sig: bytes) -> int:
    """Length of the DER SEQUENCE at the start of ``sig`` (DICOM pads OB values to an even length)."""
    if len(sig) < 2 or sig[0] != 0x30:
        raise _Malformed("not a DER sequence")
    first = sig[1]
    if first < 0x80:
        return 2 + first
    n = first & 0x7F
    if n == 0 or n > 3 or len(sig) < 2 + n:
        raise _Malformed("bad DER length")
    return 2 + n + int.from_bytes(sig[2 : 2 + n], "big")


def _check_signature(cert: x509.Certificate, signature: bytes, digest: bytes, algorithm: MacAlgorithm) -> str:
    """Check ``signature`` over ``digest``; return the key type; raise InvalidSignature or _Malformed."""
    try:
        public = cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise _Malformed(f"the signer's public key cannot be read: {exc}") from exc
    if isinstance(public, rsa.RSAPublicKey):
        if len(signature) != (public.key_size + 7) // 8:
            raise InvalidSignature
        recovered = public.recover_data_from_signature(signature, padding.PKCS1v15(), None)
        expected = DIGEST_INFO[algorithm] + digest
        if not hmac.compare_digest(recovered, expected):
            raise InvalidSignature
        return "rsa"
    if isinstance(public, ec.EllipticCurvePublicKey | dsa.DSAPublicKey):
        der = signature[: _der_sequence_length(signature)]
        if any(signature[len(der) :]):
            raise InvalidSignature
        prehashed = Prehashed(PREHASH[len(digest)])
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(der, digest, ec.ECDSA(prehashed))
            return "ecdsa"
        public.verify(der, digest, prehashed)
        return "dsa"
    raise _Malformed(f"unsupported signer key type {type(public).__name__}")


@functools.lru_cache(maxsize=256)
def _certificate(der: bytes) -> tuple[x509.Certificate, str, str, str]:
    """The signer certificate of a signature item, with its subject, issuer and fingerprint. Parsed once per
    distinct certificate: an archive holds thousands of files signed by the same few keys."""
    try:
        # OB values are padded to an even length; DER certificates of odd length carry one pad byte.
        cert = x509.load_der_x509_certificate(der[: _der_sequence_length(der)])
    except (ValueError, _Malformed) as exc:
        raise _Malformed("the Certificate of Signer is not a valid X.509 certificate") from exc
    return cert, cert.subject.rfc4514_string(), cert.issuer.rfc4514_string(), fingerprint_sha256(cert)


def _profiles(
    key_type: str | None, covered: set[int], ds: Dataset, present: Collection[int], binding: Collection[int] = ()
) -> tuple[str, ...]:
    """The PS3.15 profiles this signature satisfies (none is recorded in the file; they are inferred). The pixel
    binding's block (``binding``), which its own signature covers, does not count against Authorization."""
    if key_type != "rsa":
        return ()
    out = [SignatureProfile.BASE.value]
    needed = [t for t in (*CREATOR_REQUIRED, PIXEL_DATA) if t in present]
    if all(t in covered for t in needed):
        out.append(SignatureProfile.CREATOR.value)
        # Authorization: every element dcmsign would sign by default is covered. Only the present signable
        # elements that this signature leaves out need a closer look (those of VR UN are not signed by default).
        left_out = {t for t in present if t not in covered and t not in binding and is_signable_tag(t)}
        if not left_out or not left_out.intersection(default_tags(ds, only=left_out)):
            out.append(SignatureProfile.AUTHORIZATION.value)
    return tuple(out)


_TRUST_TO_STATUS = {
    TrustStatus.TRUSTED: SignatureStatus.VALID,
    TrustStatus.UNTRUSTED: SignatureStatus.UNTRUSTED_SIGNER,
    TrustStatus.REVOKED: SignatureStatus.REVOKED,
    TrustStatus.EXPIRED: SignatureStatus.EXPIRED,
    TrustStatus.NOT_YET_VALID: SignatureStatus.EXPIRED,
}


def _verify_item(
    ds: Dataset,
    item: object,
    mac_items: dict[int, tuple[Dataset, dict[int, Any]]],
    policy: TrustPolicy,
    location: str,
    at: dt.datetime,
    present: dict[int, Any],
    block: frozenset[int] | None = None,
    segments: dict[int, tuple[int, int]] | None = None,
) -> tuple[SignatureInfo, set[int]]:
    """Check one signature item of the site ``ds``, whose elements by int tag are ``present``; ``block`` is the
    tags of the pixel binding written in the file (top level only)."""
    info: dict[str, object] = {"location": location}
    try:
        if not isinstance(item, Dataset):
            raise _Malformed("the Digital Signatures Sequence item is not a dataset")
        # The item's elements as read, before the checks below convert them: its part of the MAC is then hashed
        # from the bytes of the file (the fast path), not re-encoded from converted values.
        elements = {int(t): item.get_item(t) for t in item.keys()}
        uid = _item_value(item, elements, SIG_UID)
        info["uid"] = str(uid) if uid else None
        when = _item_value(item, elements, SIG_DATETIME)
        info["datetime"] = str(when) if when else None
        for tag, name in (
            (MAC_ID, "MAC ID Number"),
            (CERT, "Certificate of Signer"),
            (SIGNATURE, "Signature"),
        ):
            if _item_value(item, elements, tag) in (None, b"", ""):
                raise _Malformed(f"the signature item has no {name}")
        mac_id = int(_item_value(item, elements, MAC_ID))
        info["mac_id"] = mac_id
        cert_type = _item_value(item, elements, CERT_TYPE)
        cert_type = str(cert_type) if cert_type is not None else ""
        if cert_type != CERT_TYPE_X509:
            raise _Malformed(f"unsupported Certificate Type {cert_type!r}")
        der = bytes(_item_value(item, elements, CERT))
        cert, info["signer"], info["issuer"], info["signer_fingerprint"] = _certificate(der)
        found = mac_items.get(mac_id)
        if found is None:
            raise _Malformed(f"no MAC Parameters item has MAC ID Number {mac_id}")
        params, param_elements = found
        algorithm_name = _item_value(params, param_elements, MAC_ALGORITHM)
        try:
            algorithm = MacAlgorithm(str(algorithm_name).strip())
        except ValueError as exc:
            raise _Malformed("unknown or missing MAC Algorithm") from exc
        info["mac_algorithm"] = algorithm.value
        xfer_value = _item_value(params, param_elements, MAC_XFER)
        xfer = str(xfer_value) if xfer_value is not None else ""
        if not _explicit_little(xfer):
            raise _Malformed(f"unsupported MAC Calculation Transfer Syntax {xfer!r}")
        if DATA_ELEMENTS_SIGNED not in param_elements:
            raise _Malformed("the MAC Parameters item has no Data Elements Signed")
        try:
            signed = _signed_tags(params)
        except (TypeError, ValueError) as exc:
            raise _Malformed("Data Elements Signed cannot be read") from exc
        info["covered"] = tuple(map(tag_str, signed))
        signature = bytes(_item_value(item, elements, SIGNATURE))
    except _Malformed as exc:
        return SignatureInfo(status=SignatureStatus.MALFORMED, reasons=(str(exc),), **info), set()  # type: ignore[arg-type]

    reasons: list[str] = []
    missing = [t for t in signed if t not in present]
    if missing:
        reasons.append(
            "signed element(s) missing from the file: "
            + ", ".join(f"{tag_str(t)} {keyword(t)}".strip() for t in missing)
        )
    try:
        digest = mac_digest(ds, signed, item, algorithm, present, elements, segments)
        info["key_type"] = _check_signature(cert, signature, digest, algorithm)
    except UnsignableElementError as exc:
        reasons.append(f"a signed element cannot be encoded: {exc}")
        return SignatureInfo(status=SignatureStatus.INVALID, reasons=tuple(reasons), **info), set()  # type: ignore[arg-type]
    except _Malformed as exc:
        return SignatureInfo(status=SignatureStatus.MALFORMED, reasons=(str(exc),), **info), set()  # type: ignore[arg-type]
    except (InvalidSignature, ValueError):
        transcoded = _transcoding(ds, signed, xfer, block is not None) if not missing else None
        if transcoded is not None:
            return SignatureInfo(status=SignatureStatus.TRANSCODED, reasons=(transcoded,), **info), set()  # type: ignore[arg-type]
        reasons.append("the signature does not match the signed content (content or signature altered)")
        return SignatureInfo(status=SignatureStatus.INVALID, reasons=tuple(reasons), **info), set()  # type: ignore[arg-type]
    if missing:  # pragma: no cover - a missing element always changes the MAC
        return SignatureInfo(status=SignatureStatus.INVALID, reasons=tuple(reasons), **info), set()  # type: ignore[arg-type]

    decision = policy.evaluate(cert, at=at, fingerprint=str(info["signer_fingerprint"]))
    info["role"] = decision.role.value if decision.role is not None else None
    status = _TRUST_TO_STATUS[decision.status]
    covered = set(signed)
    info["profiles"] = _profiles(str(info["key_type"]), covered, ds, present, block or ())
    if status is not SignatureStatus.VALID:
        reasons.append(decision.reason)
    # The MAC matched: whatever the signer's trust, these elements are intact since signing.
    return SignatureInfo(status=status, reasons=tuple(reasons), **info), covered  # type: ignore[arg-type]


def _transcoding(ds: Dataset, signed: list[int], xfer: str, bound: bool) -> str | None:
    """Why a signature whose MAC does not match may be over another encoding of the same pixels, or None.

    The encoding at signing is told by the MAC Calculation Transfer Syntax: dcmsign and medverify write the file's
    own syntax for encapsulated Pixel Data, Explicit VR Little Endian otherwise. Neither it nor the pixel binding
    (which names the syntax exactly) is proof here: this only says why the MAC cannot be checked.
    """
    if PIXEL_DATA not in signed or PIXEL_DATA not in ds:
        return None
    signed_as = xfer  # decides; the binding, where it agrees, names the syntax exactly (e.g. Implicit VR)
    recorded = read_binding(ds) if bound else None
    if recorded is not None and pixel_encoding(recorded.transfer_syntax) == pixel_encoding(xfer):
        signed_as = recorded.transfer_syntax
    meta = getattr(ds, "file_meta", None)
    now = str(getattr(meta, "TransferSyntaxUID", "") or "") if meta is not None else ""
    if not now or pixel_encoding(now) == pixel_encoding(signed_as):
        return None
    return (
        f"re-encoded after signing ({transfer_syntax_name(signed_as)} at signing, {transfer_syntax_name(now)} now); "
        "the signature covers the original encoding"
    )


def _is_sequence(elem: DataElement | RawDataElement, tag: int) -> bool:
    """Whether ``elem`` is a sequence, also when it is still raw from an Implicit VR file (VR None).

    Only likely sequences are converted, so the other raw values stay exactly as read (the MAC is over them).
    """
    if elem.VR is not None:
        return bool(elem.VR == "SQ")
    value = elem.value if isinstance(elem, RawDataElement) else None
    if isinstance(value, bytes) and not value.startswith(b"\xfe\xff\x00\xe0"):
        return False  # a sequence of defined length starts with an item (little endian; big endian is explicit)
    vr = dictionary_vr(tag)
    if vr is None:  # unknown (e.g. private) tag: an undefined length is the sign of a sequence
        return elem.length == 0xFFFFFFFF
    return vr == "SQ"


# The tags of the two signature sequences as they appear in the bytes of either byte order.
_SIGNATURE_TAG_BYTES = (b"\xfa\xff\xfa\xff", b"\xfe\x4f\x01\x00", b"\xff\xfa\xff\xfa", b"\x4f\xfe\x00\x01")


def _may_hold_signature(elem: DataElement | RawDataElement) -> bool:
    """False only for a sequence still raw whose bytes contain neither signature sequence tag: nothing nested in
    it can be a signature site, and it need not be parsed (most files are unsigned; parsing every sequence to
    find out was most of the cost of checking one)."""
    value = elem.value if isinstance(elem, RawDataElement) else None
    if not isinstance(value, bytes):
        return True
    return any(pattern in value for pattern in _SIGNATURE_TAG_BYTES)


def _header_holds_signature_tags(ds: Dataset) -> bool:
    """False when ``ds`` was read from in-memory bytes (not deflated) in which neither signature sequence tag
    occurs outside the native Pixel Data: then no element still raw can hold a signature site. Searching the
    bytes is cheaper than looking at every element of an unsigned file."""
    data = file_bytes(ds)
    if data is None:
        return True
    start = stop = len(data)
    pixels = ds.get_item(PIXEL_DATA, keep_deferred=True)
    if isinstance(pixels, RawDataElement) and pixels.value_tell is not None and pixels.length != 0xFFFFFFFF:
        start, stop = pixels.value_tell, pixels.value_tell + pixels.length
    return any(data.find(p, 0, start) >= 0 or data.find(p, stop) >= 0 for p in _SIGNATURE_TAG_BYTES)


def _signature_sites(ds: Dataset, path: str = "") -> Iterator[tuple[Dataset, str]]:
    """The top level and every sequence item that carries a Digital Signatures Sequence."""
    if DIGITAL_SIGNATURES_SEQUENCE in ds or MAC_PARAMETERS_SEQUENCE in ds:
        yield ds, path
    elements = list(ds.items())
    if not path and not _header_holds_signature_tags(ds):  # only sequences built or parsed in memory remain
        elements = [(t, e) for t, e in elements if type(e) is not RawDataElement and e.VR == "SQ"]
    for tag, elem in elements:  # raw items: only sequences are converted below
        if (
            elem is None
            or elem.VR not in (None, "SQ")
            or int(tag) in (DIGITAL_SIGNATURES_SEQUENCE, MAC_PARAMETERS_SEQUENCE)
        ):
            continue
        if not _is_sequence(elem, int(tag)):
            continue
        if not _may_hold_signature(elem):
            continue
        try:
            items = ds[tag].value
        except Exception:  # noqa: BLE001, S112 - a broken nested sequence is not a signature site
            continue
        for i, sub in enumerate(items or ()):
            if isinstance(sub, Dataset):
                yield from _signature_sites(sub, f"{path}{tag_str(int(tag))}[{i}]")


def _sequence_items(ds: Dataset, tag: int) -> list[Any]:
    """The items of sequence ``tag`` of ``ds`` (none when absent); read from the raw bytes when possible, which
    leaves the element in ``ds`` as read."""
    elem = ds.get_item(tag)
    if elem is None:
        return []
    items = raw_sequence_items(elem)
    return items if items is not None else list(ds[tag].value or ())


def _verify_site(
    ds: Dataset,
    location: str,
    policy: TrustPolicy,
    at: dt.datetime,
    present: dict[int, Any],
    block: frozenset[int] | None = None,
) -> tuple[list[SignatureInfo], list[set[int]]]:
    """The signatures of one site and, for each, the elements it covers intact (empty when its MAC fails)."""
    results: list[SignatureInfo] = []
    covered: list[set[int]] = []
    try:
        sig_items = _sequence_items(ds, DIGITAL_SIGNATURES_SEQUENCE)
        mac_list = _sequence_items(ds, MAC_PARAMETERS_SEQUENCE)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for broken sequences
        return [
            SignatureInfo(
                status=SignatureStatus.MALFORMED,
                location=location,
                reasons=(f"the signature sequences cannot be parsed: {type(exc).__name__}",),
            )
        ], [set()]
    mac_items: dict[int, tuple[Dataset, dict[int, Any]]] = {}
    for params in mac_list:
        if not isinstance(params, Dataset):
            continue
        param_elements = element_index(params)
        try:
            mac_items.setdefault(int(_item_value(params, param_elements, MAC_ID)), (params, param_elements))
        except (TypeError, ValueError):
            continue
    if not sig_items:
        results.append(
            SignatureInfo(
                status=SignatureStatus.MALFORMED,
                location=location,
                reasons=("a MAC Parameters Sequence is present without any Digital Signatures Sequence item",),
            )
        )
        covered.append(set())
    # Where the site's elements lie in the file, found once for all its signatures.
    segments = file_segments(ds, present) if len(sig_items) > 1 else None
    for item in sig_items:
        try:
            info, item_covered = _verify_item(ds, item, mac_items, policy, location, at, present, block, segments)
        except Exception as exc:  # noqa: BLE001 - hostile input must give MALFORMED, never a traceback
            info = SignatureInfo(
                status=SignatureStatus.MALFORMED,
                location=location,
                reasons=(f"the signature cannot be interpreted ({type(exc).__name__})",),
            )
            item_covered = set()
        results.append(info)
        covered.append(item_covered)
    return results, covered


def verify_dataset(ds: Dataset, policy: TrustPolicy, *, at: dt.datetime | None = None) -> SignatureReport:
    """Check every digital signature in ``ds`` against ``policy`` and report what is not covered.

    ``policy`` is required: which signers are trusted is never implicit (ARCHITECTURE.md, "Reports and
    decisions"). Certificates are evaluated at ``at`` (default: now).
    """
    when = at or dt.datetime.now(dt.UTC)
    signatures: list[SignatureInfo] = []
    top: list[tuple[SignatureInfo, set[int]]] = []
    index: dict[int, Any] | None = None
    block: frozenset[int] | None = None
    for site, location in _signature_sites(ds):
        site_index = element_index(site)
        if site is ds:
            block = binding_tags(ds, site_index) if PIXEL_DATA in site_index else None
        results, covered = _verify_site(site, location, policy, when, site_index, block if site is ds else None)
        if site is ds and block is not None:
            results = [_mark_binding(info, block) for info in results]
        signatures.extend(results)
        if site is ds:
            top, index = list(zip(results, covered, strict=True)), site_index
    top_covered: set[int] = set().union(*(c for _, c in top))
    uncovered: tuple[UncoveredElement, ...] = ()
    pixel_covered: bool | None = None
    binding: PixelBinding | None = None
    if PIXEL_DATA in ds:
        pixel_covered = PIXEL_DATA in top_covered
        if not pixel_covered and block is not None:
            binding = _check_pixel_binding(ds, block, top)
            if binding is not None and binding.status is PixelBindingStatus.MATCH:
                pixel_covered = True
                top_covered |= ENCODING_TAGS
    if signatures:
        left_out = (index if index is not None else element_index(ds)).keys() - top_covered
        uncovered = tuple(_uncovered(t) for t in sorted(left_out) if is_signable_tag(t))
    return SignatureReport.combine(tuple(signatures), uncovered, pixel_covered, binding)


def _mark_binding(info: SignatureInfo, block: frozenset[int]) -> SignatureInfo:
    """``info``, marked when its Data Elements Signed make it a binding signature (the block, no Pixel Data)."""
    names = set(info.covered)
    if tag_str(PIXEL_DATA) in names or not {tag_str(t) for t in block} <= names:
        return info
    return dataclasses.replace(info, pixel_binding=True)


def _check_pixel_binding(
    ds: Dataset, block: frozenset[int], top: list[tuple[SignatureInfo, set[int]]]
) -> PixelBinding | None:
    """Check the pixel binding under the first top-level signature whose MAC matches and that covers its block
    (the signer's trust is reported on the signature itself); None when no intact signature vouches for it, or
    it cannot be read."""
    for info, covered in top:
        if covered and block <= covered:
            recorded = read_binding(ds)
            return check_binding(ds, recorded, info.uid) if recorded is not None else None
    return None
