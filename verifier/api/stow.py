"""STOW-RS (DICOM PS3.18 Store Instances) as an intake: what happens to each instance, and the response.

Each instance is checked like any upload, then (by the site policy's action):

* accept, flag -> stored in the ``accepted`` area (and queued to the PACS when forwarding); listed in
  ReferencedSOPSequence;
* quarantine   -> stored in the ``quarantine`` area for review; refused to the sender (FailureReason 0110);
* reject       -> not stored; refused (0110, or C000 "cannot understand" when it is not readable DICOM).

A store that fails (disk full) or an audit record that cannot be written refuses the instance with A700 (out of
resources) and removes what was staged for it: nothing is kept that the audit log does not account for. The bytes
are staged (written, fsynced) before the record and renamed into place after it (see ``storage``), so a killed
server leaves no stored file without a record.
The HTTP status follows PS3.18: 200 every instance stored, 202 some stored and some refused, 409 none stored;
except 507 (Insufficient Storage) when none was stored and the store refused one (the disk is full), and 503
(raised by the app) when none was stored because the audit record could not be written.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from verifier.api.storage import InstanceStore, StoreArea
from verifier.errors import AuditError
from verifier.intake.decide import Intake, IntakeDecision
from verifier.intake.queue import Forwarder, atomic_write
from verifier.intake.sidecar import directory_lock, merge_sidecar, read_sidecar, sidecar_record
from verifier.policy import Action

__all__ = [
    "CANNOT_UNDERSTAND",
    "DICOM_JSON",
    "OUT_OF_RESOURCES",
    "PROCESSING_FAILURE",
    "StoreOutcome",
    "store_decision",
    "stow_response",
]

_log = logging.getLogger("medverify.api")

DICOM_JSON = "application/dicom+json"
#: Failure reasons of the Store Instances Response (PS3.18 10.5.3), which are C-STORE statuses (PS3.4 B.2.3).
PROCESSING_FAILURE = 0x0110
CANNOT_UNDERSTAND = 0xC000
OUT_OF_RESOURCES = 0xA700


@dataclasses.dataclass(frozen=True, kw_only=True)
class StoreOutcome:
    """What the intake did with one instance."""

    decision: IntakeDecision
    stored: bool
    #: PS3.7 status for FailedSOPSequence; None when stored.
    failure_reason: int | None = None
    #: The audit record could not be written (the database is unavailable): nothing was kept.
    unrecorded: bool = False


def store_decision(
    intake: Intake,
    store: InstanceStore,
    decision: IntakeDecision,
    *,
    forward: Forwarder | None = None,
    on_quarantine: Callable[[dict[str, Any]], None] | None = None,
    **tags: str,
) -> StoreOutcome:
    """Store or refuse one checked instance and write its one audit record (``details.intake``, plus ``tags``).

    With ``forward``, a stored instance is also queued to the PACS (the gateway's durable spool and forwarder),
    after its record is written: a failed record never lets an instance through. A quarantined instance gets a
    verdict file beside it (:mod:`verifier.intake.sidecar`) and ``on_quarantine`` is called with its record.
    """
    action = decision.action
    area = {Action.ACCEPT: StoreArea.ACCEPTED, Action.FLAG: StoreArea.ACCEPTED}.get(action)
    if action is Action.QUARANTINE:
        area = StoreArea.QUARANTINE
    outcome = {Action.QUARANTINE: "quarantined", Action.REJECT: "rejected"}.get(action, "stored")
    failure = None
    if action in (Action.QUARANTINE, Action.REJECT):
        failure = CANNOT_UNDERSTAND if decision.result.failed else PROCESSING_FAILURE
    staged = None
    details: dict[str, Any] = {"endpoint": "/dicomweb/studies", **tags}
    if area is not None:
        try:
            staged = store.stage(decision.data, decision.sha256, area)
            details["stored_as"] = str(staged.path.relative_to(store.root))
        except OSError as exc:
            outcome, failure, area = "store-failed", OUT_OF_RESOURCES, None
            details["store_error"] = exc.strerror or type(exc).__name__
    details["outcome"] = outcome
    if forward is not None and area is StoreArea.ACCEPTED:
        details["forward"] = str(forward.destination)
    # Order: bytes staged and fsynced -> record committed -> file renamed into place -> answer. A crash before the
    # record leaves only a temporary (removed at start-up); one after it, a record for an unanswered upload.
    try:
        decision = intake.record(decision, **details)
    except AuditError:
        if staged is not None:
            staged.discard()
        return StoreOutcome(decision=decision, stored=False, failure_reason=OUT_OF_RESOURCES, unrecorded=True)
    if staged is not None:
        try:
            staged.commit()
        except OSError as exc:  # the record says stored_as; the sender is told it was not stored
            staged.discard()
            _log.error("recorded %s (audit id %s) but could not store it: %s", decision.sha256, decision.audit_id, exc)
            return StoreOutcome(decision=decision, stored=False, failure_reason=OUT_OF_RESOURCES)
        if area is StoreArea.QUARANTINE:
            _keep_sidecar(staged.path, decision, on_quarantine)
    if forward is not None and area is StoreArea.ACCEPTED:
        try:
            forward.spool.put(decision.data, sha256=decision.sha256)
            forward.notify()
        except OSError as exc:  # the instance stays stored in accepted/; only its forwarding is lost
            _log.error("stored %s but could not queue it for %s: %s", decision.sha256, forward.destination, exc)
    return StoreOutcome(decision=decision, stored=area is StoreArea.ACCEPTED, failure_reason=failure)


def _keep_sidecar(
    path: Path, decision: IntakeDecision, on_quarantine: Callable[[dict[str, Any]], None] | None
) -> None:
    """Add this arrival to the quarantined instance's verdict file, then tell ``on_quarantine``."""
    record = sidecar_record(decision, origin="stow-rs")
    try:
        with directory_lock(path.parent):
            merged = merge_sidecar(read_sidecar(path.with_suffix(".json")), record)
            atomic_write(path.with_suffix(".json"), json.dumps(merged, indent=2, sort_keys=True).encode())
    except OSError as exc:  # the instance and its record are kept; only the review summary is missing
        _log.error("quarantined %s but could not write its verdict file: %s", decision.sha256, exc)
    if on_quarantine is not None:
        try:
            on_quarantine(record)
        except Exception:  # noqa: BLE001 - telling someone never fails the upload
            _log.exception("quarantine notification failed")


def _reference(outcome: StoreOutcome) -> Dataset:
    item = Dataset()
    # Only syntactically valid UIDs are echoed (IntakeDecision.safe_uid); an unreadable upload has none.
    if outcome.decision.sop_class_uid:
        item.ReferencedSOPClassUID = outcome.decision.sop_class_uid
    if outcome.decision.sop_instance_uid:
        item.ReferencedSOPInstanceUID = outcome.decision.sop_instance_uid
    if outcome.failure_reason is not None:
        item.FailureReason = outcome.failure_reason
    else:
        item.RetrieveURL = ""  # Type 2 (PS3.18 Table I.1-1): present, empty: this intake offers no WADO-RS
    return item


def stow_response(outcomes: list[StoreOutcome]) -> tuple[int, dict[str, Any]]:
    """The HTTP status and the Store Instances Response (DICOM JSON) for ``outcomes``."""
    response = Dataset()
    response.RetrieveURL = ""  # Type 2, empty: no WADO-RS here
    stored = [o for o in outcomes if o.stored]
    failed = [o for o in outcomes if not o.stored]
    if failed:
        response.FailedSOPSequence = Sequence([_reference(o) for o in failed])
    if stored:
        response.ReferencedSOPSequence = Sequence([_reference(o) for o in stored])
    status = 200 if not failed else 202 if stored else 409
    if status == 409 and any(o.failure_reason == OUT_OF_RESOURCES for o in failed):
        status = 507  # Insufficient Storage: nothing stored, and the store (disk) is what refused
    return status, response.to_json_dict()
