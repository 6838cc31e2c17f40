"""Claim audits: every image of every claim through the checker, then findings per claim.

Findings come from three places, each tied to the evidence it rests on:

* **reused images**: the same file, the same decoded pixels, or a near-duplicate (re-encoded, windowed
  differently, resized, cropped; see :mod:`verifier.claims.fingerprint`) in another claim of the batch or in any
  earlier audit (the image index of the audit database), with the other claim named;
* **headers**: patient identity, sex and age, body part and dates against the claim and against each other,
  equipment within a study, UIDs shared by different patients, stripped identity elements;
* **the checker's verdicts**: tampered, synthetic (declared or suspected), signature problems, unreadable input.

Every file leaves one audit record (channel ``claims``) and each claim one summary record with its findings.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import enum
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from verifier.checker import Checker
from verifier.claims.fingerprint import Fingerprint, fingerprint_frame
from verifier.claims.headers import HeaderFacts, distinct, normalise_body_part, parse_da
from verifier.claims.matcher import BatchIndex, Confirmation, confirm
from verifier.claims.store import ImageStore, IndexedImage, NewImage
from verifier.errors import InputError
from verifier.instance import iter_input_files
from verifier.policy import Action, VerdictStatus
from verifier.result import FileResult

if TYPE_CHECKING:  # SQLAlchemy is imported only when a database is used
    from verifier.audit import AuditLog

__all__ = [
    "AuditedFile",
    "ClaimAudit",
    "ClaimInfo",
    "ClaimReport",
    "ClaimsAuditor",
    "Finding",
    "Severity",
    "load_claims",
]

_SYNTHETIC = (VerdictStatus.DECLARED_SYNTHETIC, VerdictStatus.SUSPECTED_SYNTHETIC)
#: A study dated more than this many days before the claimed date is reported.
DATE_TOLERANCE_DAYS = 30
_THUMB_SIDE = 256


class Severity(enum.StrEnum):
    NONE = "none"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"

    @property
    def rank(self) -> int:
        return list(Severity).index(self)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Finding:
    """One thing an analyst should look at, with the files it concerns and the evidence for it."""

    kind: str
    severity: Severity
    message: str
    files: tuple[str, ...] = ()
    other_claim: str | None = None
    evidence: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "severity": self.severity.value,
            "message": self.message,
            "files": list(self.files),
            "other_claim": self.other_claim,
            "evidence": dict(self.evidence),
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClaimInfo:
    """A claim as submitted: its id, what it says (all optional) and its image files."""

    claim_id: str
    files: tuple[Path, ...]
    patient_id: str | None = None
    patient_name: str | None = None
    patient_sex: str | None = None
    patient_birth_date: dt.date | None = None
    claim_date: dt.date | None = None
    body_part: str | None = None

    def __post_init__(self) -> None:
        if not self.claim_id.strip():
            raise InputError("a claim id must not be empty")

    def to_dict(self) -> dict[str, Any]:
        return {
            "claim_id": self.claim_id,
            "patient_id": self.patient_id,
            "patient_name": self.patient_name,
            "patient_sex": self.patient_sex,
            "patient_birth_date": self.patient_birth_date.isoformat() if self.patient_birth_date else None,
            "claim_date": self.claim_date.isoformat() if self.claim_date else None,
            "body_part": self.body_part,
        }


@dataclasses.dataclass(kw_only=True, eq=False)
class AuditedFile:
    """One image of a claim: the checker's result, its header facts and fingerprint, and a thumbnail."""

    claim_id: str
    path: str
    result: FileResult
    facts: HeaderFacts | None = None
    fingerprint: Fingerprint | None = None
    #: 8-bit display view (the image's own window), longest side at most 256 pixels.
    thumbnail: npt.NDArray[np.uint8] | None = None
    pixel_error: str | None = None
    record_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out = self.result.to_dict()
        out["claim_id"] = self.claim_id
        out["record_id"] = self.record_id
        out["pixel_error"] = self.pixel_error
        fp = self.fingerprint
        out["pixel_sha256"] = fp.pixel_sha256 if fp else None
        out["phash"] = f"{fp.phash:016x}" if fp and fp.phash is not None else None
        f = self.facts
        out["header"] = (
            None
            if f is None
            else {
                "patient_id": f.patient_id,
                "patient_name": f.patient_name,
                "patient_sex": f.patient_sex,
                "patient_birth_date": f.patient_birth_date.isoformat() if f.patient_birth_date else None,
                "body_part": f.body_part,
                "study_date": f.study_date.isoformat() if f.study_date else None,
                "study_instance_uid": f.study_instance_uid,
                "equipment": f.equipment_label() or None,
            }
        )
        return out


