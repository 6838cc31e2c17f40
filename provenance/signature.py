"""DICOM digital signatures (PS3.15 Annex C, PS3.3 C.12.1.1.3) that interoperate with DCMTK's ``dcmsign``.

A signature is an item of the Digital Signatures Sequence (FFFA,FFFA) with the signer's X.509 certificate, and a
matching item (same MAC ID Number) of the MAC Parameters Sequence (4FFE,0001) that names the MAC algorithm, the
MAC Calculation Transfer Syntax and the Data Elements Signed. The MAC is a hash of the signed elements encoded as
:mod:`provenance._internal.macstream` describes, followed by the signature item's own MAC ID Number, Digital
Signature UID, DateTime, Certificate Type (and Purpose Code Sequence, if any). RSA signs it with PKCS#1 v1.5,
ECDSA and DSA with a DER signature padded to an even length.

Signing is here; verification, :func:`verify_dataset`, is in :mod:`provenance.verification` (exported here too),
and what both share (the item layout, the MAC) in :mod:`provenance._internal.sigitems`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.serialization import Encoding
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from provenance._internal.macstream import (
    DIGITAL_SIGNATURES_SEQUENCE,
    MAC_PARAMETERS_SEQUENCE,
    PIXEL_DATA,
    UnsignableElementError,
    is_signable_tag,
)
from provenance._internal.sigitems import (
    CERT,
    CERT_TYPE,
    CERT_TYPE_X509,
    CREATOR_REQUIRED,
    DATA_ELEMENTS_SIGNED,
    MAC_ALGORITHM,
    MAC_ID,
    MAC_XFER,
    PREHASH,
    SIG_DATETIME,
    SIG_UID,
    SIGNATURE,
    default_tags,
    mac_digest,
    tag_str,
)
from provenance.errors import SigningError
from provenance.models import MacAlgorithm, SignatureProfile
from provenance.verification import verify_dataset

__all__ = ["SignerLike", "sign_dataset", "strip_signatures", "verify_dataset"]

_SIGNING_MACS = (MacAlgorithm.SHA256, MacAlgorithm.SHA384, MacAlgorithm.SHA512)


# PS3.15 C.2: the Creator RSA profile requires these, when present.
class SignerLike(Protocol):
    """What signing needs: a private key and its certificate (e.g. :class:`provenance.keys.SigningKey`)."""

    @property
    def private_key(self) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey: ...

    @property
    def certificate(self) -> x509.Certificate: ...


def _signature_time(now: dt.datetime | None) -> str:
    # UTC with an explicit +0000: dcmsign ignores the offset when comparing with the certificate's validity.
    t = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    return t.strftime("%Y%m%d%H%M%S.%f") + "+0000"


def _sequence(ds: Dataset, tag: int) -> DicomSequence:
    if tag in ds:
        value = ds[tag].value
        if not isinstance(value, DicomSequence):
            raise SigningError(f"{tag_str(tag)} exists but is not a sequence; refusing to sign")
        return value
    ds.add_new(tag, "SQ", DicomSequence())
    return ds[tag].value  # type: ignore[no-any-return]


def _next_mac_id(ds: Dataset) -> int:
    used: set[int] = set()
    for seq_tag in (MAC_PARAMETERS_SEQUENCE, DIGITAL_SIGNATURES_SEQUENCE):
        if seq_tag in ds:
            for item in ds[seq_tag].value or ():
                if MAC_ID in item:
                    used.add(int(item[MAC_ID].value))
    for candidate in range(0x10000):
        if candidate not in used:
            return candidate
    raise SigningError("all 65536 MAC ID numbers are in use")


def sign_dataset(
    ds: Dataset,
    signer: SignerLike,
    *,
    profile: SignatureProfile = SignatureProfile.NONE,
    mac: MacAlgorithm = MacAlgorithm.SHA256,
    tags: Sequence[int] | None = None,
    now: dt.datetime | None = None,
) -> str:
    """Add a digital signature to ``ds`` (in place) and return its Digital Signature UID.

    ``tags`` selects the elements to sign (default: every signable element present, as dcmsign does). Existing
    signatures are kept, so several may coexist. RSA keys work with every profile; ECDSA only with ``none``,
    the combinations that dcmsign 3.6.7 accepts.
    """
    key = signer.private_key
    if mac not in _SIGNING_MACS:
        raise SigningError(f"medverify signs with SHA256, SHA384 or SHA512, not {mac}")
    if profile is not SignatureProfile.NONE and not isinstance(key, rsa.RSAPrivateKey):
        raise SigningError(f"the {profile} profile requires an RSA key (ECDSA works only with profile 'none')")
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise SigningError("only RSA and ECDSA keys can sign DICOM")
    if key.public_key().public_numbers() != signer.certificate.public_key().public_numbers():  # type: ignore[union-attr]
        raise SigningError("the certificate does not belong to the private key")
    chosen = sorted(set(int(t) for t in tags)) if tags is not None else default_tags(ds)
    bad = [t for t in chosen if not is_signable_tag(t)]
    if bad:
        raise SigningError(f"element(s) {', '.join(map(tag_str, bad))} cannot be signed")
    missing = [t for t in chosen if t not in ds]
    if missing:
        raise SigningError(f"element(s) {', '.join(map(tag_str, missing))} to sign are not present")
    if not chosen:
        raise SigningError("nothing to sign: the dataset has no signable elements")
    if profile in (SignatureProfile.CREATOR, SignatureProfile.AUTHORIZATION):
        unsigned = [t for t in CREATOR_REQUIRED if t in ds and t not in chosen]
        if PIXEL_DATA in ds and PIXEL_DATA not in chosen:
            unsigned.append(PIXEL_DATA)
        if unsigned:
            raise SigningError(
                f"the {profile} profile requires signing {', '.join(map(tag_str, unsigned))} when present"
            )

    mac_id = _next_mac_id(ds)
    item = Dataset()
    item.add_new(MAC_ID, "US", mac_id)
    item.add_new(SIG_UID, "UI", generate_uid(prefix=None))
    item.add_new(SIG_DATETIME, "DT", _signature_time(now))
    item.add_new(CERT_TYPE, "CS", CERT_TYPE_X509)
    try:
        digest = mac_digest(ds, chosen, item, mac)
    except UnsignableElementError as exc:
        raise SigningError(f"cannot sign: {exc}") from exc
    prehashed = Prehashed(PREHASH[len(digest)])
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(digest, padding.PKCS1v15(), prehashed)
    else:
        signature = key.sign(digest, ec.ECDSA(prehashed))
        if len(signature) % 2:
            signature += b"\x00"
    item.add_new(CERT, "OB", signer.certificate.public_bytes(Encoding.DER))
    item.add_new(SIGNATURE, "OB", signature)

    params = Dataset()
    params.add_new(MAC_ID, "US", mac_id)
    params.add_new(MAC_XFER, "UI", _mac_transfer_syntax(ds))
    params.add_new(MAC_ALGORITHM, "CS", mac.value)
    params.add_new(DATA_ELEMENTS_SIGNED, "AT", chosen)
    _sequence(ds, MAC_PARAMETERS_SEQUENCE).append(params)
    _sequence(ds, DIGITAL_SIGNATURES_SEQUENCE).append(item)
    return str(item[SIG_UID].value)


def strip_signatures(ds: Dataset) -> None:
    """Remove every signature of the top level: a derived object never keeps its source's (PS3.15; ARCHITECTURE.md,
    "Boundaries")."""
    for tag in (MAC_PARAMETERS_SEQUENCE, DIGITAL_SIGNATURES_SEQUENCE):
        if tag in ds:
            del ds[tag]


def _mac_transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    xfer = str(getattr(meta, "TransferSyntaxUID", "") or "") if meta is not None else ""
    if PIXEL_DATA in ds and xfer and UID(xfer).is_transfer_syntax and UID(xfer).is_encapsulated:
        return xfer
    return str(ExplicitVRLittleEndian)
