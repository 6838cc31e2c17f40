"""Claim audits: the images attached to insurance claims, checked and compared with each other and with every
image audited before (see :mod:`verifier.claims.audit`), and an evidence package that others can verify."""

from verifier.claims.audit import (
    AuditedFile,
    ClaimAudit,
    ClaimInfo,
    ClaimReport,
    ClaimsAuditor,
    Finding,
    Severity,
    load_claims,
)

__all__ = [
    "AuditedFile",
    "ClaimAudit",
    "ClaimInfo",
    "ClaimReport",
    "ClaimsAuditor",
    "Finding",
    "Severity",
    "load_claims",
]
