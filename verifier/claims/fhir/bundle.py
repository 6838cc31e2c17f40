"""Claims read from HL7 FHIR bundles (R4, parsed with the ``fhir.resources`` R4B models: R4B is R4's technical
correction and leaves the resources read here as R4 has them).

A bundle holds one Claim or several, with the resources they rest on: the Patient (``Claim.patient``), the
ImagingStudy resources (``Claim.supportingInfo[].valueReference``, else every ImagingStudy of the claim's patient
in the bundle), the Procedure resources (``Claim.procedure[]``, ``ImagingStudy.procedureReference``, else those of
the patient), the DiagnosticReport resources on those studies (else those of the patient), the diagnoses
(``Claim.diagnosis[]``: a code, or a Condition; and the reports' ``conclusionCode``), the service dates
(``Claim.item[].servicedDate`` / ``servicedPeriod``) and the image files
(``Claim.supportingInfo[].valueAttachment.url``, relative to the audited folder; without any, the folder's
subfolder named by the Claim's id).

Bad input stops before anything is checked or recorded, with an :class:`~verifier.errors.InputError` that says
which file and which element: a bundle over :data:`MAX_BUNDLE_BYTES` (refused by its size, unread), one that is
not JSON or not valid FHIR R4, a reference that resolves to nothing in the bundle, an attachment outside the
folder or missing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from verifier.claims.fhir.record import (
    Code,
    FhirClaim,
    FhirPatient,
    FhirProcedure,
    FhirReport,
    FhirSeries,
    FhirStudy,
    When,
)
from verifier.claims.models import ClaimInfo
from verifier.errors import InputError
from verifier.instance import iter_input_files

__all__ = [
    "MAX_BUNDLE_BYTES",
    "bundle_files",
    "check_size",
    "claim_infos",
    "claim_infos_from_uploads",
    "load_fhir_claims",
    "read_bundle",
]

#: A bundle larger than this is refused by its size, before it is read (a claim bundle is a few kB to a few MB;
#: pydantic holds a parsed bundle at many times its size).
MAX_BUNDLE_BYTES = 32 * 1024**2
_DICOM_UID_SYSTEM = "urn:dicom:uid"
_SEX = {"male": "M", "female": "F", "other": "O"}


def bundle_files(source: Path) -> list[Path]:
    """``source`` itself, or the ``*.json`` files of the folder ``source`` (sorted)."""
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() == ".json")
        if not files:
            raise InputError(f"{source} holds no FHIR bundle (*.json)")
        return files
    if not source.is_file():
        raise InputError(f"FHIR bundle {source} does not exist")
    return [source]


def load_fhir_claims(root: Path, source: Path, *, max_bytes: int = MAX_BUNDLE_BYTES) -> list[ClaimInfo]:
    """The claims of the bundle (or folder of bundles) ``source``, their images under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root} is not a directory")
    claims: list[FhirClaim] = []
    for path in bundle_files(Path(source)):
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise InputError(f"cannot read FHIR bundle {path}: {exc.strerror}") from exc
        check_size(path.name, size, max_bytes)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read FHIR bundle {path}: {exc.strerror}") from exc
        claims.extend(read_bundle(data, path.name, max_bytes=max_bytes))
    return claim_infos(claims, root)


def check_size(name: str, size: int, max_bytes: int) -> None:
    """Refuse a bundle of ``size`` bytes over ``max_bytes`` (by its size, before reading it)."""
    if size > max_bytes:
        raise InputError(f"FHIR bundle {name} is {size} bytes, over the limit of {max_bytes} bytes: refused "
                         "unread (send one bundle a claim)")  # fmt: skip


def claim_infos(claims: Sequence[FhirClaim], root: Path) -> list[ClaimInfo]:
    """One :class:`ClaimInfo` a FHIR claim, its files the claim's attachments under ``root`` (or its subfolder)."""
    seen: dict[str, str] = {}
    base = root.resolve()
    out = []
    for c in claims:
        claim_id = c.ref.split("/", 1)[1]
        if claim_id in seen:
            raise InputError(f"{c.bundle}: {c.ref} is also in {seen[claim_id]}: claim ids must be unique")
        seen[claim_id] = c.bundle
        if c.attachments:
            files = []
            for i, url in enumerate(c.attachments):
                path = (root / url).resolve()
                where = f"{c.bundle}: {c.ref}.supportingInfo attachment {url!r}"
                if url.startswith("/") or "://" in url or not path.is_relative_to(base):
                    raise InputError(f"{where}: an attachment must be a path inside {root}")
                if not path.is_file():
                    raise InputError(f"{where} does not resolve: no such file under {root} (attachment {i + 1})")
                files.append(root / url)
            paths = tuple(files)
        else:
            sub = root / claim_id
            paths = tuple(iter_input_files([sub], exports=True)) if sub.is_dir() else ()
        out.append(ClaimInfo(claim_id=claim_id, files=paths, fhir=c))
    return out


