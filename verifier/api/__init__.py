"""The HTTP API of ``medverify serve`` (FastAPI): verify uploads, read audit records, STOW-RS intake.

``openapi.json`` beside this file is the committed schema; a test checks that the server serves exactly it
(regenerate with ``medverify serve --openapi > verifier/api/openapi.json``).
"""

from verifier.api.app import DEFAULT_MAX_BODY_BYTES, ApiConfig, create_app

__all__ = ["DEFAULT_MAX_BODY_BYTES", "ApiConfig", "create_app"]
