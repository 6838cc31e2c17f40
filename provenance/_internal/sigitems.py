"""The parts of a PS3.15 signature that signing and verifying share: the tags of a signature item and of its MAC
Parameters item, the digest tables, which elements are signed by default, and the MAC itself."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable
from typing import Any

from cryptography.hazmat.primitives import hashes
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset

from provenance._internal.macstream import dictionary_vr, is_signable_tag, iter_signature_stream, signature_item_stream
from provenance.models import MacAlgorithm

__all__ = [
    "CERT",
    "CERT_TYPE",
    "CERT_TYPE_X509",
    "CREATOR_REQUIRED",
    "DATA_ELEMENTS_SIGNED",
    "DIGEST_INFO",
    "MAC_ALGORITHM",
    "MAC_ID",
    "MAC_XFER",
    "PREHASH",
    "SIGNATURE",
    "SIG_DATETIME",
    "SIG_UID",
    "default_tags",
    "keyword",
    "mac_digest",
    "tag_str",
]

MAC_ID = 0x04000005
MAC_XFER = 0x04000010
MAC_ALGORITHM = 0x04000015
DATA_ELEMENTS_SIGNED = 0x04000020
SIG_UID = 0x04000100
SIG_DATETIME = 0x04000105
CERT_TYPE = 0x04000110
CERT = 0x04000115
SIGNATURE = 0x04000120

CERT_TYPE_X509 = "X509_1993_SIG"

# DER DigestInfo prefixes for PKCS#1 v1.5 (RFC 8017 9.2); RIPEMD-160 is OID 1.3.36.3.2.1, as OpenSSL writes it.
DIGEST_INFO = {
    MacAlgorithm.MD5: bytes.fromhex("3020300c06082a864886f70d020505000410"),
    MacAlgorithm.SHA1: bytes.fromhex("3021300906052b0e03021a05000414"),
    MacAlgorithm.RIPEMD160: bytes.fromhex("3021300906052b2403020105000414"),
    MacAlgorithm.SHA256: bytes.fromhex("3031300d060960864801650304020105000420"),
    MacAlgorithm.SHA384: bytes.fromhex("3041300d060960864801650304020205000430"),
    MacAlgorithm.SHA512: bytes.fromhex("3051300d060960864801650304020305000440"),
}
_HASHLIB_NAME = {
    MacAlgorithm.MD5: "md5",
    MacAlgorithm.SHA1: "sha1",
    MacAlgorithm.RIPEMD160: "ripemd160",
    MacAlgorithm.SHA256: "sha256",
    MacAlgorithm.SHA384: "sha384",
    MacAlgorithm.SHA512: "sha512",
}
# ECDSA and DSA sign the digest itself; any hash object of the right size carries it through Prehashed.
PREHASH = {
    16: hashes.MD5(),  # noqa: S303 - only carries a digest made by a legacy MAC
    20: hashes.SHA1(),  # noqa: S303
    32: hashes.SHA256(),
    48: hashes.SHA384(),
    64: hashes.SHA512(),
}
# PS3.15 C.2: the Creator RSA profile requires these, when present.
CREATOR_REQUIRED = (0x00080016, 0x00080018, 0x0020000D, 0x0020000E)


@functools.lru_cache(maxsize=8192)
def tag_str(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


@functools.lru_cache(maxsize=8192)
def keyword(tag: int) -> str:
    return keyword_for_tag(tag) or ("Private" if (tag >> 16) % 2 else "")


def mac_digest(
    ds: Dataset,
    tags: Iterable[int],
    item: Dataset,
    algorithm: MacAlgorithm,
    elements: dict[int, Any] | None = None,
    item_elements: dict[int, Any] | None = None,
    segments: dict[int, tuple[int, int]] | None = None,
) -> bytes:
    """The MAC of ``tags`` of ``ds`` and the signature ``item``; ``elements`` / ``item_elements`` are their
    elements by int tag (:func:`element_index`) and ``segments`` ``ds``'s :func:`file_segments`, when the caller
    has them."""
    h = hashlib.new(_HASHLIB_NAME[algorithm])
    for chunk in iter_signature_stream(ds, tags, elements=elements, segments=segments):
        h.update(chunk)
    for chunk in signature_item_stream(item, elements=item_elements):
        h.update(chunk)
    return h.digest()


def default_tags(ds: Dataset, *, only: set[int] | None = None) -> list[int]:
    """Every present element that may be signed (the rule of dcmsign's ``createAttributeList``); of ``only``
    when given."""
    out = []
    for tag, elem in list(ds.items()):  # raw items: no value conversion
        t = int(tag)
        if (only is not None and t not in only) or not is_signable_tag(t):
            continue
        # An element read raw from an Implicit VR file has VR None until converted; a private element of an
        # unknown creator then becomes UN, which cannot be signed (the stream would refuse it later).
        vr = elem.VR if elem is not None else None
        if vr is None and not (t >> 16) % 2:  # standard tag read from an Implicit VR file: the dictionary says
            vr = dictionary_vr(t)
        if vr is None:
            vr = ds[tag].VR
        if vr == "UN":
            continue
        out.append(t)
    return sorted(out)
