"""``POST /v1/claims/audit``: a FHIR claim bundle and the images it names, audited as ``medverify claims audit
--fhir`` audits them, with the findings back as the audit's JSON or as FHIR.

The body is multipart (``form-data`` or ``related``): one part of type ``application/fhir+json`` (or
``application/json``, or untyped and a JSON object), the bundle, and one part a file, each with the file name its
claim's ``supportingInfo.valueAttachment.url`` gives (or that URL's last segment). The files are written to a private
temporary folder for the audit and removed after it; results, findings and audit records name each file
``api:<peer>/<url>`` as sent, not where it was written.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from verifier.api.multipart import Part
from verifier.audit import AuditLog
from verifier.checker import Checker
from verifier.errors import InputError

__all__ = ["FHIR_JSON", "audit_claim_parts"]

FHIR_JSON = "application/fhir+json"
_BUNDLE_TYPES = (FHIR_JSON, "application/json")


def audit_claim_parts(checker: Checker, log: AuditLog, parts: list[Part], *, output: str, peer: str) -> str:
    """Audit the claims of the bundle among ``parts`` with their images; the audit as JSON or FHIR (``output``).
    An :class:`InputError` for a body that is no such request (no bundle or two, a bad bundle, a file no claim
    names or an attachment not sent): nothing is then checked or recorded."""
    import json

    from verifier.claims import ClaimsAuditor
    from verifier.claims.fhir.bundle import claim_infos_from_uploads, read_bundle

    # The bundle is the part typed as FHIR JSON, else the one part that is a JSON object (a client that sends no
    # part types); an image never starts with "{".
    bundles = [p for p in parts if p.content_type in _BUNDLE_TYPES]
    if not bundles:
        bundles = [p for p in parts if p.data.lstrip()[:1] == b"{"]
    if len(bundles) != 1:
        raise InputError(f"send exactly one FHIR bundle part ({FHIR_JSON}), not {len(bundles)}")
    (bundle,) = bundles
    claims = read_bundle(bundle.data, bundle.label, require_claim=False)
    images = [p for p in parts if p is not bundle]
    with tempfile.TemporaryDirectory(prefix="medverify-claims-") as tmp:
        uploads: list[tuple[str, Path]] = []
        names: dict[Path, str] = {}
        for i, part in enumerate(images):
            path = Path(tmp) / f"{i:05d}"  # never a name from the request
            path.write_bytes(part.data)
            sent = part.filename or part.label
            uploads.append((sent, path))
            names[path] = f"{peer}/{''.join(c for c in sent if c.isprintable())[:200]}"  # a label, never a path
        infos = claim_infos_from_uploads(claims, uploads)
        result = ClaimsAuditor(checker, log=log, label=lambda p: names.get(p, str(p))).audit(infos)
    if output == "fhir":
        from verifier.claims.fhir.export import audit_bundle_json

        return audit_bundle_json(result)
    return json.dumps(result.to_dict(), default=str)