def claim_infos_from_uploads(claims: Sequence[FhirClaim], uploads: Sequence[tuple[str, Path]]) -> list[ClaimInfo]:
    """One :class:`ClaimInfo` a FHIR claim, its files the ``uploads`` (name as sent, where it was written) that its
    attachments name: by the whole URL, else by its last path segment when one upload alone has that name. An
    attachment that no upload matches, and an upload that no claim names, are errors (nothing is checked unasked,
    and nothing sent goes unchecked)."""
    by_name: dict[str, list[int]] = {}
    for i, (name, _path) in enumerate(uploads):
        by_name.setdefault(name, []).append(i)
        base = name.replace("\\", "/").rsplit("/", 1)[-1]
        if base != name:
            by_name.setdefault(base, []).append(i)
    used: set[int] = set()
    out = []
    for c in claims:
        claim_id = c.ref.split("/", 1)[1]
        files = []
        for url in c.attachments:
            found = by_name.get(url) or by_name.get(url.rsplit("/", 1)[-1]) or []
            if len(found) != 1:
                why = "no file was sent under that name" if not found else "several files were sent under that name"
                raise InputError(f"{c.bundle}: {c.ref}.supportingInfo attachment {url!r} does not resolve: {why}")
            used.add(found[0])
            files.append(uploads[found[0]][1])
        out.append(ClaimInfo(claim_id=claim_id, files=tuple(files), fhir=c))
    if len({o.claim_id for o in out}) != len(out):
        raise InputError("claim ids must be unique within one audit")
    unused = [uploads[i][0] for i in range(len(uploads)) if i not in used]
    if unused:
        raise InputError(f"{len(unused)} file(s) are attached to no claim of the bundle: {', '.join(unused[:5])}")
    return out


# -- parsing --------------------------------------------------------------------------------------------------------


def read_bundle(
    data: bytes, name: str, *, max_bytes: int = MAX_BUNDLE_BYTES, require_claim: bool = True
) -> list[FhirClaim]:
    """The claims of one bundle (``name`` is what errors call it); one without a Claim is an error unless
    ``require_claim`` is false (the HTTP API answers it with an empty audit)."""
    check_size(name, len(data), max_bytes)
    try:
        obj = json.loads(data.decode("utf-8-sig"))  # FHIR JSON is UTF-8 (json.loads would guess UTF-16 too)
    except UnicodeDecodeError:
        raise InputError(f"FHIR bundle {name} is not UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"FHIR bundle {name} is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(obj, dict) or obj.get("resourceType") != "Bundle":
        kind = obj.get("resourceType") if isinstance(obj, dict) else type(obj).__name__
        raise InputError(f"{name} is not a FHIR Bundle (resourceType {kind!r})")
    bundle = _validate(obj, name)
    return _Reader(bundle, name).claims(require_claim)


def _validate(obj: dict[str, Any], name: str) -> Any:
    from fhir.resources.R4B.bundle import Bundle
    from pydantic import ValidationError

    try:
        return Bundle.model_validate(obj)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in e['loc'] if p != 'root') or '(bundle)'}: {e['msg']}"
                    for e in exc.errors()[:3]]  # fmt: skip
        more = f" (and {exc.error_count() - 3} more)" if exc.error_count() > 3 else ""
        raise InputError(f"FHIR bundle {name} is not valid FHIR R4: {'; '.join(problems)}{more}") from None
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        # fhir.resources raises KeyError for a resourceType it does not know
        raise InputError(f"FHIR bundle {name} is not valid FHIR R4: {type(exc).__name__}: {str(exc)[:200]}") from None


def _when(date_time: Any, period: Any, element: str) -> When | None:
    """A FHIR ``[x]`` date choice (``...DateTime`` or ``...Period``) as a :class:`When` naming the element it came from
    (``element`` is its name without the type suffix); None when neither gives a day."""
    if (day := _day(date_time)) is not None:
        return When(start=day, element=f"{element}DateTime")
    if period is not None and (start := _day(period.start)) is not None:
        return When(start=start, end=_day(period.end), element=f"{element}Period")
    return None


