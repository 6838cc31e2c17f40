"""Quarantine review: list what waits across every intake channel, and release or reject it, each decision audited.

Quarantined instances sit in *bins*: ``intake`` (the gateway's and the Orthanc plugin's quarantine directory,
``<sha256>.dcm`` + ``<sha256>.json``) and ``stow`` (the STOW-RS store's ``quarantine/ab/<sha256>.dcm``). An entry is
named ``<bin>-<sha256>``; nothing here builds a path from anything else.

A decision (:meth:`ReviewDesk.decide`) runs under the bin directory's lock (:func:`~verifier.intake.sidecar.
directory_lock`, shared with the channels), so that of two reviewers deciding at once exactly one wins and the other
is told who did; in this order:

1. the instance is still in quarantine (else :class:`AlreadyDecided`);
2. for a release, its copy is staged (fsynced) in the destination: the gateway's durable spool (whose forwarder
   sends it to the PACS), the STOW-RS forwarder's spool, or the STOW-RS accepted store;
3. the audit record (event ``review``, the reviewer's token id or OS user, the comment) is written; when it cannot
   be, the staged copy is dropped and nothing changes (fail closed);
4. the staged copy is renamed into the destination, and the instance and its verdict file move to ``released/`` or
   ``rejected/`` beside the bin, with the decision added to the verdict file.

An instance is never lost: it is in quarantine or in ``released/``/``rejected/`` at every moment. A crash between 3
and 4 leaves it in quarantine with a release record: a second release sends it again, which a PACS takes as the
same instance (the gateway accepts the same risk for a sender's retry).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from verifier.errors import InputError, MedverifyError
from verifier.intake.queue import Spool, atomic_write
from verifier.intake.sidecar import directory_lock, read_sidecar

if TYPE_CHECKING:
    from verifier.api.storage import InstanceStore
    from verifier.audit import AuditEntry, AuditLog, Channel

__all__ = [
    "AlreadyDecided",
    "Decision",
    "Entry",
    "NoSuchEntry",
    "Page",
    "QuarantineBin",
    "ReviewDesk",
    "ReviewError",
    "ReviewOutcome",
    "Reviewer",
]

_ENTRY_ID = re.compile(r"(intake|stow)-([0-9a-f]{64})")
#: Longest review comment kept (characters).
MAX_COMMENT = 2000


class ReviewError(MedverifyError):
    """A review request that cannot be done as asked."""


class NoSuchEntry(ReviewError):
    """No instance by that id is (or was) in quarantine."""


class AlreadyDecided(ReviewError):
    """Another reviewer decided this instance first."""


class Decision(enum.StrEnum):
    RELEASE = "release"
    REJECT = "reject"

    @property
    def past(self) -> str:
        return "released" if self is Decision.RELEASE else "rejected"


@dataclasses.dataclass(frozen=True)
class QuarantineBin:
    """One quarantine directory. ``sharded``: files in two-hex-digit subdirectories (the STOW-RS store)."""

    name: str
    directory: Path
    sharded: bool = False

    def files(self) -> Iterator[Path]:
        pattern = "??/*.dcm" if self.sharded else "*.dcm"
        return self.directory.glob(pattern) if self.directory.is_dir() else iter(())

    def path_for(self, sha256: str) -> Path:
        return self.directory / sha256[:2] / f"{sha256}.dcm" if self.sharded else self.directory / f"{sha256}.dcm"

    def decided_dir(self, decision: Decision) -> Path:
        return self.directory / ("released" if decision is Decision.RELEASE else "rejected")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Reviewer:
    """Who decides: an API token (web page, API) or the local OS user (CLI)."""

    label: str
    channel: Channel
    token_id: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Entry:
    """One quarantined (or decided) instance and its verdict file (None when missing or unreadable)."""

    id: str
    bin: QuarantineBin
    sha256: str
    path: Path
    sidecar: dict[str, Any] | None
    #: ``waiting``, ``released`` or ``rejected``.
    state: str = "waiting"

    def field(self, key: str) -> Any:
        return None if self.sidecar is None else self.sidecar.get(key)

    @property
    def arrivals(self) -> list[dict[str, Any]]:
        kept = self.field("arrivals")
        if isinstance(kept, list):
            return [a for a in kept if isinstance(a, dict)]
        return [{"audit_id": self.field("audit_id"), "received": self.field("received"), "origin": self.origin}]

    @property
    def received(self) -> str:
        times = [str(a.get("received") or "") for a in self.arrivals]
        return max(times, default="") or _mtime(self.path)

    @property
    def origin(self) -> str:
        origin = self.field("origin")
        if origin:
            return str(origin)
        return "stow-rs" if self.bin.name == "stow" else "gateway" if self.field("gateway") else "unknown"

    @property
    def ae_title(self) -> str | None:
        peer = self.field("peer")
        return str(peer.get("ae_title")) if isinstance(peer, dict) and peer.get("ae_title") else None

    @property
    def review(self) -> dict[str, Any] | None:
        review = self.field("review")
        return review if isinstance(review, dict) else None

    def summary(self) -> dict[str, Any]:
        """The list's row (also the CLI's and the API's JSON)."""
        keys = ("patient_id", "patient_name", "study_instance_uid", "accession_number", "study_date", "modality",
                "sop_instance_uid", "verdict", "action", "synthetic_score", "tamper_score", "audit_id")  # fmt: skip
        reasons = self.field("reasons")
        return {
            "id": self.id,
            "state": self.state,
            "sha256": self.sha256,
            "channel": self.origin,
            "ae_title": self.ae_title,
            "received": self.received,
            "arrivals": len(self.arrivals),
            **{k: self.field(k) for k in keys},
            "reasons": [str(r) for r in reasons] if isinstance(reasons, list) else [],
            "verdict_file": self.sidecar is not None,
            "review": self.review,
        }