@dataclasses.dataclass(kw_only=True, eq=False)
class ClaimReport:
    """A claim's files and findings."""

    info: ClaimInfo
    files: list[AuditedFile]
    findings: list[Finding] = dataclasses.field(default_factory=list)
    record_id: int | None = None

    @property
    def claim_id(self) -> str:
        return self.info.claim_id

    @property
    def severity(self) -> Severity:
        return max((f.severity for f in self.findings), key=lambda s: s.rank, default=Severity.NONE)

    def to_dict(self) -> dict[str, Any]:
        return {
            "claim_id": self.claim_id,
            "severity": self.severity.value,
            "claim": self.info.to_dict(),
            "findings": [f.to_dict() for f in self.findings],
            "files": [f.to_dict() for f in self.files],
            "record_id": self.record_id,
        }


@dataclasses.dataclass(kw_only=True, eq=False)
class DuplicatePair:
    """Two images found to be the same (for the report's side-by-side view)."""

    a: AuditedFile
    b: AuditedFile | IndexedImage
    how: str
    confirmation: Confirmation | None = None


@dataclasses.dataclass(kw_only=True, eq=False)
class ClaimAudit:
    """The outcome of one ``claims audit`` run."""

    claims: list[ClaimReport]
    pairs: list[DuplicatePair]
    started_at: dt.datetime
    seconds: float
    indexed_before: int | None
    policy_version: str
    checks: tuple[str, ...]

    @property
    def files(self) -> int:
        return sum(len(c.files) for c in self.claims)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "medverify-claims-audit/v1",
            "started_at": self.started_at.isoformat(),
            "seconds": round(self.seconds, 3),
            "images_indexed_before": self.indexed_before,
            "policy_version": self.policy_version,
            "checks": list(self.checks),
            "claims": [c.to_dict() for c in self.claims],
        }


# ---------------------------------------------------------------------------------------------- loading


_MANIFEST_ALIASES = {
    "claim": "claim_id",
    "claim_id": "claim_id",
    "file": "file",
    "path": "file",
    "patient_id": "patient_id",
    "patient": "patient_id",
    "patient_name": "patient_name",
    "patient_sex": "patient_sex",
    "sex": "patient_sex",
    "patient_birth_date": "patient_birth_date",
    "birth_date": "patient_birth_date",
    "claim_date": "claim_date",
    "date": "claim_date",
    "service_date": "claim_date",
    "body_part": "body_part",
}
_CLAIM_FIELDS = ("patient_id", "patient_name", "patient_sex", "patient_birth_date", "claim_date", "body_part")


