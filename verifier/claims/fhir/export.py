"""A claim audit written back as FHIR R4 (``claims audit --fhir ... --format fhir``): a ``collection`` Bundle with
one DetectedIssue per finding and one Provenance per checked image.

* **DetectedIssue**: ``code`` the finding kind (system :data:`FINDING_SYSTEM`), ``severity`` high / moderate /
  low, ``detail`` the finding and its evidence in plain language, ``patient`` the Claim's patient, ``implicated``
  the Claim and the ImagingStudy resources of the images concerned, and ``evidence.detail`` the FHIR elements the
  finding rests on (a reference to the resource, the element as its ``display``: ``Patient/p1.birthDate``).
* **Provenance**: ``target`` the image (its SOP Instance UID as a ``urn:dicom:uid`` identifier, else its SHA-256),
  ``entity`` the ImagingStudy it belongs to, ``agent`` medverify as the verifier, ``policy`` the audit record
  (``urn:medverify:audit-record:<id>``), and medverify's verdict, action and audit record id in the extensions
  :data:`VERDICT_EXTENSION`, :data:`ACTION_EXTENSION`, :data:`AUDIT_RECORD_EXTENSION` and the file's SHA-256 in
  :data:`SHA256_EXTENSION`.

The bundle is built with the ``fhir.resources`` R4B models, so what is written has passed their validation; a
failure there is a bug of medverify, raised as such.
"""

from __future__ import annotations

import importlib.metadata
import uuid
from typing import Any

from verifier.claims.models import AuditedFile, ClaimAudit, ClaimReport, Finding

__all__ = [
    "ACTION_EXTENSION",
    "AUDIT_RECORD_EXTENSION",
    "FINDING_SYSTEM",
    "SHA256_EXTENSION",
    "VERDICT_EXTENSION",
    "audit_bundle",
    "audit_bundle_json",
]

FINDING_SYSTEM = "urn:medverify:finding-kind"
VERDICT_EXTENSION = "urn:medverify:extension:verdict"
ACTION_EXTENSION = "urn:medverify:extension:action"
AUDIT_RECORD_EXTENSION = "urn:medverify:extension:audit-record-id"
#: The SHA-256 of the checked file (as the audit record has it).
SHA256_EXTENSION = "urn:medverify:extension:sha256"
_SEVERITY = {"high": "high", "medium": "moderate", "low": "low"}
_DICOM_UID = "urn:dicom:uid"
_NAMESPACE = uuid.UUID("3f4d8a52-6c1e-4b7a-9a55-2f0e8c1d7b10")


def _id(*parts: object) -> str:
    """A stable id for a resource of the output (the same audit writes the same ids)."""
    return str(uuid.uuid5(_NAMESPACE, "\x00".join(str(p) for p in parts)))


def _study_refs(report: ClaimReport, files: tuple[str, ...]) -> list[str]:
    claim = report.info.fhir
    if claim is None:
        return []
    by_path = {f.path: f for f in report.files}
    out: list[str] = []
    for path in files:
        facts = by_path[path].facts if path in by_path else None
        study = claim.study_of(facts.study_instance_uid if facts else None)
        if study is not None and study.ref not in out:
            out.append(study.ref)
    return out


def _claim_ref(report: ClaimReport) -> str:
    return report.info.fhir.ref if report.info.fhir is not None else f"Claim/{report.claim_id}"


def _patient(report: ClaimReport) -> dict[str, Any] | None:
    claim = report.info.fhir
    if claim is None or claim.patient is None:
        return None
    return {"reference": claim.patient.ref}


def _issue(report: ClaimReport, finding: Finding, n: int, when: str) -> dict[str, Any]:
    implicated = [{"reference": _claim_ref(report), "display": f"claim {report.claim_id}"}]
    implicated += [{"reference": ref} for ref in _study_refs(report, finding.files)]
    issue: dict[str, Any] = {
        "resourceType": "DetectedIssue",
        "id": _id("issue", report.claim_id, n, finding.kind),
        "status": "final",
        "code": {"coding": [{"system": FINDING_SYSTEM, "code": finding.kind}], "text": finding.message},
        "identifiedDateTime": when,
        "author": {"display": _agent()},
        "implicated": implicated,
        "detail": finding.evidence_text,
    }
    if finding.severity.value in _SEVERITY:
        issue["severity"] = _SEVERITY[finding.severity.value]
    if (patient := _patient(report)) is not None:
        issue["patient"] = patient
    if elements := [str(e) for e in finding.evidence.get("fhir") or ()]:
        # The elements the finding rests on: a reference to their resource, the element itself as its display.
        issue["evidence"] = [{"detail": [{"reference": e.split(".", 1)[0], "display": e} for e in elements]}]
    return issue


def _agent() -> str:
    try:
        return f"medverify {importlib.metadata.version('medverify')}"
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree
        return "medverify"


def _provenance(report: ClaimReport, f: AuditedFile, when: str) -> dict[str, Any]:
    r = f.result
    uid = f.facts.sop_instance_uid if f.facts is not None else r.sop_instance_uid
    if uid:
        target = {"identifier": {"system": _DICOM_UID, "value": f"urn:oid:{uid}"}, "display": f.path}
    else:
        target = {"identifier": {"system": "urn:medverify:sha256", "value": r.sha256 or "unknown"}, "display": f.path}
    extension: list[dict[str, Any]] = [
        {"url": VERDICT_EXTENSION, "valueCode": r.verdict.status.value},
        {"url": ACTION_EXTENSION, "valueCode": r.verdict.action.value},
    ]
    if r.sha256:
        extension.append({"url": SHA256_EXTENSION, "valueString": r.sha256})
    prov: dict[str, Any] = {
        "resourceType": "Provenance",
        "id": _id("provenance", report.claim_id, f.path, r.sha256),
        "extension": extension,
        "target": [target],
        "recorded": when,
        "agent": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                                        "code": "verifier", "display": "Verifier"}]},
                   "who": {"display": _agent()}}],
    }  # fmt: skip
    if f.record_id is not None:
        extension.append({"url": AUDIT_RECORD_EXTENSION, "valueInteger": f.record_id})
        prov["policy"] = [f"urn:medverify:audit-record:{f.record_id}"]
    studies = _study_refs(report, (f.path,))
    if studies:
        prov["entity"] = [{"role": "source", "what": {"reference": studies[0]}}]
    return prov


def audit_bundle(audit: ClaimAudit) -> Any:
    """The audit as an R4 ``Bundle`` model (validated as it is built)."""
    from fhir.resources.R4B.bundle import Bundle

    when = audit.started_at.isoformat()
    resources: list[dict[str, Any]] = []
    for report in audit.claims:
        resources += [_issue(report, finding, n, when) for n, finding in enumerate(report.findings)]
        resources += [_provenance(report, f, when) for f in report.files]
    bundle = {
        "resourceType": "Bundle",
        "id": _id("audit", when),
        "type": "collection",
        "timestamp": when,
        "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in resources],
    }
    return Bundle.model_validate(bundle)


def audit_bundle_json(audit: ClaimAudit) -> str:
    """The audit as FHIR JSON (:func:`audit_bundle`)."""
    text: str = audit_bundle(audit).model_dump_json(indent=2)
    return text
