"""The medverify filter inside Orthanc (orthanc-python 4.0, Orthanc 1.10): every upload is checked before it is
stored, and refused visibly when the site policy does not accept it.

Three callbacks cover the ways an instance enters Orthanc (facts found with Debian's Orthanc 1.10.1 and
orthanc-python 4.0):

- **C-STORE**: ``RegisterIncomingCStoreInstanceFilter``. Its return value is the DIMSE status: 0 stores, a
  failure code refuses (0xC001 rejected, 0xC002 unreadable, 0xC003 quarantined: kept aside, not stored, 0x0124
  calling AE not allowed). An exception makes Orthanc answer 0xA700, so this path fails closed by itself.
  Orthanc offers no Error Comment here; the reason is in the audit record and Orthanc's log.
- **REST** ``POST /instances``: ``RegisterRestCallback('/instances', ...)`` replaces Orthanc's own route, so that a
  refused upload gets a real HTTP error (403 refused or quarantined, 400 unreadable, 415 ZIP archives) with the
  verdict in a JSON body; an accepted one is passed on with ``orthanc.RestApiPost`` (Orthanc's built-in route) and
  its answer returned. ``GET /instances`` is passed through unchanged.
- **Every other origin** (Lua, other plugins, WebDAV, ``/tools/create-dicom``...): ``RegisterReceivedInstanceCallback``
  sees every instance before it is stored. It runs before the C-STORE filter; a DISCARD answers Success to C-STORE
  and 200 ``FilteredOut`` to REST, so it is used only as the safety net for origins the two visible paths do not
  cover, and for those it checks and discards what is not accepted. An exception in this callback would let Orthanc
  store the instance, so everything in it is caught and turns into DISCARD.

If the plugin cannot be set up (medverify not importable, no trust anchors, the audit database unreachable), the
generated script registers callbacks that refuse everything: Orthanc stays up, but stores nothing unchecked.
Each upload leaves one audit record (channel ``intake``, calling AE title for C-STORE).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from verifier.intake.decide import Intake, IntakeDecision, Peer
from verifier.intake.gateway import STATUS_NOT_AUTHORIZED, STATUS_REFUSED, STATUS_UNREADABLE, AllowedCaller
from verifier.intake.queue import QuarantineStore
from verifier.intake.sidecar import sidecar_record
from verifier.policy import Action

__all__ = ["CONFIG_SECTION", "STATUS_QUARANTINED", "OrthancFilter", "register"]

_log = logging.getLogger("medverify.intake")

#: The section of Orthanc's configuration that configures the plugin.
CONFIG_SECTION = "MedVerify"
#: DIMSE status of a C-STORE whose instance was quarantined (kept for review, not stored in Orthanc).
STATUS_QUARANTINED = 0xC003
#: How long an instance approved by the REST callback is expected by the received-instance callback (seconds).
_APPROVAL_TTL = 120.0


class OrthancFilter:
    """The three callbacks, bound to one :class:`Intake` and one quarantine store."""

    def __init__(
        self,
        orthanc: Any,
        intake: Intake,
        quarantine: QuarantineStore,
        allowed: tuple[AllowedCaller, ...] = (),
    ) -> None:
        self.orthanc = orthanc
        self.intake = intake
        self.quarantine = quarantine
        self.allowed = allowed
        self._approved: dict[str, float] = {}
        self._lock = threading.Lock()

    # -- registration ------------------------------------------------------------------------------------------

    def register(self) -> None:
        o = self.orthanc
        o.RegisterIncomingCStoreInstanceFilter(self.on_cstore)
        o.RegisterReceivedInstanceCallback(self.on_received)
        o.RegisterRestCallback("/instances", self.on_rest_instances)

    # -- C-STORE -----------------------------------------------------------------------------------------------

    def on_cstore(self, instance: Any) -> int:
        """The DIMSE status for one C-STORE (0 stores it). Exceptions reach Orthanc, which answers 0xA700."""
        from verifier.audit import Channel

        ae_title = str(instance.GetInstanceRemoteAet() or "").strip()
        peer = Peer(channel=Channel.INTAKE, ae_title=ae_title or None)
        data = instance.GetInstanceData()
        decision = self.intake.check(data, peer)
        if self.allowed and not any(c.ae_title == ae_title for c in self.allowed):
            self._record(decision, outcome="refused", origin="orthanc-dicom", status=STATUS_NOT_AUTHORIZED)
            return STATUS_NOT_AUTHORIZED
        action = decision.action
        if action in (Action.ACCEPT, Action.FLAG):
            self._record(decision, outcome="stored", origin="orthanc-dicom", status=0)
            return 0
        if action is Action.QUARANTINE:
            name = self._quarantine(decision, "orthanc-dicom")
            recorded = self._record(
                decision, outcome="quarantined", origin="orthanc-dicom", status=STATUS_QUARANTINED, quarantine_file=name
            )
            self._name_record(decision, recorded, "orthanc-dicom")
            return STATUS_QUARANTINED
        code = STATUS_UNREADABLE if decision.result.failed else STATUS_REFUSED
        self._record(decision, outcome="refused", origin="orthanc-dicom", status=code)
        return code

    # -- REST --------------------------------------------------------------------------------------------------

    def on_rest_instances(self, output: Any, uri: str, **request: Any) -> None:
        """``/instances``: GET passes through; POST is checked, then stored or refused with an HTTP error."""
        method = request.get("method")
        if method == "GET":
            query = urllib.parse.urlencode(request.get("get") or {})
            answer = self.orthanc.RestApiGet("/instances" + (f"?{query}" if query else ""))
            output.AnswerBuffer(answer, "application/json")
            return
        if method != "POST":
            output.SendMethodNotAllowed("GET,POST")
            return
        try:
            self._rest_post(output, request)
        except Exception as exc:  # noqa: BLE001 - fail closed with a visible error, never store unchecked
            self.orthanc.LogError(f"medverify: REST upload refused after an internal error: {type(exc).__name__}")
            _send_json(output, 503, {"Status": "Error", "Message": f"medverify could not check the upload: {exc}"})

    def _rest_post(self, output: Any, request: Mapping[str, Any]) -> None:
        from verifier.audit import Channel

        body = request.get("body") or b""
        if isinstance(body, str):
            body = body.encode("latin-1")
        peer = Peer(channel=Channel.INTAKE)
        if body[:4] == b"PK\x03\x04":
            _send_json(
                output,
                415,
                {"Status": "Refused", "Message": "ZIP uploads are not checked; upload the instances one by one"},
            )
            return
        decision = self.intake.check(body, peer)
        action = decision.action
        released = self._take_release(decision.sha256)
        if released or action in (Action.ACCEPT, Action.FLAG):
            outcome = "stored-after-review" if released else "stored"
            recorded = self._record(decision, outcome=outcome, origin="orthanc-rest", status=200)
            self._approve(decision.sha256)
            answer = self.orthanc.RestApiPost("/instances", body)
            self.orthanc.LogInfo(f"medverify: accepted REST upload (audit #{recorded.audit_id})")
            output.AnswerBuffer(answer, "application/json")
            return
        payload: dict[str, Any] = {
            "Status": "Quarantined" if action is Action.QUARANTINE else "Refused",
            "Verdict": decision.result.verdict.status.value,
            "Action": action.value,
            "Reasons": list(decision.result.reasons),
        }
        if action is Action.QUARANTINE:
            name = self._quarantine(decision, "orthanc-rest")
            recorded = self._record(
                decision, outcome="quarantined", origin="orthanc-rest", status=403, quarantine_file=name
            )
            self._name_record(decision, recorded, "orthanc-rest")
            code = 403
        else:
            code = 400 if decision.result.failed else 403
            recorded = self._record(decision, outcome="refused", origin="orthanc-rest", status=code)
        payload["AuditId"] = recorded.audit_id
        _send_json(output, code, payload)

    # -- every other origin ------------------------------------------------------------------------------------

    def on_received(self, data: bytes, origin: Any) -> tuple[Any, None]:
        """Keep what the two visible paths decide; check and discard anything else that is not accepted."""
        keep = self.orthanc.ReceivedInstanceAction.KEEP_AS_IS
        discard = self.orthanc.ReceivedInstanceAction.DISCARD
        try:
            if origin == self.orthanc.InstanceOrigin.DICOM_PROTOCOL:
                return keep, None  # the C-STORE filter, which runs next, decides (and can answer a failure)
            if self._take_approval(hashlib.sha256(data).hexdigest()):
                return keep, None  # our REST callback checked and recorded it just now
            from verifier.audit import Channel

            decision = self.intake.check(data, Peer(channel=Channel.INTAKE))
            origin_name = f"orthanc-{getattr(origin, 'name', origin)}".lower()
            if decision.action in (Action.ACCEPT, Action.FLAG):
                self._record(decision, outcome="stored", origin=origin_name)
                return keep, None
            if decision.action is Action.QUARANTINE:
                name = self._quarantine(decision, origin_name)
                recorded = self._record(decision, outcome="quarantined", origin=origin_name, quarantine_file=name)
                self._name_record(decision, recorded, origin_name)
            else:
                self._record(decision, outcome="discarded", origin=origin_name)
            return discard, None
        except BaseException as exc:  # noqa: BLE001 - an exception here would store the instance: discard it
            with contextlib.suppress(Exception):
                self.orthanc.LogError(f"medverify: instance discarded after an internal error: {type(exc).__name__}")
            return discard, None

    # -- helpers -----------------------------------------------------------------------------------------------

    def _approve(self, sha256: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in [k for k, t in self._approved.items() if now - t > _APPROVAL_TTL]:
                del self._approved[key]
            self._approved[sha256] = now

    def _take_release(self, sha256: str) -> bool:
        """A reviewer released exactly these bytes (``medverify quarantine release``): let them in, once."""
        from verifier.review.orthanc import marker_path

        try:
            marker_path(self.quarantine.directory, sha256).unlink()
        except OSError:
            return False
        return True

    def _take_approval(self, sha256: str) -> bool:
        with self._lock:
            when = self._approved.pop(sha256, None)
        return when is not None and time.monotonic() - when <= _APPROVAL_TTL

    def _quarantine(self, decision: IntakeDecision, origin: str) -> str:
        record = sidecar_record(decision, origin=origin)
        return self.quarantine.put(decision.data, sha256=decision.sha256, record=record).name

    def _name_record(self, decision: IntakeDecision, recorded: IntakeDecision, origin: str) -> None:
        """Add the audit id to this arrival in the verdict file (the copy itself is already kept)."""
        with contextlib.suppress(OSError):
            self.quarantine.put(decision.data, sha256=decision.sha256, record=sidecar_record(recorded, origin=origin))

    def _record(self, decision: IntakeDecision, **details: Any) -> IntakeDecision:
        recorded = self.intake.record(decision, **details)
        self.orthanc.LogInfo(
            f"medverify: {details.get('origin')} {decision.result.verdict.status.value} -> {details.get('outcome')} "
            f"(audit #{recorded.audit_id}, {decision.check_ms:.1f} ms)"
        )
        return recorded


def _send_json(output: Any, code: int, payload: Mapping[str, Any]) -> None:
    body = json.dumps(payload, indent=2, ensure_ascii=True)  # orthanc-python 4.0 takes a str body here
    output.SetHttpHeader("Content-Type", "application/json")
    output.SendHttpStatus(code, body, len(body))


def plugin_config(orthanc: Any) -> dict[str, Any]:
    """The ``MedVerify`` section of Orthanc's configuration (an empty dict if absent)."""
    section = json.loads(orthanc.GetConfiguration()).get(CONFIG_SECTION) or {}
    if not isinstance(section, dict):
        raise ValueError(f"the {CONFIG_SECTION} configuration section must be a JSON object")
    return section