def load_claims(root: Path, manifest: Path | None = None, *, follow_symlinks: bool = False) -> list[ClaimInfo]:
    """The claims under ``root``: one per subfolder, or as ``manifest`` (CSV) maps claims to files.

    The manifest's columns (header row, case-insensitive): ``claim_id`` and ``file`` (relative to ``root``), and
    optionally ``patient_id``, ``patient_name``, ``patient_sex``, ``patient_birth_date``, ``claim_date`` and
    ``body_part``. A file path must stay inside ``root``.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root} is not a directory")
    if manifest is None:
        claims = []
        for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            files = tuple(iter_input_files([sub], follow_symlinks=follow_symlinks))
            claims.append(ClaimInfo(claim_id=sub.name, files=files))
        if not claims:
            raise InputError(f"{root} has no claim subfolders (or give --manifest claims.csv)")
        return claims
    return _read_manifest(root, manifest)


def _read_manifest(root: Path, manifest: Path) -> list[ClaimInfo]:
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise InputError(f"cannot read manifest {manifest}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"manifest {manifest} is not UTF-8 text") from exc
    reader = csv.DictReader(text.splitlines())
    if reader.fieldnames is None:
        raise InputError(f"manifest {manifest} is empty")
    columns = {name: _MANIFEST_ALIASES.get(name.strip().lower()) for name in reader.fieldnames}
    unknown = [n for n, c in columns.items() if c is None]
    if unknown:
        raise InputError(f"manifest {manifest}: unknown column(s) {', '.join(unknown)}")
    if not {"claim_id", "file"} <= set(columns.values()):
        raise InputError(f"manifest {manifest} needs the columns claim_id and file")
    base = root.resolve()
    order: list[str] = []
    files: dict[str, list[Path]] = {}
    fields: dict[str, dict[str, str]] = {}
    for line_no, row in enumerate(reader, start=2):
        values = {columns[k]: (v or "").strip() for k, v in row.items() if k is not None and columns.get(k)}
        claim_id, rel = values.get("claim_id", ""), values.get("file", "")
        if not claim_id or not rel:
            raise InputError(f"manifest {manifest} line {line_no}: claim_id and file must not be empty")
        path = (root / rel).resolve()
        if not path.is_relative_to(base):
            raise InputError(f"manifest {manifest} line {line_no}: {rel} is outside {root}")
        if claim_id not in files:
            order.append(claim_id)
            files[claim_id], fields[claim_id] = [], {}
        files[claim_id].append(root / rel)
        for name in _CLAIM_FIELDS:
            value = values.get(name, "")
            if not value:
                continue
            known = fields[claim_id].setdefault(name, value)
            if known != value:
                raise InputError(
                    f"manifest {manifest} line {line_no}: claim {claim_id} has two values for {name} "
                    f"({known!r} and {value!r})"
                )
    if not order:
        raise InputError(f"manifest {manifest} lists no files")
    claims = []
    for claim_id in order:
        f = fields[claim_id]
        claims.append(
            ClaimInfo(
                claim_id=claim_id,
                files=tuple(files[claim_id]),
                patient_id=f.get("patient_id"),
                patient_name=f.get("patient_name"),
                patient_sex=(f.get("patient_sex") or "").upper() or None,
                patient_birth_date=_manifest_date(f.get("patient_birth_date"), manifest, claim_id),
                claim_date=_manifest_date(f.get("claim_date"), manifest, claim_id),
                body_part=f.get("body_part"),
            )
        )
    return claims


def _manifest_date(value: str | None, manifest: Path, claim_id: str) -> dt.date | None:
    if not value:
        return None
    parsed = parse_da(value)
    if parsed is None:
        raise InputError(f"manifest {manifest}: claim {claim_id}: {value!r} is not a date (YYYY-MM-DD)")
    return parsed


# ---------------------------------------------------------------------------------------------- auditing


def _display(frame: npt.NDArray[np.float32], window: tuple[float, float] | None, monochrome1: bool) -> Any:
    import cv2

    if window is not None and window[1] > 0:
        lo, hi = window[0] - window[1] / 2, window[0] + window[1] / 2
    else:
        lo, hi = (float(v) for v in np.percentile(frame, (0.5, 99.5)))
    scaled = (frame - lo) / (hi - lo) if hi > lo else np.zeros_like(frame)
    view = (np.clip(scaled, 0, 1) * 255).astype(np.uint8)
    if monochrome1:
        view = 255 - view
    h, w = view.shape
    factor = _THUMB_SIDE / max(h, w)
    if factor < 1:
        view = cv2.resize(view, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=cv2.INTER_AREA)
    return view


def _swapped(evidence: Mapping[str, Any]) -> dict[str, Any]:
    """The same pair's evidence seen from the other image."""
    out = dict(evidence)
    if "scale" in out:
        out["scale"], out["other_scale"] = evidence["other_scale"], evidence["scale"]
    return out


