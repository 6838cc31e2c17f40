"""The verification pipeline: file -> :class:`Instance` -> reports -> :class:`FileResult`.

The same code serves the CLI, and later the intake, scans and claim audits, so that a file gets the same answer
wherever it is checked. Exceptions become results here, at the application boundary (STYLE.md rule 11): every
input gives exactly one result, also when it cannot be read.
"""

from __future__ import annotations

import dataclasses
import enum
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provenance.models import SignatureReport
from provenance.signature import verify_dataset
from provenance.trust import TrustPolicy
from provenance.watermark import WatermarkError, WatermarkKey
from provenance.watermark import detect as watermark_detect
from verifier.errors import InputError, is_contained_failure
from verifier.instance import Instance, UnreadableInstanceError, is_dicom_file
from verifier.policy import DEFAULT_POLICY, Action, Policy, Verdict, decide

if TYPE_CHECKING:  # SQLAlchemy is imported only when a record is written; torch only when a detector runs
    from detectors.models import Detector
    from verifier.audit import AuditEntry, Channel

__all__ = [
    "Check",
    "DetectorSetup",
    "FileResult",
    "check_bytes",
    "check_instance",
    "check_path",
    "check_paths",
    "default_workers",
    "iter_input_files",
    "parse_checks",
]


class Check(enum.StrEnum):
    """Checks that ``--checks`` selects."""

    SIGNATURE = "signature"
    #: Opt-in: detection needs the secret watermark keys (the key store's passphrase).
    WATERMARK = "watermark"
    #: Opt-in: the detector networks (synthetic and tamper scores). Loads torch and the model bundle, about 2 s
    #: once per process, then tens of milliseconds per image; signature-only runs stay free of torch.
    DETECTOR = "detector"


#: What runs when ``--checks`` is not given.
DEFAULT_CHECKS = frozenset({Check.SIGNATURE})


def parse_checks(value: str | None) -> frozenset[Check]:
    """Parse a comma-separated ``--checks`` value (default: :data:`DEFAULT_CHECKS`)."""
    if not value:
        return DEFAULT_CHECKS
    out = set()
    for part in value.split(","):
        name = part.strip().lower()
        if not name:
            continue
        try:
            out.add(Check(name))
        except ValueError:
            known = ", ".join(c.value for c in Check)
            raise InputError(f"unknown check {name!r}; available: {known}") from None
    if not out:
        raise InputError("--checks selects no check")
    return frozenset(out)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FileResult:
    """What checking one file found: the reports, and the verdict the site policy gives them.

    ``status`` is the provenance check's own status (the signature status, or UNREADABLE/MALFORMED for input that
    cannot be read); ``verdict`` is the final decision.
    """

    path: str
    status: str
    verdict: Verdict
    sha256: str | None = None
    sop_instance_uid: str | None = None
    modality: str | None = None
    signature: SignatureReport | None = None
    watermark: dict[str, Any] | None = None
    #: The detector's report (``DetectionReport.to_dict()``, plus ``heatmap`` when one was written), or None.
    detection: dict[str, Any] | None = None
    error: str | None = None
    audit_id: int | None = None

    def __bool__(self) -> bool:
        raise TypeError("a FileResult has no truth value; use .verdict, .problem_found or .failed")

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(str(r) for r in self.verdict.reasons)

    @property
    def failed(self) -> bool:
        """The check could not be done (unreadable or malformed input)."""
        return self.error is not None

    @property
    def problem_found(self) -> bool:
        """The policy does not simply accept the file (tampered, synthetic, uncovered content, ...)."""
        return not self.failed and self.verdict.action is not Action.ACCEPT

    def with_audit_id(self, audit_id: int | None) -> FileResult:
        return dataclasses.replace(self, audit_id=audit_id)

    def audit_entry(self, *, channel: Channel, event: str = "verify") -> AuditEntry:
        """The audit record of this result (one per input, also for unreadable input)."""
        from verifier.audit import AuditEntry

        return AuditEntry(
            event=event,
            channel=channel,
            path=self.path,
            sop_instance_uid=self.sop_instance_uid,
            file_sha256=self.sha256,
            signature_report=self.signature.to_dict() if self.signature is not None else None,
            watermark_report=self.watermark,
            detection_report=self.detection,
            model_tag=self.detection.get("model_tag") if self.detection is not None else None,
            policy_version=self.verdict.policy_version,
            verdict=self.verdict.status.value,
            action=self.verdict.action.value,
            details={"reasons": [r.to_dict() for r in self.verdict.reasons], "error": self.error},
        ).with_local_actor()

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "sop_instance_uid": self.sop_instance_uid,
            "verdict": self.verdict.status.value,
            "action": self.verdict.action.value,
            "reasons": list(self.reasons),
            "status": self.status,
            "sha256": self.sha256,
            "modality": self.modality,
            "signature": self.signature.to_dict() if self.signature is not None else None,
            "watermark": self.watermark,
            "synthetic_score": self.detection.get("synthetic_score") if self.detection is not None else None,
            "tamper_score": self.detection.get("tamper_score") if self.detection is not None else None,
            "detector": _detector_summary(self.detection),
            "policy_version": self.verdict.policy_version,
            "error": self.error,
            "audit_id": self.audit_id,
        }


