"""The claim-audit report: the checks that ran, a legend, a summary per claim with its severity, then the evidence.

Each finding shows its evidence in plain language (:mod:`verifier.claims.evidence`) and, where there is one, the
picture that proves it: the two images of a reused pair side by side, or an image beside the detector's heatmap.
A claim without findings says which checks found nothing, never that an image "passed" a check that did not run.

The file is self-contained (no scripts, no external style sheets, fonts or images): thumbnails, detector heatmaps
and duplicate pairs are PNG data URIs, so the report can be mailed, archived and opened offline, and its SHA-256
in an evidence package covers everything it shows.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import os
import tempfile
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import cv2
import jinja2
import numpy.typing as npt

from verifier.claims.audit import DETECTOR_SOURCE
from verifier.claims.evidence import image_name
from verifier.claims.fingerprint import MATCH_SIDE
from verifier.claims.models import (
    CHECK_NAMES,
    AuditedFile,
    ClaimAudit,
    ClaimReport,
    DuplicatePair,
    Finding,
    Severity,
    why_not_applicable,
    why_not_examined,
)
from verifier.claims.store import IndexedImage
from verifier.report.legend import ACTION_MEANINGS, SEVERITY_MEANINGS, VERDICT_MEANINGS

__all__ = ["render_claims_report", "write_claims_report"]

_THUMB_SIDE = 256
#: Findings whose proof is a pair of images, and those whose proof is the image and the detector's heatmap.
_PAIR_KINDS = frozenset({"reused_image", "duplicate_in_claim", "synthetic_copy"})
_IMAGE_KINDS = frozenset({"tampered", "suspected_synthetic", "declared_synthetic"})

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("verifier.report", "templates"),
    autoescape=jinja2.select_autoescape(("html", "j2")),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _png(image: npt.NDArray[Any] | None) -> str | None:
    if image is None:
        return None
    ok, buf = cv2.imencode(".png", image)
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii") if ok else None


def _heatmap(f: AuditedFile) -> str | None:
    """The detector's heatmap PNG (written when the detector check ran with a heatmap folder), embedded."""
    where = f.result.heatmap
    if not where:
        return None
    image = cv2.imread(str(where), cv2.IMREAD_COLOR)
    if image is None:
        return None
    h, w = image.shape[:2]
    factor = _THUMB_SIDE / max(h, w)
    if factor < 1:
        image = cv2.resize(image, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=cv2.INTER_AREA)
    return _png(image)


def _file_view(f: AuditedFile) -> dict[str, Any]:
    d = f.result.to_dict()
    sig = f.result.signature
    signatures = [s.to_dict() for s in sig.signatures] if sig is not None else []
    uncovered = [f"{u.tag} {u.keyword}".strip() for u in sig.uncovered] if sig is not None else []
    header = f.facts
    wm = f.result.watermark
    src = f.result.source
    kind = (src.format or "image").upper() if src is not None else ""
    return {
        "checks": _file_checks(f),
        "name": image_name(f.path),
        # Where an export came from: its page of a PDF, or the kind of export, and the file's own digest.
        "source": None if src is None else (
            f"{kind} image {src.index} of page {src.page} of the PDF ({src.count} images in all)"
            if src.container == "pdf" else f"{kind} export (no DICOM header)"),
        "file_sha256": src.file_sha256 if src is not None and src.container == "pdf" else None,
        "path": f.path,
        "anchor": f"file-{f.record_id or id(f)}",
        "verdict": d["verdict"],
        "action": d["action"],
        "status": d["status"],
        "reasons": d["reasons"],
        "sha256": d["sha256"],
        "record_id": f.record_id,
        "modality": d["modality"],
        "synthetic_score": d.get("synthetic_score"),
        "tamper_score": d.get("tamper_score"),
        "watermark": None if wm is None else d.get("watermark"),
        "signatures": signatures,
        "uncovered": uncovered[:20],
        "thumbnail": _png(f.thumbnail),
        "heatmap": _heatmap(f),
        "pixel_error": f.pixel_error,
        "header": None
        if header is None
        else {
            "Patient": header.patient_label,
            "Sex": header.patient_sex or "—",
            "Birth date": header.patient_birth_date.isoformat() if header.patient_birth_date else "—",
            "Body part": header.body_part or "—",
            "Study date": header.study_date.isoformat() if header.study_date else "—",
            "Equipment": header.equipment_label() or "—",
            "Study UID": header.study_instance_uid or "—",
        },
    }


def _file_checks(f: AuditedFile) -> list[dict[str, str]]:
    """What each check said of this image, in words; "not run" and why for those that did not look."""
    r = f.result
    out = []
    for check in CHECK_NAMES:
        na = why_not_applicable(check, f)
        if na is not None:
            out.append({"check": check, "said": f"not applicable: {na}", "ran": "na"})
            continue
        why = why_not_examined(check, f)
        if why is not None:
            out.append({"check": check, "said": f"not run: {why}", "ran": "no"})
            continue
        if check == "signature" and r.signature is not None:
            said = r.status if r.signature.signatures else "no signature"
        elif check == "watermark":
            said = "present" if getattr(r.watermark, "present", False) else "absent"
        else:
            d = r.detection_dict() or {}
            said = f"synthetic {d['synthetic_score']:.3f}, tamper {d['tamper_score']:.3f}"
        out.append({"check": check, "said": said, "ran": "yes"})
    return out