#: Plugin configuration keys and the medverify settings they set.
_SETTING_KEYS = {
    "Home": "MEDVERIFY_HOME",
    "DatabaseUrl": "MEDVERIFY_DB_URL",
    "PolicyFile": "MEDVERIFY_POLICY_FILE",
    "KeyPassphraseFile": "MEDVERIFY_KEY_PASSPHRASE_FILE",
    "AllowedCallers": "MEDVERIFY_GATEWAY_ALLOWED_CALLERS",
    "QuarantineDirectory": "MEDVERIFY_INTAKE_QUARANTINE_DIR",
    "QuarantineWebhook": "MEDVERIFY_QUARANTINE_WEBHOOK_URL",
}


def register(orthanc: Any) -> OrthancFilter:
    """Build the intake from the ``MedVerify`` section and register the callbacks (called by the plugin script).

    Everything that can fail (configuration, trust anchors, the audit database) is done before the first callback
    is registered, so that the script's fail-closed fallback can still register its own.
    """
    from verifier.intake.gateway import parse_allowed_callers
    from verifier.settings import Settings
    from verifier.setup import open_intake, quarantine_webhook

    section = plugin_config(orthanc)
    env = dict(os.environ)
    for key, name in _SETTING_KEYS.items():
        if section.get(key):
            env[name] = str(section[key])
    settings = Settings.load(env=env)
    model = Path(section["DetectorModel"]) if section.get("DetectorModel") else None
    intake = open_intake(settings, section.get("Checks") or None, model=model, notify=orthanc.LogWarning)
    intake.warm_up()
    quarantine = QuarantineStore(
        settings.intake_quarantine_dir or settings.home / "quarantine", on_quarantine=quarantine_webhook(settings)
    )
    allowed = parse_allowed_callers([settings.gateway_allowed_callers])
    plugin = OrthancFilter(orthanc, intake, quarantine, allowed)
    plugin.register()
    names = intake.checker.describe()
    orthanc.LogWarning(
        f"medverify: checking every upload (checks: {names}; quarantine: {Path(quarantine.directory)}; "
        f"allowed callers: {', '.join(map(str, allowed)) or 'as Orthanc is configured'})"
    )
    return plugin
