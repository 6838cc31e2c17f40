"""Signed checkpoints (tree heads) and inclusion proofs, and their offline checks.

A checkpoint signs this UTF-8 text (every line ends with ``\\n``)::

    medverify audit checkpoint v1
    log <log id, a UUID chosen when the database was created>
    size <tree size, decimal>
    root <tree head, lowercase hex>
    time <RFC 3339 UTC with microseconds>

with the ``audit`` key: ECDSA keys sign SHA-256 and give a DER signature, RSA keys sign PKCS#1 v1.5 with
SHA-256, Ed25519 keys sign the text itself. The exported JSON carries the signer's certificate (PEM) so it can
be checked anywhere; *whether* that certificate is trusted is the checker's decision (a trust policy or a
pinned certificate), never the file's.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import re
from collections.abc import Callable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from verifier.audit.entry import rfc3339
from verifier.audit.merkle import leaf_hash, verify_inclusion
from verifier.errors import AuditError

__all__ = [
    "CheckpointSigner",
    "InclusionProof",
    "ProofCheck",
    "ProofStatus",
    "SignedCheckpoint",
    "TrustedCertificates",
    "certificate_fingerprint",
    "check_proof",
]

_HEX32 = re.compile(r"[0-9a-f]{64}")
_FORMAT = "medverify-audit-checkpoint/v1"
_PROOF_FORMAT = "medverify-audit-proof/v1"


class CheckpointSigner(Protocol):
    """Anything holding an ``audit`` key: its private key and certificate (the key store's ``SigningKey``)."""

    @property
    def private_key(self) -> Any: ...

    @property
    def certificate(self) -> x509.Certificate: ...


#: Which certificates may sign checkpoints: pinned certificates, or a callable (e.g. wrapping a trust policy)
#: that answers whether a certificate is trusted for a checkpoint signed at the given time.
TrustedCertificates = Sequence[x509.Certificate] | Callable[[x509.Certificate, dt.datetime], bool]


def certificate_fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, lowercase hex."""
    return cert.fingerprint(hashes.SHA256()).hex()


def is_trusted(cert: x509.Certificate, signed_at: dt.datetime, trusted: TrustedCertificates) -> bool:
    """Whether ``cert`` is accepted by ``trusted``; an empty list trusts nothing and is refused."""
    if callable(trusted):
        return bool(trusted(cert, signed_at))
    if not trusted:
        raise AuditError("no trusted checkpoint certificate was given; refusing to trust any signer")
    fingerprint = certificate_fingerprint(cert)
    return any(certificate_fingerprint(t) == fingerprint for t in trusted)


def _checkpoint_text(log_id: str, tree_size: int, root_hash: str, when: dt.datetime) -> bytes:
    return (
        f"medverify audit checkpoint v1\nlog {log_id}\nsize {tree_size}\n"
        f"root {root_hash}\ntime {rfc3339(when)}\n"
    ).encode()


def _sign(private_key: Any, message: bytes) -> bytes:
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        return private_key.sign(message, ec.ECDSA(hashes.SHA256()))
    if isinstance(private_key, rsa.RSAPrivateKey):
        return private_key.sign(message, padding.PKCS1v15(), hashes.SHA256())
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return private_key.sign(message)
    raise AuditError(f"cannot sign checkpoints with a {type(private_key).__name__}")


def _signature_ok(cert: x509.Certificate, message: bytes, signature: bytes) -> bool:
    key = cert.public_key()
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, message)
        else:
            return False
    except InvalidSignature:
        return False
    return True


@dataclasses.dataclass(frozen=True, kw_only=True)
class SignedCheckpoint:
    """A signed statement that the log with ``log_id`` had ``tree_size`` records with head ``root_hash``."""

    log_id: str
    tree_size: int
    #: Tree head (RFC 9162 MTH), lowercase hex.
    root_hash: str
    created_at: dt.datetime
    signature: bytes
    certificate: x509.Certificate

    def __post_init__(self) -> None:
        if self.tree_size < 0:
            raise ValueError("tree_size must not be negative")
        if not _HEX32.fullmatch(self.root_hash):
            raise ValueError("root_hash must be 64 lowercase hexadecimal digits")

    @classmethod
    def create(
        cls, signer: CheckpointSigner, *, log_id: str, tree_size: int, root_hash: str, when: dt.datetime
    ) -> SignedCheckpoint:
        """Sign a tree head now."""
        text = _checkpoint_text(log_id, tree_size, root_hash, when)
        return cls(
            log_id=log_id,
            tree_size=tree_size,
            root_hash=root_hash,
            created_at=when,
            signature=_sign(signer.private_key, text),
            certificate=signer.certificate,
        )

    def signed_text(self) -> bytes:
        """The exact bytes the signature covers."""
        return _checkpoint_text(self.log_id, self.tree_size, self.root_hash, self.created_at)

    def signature_valid(self) -> bool:
        """Whether the signature matches the text and the embedded certificate (not if trusted)."""
        return _signature_ok(self.certificate, self.signed_text(), self.signature)

    @property
    def certificate_pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "log_id": self.log_id,
            "tree_size": self.tree_size,
            "root_hash": self.root_hash,
            "time": rfc3339(self.created_at),
            "signed_text": self.signed_text().decode(),
            "signature": base64.b64encode(self.signature).decode("ascii"),
            "certificate_pem": self.certificate_pem,
            "certificate_sha256": certificate_fingerprint(self.certificate),
        }

    @classmethod
    def from_json_dict(cls, data: Any) -> SignedCheckpoint:
        """Parse an exported checkpoint; raise :class:`AuditError` if it is malformed."""
        try:
            if data.get("format") != _FORMAT:
                raise ValueError(f"format is not {_FORMAT}")
            return cls(
                log_id=str(data["log_id"]),
                tree_size=_int(data["tree_size"]),
                root_hash=str(data["root_hash"]),
                created_at=_parse_time(str(data["time"])),
                signature=base64.b64decode(str(data["signature"]), validate=True),
                certificate=x509.load_pem_x509_certificate(str(data["certificate_pem"]).encode("ascii")),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise AuditError(f"not a medverify audit checkpoint: {exc}") from exc

    @classmethod
    def from_file(cls, path: Path) -> SignedCheckpoint:
        return cls.from_json_dict(_load_json(path, "checkpoint"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class InclusionProof:
    """RFC 9162 inclusion proof of one record in the tree of ``tree_size`` records.

    ``encoding`` is the record's canonical encoding, so the checker hashes the record itself and can read it.
    """

    log_id: str
    record_id: int
    leaf_index: int
    tree_size: int
    encoding: bytes
    audit_path: tuple[str, ...]
    #: The head the path leads to; check it against a signed checkpoint of the same size.
    root_hash: str

    def __post_init__(self) -> None:
        if not 0 <= self.leaf_index < self.tree_size:
            raise ValueError("leaf_index must be inside the tree")
        for h in (*self.audit_path, self.root_hash):
            if not _HEX32.fullmatch(h):
                raise ValueError("hashes must be 64 lowercase hexadecimal digits")

    @property
    def leaf_hash(self) -> str:
        return leaf_hash(self.encoding).hex()

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "format": _PROOF_FORMAT,
            "log_id": self.log_id,
            "record_id": self.record_id,
            "leaf_index": self.leaf_index,
            "tree_size": self.tree_size,
            "encoding": self.encoding.decode(),
            "leaf_hash": self.leaf_hash,
            "audit_path": list(self.audit_path),
            "root_hash": self.root_hash,
        }

    @classmethod
    def from_json_dict(cls, data: Any) -> InclusionProof:
        try:
            if data.get("format") != _PROOF_FORMAT:
                raise ValueError(f"format is not {_PROOF_FORMAT}")
            proof = cls(
                log_id=str(data["log_id"]),
                record_id=_int(data["record_id"]),
                leaf_index=_int(data["leaf_index"]),
                tree_size=_int(data["tree_size"]),
                encoding=str(data["encoding"]).encode(),
                audit_path=tuple(str(h) for h in data["audit_path"]),
                root_hash=str(data["root_hash"]),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise AuditError(f"not a medverify audit proof: {exc}") from exc
        if "leaf_hash" in data and data["leaf_hash"] != proof.leaf_hash:
            # The stated leaf hash is informative only; a mismatch means the proof file was edited.
            raise AuditError("proof's leaf_hash does not match its encoding")
        return proof

    @classmethod
    def from_file(cls, path: Path) -> InclusionProof:
        return cls.from_json_dict(_load_json(path, "proof"))


class ProofStatus(StrEnum):
    VALID = "valid"
    #: The path does not lead from the record to the root hash.
    INVALID_PATH = "invalid-path"
    #: Proof and checkpoint are about different logs or tree sizes, or their roots differ.
    CHECKPOINT_MISMATCH = "checkpoint-mismatch"
    #: The checkpoint's signature does not verify with its certificate.
    BAD_SIGNATURE = "bad-signature"
    #: The signature is good but its certificate is not trusted by the checker.
    UNTRUSTED_SIGNER = "untrusted-signer"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProofCheck:
    """Outcome of :func:`check_proof`. Read ``status``; this object has no truth value."""

    status: ProofStatus
    reason: str
    record_id: int
    tree_size: int
    signer_sha256: str

    def __bool__(self) -> bool:
        raise TypeError("read ProofCheck.status instead of testing the result as a bool")


def check_proof(
    proof: InclusionProof, checkpoint: SignedCheckpoint, *, trusted: TrustedCertificates
) -> ProofCheck:
    """Check offline that ``proof``'s record is in the log that ``checkpoint`` signs with a trusted key."""

    def result(status: ProofStatus, reason: str) -> ProofCheck:
        return ProofCheck(
            status=status,
            reason=reason,
            record_id=proof.record_id,
            tree_size=proof.tree_size,
            signer_sha256=certificate_fingerprint(checkpoint.certificate),
        )

    if not checkpoint.signature_valid():
        return result(
            ProofStatus.BAD_SIGNATURE, "the checkpoint's signature does not verify with its certificate"
        )
    if proof.log_id != checkpoint.log_id:
        return result(ProofStatus.CHECKPOINT_MISMATCH, "proof and checkpoint come from different logs")
    if proof.tree_size != checkpoint.tree_size:
        return result(
            ProofStatus.CHECKPOINT_MISMATCH,
            f"proof is for a tree of {proof.tree_size} records, the checkpoint for {checkpoint.tree_size}",
        )
    if proof.root_hash != checkpoint.root_hash:
        return result(ProofStatus.CHECKPOINT_MISMATCH, "proof's root hash is not the checkpoint's")
    try:
        ok = verify_inclusion(
            bytes.fromhex(proof.leaf_hash),
            proof.leaf_index,
            proof.tree_size,
            [bytes.fromhex(h) for h in proof.audit_path],
            bytes.fromhex(checkpoint.root_hash),
        )
        fields = json.loads(proof.encoding)
    except ValueError:
        ok, fields = False, {}
    if not ok:
        return result(
            ProofStatus.INVALID_PATH, "the audit path does not lead from the record to the signed root"
        )
    if not isinstance(fields, dict) or fields.get("leaf_index") != proof.leaf_index:
        return result(ProofStatus.INVALID_PATH, "the record's encoding names another leaf index")
    if not is_trusted(checkpoint.certificate, checkpoint.created_at, trusted):
        return result(
            ProofStatus.UNTRUSTED_SIGNER, "the checkpoint is signed by a certificate that is not trusted"
        )
    return result(
        ProofStatus.VALID, f"record {proof.record_id} is in the signed log of {proof.tree_size} records"
    )


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, not {value!r}")
    return int(value)


def _parse_time(text: str) -> dt.datetime:
    if not text.endswith("Z"):
        raise ValueError("time must be UTC, ending in Z")
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)


def _load_json(path: Path, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise AuditError(f"cannot read {what} file {path}: {exc.strerror}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AuditError(f"{what} file {path} is not JSON: {exc}") from exc
