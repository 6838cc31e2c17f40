"""One received upload -> one :class:`IntakeDecision` -> one audit record, for every intake channel.

The DICOM gateway, the Orthanc plugin and the HTTP API all receive bytes from a peer and must answer at once:
accept (store or forward), quarantine (keep aside for review) or reject (the sender sees a failure and a reason).
:class:`Intake` holds what they share (the :class:`~verifier.checker.Checker` and the audit log) and gives the same
answer for the same file whatever the channel::

    intake = setup.open_intake(settings, "signature")
    decision = intake.check(data, Peer(channel=Channel.INTAKE, ae_title="CT01", address="10.0.0.5:40112"))
    ...  # spool, quarantine or refuse, then:
    decision = intake.record(decision, outcome="forward-queued")   # exactly one audit record per upload

:meth:`Intake.check` never raises: unreadable, malformed or oversized input and a failing check become a
REJECT-able :class:`~verifier.result.FileResult` (the checker is the boundary). :meth:`Intake.record` raises
:class:`~verifier.errors.AuditError` when the record cannot be written; channels then refuse the upload (fail
closed), because an upload nobody can account for must not be stored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from verifier.checker import Checker
from verifier.instance import Instance
from verifier.policy import Action
from verifier.result import FileResult

if TYPE_CHECKING:
    from verifier.audit import AuditEntry, AuditLog, Channel
    from verifier.audit.group import GroupCommit, GroupStats
    from verifier.intake.reload import CheckerReloader

__all__ = ["Intake", "IntakeDecision", "Peer", "error_comment", "safe_uid"]

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def safe_uid(value: object) -> str | None:
    """``value`` if it is a syntactically valid DICOM UID (digits and dots, at most 64 characters), else None.

    Only a UID that passes this may appear in a file name or a log line; anything else is replaced by the SHA-256.
    """
    text = str(value or "").strip().rstrip("\x00")
    return text if 0 < len(text) <= 64 and _UID.fullmatch(text) else None


def error_comment(text: str, limit: int = 64) -> str:
    """``text`` as a DICOM Error Comment (LO: at most 64 characters, no backslash or control characters)."""
    clean = "".join(c if c.isprintable() and c != "\\" else " " for c in text)
    clean = " ".join(clean.split())
    return clean if len(clean) <= limit else clean[: limit - 3].rstrip() + "..."


@dataclasses.dataclass(frozen=True, kw_only=True)
class Peer:
    """Who sent an upload, as recorded in the audit log."""

    channel: Channel
    #: Calling AE title (DICOM) or None.
    ae_title: str | None = None
    #: ``host:port`` of the sender, where the channel knows it.
    address: str | None = None
    #: Id of the API token used (HTTP), never the token itself.
    token_id: str | None = None

    def describe(self) -> str:
        """A short label for the ``path`` column: ``intake:AE@host:port``."""
        who = self.ae_title or ""
        if self.address:
            who = f"{who}@{self.address}" if who else self.address
        return f"{self.channel.value}:{who or 'unknown'}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class IntakeDecision:
    """What checking one upload found, and from whom it came.

    ``result`` carries the verdict (``result.verdict.action`` decides what the channel does); ``instance`` is the
    parsed instance (None when the bytes could not be read); ``data`` are the bytes as received.
    """

    result: FileResult
    peer: Peer
    data: bytes = dataclasses.field(repr=False)
    instance: Instance | None = None
    #: Time spent in :meth:`Intake.check`, milliseconds.
    check_ms: float = 0.0
    audit_id: int | None = None

    def __bool__(self) -> bool:
        raise TypeError("an IntakeDecision has no truth value; use .action")

    @property
    def action(self) -> Action:
        return self.result.verdict.action

    @property
    def sha256(self) -> str:
        return self.result.sha256 or hashlib.sha256(self.data).hexdigest()

    @property
    def sop_instance_uid(self) -> str | None:
        """The SOP Instance UID if it is a valid UID (safe for file names), else None."""
        return safe_uid(self.result.sop_instance_uid)

    @property
    def sop_class_uid(self) -> str | None:
        return safe_uid(self.instance.sop_class_uid) if self.instance is not None else None

    def summary(self) -> str:
        """One line for a sender: the verdict and its first reason (e.g. for a DICOM Error Comment)."""
        verdict = self.result.verdict
        first = str(verdict.reasons[0].message) if verdict.reasons else ""
        first = first.removeprefix(f"{self.result.path}: ")  # input errors start with the label
        return f"{verdict.status.value}: {first}" if first else verdict.status.value

    def audit_entry(self, *, event: str = "intake", **details: Any) -> AuditEntry:
        """The one audit record of this upload, with the peer and what the channel did (``details['intake']``)."""
        return self.result.audit_entry(
            channel=self.peer.channel,
            event=event,
            details={"intake": {"check_ms": round(self.check_ms, 3), "size": len(self.data), **details}},
            peer_ae_title=self.peer.ae_title,
            peer_address=self.peer.address,
            api_token_id=self.peer.token_id,
        )

    def to_dict(self) -> dict[str, Any]:
        """The result as the CLI's JSON, plus the peer."""
        out = self.result.to_dict()
        out["peer"] = {"ae_title": self.peer.ae_title, "address": self.peer.address, "channel": self.peer.channel}
        out["audit_id"] = self.audit_id
        return out