def check_instance(
    instance: Instance,
    *,
    checks: frozenset[Check],
    policy: TrustPolicy,
    site_policy: Policy = DEFAULT_POLICY,
    watermark_keys: Sequence[WatermarkKey] = (),
    detector: DetectorSetup | None = None,
) -> FileResult:
    """Run the selected checks on a parsed instance and decide under the site policy.

    ``detector`` chooses the model bundle and heatmap folder of :attr:`Check.DETECTOR` (default: the shipped
    bundle, no heatmaps).
    """
    signature = None
    watermark = None
    detection = None
    status = "CHECKED"
    if Check.SIGNATURE in checks:
        signature = verify_dataset(instance.dataset, policy)
        status = signature.status.value
    if Check.WATERMARK in checks and watermark_keys:
        watermark = _watermark_report(instance, watermark_keys)
    if Check.DETECTOR in checks:
        detection = (detector or DetectorSetup()).report(instance)
    verdict = decide(policy=site_policy, signature=signature, watermark=watermark, detector=detection)
    return FileResult(
        path=instance.path,
        status=status,
        verdict=verdict,
        sha256=instance.sha256,
        sop_instance_uid=instance.sop_instance_uid,
        modality=instance.modality,
        signature=signature,
        watermark=watermark,
        detection=detection,
    )


def _detector_summary(detection: dict[str, Any] | None) -> dict[str, Any] | None:
    if detection is None:
        return None
    keys = ("model_tag", "threshold", "tamper_threshold", "heatmap", "error")
    return {k: detection[k] for k in keys if k in detection}


#: Detectors loaded in this process, by bundle path ("" for the default): loaded once per process or worker.
_DETECTORS: dict[str, Detector] = {}


@dataclasses.dataclass(frozen=True)
class DetectorSetup:
    """Which detector bundle :attr:`Check.DETECTOR` uses (None: the shipped default) and where heatmaps go."""

    model: Path | None = None
    heatmap_dir: Path | None = None

    def load(self) -> Detector:
        """The detector, loaded once per process, with one torch thread."""
        key = str(self.model or "")
        if key not in _DETECTORS:
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
            import torch

            from detectors.errors import DetectorsError
            from detectors.models import load_bundle

            # One torch thread, in workers and in a single process alike: the detector's batches of small patches
            # ran half as fast with two threads as with one on the 2-core machine (bench_scan, one worker).
            torch.set_num_threads(1)
            try:
                _DETECTORS[key] = load_bundle(self.model)
            except DetectorsError as exc:
                raise InputError(f"detector model: {exc.diagnostics()}") from exc
        return _DETECTORS[key]

    def report(self, instance: Instance) -> dict[str, Any]:
        """The detection report of ``instance``: scores, model tag, thresholds; a heatmap PNG when asked.

        An image the reader cannot decode (or no image at all) gets a report with ``error`` and no scores.
        """
        from detectors.data.reader import read_image
        from detectors.errors import DetectorsError
        from detectors.models import prepare_frames, render_heatmap

        detector = self.load()
        ds = instance.dataset
        try:
            total = int(ds.get("NumberOfFrames", 1) or 1)
        except (TypeError, ValueError):
            total = 1
        limit = detector.config.max_frames
        indices = None if total <= limit else sorted({round(i * (total - 1) / (limit - 1)) for i in range(limit)})
        try:
            image = read_image(ds, frame_indices=indices)
        except DetectorsError as exc:
            return {"model_tag": detector.config.tag, "threshold": detector.config.threshold,
                    "tamper_threshold": detector.config.tamper_threshold, "synthetic_score": None,
                    "tamper_score": None, "error": exc.diagnostics()[:200]}
        report = detector.detect(image)
        out = report.to_dict()
        if self.heatmap_dir is not None:
            frame = prepare_frames(image, detector.config)[report.heatmap_frame]
            target = self.heatmap_dir / f"{Path(instance.path).stem[:60]}-{instance.sha256[:12]}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            tmp.write_bytes(render_heatmap(report, frame))
            os.replace(tmp, target)
            out["heatmap"] = str(target)
        return out


