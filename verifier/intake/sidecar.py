"""The verdict file ("sidecar") beside each quarantined instance, and the lock that keeps it consistent.

A quarantined ``<sha256>.dcm`` has a ``<sha256>.json`` beside it that a reviewer reads without parsing the DICOM
file: the latest verdict and its reasons, the scores, who sent it, and the patient, study and accession
identifiers a PACS team looks a case up by. The same bytes may arrive more than once (a sender retries, a study is
sent again): the instance is kept once, and every arrival is appended to ``arrivals`` with its own audit id, so no
arrival's record is lost and ``audit_id`` always names the first one.

Every change to a quarantine directory (an arrival, a review decision) holds :func:`directory_lock`: an advisory
``flock`` on the directory itself, so the gateway, the Orthanc plugin, ``medverify serve`` and the CLI (separate
processes) see each instance and its sidecar change together, and two reviewers cannot decide the same instance.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from verifier.intake.decide import IntakeDecision

__all__ = ["SIDECAR_VERSION", "directory_lock", "identifiers", "merge_sidecar", "read_sidecar", "sidecar_record"]

#: Version 2 added ``arrivals`` and the patient/study identifiers.
SIDECAR_VERSION = 2

#: DICOM attributes copied into the sidecar (keyword -> sidecar key), as text.
_IDENTIFIERS = {
    "PatientID": "patient_id",
    "PatientName": "patient_name",
    "StudyInstanceUID": "study_instance_uid",
    "AccessionNumber": "accession_number",
    "StudyDate": "study_date",
    "StudyDescription": "study_description",
    "SeriesInstanceUID": "series_instance_uid",
}
#: Keys of one arrival (the rest of a record describes the instance and its latest verdict).
_ARRIVAL_KEYS = ("audit_id", "received", "origin", "gateway", "peer", "path")


@contextlib.contextmanager
def directory_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``directory`` (across threads and processes of this host)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def identifiers(decision: IntakeDecision) -> dict[str, str | None]:
    """Patient, study and accession identifiers of the instance (None where absent or unreadable)."""
    out: dict[str, str | None] = dict.fromkeys(_IDENTIFIERS.values())
    if decision.instance is None:
        return out
    ds = decision.instance.dataset
    for keyword, key in _IDENTIFIERS.items():
        try:
            value = ds.get(keyword)
            text = str(value).rstrip("\x00 ") if value not in (None, "") else ""
        except Exception:  # noqa: BLE001 - a hostile value that does not convert is left out, not fatal
            text = ""
        out[key] = "".join(c if c.isprintable() else "?" for c in text)[:200] or None
    return out


def sidecar_record(decision: IntakeDecision, *, origin: str, **extra: Any) -> dict[str, Any]:
    """One arrival's record for :func:`merge_sidecar`: the result, the identifiers, the sender and ``extra``."""
    received = dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return {
        **decision.to_dict(),
        **identifiers(decision),
        "channel": decision.peer.channel.value,
        "origin": origin,
        "received": received,
        **extra,
    }


def read_sidecar(path: Path) -> dict[str, Any] | None:
    """The sidecar at ``path`` as a dict, or None when it is missing or not a JSON object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def merge_sidecar(existing: dict[str, Any] | None, record: dict[str, Any]) -> dict[str, Any]:
    """``record`` (one arrival) merged into ``existing``: the latest verdict on top, every arrival kept.

    ``audit_id`` stays the first arrival's; a version-1 sidecar (no ``arrivals``) becomes the first arrival.
    """
    arrivals: list[dict[str, Any]] = []
    if existing is not None:
        kept = existing.get("arrivals")
        if isinstance(kept, list):
            arrivals = [a for a in kept if isinstance(a, dict)]
        else:
            arrivals = [{k: existing.get(k) for k in _ARRIVAL_KEYS if k in existing}]
    arrival = {k: record.get(k) for k in _ARRIVAL_KEYS if k in record}
    last = arrivals[-1] if arrivals else None
    if (
        last is not None
        and arrival.get("audit_id") is not None
        and last.get("audit_id") is None
        and last.get("origin") == arrival.get("origin")
    ):  # the same arrival again, now with its audit id (the Orthanc plugin keeps the copy before the record)
        arrivals[-1] = arrival
    else:
        arrivals.append(arrival)
    merged = {**record, "version": SIDECAR_VERSION, "arrivals": arrivals}
    first = next((a.get("audit_id") for a in arrivals if a.get("audit_id") is not None), None)
    merged["audit_id"] = first
    return merged
