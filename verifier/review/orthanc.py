"""Releasing into Orthanc: a reviewer's release of what the Orthanc plugin quarantined.

The release leaves a one-use marker, ``released/<sha256>.orthanc`` in the quarantine directory, then POSTs the
file to Orthanc's ``/instances``; the plugin (:mod:`verifier.intake.orthanc_plugin`) finds the marker for exactly
these bytes, removes it and stores the instance with an audit record (outcome ``stored-after-review``) instead of
quarantining it again. Credentials, where Orthanc asks for them, come from ``MEDVERIFY_ORTHANC_AUTH``
(``user:password``), never from a command line.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from verifier.errors import ConfigError
from verifier.review.desk import ReviewError

__all__ = ["MARKER_SUFFIX", "marker_path", "orthanc_poster"]

MARKER_SUFFIX = ".orthanc"


def marker_path(quarantine: Path, sha256: str) -> Path:
    """Where the release marker of ``sha256`` lies (the plugin reads the same place)."""
    return Path(quarantine) / "released" / f"{sha256}{MARKER_SUFFIX}"


def orthanc_poster(url: str) -> Callable[[bytes], str]:
    """A function that stores one file in the Orthanc at ``url`` (``POST /instances``) and returns its id."""
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"orthanc_url must be an http:// or https:// URL, not {url[:80]!r}")
    headers = {"Content-Type": "application/dicom"}
    auth = os.environ.get("MEDVERIFY_ORTHANC_AUTH")
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()

    def post(data: bytes) -> str:
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked above
            url.rstrip("/") + "/instances", data=data, method="POST", headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310
                body = json.loads(answer.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise ReviewError(f"Orthanc refused the released instance (HTTP {exc.code})") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ReviewError(f"Orthanc cannot be reached at {url}: {exc}") from None
        return str(body.get("ID", "")) if isinstance(body, dict) else ""

    return post
