"""Tamper-evident audit log of everything medverify does.

Every verification, signing, generation, key event and scan leaves one :class:`AuditEntry`. Records form an
append-only RFC 9162 Merkle log with signed checkpoints, so that :meth:`AuditLog.verify` finds any record that
was edited, deleted, inserted or reordered, and :meth:`AuditLog.prove` gives inclusion proofs that anyone can
check offline against an exported checkpoint (see ``PROOFS.md`` and :mod:`verifier.audit.merkle`)::

    log = AuditLog.open(settings.database_url, checkpoint_signer=key, checkpoint_interval=1000)
    entry = AuditEntry(event="verify", channel=Channel.CLI, path=p, verdict="AUTHENTIC")
    receipt = log.append(entry.with_local_actor())
    result = log.verify(trusted=[key.certificate])
    if result.status is not AuditStatus.VALID: ...
"""

from verifier.audit.checkpoint import (
    CheckpointSigner,
    InclusionProof,
    ProofCheck,
    ProofStatus,
    SignedCheckpoint,
    TrustedCertificates,
    certificate_fingerprint,
    check_proof,
)
from verifier.audit.entry import AuditEntry, AuditReceipt, AuditRecord, Channel, EventKind
from verifier.audit.log import AuditLog, AuditStatus, AuditVerification

__all__ = [
    "AuditEntry",
    "AuditLog",
    "AuditReceipt",
    "AuditRecord",
    "AuditStatus",
    "AuditVerification",
    "Channel",
    "CheckpointSigner",
    "EventKind",
    "InclusionProof",
    "ProofCheck",
    "ProofStatus",
    "SignedCheckpoint",
    "TrustedCertificates",
    "certificate_fingerprint",
    "check_proof",
]