def _day(value: Any) -> dt.date | None:
    """A FHIR date / dateTime as a date; a partial date (``1970``, ``1970-02``) says no day."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    text = str(value or "")
    try:
        return dt.date.fromisoformat(text[:10]) if len(text) >= 10 else None
    except ValueError:
        return None


def _code(coding: Any, element: str) -> Code | None:
    if coding is None or not coding.code:
        return None
    return Code(system=coding.system, code=str(coding.code), display=coding.display, element=element)


def _codes(concept: Any, element: str) -> list[Code]:
    if concept is None:
        return []
    return [c for coding in concept.coding or () if (c := _code(coding, element)) is not None]


class _Reader:
    """Resolves the references of one parsed bundle and builds its :class:`FhirClaim` objects."""

    def __init__(self, bundle: Any, name: str) -> None:
        self.name = name
        self.by_ref: dict[str, Any] = {}
        self.resources: list[Any] = []
        for i, entry in enumerate(bundle.entry or ()):
            resource = entry.resource
            if resource is None:
                continue
            kind = resource.get_resource_type()
            self.resources.append(resource)
            if resource.id:
                self.by_ref[f"{kind}/{resource.id}"] = resource
            if entry.fullUrl:
                self.by_ref[str(entry.fullUrl)] = resource
            if not resource.id and kind == "Claim":
                raise InputError(f"FHIR bundle {name}: entry[{i}] is a Claim without an id")

    def ref(self, resource: Any) -> str:
        return f"{resource.get_resource_type()}/{resource.id}"

    def resolve(self, reference: Any, element: str, kind: str | None = None) -> Any:
        """The resource ``reference`` points to; an InputError when it points to nothing in the bundle."""
        target = getattr(reference, "reference", None)
        if not target:
            return None
        text = str(target)
        found = self.by_ref.get(text)
        if found is None and "/" in text:  # an absolute URL ending in Type/id
            found = self.by_ref.get("/".join(text.rstrip("/").split("/")[-2:]))
        if found is None:
            raise InputError(f"FHIR bundle {self.name}: {element} refers to {text!r}, which is not in the bundle")
        if kind is not None and found.get_resource_type() != kind:
            raise InputError(f"FHIR bundle {self.name}: {element} refers to a {found.get_resource_type()}, "
                             f"not a {kind}")  # fmt: skip
        return found

    def of_kind(self, kind: str) -> list[Any]:
        return [r for r in self.resources if r.get_resource_type() == kind]

    def claims(self, require_claim: bool = True) -> list[FhirClaim]:
        claims = [self.claim(r) for r in self.of_kind("Claim")]
        if not claims and require_claim:
            raise InputError(f"FHIR bundle {self.name} holds no Claim")
        return claims

    def claim(self, c: Any) -> FhirClaim:
        ref = self.ref(c)
        patient_resource = self.resolve(c.patient, f"{ref}.patient", "Patient")
        patient = self.patient(patient_resource) if patient_resource is not None else None
        studies: list[Any] = []
        attachments = []
        for i, info in enumerate(c.supportingInfo or ()):
            if info.valueReference is not None:
                target = self.resolve(info.valueReference, f"{ref}.supportingInfo[{i}].valueReference")
                if target is not None and target.get_resource_type() == "ImagingStudy":
                    studies.append(target)
            if info.valueAttachment is not None and info.valueAttachment.url:
                attachments.append(str(info.valueAttachment.url))
        if not studies:
            studies = [s for s in self.of_kind("ImagingStudy") if self._of_patient(s.subject, patient_resource)]
        procedures: list[Any] = []
        for i, p in enumerate(c.procedure or ()):
            if p.procedureReference is not None:
                procedures.append(self.resolve(p.procedureReference, f"{ref}.procedure[{i}].procedureReference",
                                               "Procedure"))  # fmt: skip
        study_objs = [self.study(s) for s in studies]
        for i, (s, obj) in enumerate(zip(studies, study_objs, strict=True)):
            if s.procedureReference is not None:
                found = self.resolve(s.procedureReference, f"{obj.ref}.procedureReference", "Procedure")
                study_objs[i] = dataclasses.replace(obj, procedures=(self.ref(found),))
                if all(found is not p for p in procedures):
                    procedures.append(found)
        if not procedures:
            procedures = [p for p in self.of_kind("Procedure") if self._of_patient(p.subject, patient_resource)]
        diagnoses: list[Code] = []
        for i, d in enumerate(c.diagnosis or ()):
            element = f"{ref}.diagnosis[{i}]"
            if d.diagnosisCodeableConcept is not None:
                diagnoses += _codes(d.diagnosisCodeableConcept, f"{element}.diagnosisCodeableConcept")
            elif d.diagnosisReference is not None:
                condition = self.resolve(d.diagnosisReference, f"{element}.diagnosisReference", "Condition")
                diagnoses += _codes(condition.code, f"{self.ref(condition)}.code")
        service: list[When] = []
        for i, item in enumerate(c.item or ()):
            if (day := _day(item.servicedDate)) is not None:
                service.append(When(start=day, element=f"{ref}.item[{i}].servicedDate"))
            elif item.servicedPeriod is not None and (start := _day(item.servicedPeriod.start)) is not None:
                service.append(When(start=start, end=_day(item.servicedPeriod.end),
                                    element=f"{ref}.item[{i}].servicedPeriod"))  # fmt: skip
        reports = [self.report(r) for r in self.of_kind("DiagnosticReport")]
        study_refs = {s.ref for s in study_objs}
        reports = [
            r
            for r in reports
            if set(r.studies) & study_refs or (not r.studies and r.ref in self._patient_reports(patient_resource))
        ]
        return FhirClaim(ref=ref, bundle=self.name, created=_day(c.created), patient=patient,
                         studies=tuple(study_objs), procedures=tuple(self.procedure(p) for p in procedures),
                         service_dates=tuple(service), diagnoses=tuple(diagnoses),
                         attachments=tuple(attachments), reports=tuple(reports))  # fmt: skip

    def _patient_reports(self, patient: Any) -> set[str]:
        return {self.ref(r) for r in self.of_kind("DiagnosticReport") if self._of_patient(r.subject, patient)}

    def report(self, r: Any) -> FhirReport:
        ref = self.ref(r)
        effective = _when(r.effectiveDateTime, r.effectivePeriod, f"{ref}.effective")
        studies = []
        for i, study in enumerate(r.imagingStudy or ()):
            target = self.resolve(study, f"{ref}.imagingStudy[{i}]", "ImagingStudy")
            if target is not None:
                studies.append(self.ref(target))
        conclusions: list[Code] = []
        for i, concept in enumerate(r.conclusionCode or ()):
            conclusions += _codes(concept, f"{ref}.conclusionCode[{i}]")
        return FhirReport(ref=ref, effective=effective, studies=tuple(studies), conclusions=tuple(conclusions))

    def _of_patient(self, subject: Any, patient: Any) -> bool:
        if patient is None or subject is None or not getattr(subject, "reference", None):
            return patient is None
        try:
            return self.resolve(subject, "subject") is patient
        except InputError:
            return False

    def patient(self, p: Any) -> FhirPatient:
        ref = self.ref(p)
        names = list(p.name or ())
        official = next((n for n in names if n.use == "official"), names[0] if names else None)
        gender = str(p.gender) if p.gender else None
        return FhirPatient(ref=ref, family=official.family if official else None,
                           given=tuple(official.given or ()) if official else (), birth_date=_day(p.birthDate),
                           sex=_SEX.get(gender or ""), gender=gender)  # fmt: skip

    def study(self, s: Any) -> FhirStudy:
        ref = self.ref(s)
        uid, uid_element = None, ""
        for i, ident in enumerate(s.identifier or ()):
            if ident.system == _DICOM_UID_SYSTEM and ident.value:
                uid, uid_element = str(ident.value).removeprefix("urn:oid:"), f"{ref}.identifier[{i}]"
                break
        series = []
        for i, se in enumerate(s.series or ()):
            el = f"{ref}.series[{i}]"
            series.append(FhirSeries(element=el, uid=se.uid, modality=_code(se.modality, f"{el}.modality"),
                                     body_site=_code(se.bodySite, f"{el}.bodySite"),
                                     laterality=_code(se.laterality, f"{el}.laterality"),
                                     instance_uids=tuple(str(x.uid) for x in se.instance or () if x.uid)))  # fmt: skip
        started = _day(s.started)
        return FhirStudy(ref=ref, uid=uid, uid_element=uid_element,
                         started=When(start=started, element=f"{ref}.started") if started else None,
                         modalities=tuple(c for i, m in enumerate(s.modality or ())
                                          if (c := _code(m, f"{ref}.modality[{i}]")) is not None),
                         series=tuple(series), number_of_instances=s.numberOfInstances)  # fmt: skip

    def procedure(self, p: Any) -> FhirProcedure:
        ref = self.ref(p)
        performed = _when(p.performedDateTime, p.performedPeriod, f"{ref}.performed")
        sites: list[Code] = []
        for i, site in enumerate(p.bodySite or ()):
            sites += _codes(site, f"{ref}.bodySite[{i}]")
        return FhirProcedure(ref=ref, performed=performed, body_sites=tuple(sites))