class Intake:
    """The :class:`~verifier.checker.Checker` every intake channel checks with, and the audit log they all write to.

    Thread-safe: channels call :meth:`check` and :meth:`record` from several threads (one per association or
    request); the records of concurrent uploads are committed together (group commit) and serialised with other
    processes' in the database. Build one with
    :func:`verifier.setup.open_intake`.
    """

    def __init__(
        self, checker: Checker, *, audit_log: AuditLog | None = None, reloader: CheckerReloader | None = None,
        group_commit: bool = True,
    ) -> None:
        """``group_commit``: records of concurrent uploads share transactions (:class:`~verifier.audit.group.
        GroupCommit`); each :meth:`record` still returns only once its own record is committed."""
        self.checker = checker
        self.audit_log = audit_log
        self._lock = threading.Lock()
        #: Takes trust, revocation and site-policy changes in before each check (None: the checker never changes).
        self.reloader = reloader
        self._checking = 0
        self._group: GroupCommit | None = None
        if audit_log is not None and group_commit:
            from verifier.audit.group import GroupCommit

            self._group = GroupCommit(audit_log, more_coming=self._others_checking)

    def reload(self, trigger: str = "SIGHUP") -> None:
        """Read the trust store, revocations and site policy again now (and record it), changed or not."""
        if self.reloader is not None:
            self.checker = self.reloader.refresh(self.checker, force=True, trigger=trigger)

    def _others_checking(self) -> bool:
        """Whether an upload is being checked now (its record will follow within milliseconds)."""
        return self._checking > 0

    @property
    def group_stats(self) -> GroupStats | None:
        """How records were grouped into transactions, or None without group commit."""
        return self._group.stats if self._group is not None else None

    def warm_up(self) -> None:
        """Check pydicom's bundled CT_small once (nothing recorded), so that lazy imports and first-call costs are
        paid before the first real upload."""
        from pydicom.data import get_testdata_file

        from verifier.audit import Channel

        sample = get_testdata_file("CT_small.dcm")
        if sample is not None:
            self.check(Path(sample).read_bytes(), Peer(channel=Channel.INTAKE), name="warm-up")

    def check(self, data: bytes, peer: Peer, *, name: str | None = None) -> IntakeDecision:
        """Check one upload; never raises (bad input gives an UNREADABLE/MALFORMED verdict, REJECT by default)."""
        start = time.perf_counter()
        checker = self.checker
        if self.reloader is not None:
            checker = self.checker = self.reloader.refresh(checker)
        with self._lock:
            self._checking += 1
        try:
            examined = checker.examine(data, name=name or peer.describe())
        finally:
            with self._lock:
                self._checking -= 1
        elapsed = (time.perf_counter() - start) * 1000.0
        return IntakeDecision(
            result=examined.result, peer=peer, data=data, instance=examined.instance, check_ms=elapsed
        )

    def record(self, decision: IntakeDecision, *, event: str = "intake", **details: Any) -> IntakeDecision:
        """Write the upload's one audit record (with ``details`` under ``details.intake``); return it with its id.

        Without an audit log nothing is written and the id stays None. Raises
        :class:`~verifier.errors.AuditError` if the database refuses the record.
        """
        if self.audit_log is None:
            return decision
        entry = decision.audit_entry(event=event, **details)
        if self._group is not None:
            receipt = self._group.append(entry)
        else:
            with self._lock:
                receipt = self.audit_log.append(entry)
        return dataclasses.replace(decision, audit_id=receipt.id, result=decision.result.with_audit_id(receipt.id))

    def close(self) -> None:
        if self._group is not None:
            self._group.close()
        if self.audit_log is not None:
            self.audit_log.close()
