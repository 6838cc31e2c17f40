"""Tell someone that an instance went to quarantine: a JSON POST to a configured URL (``quarantine_webhook_url``).

The sender of a quarantined instance is answered Success (the gateway) or a refusal it may not read (STOW-RS,
Orthanc), so without this nobody learns that an image waits for review. The POST is made from a background
thread with a bounded queue and a few retries: a slow or dead receiver never delays an intake answer, and a full
queue drops the notice (logged) rather than memory. The body names the instance and its verdict, never the patient:
webhook receivers (chat rooms, ticket systems) are rarely cleared for patient data; the review page has the rest.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from verifier.errors import ConfigError

__all__ = ["Webhook", "webhook_payload"]

_log = logging.getLogger("medverify.intake")

#: Keys of a sidecar record that a webhook may carry (no patient or study identifiers).
_PAYLOAD_KEYS = (
    "sha256", "verdict", "action", "reasons", "channel", "origin", "received", "audit_id", "modality",
    "synthetic_score", "tamper_score", "gateway",
)  # fmt: skip


def webhook_payload(record: dict[str, Any]) -> dict[str, Any]:
    """The JSON body for one quarantined arrival."""
    body = {k: record.get(k) for k in _PAYLOAD_KEYS if k in record}
    peer = record.get("peer")
    if isinstance(peer, dict):
        body["calling_ae_title"] = peer.get("ae_title")
    return {"event": "quarantined", **body}


class Webhook:
    """POSTs :func:`webhook_payload` of each quarantined arrival to ``url`` from a daemon thread."""

    def __init__(self, url: str, *, timeout: float = 5.0, retries: int = 3, backlog: int = 1000) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"quarantine_webhook_url must be an http:// or https:// URL, not {url[:80]!r}")
        self.url = url
        self.timeout = timeout
        self.retries = retries
        self.sent = 0
        self.failed = 0
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=backlog)
        self._thread = threading.Thread(target=self._run, name="medverify-webhook", daemon=True)
        self._thread.start()

    def __call__(self, record: dict[str, Any]) -> None:
        """Queue a notice (the ``on_quarantine`` callback of a quarantine store)."""
        try:
            self._queue.put_nowait(webhook_payload(record))
        except queue.Full:
            self.failed += 1
            _log.warning("quarantine webhook backlog full; a notice was dropped")

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (waiting up to ``timeout`` seconds), then stop."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            payload = self._queue.get()
            if payload is None:
                return
            self._post(payload)

    def _post(self, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        for attempt in range(self.retries):
            request = urllib.request.Request(  # noqa: S310 - the scheme is checked in __init__
                self.url, data=body, method="POST", headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as answer:  # noqa: S310
                    if 200 <= answer.status < 300:
                        self.sent += 1
                        return
            except (urllib.error.URLError, OSError) as exc:
                _log.warning("quarantine webhook %s failed (%s)", self.url, exc)
            time.sleep(min(4.0, 0.5 * 2**attempt))
        self.failed += 1
