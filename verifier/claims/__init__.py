"""Claim audits: the images attached to insurance claims, checked and compared with each other and with every
image audited before, and an evidence package that others can verify.

:mod:`~verifier.claims.audit` runs an audit (:class:`ClaimsAuditor`); the claims come from
:mod:`~verifier.claims.manifest`, the findings from :mod:`~verifier.claims.reuse` (reused images and UIDs) and
:mod:`~verifier.claims.rules` (one small rule per header finding); :mod:`~verifier.claims.models` holds what they
produce.
"""

from verifier.claims.audit import ClaimsAuditor
from verifier.claims.manifest import load_claims
from verifier.claims.models import AuditedFile, ClaimAudit, ClaimInfo, ClaimReport, Finding, Severity

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