def _other_view(b: AuditedFile | IndexedImage) -> dict[str, Any]:
    if isinstance(b, AuditedFile):
        return {"claim": b.claim_id, "name": image_name(b.path), "path": b.path, "image": _png(b.thumbnail),
                "when": "this audit"}  # fmt: skip
    view = b.match_view
    image = (
        cv2.resize(view, (MATCH_SIDE * 2, MATCH_SIDE * 2), interpolation=cv2.INTER_NEAREST)
        if view is not None
        else None
    )
    when = f"audited {b.created_at.strftime('%Y-%m-%d %H:%M UTC')} (record {b.record_id}, stored thumbnail)"
    return {"claim": b.claim_id, "name": image_name(b.path or "?"), "path": b.path, "image": _png(image), "when": when}


def _pair_view(p: DuplicatePair, claim_id: str) -> dict[str, Any]:
    c = p.confirmation
    if isinstance(p.b, AuditedFile) and p.a.claim_id != claim_id:  # this claim's image on the left
        swapped = dataclasses.replace(c, scale=c.other_scale, other_scale=c.scale) if c else None
        p = DuplicatePair(a=p.b, b=p.a, how=p.how, confirmation=swapped)
        c = swapped
    return {
        "how": p.how,
        "a": {"claim": p.a.claim_id, "name": image_name(p.a.path), "path": p.a.path, "image": _png(p.a.thumbnail),
              "when": "this audit"},
        "b": _other_view(p.b),
        "hamming": c.hamming if c else None,
        "hash_kind": {"phash": "pHash", "simhash": "SimHash"}.get(c.hash_kind, c.hash_kind) if c else None,
        "correlation": c.correlation if c else None,
        "scales": f"{c.scale:.2f} / {c.other_scale:.2f}" if c else None,
    }  # fmt: skip


def _finding_view(f: Finding, pairs: list[dict[str, Any]], files: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The finding as the report shows it: its words, and the pictures that prove it."""
    out = f.to_dict()
    out["pair"] = None
    out["image"] = None
    if f.kind in _PAIR_KINDS:
        other = f.evidence.get("other_path")
        mine = set(f.files)
        out["pair"] = next((p for p in pairs if (p["a"]["path"] in mine or p["b"]["path"] in mine)
                            and other in (p["a"]["path"], p["b"]["path"])), None)  # fmt: skip
    elif f.kind in _IMAGE_KINDS and f.files and f.files[0] in files:
        view = files[f.files[0]]
        # The heatmap is evidence only where the detector decided; beside a watermark finding it would mislead.
        heatmap = view["heatmap"] if DETECTOR_SOURCE in f.evidence.get("caught_by", ()) else None
        out["image"] = {"name": view["name"], "thumbnail": view["thumbnail"], "heatmap": heatmap}
    return out


def _claim_view(c: ClaimReport, pairs: list[DuplicatePair], ran: list[str], not_run: list[str]) -> dict[str, Any]:
    mine = [
        p for p in pairs if p.a.claim_id == c.claim_id or (isinstance(p.b, AuditedFile) and p.b.claim_id == c.claim_id)
    ]
    info = {k: v for k, v in c.info.to_dict().items() if v and k not in ("claim_id", "fhir")}
    if c.info.fhir is not None:  # "claimed in FHIR: Claim/c1 (bundle.json): patient ..., born ...; ..."
        info["in FHIR"] = c.info.fhir.summary()
    files = [_file_view(f) for f in c.files]
    pair_views = [_pair_view(p, c.claim_id) for p in mine]
    by_path = {v["path"]: v for v in files}
    return {
        "id": c.claim_id,
        "anchor": "claim-" + "".join(ch if ch.isalnum() else "-" for ch in c.claim_id),
        "severity": c.severity.value,
        "info": info,
        "findings": [_finding_view(f, pair_views, by_path) for f in c.findings],
        "counts": {s.value: sum(1 for f in c.findings if f.severity is s) for s in Severity if s is not Severity.NONE},
        "files": files,
        "pairs": pair_views,
        "record_id": c.record_id,
        "ran": ran,
        "not_run": not_run,
    }  # fmt: skip


def render_claims_report(
    audit: ClaimAudit, *, title: str = "Claim audit", extra: Mapping[str, Any] | None = None
) -> str:
    """The HTML report of ``audit``."""
    try:
        tool = f"medverify {version('medverify')}"
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        tool = "medverify"
    claims = sorted(audit.claims, key=lambda c: (-c.severity.rank, c.claim_id))
    coverage = audit.coverage()
    ran = [c.check for c in coverage if c.ran]
    not_run = [c.check for c in coverage if not c.ran and c.applies]
    return _ENV.get_template("claims_report.html.j2").render(
        title=title,
        tool=tool,
        generated=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        audit=audit.to_dict() | {"files": audit.files},
        coverage=coverage,
        legend={
            "severities": [
                (s.value, SEVERITY_MEANINGS[s]) for s in (Severity.HIGH, Severity.MEDIUM, Severity.LOW, Severity.NONE)
            ],
            "verdicts": [(v.value, VERDICT_MEANINGS[v], audit.policy_actions.get(v.value)) for v in VERDICT_MEANINGS],
            "actions": [(a.value, ACTION_MEANINGS[a]) for a in ACTION_MEANINGS],
        },
        claims=[_claim_view(c, audit.pairs, ran, not_run) for c in claims],
        totals={s.value: sum(1 for c in audit.claims if c.severity is s) for s in Severity},
        extra=dict(extra or {}),
    )


def write_claims_report(audit: ClaimAudit, path: Path, **kwargs: Any) -> Path:
    """Render the report and write it atomically to ``path``."""
    _write_atomic(path, render_claims_report(audit, **kwargs))
    return path


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
