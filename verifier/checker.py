"""Where a file is checked: one frozen :class:`Checker`, built once, then ``check(source)`` per file.

Like sigstore's ``Verifier``, a checker holds everything a check depends on (the checks, the trust policy, the
site policy, the watermark keys and the detector) and nothing else. The CLI, the intake channels, scans (local and
Dask), claim audits and the API all hold one, so that a file gets the same answer wherever it arrives::

    checker = setup.load_checker(settings, "signature,watermark")
    result = checker.check(Path("image.dcm"))       # or checker.check(data, name="api:10.0.0.5/part-1")
    result.verdict.status, result.verdict.action
    results = checker.check_file(Path("report.pdf"))  # DICOM, or an export: one result per image

:meth:`check` reads DICOM (what the intake channels receive); :meth:`check_file` reads what a user names on a
command line or keeps in an archive or a claim: DICOM, and PNG, JPEG and TIFF exports and the images inside PDF
files (:mod:`verifier.exports`), one result per image.

:meth:`Checker.check` is the one place where a file or an exception becomes a result (ARCHITECTURE.md,
"Boundaries"): every input gives exactly one :class:`~verifier.result.FileResult`, also when it cannot be read
(UNREADABLE, MALFORMED), and also when a check fails on a bug or a decoder's panic.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import multiprocessing
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provenance.signature import verify_dataset
from provenance.trust import TrustPolicy
from provenance.watermark import WatermarkError, WatermarkKey
from provenance.watermark import detect as watermark_detect
from verifier.detection import DetectorSetup
from verifier.errors import InputError, is_contained_failure
from verifier.exports import ExportImage, ExportPart, export_kind, split_export
from verifier.instance import MAX_FILE_BYTES, Instance, UnreadableInstanceError
from verifier.policy import DEFAULT_POLICY, Policy, decide
from verifier.reports import NotChecked, WatermarkNotChecked
from verifier.result import ExportSource, FileResult

if TYPE_CHECKING:
    import numpy.typing as npt

    from verifier.reports import WatermarkOutcome

__all__ = [
    "DEFAULT_CHECKS",
    "INTAKE_DEFAULT_CHECKS",
    "Check",
    "Checker",
    "Examined",
    "default_workers",
    "parse_checks",
]


class Check(enum.StrEnum):
    """Checks that ``--checks`` selects."""

    SIGNATURE = "signature"
    #: Needs the secret watermark keys (the key store's passphrase, and a key: ``medverify generate`` makes one).
    WATERMARK = "watermark"
    #: The detector networks (synthetic and tamper scores). Loads torch and the model bundle, about 2 s once per
    #: process, then tens of milliseconds per image; ``--checks signature`` runs stay free of torch.
    DETECTOR = "detector"


#: What ``verify``, ``scan`` and ``claims audit`` run when ``--checks`` is not given: every check. One that cannot
#: run (no watermark key yet, no passphrase) is reported as not run, with why (:attr:`Checker.not_run`).
DEFAULT_CHECKS = frozenset(Check)

#: What the intake channels (DICOM gateway, Orthanc plugin, HTTP API) run when no checks are configured. The
#: detector is left out until the shipped bundle meets its false-positive targets (it meets the held-out rate but
#: still flags some real images stored lossy; the model card in ``detectors/checkpoints/detector/MODEL_CARD.md``
#: gives the measured rates): at intake, what it flags is quarantined. Then this becomes :data:`DEFAULT_CHECKS`.
INTAKE_DEFAULT_CHECKS = frozenset({Check.SIGNATURE, Check.WATERMARK})


def parse_checks(value: str | None, default: frozenset[Check] = DEFAULT_CHECKS) -> frozenset[Check]:
    """Parse a comma-separated ``--checks`` value (not given: ``default``)."""
    if not value:
        return default
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


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class Examined:
    """A result and the instance it was read from (None when the input could not be parsed), or for an export
    the image (None when it could not be decoded)."""

    result: FileResult
    instance: Instance | None
    image: ExportImage | None = None


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class Checker:
    """The checks, the trust policy, the site policy, the watermark keys and the detector: what a check needs.

    ``checks`` are the checks that run; ``not_run`` the ones asked for that cannot run here, each with why (no
    watermark key yet, no passphrase, no detector model): every result reports them, and nothing stops.
    ``detector`` chooses the model bundle and heatmap folder of :attr:`Check.DETECTOR` (None: the shipped bundle,
    no heatmaps); ``max_bytes`` is the largest input read. Build one with :func:`verifier.setup.load_checker`, or
    directly where no settings are involved (tests, benchmarks).
    """

    trust: TrustPolicy
    checks: frozenset[Check] = frozenset({Check.SIGNATURE})
    not_run: Mapping[Check, str] = dataclasses.field(default_factory=dict)
    site_policy: Policy = DEFAULT_POLICY
    watermark_keys: tuple[WatermarkKey, ...] = ()
    detector: DetectorSetup | None = None
    max_bytes: int = MAX_FILE_BYTES

    def __post_init__(self) -> None:
        if not self.checks and not self.not_run:
            raise ValueError("a checker needs at least one check")
        if set(self.checks) & set(self.not_run):
            raise ValueError("a check cannot both run and not run")
        checks, not_run = frozenset(self.checks), {Check(k): str(v) for k, v in self.not_run.items()}
        if Check.WATERMARK in checks and not self.watermark_keys:
            checks, not_run[Check.WATERMARK] = checks - {Check.WATERMARK}, "no watermark key given"
        object.__setattr__(self, "checks", checks)
        object.__setattr__(self, "not_run", dict(sorted(not_run.items())))
        object.__setattr__(self, "watermark_keys", tuple(self.watermark_keys))

    def describe(self) -> str:
        """The checks that run, and those that do not with why: for start-up lines and logs."""
        text = ", ".join(sorted(c.value for c in self.checks)) or "none"
        for check, why in self.not_run.items():
            text += f"; {check.value} not run: {why}"
        return text

    def without(self, check: Check, why: str) -> Checker:
        """This checker with ``check`` not run, for ``why`` (e.g. the watermark keys must not travel)."""
        if check not in self.checks:
            return self
        keys = () if check is Check.WATERMARK else self.watermark_keys
        return dataclasses.replace(
            self, checks=self.checks - {check}, not_run={**self.not_run, check: why}, watermark_keys=keys
        )

    def check(self, source: Path | str | bytes, *, name: str | None = None) -> FileResult:
        """Read ``source`` (a path, or the bytes of an upload) and check it; never raises for bad input.

        ``name`` labels bytes in the result and its audit record (e.g. ``api:10.0.0.5:4711/part-1``; default
        ``<bytes>``); they are never written anywhere. A path is its own label.
        """
        return self.examine(source, name=name).result

    def examine(self, source: Path | str | bytes, *, name: str | None = None) -> Examined:
        """:meth:`check`, and the parsed instance for callers that read more from the file (intake channels store
        it, claim audits read its headers and pixels). The one boundary where exceptions become results."""
        data = source if isinstance(source, bytes) else None
        label = str(source) if data is None else name or "<bytes>"
        instance: Instance | None = None
        try:
            if data is not None:
                instance = Instance.from_bytes(data, path=label, max_bytes=self.max_bytes)
            else:
                instance = Instance.from_path(Path(str(source)), max_bytes=self.max_bytes)
            return Examined(result=self.check_instance(instance), instance=instance)
        except UnreadableInstanceError as exc:
            kind, message, digest, uid = exc.kind, str(exc), exc.sha256, None
        except BaseException as exc:  # the boundary: one result per input, even on a bug (or a decoder's panic)
            if not is_contained_failure(exc):
                raise
            stage = "parser" if instance is None else "check"
            kind, message = "MALFORMED", f"{label}: the {stage} failed ({type(exc).__name__}: {str(exc)[:200]})"
            digest = instance.sha256 if instance is not None else None
            uid = instance.sop_instance_uid if instance is not None else None
        if digest is None and data is not None:
            digest = hashlib.sha256(data).hexdigest()
        return Examined(result=self._failure(label, kind, message, digest, uid=uid), instance=instance)

    def _failure(
        self, label: str, kind: str, message: str, digest: str | None, *, uid: str | None = None,
        source: ExportSource | None = None,
    ) -> FileResult:
        return FileResult(path=label, status=kind, verdict=decide(policy=self.site_policy, input_error=(kind, message)),
                          sha256=digest, sop_instance_uid=uid, error=message, source=source)  # fmt: skip

    def check_file(self, path: Path | str) -> list[FileResult]:
        """:meth:`examine_file`'s results."""
        return [e.result for e in self.examine_file(path)]

    def examine_file(self, path: Path | str) -> list[Examined]:
        """Check the file at ``path``: a DICOM file (or anything that is no export) as :meth:`examine` does; a PNG,
        JPEG or TIFF export as one image; a PDF as each image embedded in it, in page order. One result per image,
        one for a file that cannot be read; never raises for bad input."""
        p = Path(str(path))
        try:
            with open(p, "rb") as fh:
                head = fh.read(1024)
        except OSError:
            head = b""
        kind = None if head[128:132] == b"DICM" else export_kind(head)
        if kind is None:
            return [self.examine(p)]
        label = str(p)
        try:
            size = p.stat().st_size
            if size > self.max_bytes:
                return [Examined(result=self._failure(label, "MALFORMED", f"{p}: {size} bytes exceeds the limit of "
                                                      f"{self.max_bytes} bytes", None), instance=None)]  # fmt: skip
            data = p.read_bytes()
        except OSError as exc:
            return [Examined(result=self._failure(label, "UNREADABLE", f"{p}: cannot be read ({exc.strerror})", None),
                             instance=None)]  # fmt: skip
        try:
            parts = split_export(data, kind, path=label)
        except UnreadableInstanceError as exc:
            source = ExportSource(container=kind, format=None, file_sha256=hashlib.sha256(data).hexdigest())
            return [Examined(result=self._failure(label, exc.kind, str(exc), exc.sha256, source=source), instance=None)]
        except BaseException as exc:  # the boundary: a parser's bug gives a result too
            if not is_contained_failure(exc):
                raise
            message = f"{label}: the parser failed ({type(exc).__name__}: {str(exc)[:200]})"
            return [Examined(result=self._failure(label, "MALFORMED", message, hashlib.sha256(data).hexdigest()),
                             instance=None)]  # fmt: skip
        if not parts:
            return [Examined(result=self._no_image(label, hashlib.sha256(data).hexdigest(), kind), instance=None)]
        return [self._examine_part(part) for part in parts]

    def _examine_part(self, part: ExportPart) -> Examined:
        source = ExportSource(container=part.container, format=None, file_sha256=part.file_sha256, page=part.page,
                              index=part.index, count=part.count, name=part.name)  # fmt: skip
        try:
            image = ExportImage.from_part(part, max_bytes=None)
            return Examined(result=self.check_export(image), instance=None, image=image)
        except UnreadableInstanceError as exc:
            kind, message, digest = exc.kind, str(exc), exc.sha256
        except BaseException as exc:  # the boundary: one result per image, even on a decoder's bug
            if not is_contained_failure(exc):
                raise
            kind, message = "MALFORMED", f"{part.label}: the check failed ({type(exc).__name__}: {str(exc)[:200]})"
            digest = hashlib.sha256(part.data).hexdigest()
        return Examined(result=self._failure(part.path, kind, message, digest, source=source), instance=None)

    def _no_image(self, label: str, digest: str, kind: str) -> FileResult:
        """A PDF without images: nothing to check, and said so."""
        why = {c.value: "the PDF holds no image" for c in self.checks}
        not_run = {c.value: w for c, w in self.not_run.items()}
        verdict = decide(policy=self.site_policy, not_run=not_run, not_applicable=why)
        return FileResult(path=label, status="NO_IMAGE", verdict=verdict, sha256=digest, not_run=not_run,
                          not_applicable=why, source=ExportSource(container=kind, format=None, file_sha256=digest))

    def check_export(self, image: ExportImage) -> FileResult:
        """Run the checks on one exported image and decide under the site policy: the watermark in its stored
        pixels, the detector on its frame, its C2PA Content Credentials with the signature check (a DICOM signature
        does not apply). Exceptions propagate: use :meth:`check_file` unless the caller is a boundary of its own."""
        watermark = detection = heatmap = None
        credentials = None
        not_applicable: dict[str, str] = {}
        not_run = {c.value: why for c, why in self.not_run.items()}
        part = image.part
        what = f"a {image.format.upper()} image" + (" embedded in a PDF" if part.container == "pdf" else " export")
        if Check.SIGNATURE in self.checks:
            not_applicable["signature"] = (f"{what} carries no DICOM signature; its C2PA Content Credentials were "
                                           "read instead" + ("" if image.credentials is not None else " (it has none)"))
            credentials = image.credentials
            if image.credentials_error is not None:
                not_run["credentials"] = image.credentials_error
        if Check.WATERMARK in self.checks:
            watermark = _watermark_pixels(image.pixels, self.watermark_keys)
        if Check.DETECTOR in self.checks:
            stem = Path(part.path).stem + (f"-p{part.page}-{part.index}" if part.container == "pdf" else "")
            detection, heatmap = (self.detector or DetectorSetup()).report_image(image.image, stem=stem,
                                                                                  sha256=image.sha256)
        verdict = decide(policy=self.site_policy, watermark=watermark, detector=detection, not_run=not_run,
                         credentials=credentials, not_applicable=not_applicable)  # fmt: skip
        source = ExportSource(container=part.container, format=image.format, file_sha256=part.file_sha256,
                              page=part.page, index=part.index, count=part.count, name=part.name)  # fmt: skip
        status = f"C2PA_{credentials.status.value}" if credentials is not None else "NOT_APPLICABLE"
        return FileResult(path=part.path, status=status, verdict=verdict, sha256=image.sha256, modality=None,
                          watermark=watermark, detection=detection, heatmap=heatmap, not_run=not_run,
                          not_applicable=not_applicable, source=source, credentials=credentials)  # fmt: skip

    def check_instance(self, instance: Instance) -> FileResult:
        """Run the checks on a parsed instance and decide under the site policy. Exceptions propagate: use
        :meth:`check` unless the caller is a boundary of its own."""
        signature = None
        watermark = None
        detection = None
        heatmap = None
        status = "CHECKED"
        if Check.SIGNATURE in self.checks:
            signature = verify_dataset(instance.dataset, self.trust)
            status = signature.status.value
        if Check.WATERMARK in self.checks:
            watermark = _watermark(instance, self.watermark_keys)
        if Check.DETECTOR in self.checks:
            detection, heatmap = (self.detector or DetectorSetup()).report(instance)
        not_run = {c.value: why for c, why in self.not_run.items()}
        verdict = decide(
            policy=self.site_policy,
            signature=signature,
            watermark=watermark,
            detector=detection,
            synthetic_data=instance.synthetic_data,
            not_run=not_run,
        )
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
            heatmap=heatmap,
            not_run=not_run,
        )

    def check_all(self, paths: Sequence[Path], *, workers: int = 1) -> Iterator[FileResult]:
        """Check ``paths`` and yield their results (:meth:`check_file`: one per DICOM file, one per image of an
        export), in order, using ``workers`` processes.

        Workers are forked (this checker is inherited, not pickled); results come back in input order so that
        output and audit records follow the command line. Each worker loads the detector model once, on its first
        file, with one torch thread (torch is never started before the fork).
        """
        global _WORKER_CHECKER
        if workers <= 1 or len(paths) < 2 or "fork" not in multiprocessing.get_all_start_methods():
            for path in paths:
                yield from self.check_file(path)
            return
        _WORKER_CHECKER = self
        try:
            with multiprocessing.get_context("fork").Pool(workers, initializer=_worker_init) as pool:
                for results in pool.imap(_check_in_worker, paths, chunksize=8):
                    yield from results
        finally:
            _WORKER_CHECKER = None


