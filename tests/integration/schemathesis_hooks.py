"""Schemathesis hooks for test_api.py (loaded through SCHEMATHESIS_HOOKS).

Schemathesis has no serializer for ``multipart/related`` (STOW-RS); this one wraps the generated body in one
``application/dicom`` part with a fixed boundary, so the fuzzed bytes reach the DICOM parser behind the envelope.
"""

from __future__ import annotations

import json
from typing import Any

import schemathesis
from schemathesis.transport import SerializationContext, register_serializer

BOUNDARY = "medverify-schemathesis-0b1d"


def _related(ctx: SerializationContext, value: Any) -> dict[str, Any]:
    data = value if isinstance(value, bytes) else str(value).encode("utf-8")
    body = (
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    content_type = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
    return {"data": body, "headers": {"Content-Type": content_type}}


register_serializer(_related, "multipart/related")


#: A claim bundle the API takes (one Claim of one Patient, no images): half the generated bodies of
#: POST /v1/claims/audit are swapped for it, so that the fuzzing also reaches an audit that runs and its answer's
#: schema, not only the refusals of bundles that are not FHIR (schemathesis would call those a schema mismatch).
CLAIM_BUNDLE = json.dumps({
    "resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1970-01-01"}},
        {"resource": {"resourceType": "Claim", "id": "fuzz-1", "status": "active", "use": "claim",
                      "type": {"coding": [{"code": "professional"}]}, "patient": {"reference": "Patient/p1"},
                      "created": "2024-03-04", "provider": {"display": "x"},
                      "priority": {"coding": [{"code": "normal"}]},
                      "insurance": [{"sequence": 1, "focal": True, "coverage": {"display": "y"}}]}},
    ],
}).encode()  # fmt: skip


_calls = [0]


@schemathesis.hook.apply_to(path="/v1/claims/audit")
def map_body(context: Any, body: Any) -> Any:
    """Every other generated form body of POST /v1/claims/audit becomes :data:`CLAIM_BUNDLE` alone."""
    _calls[0] += 1
    if isinstance(body, dict) and _calls[0] % 2 == 0:
        return {"bundle": CLAIM_BUNDLE}
    return body