def _watermark_report(instance: Instance, keys: Sequence[WatermarkKey]) -> dict[str, Any]:
    """Detect our mark in the stored pixels (first frame); an image that cannot be decoded says so."""
    import numpy as np

    try:
        pixels = np.asarray(instance.dataset.pixel_array)
    except BaseException as exc:  # decoders raise many types (and Rust ones panic); the report says why
        if not is_contained_failure(exc):
            raise
        return {"present": False, "status": "UNDECODABLE", "error": f"{type(exc).__name__}: {str(exc)[:120]}"}
    if pixels.ndim == 3 and pixels.shape[-1] not in (3, 4):
        pixels = pixels[0]
    if pixels.ndim != 2:
        return {"present": False, "status": "UNSUPPORTED", "error": f"pixel array of shape {pixels.shape}"}
    try:
        return watermark_detect(pixels, keys).to_dict()
    except WatermarkError as exc:  # e.g. float pixels with NaN, 64-bit integers: the report says why
        return {"present": False, "status": "UNSUPPORTED", "error": str(exc)}


def check_path(
    path: Path | str,
    *,
    checks: frozenset[Check],
    policy: TrustPolicy,
    site_policy: Policy = DEFAULT_POLICY,
    watermark_keys: Sequence[WatermarkKey] = (),
    detector: DetectorSetup | None = None,
) -> FileResult:
    """Read and check one file; unreadable input gives an UNREADABLE/MALFORMED result, never an exception."""
    return _check_loaded(
        lambda: Instance.from_path(path),
        str(path),
        checks=checks,
        policy=policy,
        site_policy=site_policy,
        watermark_keys=watermark_keys,
        detector=detector,
    )


def check_bytes(
    data: bytes,
    *,
    path: str,
    checks: frozenset[Check],
    policy: TrustPolicy,
    site_policy: Policy = DEFAULT_POLICY,
    watermark_keys: Sequence[WatermarkKey] = (),
    detector: DetectorSetup | None = None,
) -> FileResult:
    """Check an instance received in memory (an HTTP upload, a C-STORE) exactly as :func:`check_path` checks a file.

    ``path`` names the input in the result and its audit record (e.g. ``http:upload/2``); it is never opened.
    """
    return _check_loaded(
        lambda: Instance.from_bytes(data, path=path),
        path,
        checks=checks,
        policy=policy,
        site_policy=site_policy,
        watermark_keys=watermark_keys,
        detector=detector,
    )


