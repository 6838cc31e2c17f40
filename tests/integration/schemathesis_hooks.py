"""Schemathesis hooks for test_api_schema.py (loaded through SCHEMATHESIS_HOOKS).

Schemathesis has no serializer for ``multipart/related`` (STOW-RS); this one wraps the generated body in one
``application/dicom`` part with a fixed boundary, so the fuzzed bytes reach the DICOM parser behind the envelope.
"""

from __future__ import annotations

from typing import Any

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