def _watermark(instance: Instance, keys: Sequence[WatermarkKey]) -> WatermarkOutcome:
    """Look for our mark in the stored pixels (first frame); pixels that cannot be examined say why."""
    import numpy as np

    try:
        pixels = np.asarray(instance.dataset.pixel_array)
    except BaseException as exc:  # decoders raise many types (and Rust ones panic); the report says why
        if not is_contained_failure(exc):
            raise
        return WatermarkNotChecked(reason=NotChecked.UNDECODABLE, error=f"{type(exc).__name__}: {str(exc)[:120]}")
    if pixels.ndim == 3 and pixels.shape[-1] not in (3, 4):
        pixels = pixels[0]
    if pixels.ndim != 2:
        return WatermarkNotChecked(reason=NotChecked.UNSUPPORTED, error=f"pixel array of shape {pixels.shape}")
    return _watermark_pixels(pixels, keys)


def _watermark_pixels(pixels: npt.NDArray[Any], keys: Sequence[WatermarkKey]) -> WatermarkOutcome:
    """Look for our mark in one grey frame of stored values."""
    try:
        return watermark_detect(pixels, keys)
    except WatermarkError as exc:  # e.g. float pixels with NaN, 64-bit integers: the report says why
        return WatermarkNotChecked(reason=NotChecked.UNSUPPORTED, error=str(exc))


_WORKER_CHECKER: Checker | None = None


def _worker_init() -> None:
    """In a forked worker: one torch thread. When this process had already run torch (a detector check done in
    process before the fork), the child inherits the parent's loaded model but not its OpenMP worker threads, and
    its first parallel region waits for them forever; with one thread torch never enters that pool."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def _check_in_worker(path: Path) -> list[FileResult]:
    if _WORKER_CHECKER is None:  # pragma: no cover - set before the pool forks
        raise RuntimeError("worker state missing")
    return _WORKER_CHECKER.check_file(path)


def default_workers(n_files: int) -> int:
    """Worker processes for ``n_files``: one for small batches, else one per core (at most 8)."""
    if n_files < 64:
        return 1
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
