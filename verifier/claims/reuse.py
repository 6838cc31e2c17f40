"""Reused images: the same file, the same pixels or a near-duplicate in another claim of the batch or of an earlier
audit (the image index), and UIDs that different patients share. Each finding names the other claim and the
evidence (how the images match; see :mod:`verifier.claims.fingerprint` and :mod:`verifier.claims.matcher`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from verifier.claims.matcher import BatchIndex, Confirmation, confirm
from verifier.claims.models import AuditedFile, ClaimReport, DuplicatePair, Finding, Severity
from verifier.claims.store import ImageStore, IndexedImage
from verifier.policy import VerdictStatus

__all__ = ["batch_reuse", "index_reuse", "uid_reuse"]

_SYNTHETIC = (VerdictStatus.DECLARED_SYNTHETIC, VerdictStatus.SUSPECTED_SYNTHETIC)


def _swapped(evidence: Mapping[str, Any]) -> dict[str, Any]:
    """The same pair's evidence seen from the other image."""
    out = dict(evidence)
    if "scale" in out:
        out["scale"], out["other_scale"] = evidence["other_scale"], evidence["scale"]
    return out


def batch_reuse(reports: Sequence[ClaimReport]) -> list[DuplicatePair]:
    """Images of this batch that are the same image as an earlier one of the batch: one pair each."""
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
            pairs.append(_reuse_pair(f, files[j], how, conf, by_claim))
        if sha is not None:
            exact_file.setdefault(sha, i)
        if fp is not None:
            exact_pixels.setdefault(fp.pixel_sha256, i)
            if slots:
                index.add(i, slots)
    return pairs


def _evidence(how: str, c: Confirmation | None) -> dict[str, Any]:
    ev: dict[str, Any] = {"match": how}
    if c is not None:
        ev.update(hamming=c.hamming, hash=c.hash_kind, correlation=c.correlation, scale=c.scale,
                  other_scale=c.other_scale)  # fmt: skip
    return ev


def _patient_id(f: AuditedFile, by_claim: Mapping[str, ClaimReport]) -> str | None:
    """The patient an image is filed for: its header's Patient ID, else (an export has no header) the claim's."""
    pid = f.facts.patient_id if f.facts is not None else by_claim[f.claim_id].info.patient_id
    return str(pid).strip().upper() or None if pid else None


def _different_patients(f: AuditedFile, other: AuditedFile, by_claim: Mapping[str, ClaimReport]) -> bool:
    """Whether two images name different patients: by their headers' identities when both have one, else by the
    patient IDs they are filed for (a JPEG export names no patient; its claim does)."""
    if f.facts is not None and other.facts is not None:
        pk, opk = f.facts.patient_key, other.facts.patient_key
        return pk is not None and opk is not None and pk != opk
    a, b = _patient_id(f, by_claim), _patient_id(other, by_claim)
    return a is not None and b is not None and a != b


def _reuse_pair(
    f: AuditedFile,
    other: AuditedFile,
    how: str,
    c: Confirmation | None,
    by_claim: Mapping[str, ClaimReport],
) -> DuplicatePair:
    evidence = _evidence(how, c)
    other_patient = _different_patients(f, other, by_claim)
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
                        evidence={**_evidence(how, c), "other_path": b.path, "other_verdict": origin.value})
            )  # fmt: skip
    return DuplicatePair(a=f, b=other, how=how, confirmation=c)


def index_reuse(reports: Sequence[ClaimReport], store: ImageStore, known: set[tuple[str, str]]) -> list[DuplicatePair]:
    """Images of this batch already submitted with another claim of an earlier audit (the image index), one
    finding per earlier claim; ``known`` pairs (path, other claim) were found in the batch already."""
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
                evidence = _evidence(how, conf)
                pk = f.facts.patient_key if f.facts else None
                other_patient = pk is not None and row.patient_key is not None and pk != row.patient_key
                who = " for a different patient" if other_patient else ""
                # An export names no patient in the index: unknown, not "the same patient".
                known_both = pk is not None and row.patient_key is not None
                when = row.created_at.date().isoformat()
                evidence.update(
                    different_patient=other_patient if known_both else None,
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


def uid_reuse(reports: Sequence[ClaimReport], store: ImageStore | None) -> None:
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
    if store is not None:
        for row in store.exact(uids=[uid for _k, uid in seen]):
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
            other_claims = sorted({g.claim_id for k, g in users if k != key and k} | {str(r.claim_id) for r in prior})
            by_claim[f.claim_id].findings.append(
                Finding(kind="uid_reused", severity=Severity.HIGH,
                        message=f"{Path(f.path).name}: its {kind} is also used for another patient "
                        f"(claim {', '.join(other_claims)})",
                        files=(f.path,), other_claim=other_claims[0] if other_claims else None,
                        evidence={"uid_kind": kind, "uid": uid, "other_claims": other_claims})
            )  # fmt: skip