@dataclasses.dataclass(frozen=True)
class Page:
    entries: list[Entry]
    total: int
    offset: int
    limit: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReviewOutcome:
    entry_id: str
    decision: Decision
    audit_id: int
    destination: str


def _mtime(path: Path) -> str:
    try:
        stamp = path.stat().st_mtime
    except OSError:
        return ""
    return dt.datetime.fromtimestamp(stamp, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class ReviewDesk:
    """The quarantine bins of one site, the audit log decisions go to, and where released instances go.

    ``gateway_spool``: the gateway's spool directory (instances that came through the gateway are released there);
    ``stow_store``: the STOW-RS store (its quarantine is a bin; without ``stow_spool`` a released instance goes to
    its accepted area, with it to that forwarder's spool).
    """

    def __init__(
        self,
        *,
        audit_log: AuditLog,
        intake_quarantine: Path | None,
        gateway_spool: Path | None = None,
        stow_store: InstanceStore | None = None,
        stow_spool: Path | None = None,
        orthanc_release: Callable[[bytes], str] | None = None,
    ) -> None:
        self.audit_log = audit_log
        self.bins: dict[str, QuarantineBin] = {}
        if intake_quarantine is not None:
            self.bins["intake"] = QuarantineBin("intake", Path(intake_quarantine))
        if stow_store is not None:
            self.bins["stow"] = QuarantineBin("stow", stow_store.root / "quarantine", sharded=True)
        self.gateway_spool = gateway_spool
        self.stow_store = stow_store
        self.stow_spool = stow_spool
        self.orthanc_release = orthanc_release

    # -- reading -----------------------------------------------------------------------------------------------

    def entries(self) -> list[Entry]:
        """Every waiting instance, newest arrival first."""
        out = [self._entry(b, p) for b in self.bins.values() for p in b.files() if _sha_of(p) is not None]
        return sorted(out, key=lambda e: (e.received, e.id), reverse=True)

    def page(
        self,
        *,
        verdict: str | None = None,
        channel: str | None = None,
        since: str | None = None,
        until: str | None = None,
        offset: int = 0,
        limit: int = 25,
    ) -> Page:
        """A page of :meth:`entries`, filtered by verdict, channel (origin) and arrival date (``YYYY-MM-DD``)."""
        chosen = [
            e
            for e in self.entries()
            if (not verdict or e.field("verdict") == verdict)
            and (not channel or e.origin == channel or e.bin.name == channel)
            and (not since or e.received[:10] >= since)
            and (not until or e.received[:10] <= until)
        ]
        offset = max(0, offset)
        return Page(chosen[offset : offset + limit], len(chosen), offset, limit)

    def get(self, entry_id: str) -> Entry:
        """The entry ``entry_id``: waiting, or (with its decision) released or rejected."""
        match = _ENTRY_ID.fullmatch(entry_id)
        if match is None or match.group(1) not in self.bins:
            raise NoSuchEntry(f"no quarantined instance {entry_id[:80]!r}")
        qbin, sha = self.bins[match.group(1)], match.group(2)
        path = qbin.path_for(sha)
        if path.is_file():
            return self._entry(qbin, path)
        for decision in Decision:
            decided = qbin.decided_dir(decision) / f"{sha}.dcm"
            if decided.is_file():
                return dataclasses.replace(self._entry(qbin, decided), state=decision.past)
        raise NoSuchEntry(f"no quarantined instance {entry_id}")

    def read(self, entry: Entry) -> bytes:
        try:
            return entry.path.read_bytes()
        except OSError as exc:
            raise NoSuchEntry(f"{entry.id} cannot be read now ({exc.strerror})") from exc

    @staticmethod
    def _entry(qbin: QuarantineBin, path: Path) -> Entry:
        sha = _sha_of(path) or ""
        return Entry(id=f"{qbin.name}-{sha}", bin=qbin, sha256=sha, path=path,
                     sidecar=read_sidecar(path.with_suffix(".json")))  # fmt: skip

    # -- deciding ----------------------------------------------------------------------------------------------

    def can_release(self, entry: Entry) -> bool:
        """Whether :meth:`decide` can release ``entry`` (not yet for what the Orthanc plugin quarantined)."""
        return not (entry.bin.name == "intake" and entry.origin.startswith("orthanc") and self.orthanc_release is None)

    def destination(self, entry: Entry) -> str:
        """Where a release of ``entry`` goes, in words."""
        if entry.bin.name == "stow":
            return "the STOW-RS forwarder's spool" if self.stow_spool is not None else "the STOW-RS accepted store"
        if entry.origin.startswith("orthanc"):
            return "Orthanc"
        return "the gateway's forward queue"

    def decide(self, entry_id: str, decision: Decision, *, reviewer: Reviewer, comment: str) -> ReviewOutcome:
        """Release or reject one waiting instance (see the module's docstring for the order and the guarantees)."""
        comment = " ".join("".join(c if c.isprintable() else " " for c in comment).split())
        if not comment:
            raise InputError("a comment is required: say why the instance is released or rejected")
        if len(comment) > MAX_COMMENT:
            raise InputError(f"the comment is longer than {MAX_COMMENT} characters")
        entry = self.get(entry_id)
        with directory_lock(entry.path.parent):
            if entry.state != "waiting" or not entry.path.is_file():
                raise self._already(entry_id)
            entry = self._entry(entry.bin, entry.path)  # the verdict file as it is now, under the lock
            data = self.read(entry)
            destination = self.destination(entry) if decision is Decision.RELEASE else "the rejected store"
            deliver = self._stage_release(entry, data) if decision is Decision.RELEASE else None
            try:
                receipt = self.audit_log.append(self._audit_entry(entry, decision, reviewer, comment, destination))
            except BaseException:
                if deliver is not None:
                    deliver(False)
                raise
            if deliver is not None:
                try:
                    deliver(True)
                except ReviewError as exc:
                    raise ReviewError(f"{exc.diagnostics()}; audit record {receipt.id} names this release, but the "
                                      "instance stays in quarantine: release it again") from None  # fmt: skip
            review = {
                "decision": decision.value, "reviewer": reviewer.label, "token_id": reviewer.token_id,
                "comment": comment, "audit_id": receipt.id, "destination": destination,
                "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            }  # fmt: skip
            self._move(entry, decision, review)
        return ReviewOutcome(entry_id=entry.id, decision=decision, audit_id=receipt.id, destination=destination)

    def _already(self, entry_id: str) -> AlreadyDecided:
        try:
            review = self.get(entry_id).review or {}
        except NoSuchEntry:
            review = {}
        if not review:
            return AlreadyDecided(f"{entry_id} was already decided")
        past = Decision(review.get("decision", "reject")).past
        return AlreadyDecided(
            f"{entry_id} was already {past} by {review.get('reviewer')} (audit record {review.get('audit_id')})"
        )

    def _stage_release(self, entry: Entry, data: bytes) -> Callable[[bool], None]:
        """Stage the copy a release delivers; the returned function commits it (True) or drops it (False)."""
        if entry.bin.name == "stow":
            if self.stow_spool is None:
                if self.stow_store is None:  # pragma: no cover - the stow bin exists only with a store
                    raise ReviewError("no STOW-RS store")
                from verifier.api.storage import StoreArea

                staged_file = self.stow_store.stage(data, entry.sha256, StoreArea.ACCEPTED)
                return lambda ok: staged_file.commit() if ok else staged_file.discard()
            return self._stage_spool(self.stow_spool, entry, data)
        if entry.origin.startswith("orthanc"):
            send = self.orthanc_release
            if send is None:
                raise ReviewError("this server has no Orthanc to release into (set orthanc_url)")
            return self._stage_orthanc(send, entry, data)
        if self.gateway_spool is None:
            raise ReviewError("this server does not know the gateway's spool (intake_spool_dir)")
        return self._stage_spool(self.gateway_spool, entry, data)

    @staticmethod
    def _stage_orthanc(send: Callable[[bytes], str], entry: Entry, data: bytes) -> Callable[[bool], None]:
        """A one-use marker lets exactly these bytes through the plugin's filter; then the upload (see
        :mod:`verifier.review.orthanc`). An upload that fails removes the marker and raises."""
        from verifier.review.orthanc import marker_path

        marker = marker_path(entry.bin.directory, entry.sha256)
        marker.parent.mkdir(mode=0o700, exist_ok=True)
        atomic_write(marker, entry.sha256.encode())

        def finish(ok: bool) -> None:
            try:
                if ok:
                    send(data)
            finally:
                marker.unlink(missing_ok=True)  # used by the plugin, or never to be used

        return finish

    @staticmethod
    def _stage_spool(directory: Path, entry: Entry, data: bytes) -> Callable[[bool], None]:
        spool = Spool(directory, owner=False)  # the gateway owns its temporaries: never remove them from here
        staged = spool.stage(data)

        def finish(ok: bool) -> None:
            if ok:
                spool.commit(staged, sha256=entry.sha256)
            else:
                Spool.discard(staged)

        return finish

    @staticmethod
    def _audit_entry(
        entry: Entry, decision: Decision, reviewer: Reviewer, comment: str, destination: str
    ) -> AuditEntry:
        from verifier.audit import AuditEntry

        uid = entry.field("sop_instance_uid")
        review = {
            "decision": decision.value, "reviewer": reviewer.label, "comment": comment,
            "destination": destination, "arrivals": [a.get("audit_id") for a in entry.arrivals],
        }  # fmt: skip
        return AuditEntry(
            event="review",
            channel=reviewer.channel,
            path=f"quarantine:{entry.id}",
            sop_instance_uid=str(uid) if uid else None,
            file_sha256=entry.sha256,
            api_token_id=reviewer.token_id,
            verdict=str(entry.field("verdict") or "") or None,
            action=decision.value,
            policy_version=str(entry.field("policy_version") or "") or None,
            details={"review": review},
        ).with_local_actor()

    @staticmethod
    def _move(entry: Entry, decision: Decision, review: dict[str, Any]) -> None:
        target_dir = entry.bin.decided_dir(decision)
        target_dir.mkdir(mode=0o700, exist_ok=True)
        sidecar = {**(entry.sidecar or {}), "review": review}
        target = target_dir / f"{entry.sha256}.dcm"
        atomic_write(target.with_suffix(".json"), json.dumps(sidecar, indent=2, sort_keys=True).encode())
        os.replace(entry.path, target)
        entry.path.with_suffix(".json").unlink(missing_ok=True)
        for directory in {target_dir, entry.path.parent}:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _sha_of(path: Path) -> str | None:
    stem = path.stem
    return stem if re.fullmatch(r"[0-9a-f]{64}", stem) else None