def _check_loaded(
    load: Callable[[], Instance],
    path: str,
    *,
    checks: frozenset[Check],
    policy: TrustPolicy,
    site_policy: Policy,
    watermark_keys: Sequence[WatermarkKey],
    detector: DetectorSetup | None = None,
) -> FileResult:
    """Parse with ``load`` and check; the one boundary where exceptions become results (one per input)."""
    try:
        instance = load()
    except UnreadableInstanceError as exc:
        return FileResult(
            path=str(path),
            status=exc.kind,
            verdict=decide(policy=site_policy, input_error=(exc.kind, str(exc))),
            sha256=exc.sha256,
            error=str(exc),
        )
    except Exception as exc:  # noqa: BLE001 - the boundary: a parser bug still gives one result per input
        message = f"{path}: the parser failed ({type(exc).__name__}: {str(exc)[:200]})"
        return FileResult(
            path=str(path),
            status="MALFORMED",
            verdict=decide(policy=site_policy, input_error=("MALFORMED", message)),
            error=message,
        )
    try:
        return check_instance(
            instance,
            checks=checks,
            policy=policy,
            site_policy=site_policy,
            watermark_keys=watermark_keys,
            detector=detector,
        )
    except BaseException as exc:  # the boundary: one result per input, even on a bug (or a decoder's panic)
        if not is_contained_failure(exc):
            raise
        message = f"{path}: the check failed ({type(exc).__name__}: {str(exc)[:200]})"
        return FileResult(
            path=str(path),
            status="MALFORMED",
            verdict=decide(policy=site_policy, input_error=("MALFORMED", message)),
            sha256=instance.sha256,
            sop_instance_uid=instance.sop_instance_uid,
            error=message,
        )


_WORKER_STATE: (
    tuple[frozenset[Check], TrustPolicy, Policy, Sequence[WatermarkKey], DetectorSetup | None] | None
) = None


def _worker_init() -> None:
    """In a forked worker: one torch thread. When this process had already run torch (a detector check done in
    process before the fork), the child inherits the parent's loaded model but not its OpenMP worker threads, and
    its first parallel region waits for them forever; with one thread torch never enters that pool."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def _check_in_worker(path: Path) -> FileResult:
    if _WORKER_STATE is None:  # pragma: no cover - set before the pool forks
        raise RuntimeError("worker state missing")
    checks, policy, site_policy, keys, detector = _WORKER_STATE
    return check_path(
        path, checks=checks, policy=policy, site_policy=site_policy, watermark_keys=keys, detector=detector
    )


def default_workers(n_files: int) -> int:
    """Worker processes for ``n_files``: one for small batches, else one per core (at most 8)."""
    if n_files < 64:
        return 1
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def check_paths(
    paths: Sequence[Path],
    *,
    checks: frozenset[Check],
    policy: TrustPolicy,
    site_policy: Policy = DEFAULT_POLICY,
    workers: int = 1,
    watermark_keys: Sequence[WatermarkKey] = (),
    detector: DetectorSetup | None = None,
) -> Iterator[FileResult]:
    """Check ``paths`` and yield one result per path, in order, using ``workers`` processes.

    Workers are forked (the trust policy and checks are inherited, not pickled); results come back in input order
    so that output and audit records follow the command line. Each worker loads the detector model once, on its
    first file, with one torch thread (torch is never started before the fork).
    """
    global _WORKER_STATE
    if workers <= 1 or len(paths) < 2 or "fork" not in multiprocessing.get_all_start_methods():
        for path in paths:
            yield check_path(
                path,
                checks=checks,
                policy=policy,
                site_policy=site_policy,
                watermark_keys=watermark_keys,
                detector=detector,
            )
        return
    _WORKER_STATE = (checks, policy, site_policy, tuple(watermark_keys), detector)
    try:
        with multiprocessing.get_context("fork").Pool(workers, initializer=_worker_init) as pool:
            yield from pool.imap(_check_in_worker, paths, chunksize=8)
    finally:
        _WORKER_STATE = None


def iter_input_files(paths: Iterable[Path | str], *, follow_symlinks: bool = False) -> Iterator[Path]:
    """Files named on the command line, and DICOM files (by content) found under directories.

    A path named explicitly is always yielded (a missing or non-DICOM file gets its own UNREADABLE result);
    files in directories are yielded only when they start like DICOM. Symlinks inside directories are not followed
    unless asked.
    """
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            for sub in sorted(_walk(p, follow_symlinks)):
                if is_dicom_file(sub):
                    yield sub
        else:
            # Named explicitly: it gets its own result, UNREADABLE if it does not exist (one line per input).
            yield p


def _walk(root: Path, follow_symlinks: bool) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root, followlinks=follow_symlinks):
        dirnames.sort()
        for name in filenames:
            full = Path(dirpath) / name
            if not follow_symlinks and full.is_symlink():
                continue
            yield full