class ClaimsAuditor:
    """Audits batches of claims with one trust policy, site policy and (optionally) audit database."""

    def __init__(
        self,
        checker: Checker,
        *,
        log: AuditLog | None = None,
        date_tolerance_days: int = DATE_TOLERANCE_DAYS,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self._checker = checker
        self._log = log
        self._store = ImageStore(log) if log is not None else None
        self._tolerance = date_tolerance_days
        self._progress = progress

    # -- per file ------------------------------------------------------------------------------------------

    def _check(self, claim_id: str, path: Path) -> AuditedFile:
        examined = self._checker.examine(path)
        audited = AuditedFile(claim_id=claim_id, path=str(path), result=examined.result)
        instance = examined.instance
        if instance is None:  # unreadable: the result says why, there is nothing more to read
            return audited
        try:
            audited.facts = HeaderFacts.from_dataset(instance.dataset)
        except Exception as exc:  # noqa: BLE001 - a header value that does not convert is a finding, not a crash
            audited.pixel_error = f"header: {type(exc).__name__}: {str(exc)[:120]}"
        try:
            from detectors.data import read_image

            meta = read_image(instance.dataset, frame_indices=[0], max_bytes=None)
            total = meta.total_frames
            image = meta if total <= 1 else read_image(instance.dataset, frame_indices=[total // 2])
            frame = image.frames[0]
            mono1 = image.photometric.strip().upper() == "MONOCHROME1"
            audited.fingerprint = fingerprint_frame(frame, monochrome1=mono1)
            audited.thumbnail = _display(frame, image.window, mono1)
        except Exception as exc:  # noqa: BLE001 - decoders raise many types; the report says why
            audited.pixel_error = f"pixels: {type(exc).__name__}: {str(exc)[:160]}"
        return audited

    # -- the batch -----------------------------------------------------------------------------------------

    def audit(self, claims: Sequence[ClaimInfo]) -> ClaimAudit:
        """Audit ``claims``: check every file, record it, find reuse and header problems, index the images."""
        ids = [c.claim_id for c in claims]
        if len(set(ids)) != len(ids):
            raise InputError("claim ids must be unique within one audit")
        started, t0 = dt.datetime.now(dt.UTC), time.perf_counter()
        reports = []
        done = 0
        for info in claims:
            files = []
            for path in info.files:
                files.append(self._check(info.claim_id, path))
                done += 1
                if self._progress is not None:
                    self._progress(done)
            reports.append(ClaimReport(info=info, files=files))
        self._record_files(reports)
        indexed_before = self._store.count() if self._store is not None else None
        pairs: list[DuplicatePair] = []
        for report in reports:
            report.findings.extend(self._verdict_findings(report))
        pairs += self._batch_reuse(reports)
        if self._store is not None:
            # A pair found in this batch is not reported again from the index (a re-audit of the same claims).
            known = {(p.a.path, p.b.claim_id) for p in pairs if isinstance(p.b, AuditedFile)}
            known |= {(p.b.path, p.a.claim_id) for p in pairs if isinstance(p.b, AuditedFile)}
            pairs += self._index_reuse(reports, known)
        self._uid_reuse(reports)
        for report in reports:
            report.findings.extend(self._header_findings(report))
            report.findings.sort(key=lambda f: (-f.severity.rank, f.kind))
        if self._store is not None:
            self._index(reports)
        self._record_claims(reports)
        return ClaimAudit(
            claims=reports,
            pairs=pairs,
            started_at=started,
            seconds=time.perf_counter() - t0,
            indexed_before=indexed_before,
            policy_version=self._checker.site_policy.version,
            checks=tuple(sorted(c.value for c in self._checker.checks)),
        )

    def _record_files(self, reports: Sequence[ClaimReport]) -> None:
        if self._log is None:
            return
        from verifier.audit import Channel, EventKind

        files = [f for r in reports for f in r.files]
        entries = []
        for f in files:
            entry = f.result.audit_entry(channel=Channel.CLAIMS, event=EventKind.CLAIM)
            details = {**entry.details, "claim": {"id": f.claim_id}}
            if f.fingerprint is not None:
                details["claim"]["pixel_sha256"] = f.fingerprint.pixel_sha256
            entries.append(dataclasses.replace(entry, details=details))
        for f, receipt in zip(files, self._log.append_many(entries), strict=True):
            f.record_id = receipt.id
            f.result = f.result.with_audit_id(receipt.id)

    def _record_claims(self, reports: Sequence[ClaimReport]) -> None:
        if self._log is None:
            return
        from verifier.audit import AuditEntry, Channel

        entries = [
            AuditEntry(
                event="claim.summary",
                channel=Channel.CLAIMS,
                verdict=r.severity.value.upper(),
                details={
                    "claim": r.info.to_dict(),
                    "files": [{"path": f.path, "record_id": f.record_id, "sha256": f.result.sha256} for f in r.files],
                    "findings": [f.to_dict() for f in r.findings],
                },
            ).with_local_actor()
            for r in reports
        ]
        for r, receipt in zip(reports, self._log.append_many(entries), strict=True):
            r.record_id = receipt.id

    # -- findings: verdicts ---------------------------------------------------------------------------------

    @staticmethod
    def _verdict_findings(report: ClaimReport) -> list[Finding]:
        out = []
        if not report.files:
            out.append(Finding(kind="no_images", severity=Severity.MEDIUM, message="the claim has no DICOM images"))
        for f in report.files:
            v = f.result.verdict
            reasons = list(f.result.reasons)
            evidence: dict[str, Any] = {"verdict": v.status.value, "action": v.action.value, "reasons": reasons}
            if v.status in (VerdictStatus.TAMPERED, VerdictStatus.SUSPECTED_SYNTHETIC):
                word = "tampered" if v.status is VerdictStatus.TAMPERED else "suspected synthetic"
                out.append(
                    Finding(
                        kind=v.status.value.lower(),
                        severity=Severity.HIGH,
                        message=f"{Path(f.path).name}: {word}",
                        files=(f.path,),
                        evidence=evidence,
                    )
                )
            elif v.status is VerdictStatus.DECLARED_SYNTHETIC:
                out.append(
                    Finding(
                        kind="declared_synthetic",
                        severity=Severity.HIGH,
                        message=f"{Path(f.path).name}: a synthetic image (declared by its provenance) "
                        "submitted as a patient scan",
                        files=(f.path,),
                        evidence=evidence,
                    )
                )
            elif f.result.failed:
                out.append(
                    Finding(
                        kind="unreadable",
                        severity=Severity.MEDIUM,
                        message=f"{Path(f.path).name}: could not be checked ({v.status.value})",
                        files=(f.path,),
                        evidence={**evidence, "error": f.result.error},
                    )
                )
            elif v.action is not Action.ACCEPT:
                out.append(
                    Finding(
                        kind="signature_problem",
                        severity=Severity.MEDIUM,
                        message=f"{Path(f.path).name}: {v.status.value}, action {v.action.value}",
                        files=(f.path,),
                        evidence=evidence,
                    )
                )
            if f.pixel_error and not f.result.failed:
                out.append(
                    Finding(
                        kind="undecodable_pixels",
                        severity=Severity.LOW,
                        message=f"{Path(f.path).name}: image not compared ({f.pixel_error})",
                        files=(f.path,),
                    )
                )
        return out  # fmt: skip

    # -- findings: reuse -------------------------------------------------------------------------------------

    def _batch_reuse(self, reports: Sequence[ClaimReport]) -> list[DuplicatePair]:
        files = [f for r in reports for f in r.files]
        by_claim = {r.claim_id: r for r in reports}
        index = BatchIndex()
        pairs: list[DuplicatePair] = []
        exact_file: dict[str, int] = {}
        exact_pixels: dict[str, int] = {}
        for i, f in enumerate(files):
            fp = f.fingerprint
            matched: dict[int, tuple[str, Confirmation | None]] = {}
            sha = f.result.sha256
            if sha is not None and sha in exact_file:
                matched[exact_file[sha]] = ("identical file", None)
            if fp is not None and fp.pixel_sha256 in exact_pixels:
                matched.setdefault(exact_pixels[fp.pixel_sha256], ("identical pixels", None))
            slots = fp.slots() if fp is not None else {}
            if fp is not None and slots:
                for j, hashes in index.near(slots).items():
                    if j in matched:
                        continue
                    other = files[j].fingerprint
                    c = confirm(slots, fp.match_view, hashes, other.match_view if other else None)
                    if c.confirmed:
                        matched[j] = ("near-duplicate", c)
            for j, (how, conf) in sorted(matched.items()):
                pairs.append(self._reuse_pair(f, files[j], how, conf, by_claim))
            if sha is not None:
                exact_file.setdefault(sha, i)
            if fp is not None:
                exact_pixels.setdefault(fp.pixel_sha256, i)
                if slots:
                    index.add(i, slots)
        return pairs

    @staticmethod
    def _evidence(how: str, c: Confirmation | None) -> dict[str, Any]:
        ev: dict[str, Any] = {"match": how}
        if c is not None:
            ev.update(hamming=c.hamming, hash=c.hash_kind, correlation=c.correlation, scale=c.scale,
                      other_scale=c.other_scale)  # fmt: skip
        return ev

    def _reuse_pair(
        self,
        f: AuditedFile,
        other: AuditedFile,
        how: str,
        c: Confirmation | None,
        by_claim: Mapping[str, ClaimReport],
    ) -> DuplicatePair:
        evidence = self._evidence(how, c)
        pk, opk = (f.facts.patient_key if f.facts else None), (other.facts.patient_key if other.facts else None)
        other_patient = pk is not None and opk is not None and pk != opk
        evidence["different_patient"] = other_patient
        if f.claim_id == other.claim_id:
            by_claim[f.claim_id].findings.append(
                Finding(kind="duplicate_in_claim", severity=Severity.MEDIUM if other_patient else Severity.LOW,
                        message=f"{Path(f.path).name} and {Path(other.path).name} are the same image ({how})",
                        files=(f.path, other.path), evidence={**evidence, "other_path": other.path})
            )  # fmt: skip
        else:
            who = " for a different patient" if other_patient else ""
            for a, b, ev in ((f, other, evidence), (other, f, _swapped(evidence))):
                by_claim[a.claim_id].findings.append(
                    Finding(kind="reused_image", severity=Severity.HIGH,
                            message=f"{Path(a.path).name} was also submitted in claim {b.claim_id}{who} "
                            f"as {Path(b.path).name} ({how})",
                            files=(a.path,), other_claim=b.claim_id, evidence={**ev, "other_path": b.path})
                )  # fmt: skip
        # A copy of a synthetic image carries its origin even when its own provenance was stripped.
        for a, b in ((f, other), (other, f)):
            origin = b.result.verdict.status
            if origin in _SYNTHETIC and a.result.verdict.status not in _SYNTHETIC:
                by_claim[a.claim_id].findings.append(
                    Finding(kind="synthetic_copy", severity=Severity.HIGH,
                            message=f"{Path(a.path).name} is the same image as {Path(b.path).name} "
                            f"(claim {b.claim_id}), which is {origin.value.lower().replace('_', ' ')}",
                            files=(a.path,), other_claim=b.claim_id,
                            evidence={**self._evidence(how, c), "other_path": b.path, "other_verdict": origin.value})
                )  # fmt: skip
        return DuplicatePair(a=f, b=other, how=how, confirmation=c)

    def _index_reuse(self, reports: Sequence[ClaimReport], known: set[tuple[str, str]]) -> list[DuplicatePair]:
        store = self._store
        if store is None:
            return []
        pairs: list[DuplicatePair] = []
        for report in reports:
            for f in report.files:
                fp = f.fingerprint
                candidates: dict[int, tuple[IndexedImage, str, Confirmation | None]] = {}
                exact = store.exact(
                    file_sha256=[f.result.sha256] if f.result.sha256 else [],
                    pixel_sha256=[fp.pixel_sha256] if fp else [],
                )
                for row in exact:
                    how = "identical file" if row.file_sha256 == f.result.sha256 else "identical pixels"
                    candidates[row.id] = (row, how, None)
                slots = fp.slots() if fp is not None else {}
                if fp is not None and slots:
                    for row in store.near(slots):
                        if row.id in candidates:
                            continue
                        c = confirm(slots, fp.match_view, row.slots, row.match_view)
                        if c.confirmed:
                            candidates[row.id] = (row, "near-duplicate", c)
                # One finding per earlier claim (the image may have been indexed several times there).
                seen_claims: set[str | None] = set()
                for row, how, conf in sorted(candidates.values(), key=lambda t: t[0].id):
                    if row.claim_id == report.claim_id or row.claim_id in seen_claims:
                        continue  # a re-audit of the same claim is not reuse
                    if (f.path, str(row.claim_id)) in known:
                        continue
                    seen_claims.add(row.claim_id)
                    evidence = self._evidence(how, conf)
                    pk = f.facts.patient_key if f.facts else None
                    other_patient = pk is not None and row.patient_key is not None and pk != row.patient_key
                    who = " for a different patient" if other_patient else ""
                    when = row.created_at.date().isoformat()
                    evidence.update(
                        different_patient=other_patient,
                        other_path=row.path,
                        other_record_id=row.record_id,
                        other_audited_at=row.created_at.isoformat(),
                    )
                    report.findings.append(
                        Finding(kind="reused_image", severity=Severity.HIGH,
                                message=f"{Path(f.path).name} was submitted before in claim {row.claim_id}{who} "
                                f"(audited {when}, {how})",
                                files=(f.path,), other_claim=row.claim_id, evidence=evidence)
                    )  # fmt: skip
                    pairs.append(DuplicatePair(a=f, b=row, how=how, confirmation=conf))
        return pairs

    def _uid_reuse(self, reports: Sequence[ClaimReport]) -> None:
        """SOP or Study Instance UIDs carried by images of different patients (in the batch or the index)."""
        seen: dict[tuple[str, str], list[tuple[str | None, AuditedFile]]] = {}
        for f in (f for r in reports for f in r.files):
            if f.facts is None:
                continue
            for kind, uid in (("SOP Instance UID", f.facts.sop_instance_uid),
                              ("Study Instance UID", f.facts.study_instance_uid)):  # fmt: skip
                if uid:
                    seen.setdefault((kind, uid), []).append((f.facts.patient_key, f))
        by_claim = {r.claim_id: r for r in reports}
        earlier: dict[str, list[IndexedImage]] = {}
        if self._store is not None:
            for row in self._store.exact(uids=[uid for _k, uid in seen]):
                for uid in (row.sop_instance_uid, row.study_instance_uid):
                    if uid:
                        earlier.setdefault(uid, []).append(row)
        for (kind, uid), users in seen.items():
            keys = {k for k, _f in users if k}
            for key, f in users:
                others = {k for k in keys if k != key}
                prior = [
                    r
                    for r in earlier.get(uid, [])
                    if r.patient_key
                    and key
                    and r.patient_key != key
                    and r.claim_id != f.claim_id
                    and (r.sop_instance_uid == uid or r.study_instance_uid == uid)
                ]
                if key is None or (not others and not prior):
                    continue
                other_claims = sorted(
                    {g.claim_id for k, g in users if k != key and k} | {str(r.claim_id) for r in prior}
                )
                by_claim[f.claim_id].findings.append(
                    Finding(kind="uid_reused", severity=Severity.HIGH,
                            message=f"{Path(f.path).name}: its {kind} is also used for another patient "
                            f"(claim {', '.join(other_claims)})",
                            files=(f.path,), other_claim=other_claims[0] if other_claims else None,
                            evidence={"uid_kind": kind, "uid": uid, "other_claims": other_claims})
                )  # fmt: skip

    # -- findings: headers -----------------------------------------------------------------------------------

    def _header_findings(self, report: ClaimReport) -> list[Finding]:
        info = report.info
        files = [f for f in report.files if f.facts is not None]
        out: list[Finding] = []

        def add(kind: str, severity: Severity, message: str, fs: Iterable[AuditedFile], **evidence: Any) -> None:
            out.append(Finding(kind=kind, severity=severity, message=message,
                               files=tuple(f.path for f in fs), evidence=evidence))  # fmt: skip

        facts = {f.path: f.facts for f in files if f.facts is not None}
        # Stripped headers.
        stripped = [f for f in files if facts[f.path].missing]
        if stripped:
            anonymous = [f for f in stripped if {"PatientID", "PatientName"} <= set(facts[f.path].missing)]
            missing = sorted({m for f in stripped for m in facts[f.path].missing})
            add("stripped_header", Severity.MEDIUM if anonymous else Severity.LOW,
                f"{len(stripped)} image(s) lack identity elements: {', '.join(missing)}", stripped,
                missing={Path(f.path).name: list(facts[f.path].missing) for f in stripped})  # fmt: skip
        # Patient identity.
        patients = distinct([facts[f.path].patient_key for f in files])
        if len(patients) > 1:
            labels = distinct([facts[f.path].patient_label for f in files])
            add(
                "patient_inconsistent",
                Severity.MEDIUM,
                f"the images name {len(patients)} different patients: {'; '.join(labels)}",
                files,
                patients=labels,
            )
        if info.patient_id:
            wrong = [f for f in files if facts[f.path].patient_id and facts[f.path].patient_id != info.patient_id]
            if wrong:
                seen = distinct([facts[f.path].patient_id for f in wrong])
                add(
                    "patient_mismatch",
                    Severity.MEDIUM,
                    f"the claim is for patient {info.patient_id}, {len(wrong)} image(s) are of {', '.join(seen)}",
                    wrong,
                    claimed=info.patient_id,
                    found=seen,
                )
        # Sex.
        sexes = distinct([facts[f.path].patient_sex for f in files])
        if len(sexes) > 1:
            add("sex_inconsistent", Severity.MEDIUM, f"the images give different sexes: {', '.join(sexes)}", files)
        if info.patient_sex in ("M", "F"):
            wrong = [f for f in files if facts[f.path].patient_sex in ("M", "F")
                     and facts[f.path].patient_sex != info.patient_sex]  # fmt: skip
            if wrong:
                add(
                    "sex_mismatch",
                    Severity.MEDIUM,
                    f"the claim gives sex {info.patient_sex}, {len(wrong)} image(s) say otherwise",
                    wrong,
                )
        # Age: the birth date each image implies (header birth date, else study date minus stated age).
        births: list[tuple[float, AuditedFile]] = []
        for f in files:
            fa = facts[f.path]
            if fa.patient_birth_date is not None:
                births.append((fa.patient_birth_date.toordinal() / 365.25, f))
            elif fa.patient_age is not None and fa.study_date is not None:
                births.append((fa.study_date.toordinal() / 365.25 - fa.patient_age, f))
        if births and max(b for b, _ in births) - min(b for b, _ in births) > 2.0:
            add(
                "age_inconsistent",
                Severity.MEDIUM,
                "the images' ages / birth dates do not belong to one person (they differ by "
                f"{max(b for b, _ in births) - min(b for b, _ in births):.1f} years)",
                [f for _b, f in births],
            )
        if info.patient_birth_date is not None and births:
            claimed = info.patient_birth_date.toordinal() / 365.25
            wrong = [f for b, f in births if abs(b - claimed) > 1.0]
            if wrong:
                add(
                    "age_mismatch",
                    Severity.MEDIUM,
                    f"{len(wrong)} image(s) give an age that does not match the claimed birth date "
                    f"{info.patient_birth_date.isoformat()}",
                    wrong,
                )
        # Body part.
        if info.body_part:
            wrong = [f for f in files if facts[f.path].body_part_matches(info.body_part) is False]
            if wrong:
                seen = distinct([facts[f.path].body_part for f in wrong])
                add(
                    "body_part_mismatch",
                    Severity.MEDIUM,
                    f"the claim is for {normalise_body_part(info.body_part)}, {len(wrong)} image(s) show "
                    f"{', '.join(seen)}",
                    wrong,
                    claimed=info.body_part,
                    found=seen,
                )
        # Dates.
        if info.claim_date is not None:
            later = [f for f in files if any(d > info.claim_date for d in facts[f.path].dates.values())]
            if later:
                add("date_after_claim", Severity.HIGH,
                    f"{len(later)} image(s) were acquired after the claimed date {info.claim_date.isoformat()}",
                    later, claim_date=info.claim_date.isoformat(),
                    dates={Path(f.path).name: {k: d.isoformat() for k, d in facts[f.path].dates.items()}
                           for f in later})  # fmt: skip
            tolerance = dt.timedelta(days=self._tolerance)
            claim_date = info.claim_date
            old = [f for f in files if f not in later and (d := facts[f.path].study_date) is not None
                   and claim_date - d > tolerance]  # fmt: skip
            if old:
                oldest = min(d for f in old if (d := facts[f.path].study_date) is not None)
                add(
                    "date_mismatch",
                    Severity.MEDIUM,
                    f"{len(old)} image(s) are from studies more than {self._tolerance} days before the claimed date "
                    f"{info.claim_date.isoformat()} (oldest {oldest.isoformat()})",
                    old,
                )
        # Equipment within one study.
        studies: dict[str, list[AuditedFile]] = {}
        for f in files:
            if facts[f.path].study_instance_uid:
                studies.setdefault(str(facts[f.path].study_instance_uid), []).append(f)
        for uid, members in studies.items():
            kinds = distinct([facts[f.path].equipment_label() for f in members])
            if len(kinds) > 1:
                add(
                    "equipment_inconsistent",
                    Severity.LOW,
                    f"one study ({uid}) was acquired on different equipment: {'; '.join(kinds)}",
                    members,
                    study_instance_uid=uid,
                    equipment=kinds,
                )
        return out  # fmt: skip

    # -- the index -------------------------------------------------------------------------------------------

    def _index(self, reports: Sequence[ClaimReport]) -> None:
        store = self._store
        if store is None:
            return
        new = []
        for r in reports:
            for f in r.files:
                fp, facts = f.fingerprint, f.facts
                if fp is None and facts is None:
                    continue
                if store.known(r.claim_id, f.result.sha256):
                    continue
                new.append(
                    NewImage(
                        record_id=f.record_id,
                        claim_id=r.claim_id,
                        path=f.path,
                        sop_instance_uid=facts.sop_instance_uid if facts else None,
                        file_sha256=f.result.sha256,
                        pixel_sha256=fp.pixel_sha256 if fp else None,
                        slots=fp.slots() if fp else {},
                        dhash=fp.dhash if fp else None,
                        patient_key=facts.patient_key if facts else None,
                        study_instance_uid=facts.study_instance_uid if facts else None,
                        study_date=facts.study_date.strftime("%Y%m%d") if facts and facts.study_date else None,
                        body_part=facts.body_part if facts else None,
                        match_view=fp.match_view if fp else None,
                    )
                )
        store.add(new)
