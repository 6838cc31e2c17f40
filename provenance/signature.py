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
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

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
from provenance.pixelbinding import ENCODING_TAGS, binding_tags
from provenance.pixelbinding import bind_pixels as bind
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
    bind_pixels: bool = True,
) -> str:
    """Add a digital signature to ``ds`` (in place) and return its Digital Signature UID.

    ``tags`` selects the elements to sign (default: every signable element present, as dcmsign does). Existing
    signatures are kept, so several may coexist. RSA keys work with every profile; ECDSA only with ``none``,
    the combinations that dcmsign 3.6.7 accepts.

    With ``bind_pixels`` (the default) and no ``tags``, an image also gets a pixel binding
    (:mod:`provenance.pixelbinding`): a signed digest of its decoded pixels, in a private block, and a second
    signature by the same key over everything but the pixel encoding, so that the signature outlives a lossless
    re-encoding. Pixels that cannot be decoded raise :class:`SigningError` (sign with ``bind_pixels=False``). An
    Implicit VR Little Endian data set is then set to be written as Explicit VR Little Endian, so that dcmsign
    can check the private block's signature too.
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
    bound: frozenset[int] | None = None
    if bind_pixels and tags is None and PIXEL_DATA in ds:
        meta = getattr(ds, "file_meta", None)
        implicit = str(getattr(meta, "TransferSyntaxUID", "")) == ImplicitVRLittleEndian
        if meta is not None and implicit:
            # To be written in Explicit VR: in Implicit VR, dcmsign reads the block as UN and cannot check the
            # binding signature. A lossless change that the full signature survives (its MAC is over Explicit VR).
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
        try:
            bound = bind(ds)
        except Exception as exc:  # decoders raise many types; nothing is signed
            if meta is not None and implicit:
                meta.TransferSyntaxUID = ImplicitVRLittleEndian
            raise SigningError(
                f"the pixels cannot be decoded for the pixel binding ({type(exc).__name__}: {str(exc)[:160]}); "
                "sign without it to rely on the standard signature alone"
            ) from exc
    if bound is None:
        return _add_signature(ds, signer, chosen, mac, now)
    everything = default_tags(ds)
    # The full signature leaves the block to the binding signature: a file converted to Implicit VR keeps a full
    # signature that dcmsign can check (it reads unknown private elements as UN, which it cannot sign).
    uid = _add_signature(ds, signer, [t for t in everything if t not in bound], mac, now)
    # The binding signature: the block, and everything but what a lossless re-encoding rewrites.
    _add_signature(ds, signer, [t for t in everything if t not in ENCODING_TAGS], mac, now)
    return uid


def _add_signature(
    ds: Dataset, signer: SignerLike, chosen: list[int], mac: MacAlgorithm, now: dt.datetime | None
) -> str:
    """Append a signature item over ``chosen`` and its MAC Parameters item; return its Digital Signature UID."""
    key = signer.private_key
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
    """Remove every signature of the top level, and the pixel binding they signed: a derived object never keeps
    its source's (PS3.15; ARCHITECTURE.md, "Boundaries")."""
    for tag in (MAC_PARAMETERS_SEQUENCE, DIGITAL_SIGNATURES_SEQUENCE, *(binding_tags(ds) or ())):
        if tag in ds:
            del ds[tag]


def _mac_transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    xfer = str(getattr(meta, "TransferSyntaxUID", "") or "") if meta is not None else ""
    if PIXEL_DATA in ds and xfer and UID(xfer).is_transfer_syntax and UID(xfer).is_encapsulated:
        return xfer
    return str(ExplicitVRLittleEndian)
