"""The evidence of a finding in plain language: one sentence (or a few) that a fraud analyst reads without
knowing Python, DICOM keywords or the report's data model.

Every finding kind has its own writer, registered with :func:`explains`; a new kind adds its writer here, in one
place, and the text, HTML, JSON and CSV outputs all show it (:meth:`~verifier.claims.models.Finding.to_dict`
carries it as ``evidence_text``, beside the structured ``evidence``). A kind without a writer still gets a plain
sentence from :func:`plain`, which never prints a Python representation.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from verifier.claims.models import Finding

__all__ = ["explain", "explained_kinds", "explains", "image_name", "plain"]

Writer = Callable[["Finding"], str]
_WRITERS: dict[str, Writer] = {}

#: DICOM keywords as a reader says them.
_ELEMENT_WORDS = {
    "PatientID": "patient ID",
    "PatientName": "patient name",
    "StudyDate": "study date",
    "SeriesDate": "series date",
    "AcquisitionDate": "acquisition date",
    "ContentDate": "content date",
    "StudyInstanceUID": "study UID",
    "Modality": "modality",
}
_VERDICT_WORDS = {
    "TAMPERED": "tampered",
    "SUSPECTED_SYNTHETIC": "suspected synthetic",
    "DECLARED_SYNTHETIC": "declared synthetic",
    "AUTHENTIC": "authentic",
    "NO_EVIDENCE": "without evidence either way",
    "UNREADABLE": "unreadable",
    "MALFORMED": "malformed",
    "TRANSCODED": "re-encoded since it was signed",
}


def explains(*kinds: str) -> Callable[[Writer], Writer]:
    """Register the decorated function as the evidence writer of the finding ``kinds``."""

    def register(writer: Writer) -> Writer:
        for kind in kinds:
            if kind in _WRITERS:
                raise ValueError(f"finding kind {kind!r} already has an evidence writer")
            _WRITERS[kind] = writer
        return writer

    return register


def explained_kinds() -> frozenset[str]:
    """The finding kinds that have their own writer."""
    return frozenset(_WRITERS)


def explain(finding: Finding) -> str:
    """The evidence of ``finding`` in plain language."""
    writer = _WRITERS.get(finding.kind, plain)
    try:
        return writer(finding)
    except (KeyError, TypeError, ValueError, AttributeError):  # evidence of an older or unexpected shape
        return plain(finding)


# -- words ---------------------------------------------------------------------------------------------------------


def words(value: Any) -> str:
    """``value`` as text a reader understands: lists joined with commas, mappings as "key: value", yes/no."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, Mapping):
        return "; ".join(f"{_key(k)}: {words(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return and_list(words(v) for v in value)
    return str(value)


def _key(key: Any) -> str:
    text = str(key)
    return _ELEMENT_WORDS.get(text, text.replace("_", " "))


def and_list(items: Iterable[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    seq = [i for i in items if i]
    if len(seq) <= 1:
        return "".join(seq)
    return ", ".join(seq[:-1]) + " and " + seq[-1]


_PDF_LABEL = re.compile(r"^(?P<file>.+)#page=(?P<page>\d+)&image=(?P<image>\d+)$")


def image_name(path: str | None) -> str:
    """A file's name; an image of a PDF (``report.pdf#page=2&image=1``) as "image 1 on page 2 of report.pdf"."""
    if not path:
        return "an image"
    m = _PDF_LABEL.match(Path(path).name)
    if m:
        return f"image {m['image']} on page {m['page']} of {m['file']}"
    return Path(path).name


_name = image_name


def _files(f: Finding) -> str:
    return and_list(_name(p) for p in f.files)


def plain(finding: Finding) -> str:
    """The generic sentence: the finding's message, then each piece of evidence as "what: value"."""
    parts = [f"{_key(k)}: {words(v)}" for k, v in finding.evidence.items() if v not in (None, [], {}, "")]
    text = finding.message[:1].upper() + finding.message[1:]
    return f"{text}." + (f" Evidence: {'; '.join(parts)}." if parts else "")


# -- header findings -----------------------------------------------------------------------------------------------


@explains("stripped_header")
def _stripped(f: Finding) -> str:
    missing: Mapping[str, list[str]] = f.evidence["missing"]
    each = [f"{name} has no {and_list(_ELEMENT_WORDS.get(m, m) for m in elements)}"
            for name, elements in missing.items()]  # fmt: skip
    return (f"{'; '.join(each)}. A scan taken for a patient carries these; they are removed when an image is "
            "copied out of one record to be passed off in another.")  # fmt: skip


@explains("patient_inconsistent")
def _patients(f: Finding) -> str:
    return (f"The image headers of this one claim name {len(f.evidence['patients'])} different patients: "
            f"{and_list(f.evidence['patients'])}.")  # fmt: skip


@explains("patient_mismatch")
def _patient(f: Finding) -> str:
    return (f"The claim is for patient {f.evidence['claimed']}, but the header of {_files(f)} names patient "
            f"{and_list(f.evidence['found'])}.")  # fmt: skip


@explains("sex_inconsistent")
def _sexes(f: Finding) -> str:
    each = [f"{name} says {sex}" for name, sex in f.evidence["sexes"].items()]
    return f"The image headers give different sexes for one patient: {and_list(each)}."


@explains("sex_mismatch")
def _sex(f: Finding) -> str:
    each = [f"{name} says {sex}" for name, sex in f.evidence["sexes"].items()]
    return f"The claim gives sex {f.evidence['claimed']}, but {and_list(each)}."


@explains("age_inconsistent")
def _ages(f: Finding) -> str:
    each = [f"{name} about {day}" for name, day in f.evidence["implied_birth"].items()]
    return (f"The birth dates the headers give or imply (from age at the study) differ by "
            f"{f.evidence['spread_years']} years, more than one person's: {and_list(each)}.")  # fmt: skip


@explains("age_mismatch")
def _age(f: Finding) -> str:
    each = [f"{name} implies about {day}" for name, day in f.evidence["implied_birth"].items()]
    return f"The claim gives birth date {f.evidence['claimed_birth_date']}, but {and_list(each)}."


@explains("body_part_mismatch")
def _body_part(f: Finding) -> str:
    each = [f"{name} shows {part}" for name, part in f.evidence["body_parts"].items()]
    return f"The claim is for the {str(f.evidence['claimed']).lower()}, but {and_list(each)} (Body Part Examined)."


@explains("body_part_description")
def _body_part_description(f: Finding) -> str:
    each = [
        f"{name} says body part {e['body_part']}, but its {e['field']} \u201c{e['description']}\u201d names the "
        f"{str(e['regions']).lower()}"
        for name, e in f.evidence["images"].items()
    ]
    return f"{'; '.join(each)}. One of the two was rewritten: the image may not be what the claim says it is."


@explains("date_after_claim")
def _after(f: Finding) -> str:
    each = [f"{name} has {and_list(f'{_key(k)} {d}' for k, d in dates.items())}"
            for name, dates in f.evidence["dates"].items()]  # fmt: skip
    return (f"The claim is dated {f.evidence['claim_date']}, but {'; '.join(each)}: the image was made after the "
            "claim, so the claim cannot rest on it.")  # fmt: skip


@explains("date_mismatch")
def _before(f: Finding) -> str:
    each = [f"{name} is from a study on {d}" for name, d in f.evidence["study_dates"].items()]
    return (f"The claim is dated {f.evidence['claim_date']}, but {and_list(each)}: more than "
            f"{f.evidence['tolerance_days']} days earlier.")  # fmt: skip


@explains("equipment_inconsistent")
def _equipment(f: Finding) -> str:
    return (f"The images of one study (UID {f.evidence['study_instance_uid']}) name different equipment: "
            f"{and_list(f.evidence['equipment'])}. One study is made on one machine.")  # fmt: skip


# -- reused images ---------------------------------------------------------------------------------------------------


def _match(ev: Mapping[str, Any]) -> str:
    how = ev.get("match")
    if how == "identical file":
        return "The two files are identical, byte for byte."
    if how == "identical pixels":
        return "The two images have identical pixels; only the header differs."
    out = ["A near-duplicate: the same picture, re-encoded, re-windowed, cropped or resized."]
    if ev.get("hamming") is not None:
        kind = {"phash": "perceptual hash", "simhash": "similarity hash"}.get(str(ev.get("hash")), "hash")
        out.append(f"Their {kind}es differ in {ev['hamming']} of 64 bits.")
    if ev.get("correlation") is not None:
        out.append(f"Once aligned, their pixels correlate at {float(ev['correlation']):.2f} (1 means identical).")
    if ev.get("scale") is not None and ev.get("other_scale") is not None:
        s, o = float(ev["scale"]), float(ev["other_scale"])
        if abs(s - o) > 0.01:
            out.append(f"They match when this image is cropped to {s:.0%} of its side and the other to {o:.0%}.")
    return " ".join(out)


def _patient_words(ev: Mapping[str, Any]) -> str:
    if ev.get("different_patient") is True:
        return ", for a different patient"
    if ev.get("different_patient") is False:
        return ", for the same patient"
    return ""


@explains("reused_image")
def _reused(f: Finding) -> str:
    ev = f.evidence
    other = f" as {_name(ev.get('other_path'))}" if ev.get("other_path") else ""
    when = ""
    if ev.get("other_audited_at"):
        record = f" (audit record {ev['other_record_id']})" if ev.get("other_record_id") else ""
        when = f" It was audited on {str(ev['other_audited_at'])[:10]}{record}."
    return (f"{_files(f)} was also submitted with claim {f.other_claim}{other}{_patient_words(ev)}. "
            f"{_match(ev)}{when}")  # fmt: skip


@explains("duplicate_in_claim")
def _duplicate(f: Finding) -> str:
    return f"{_files(f)} are the same image, within this claim{_patient_words(f.evidence)}. {_match(f.evidence)}"


@explains("synthetic_copy")
def _synthetic_copy(f: Finding) -> str:
    ev = f.evidence
    verdict = _VERDICT_WORDS.get(str(ev.get("other_verdict")), str(ev.get("other_verdict")))
    return (f"{_files(f)} is the same image as {_name(ev.get('other_path'))} of claim {f.other_claim}, which the "
            f"checks found {verdict}. A copy of a synthetic image is synthetic, whatever its own header says. "
            f"{_match(ev)}")  # fmt: skip


@explains("uid_reused")
def _uid(f: Finding) -> str:
    ev = f.evidence
    return (f"{_files(f)} carries {ev['uid_kind']} {ev['uid']}, which an image of another patient also carries "
            f"(claim {and_list(ev['other_claims'])}). A UID names one image or study world-wide; two patients "
            "cannot share it.")  # fmt: skip


# -- the checker's verdicts -----------------------------------------------------------------------------------------


def _reasons(ev: Mapping[str, Any]) -> str:
    shown = [r for r in ev.get("reasons", ()) if ": not run:" not in r and ": not applicable:" not in r]
    return " ".join(f"{_reason(r)}." for r in shown)


def _reason(reason: str) -> str:
    source, _, message = reason.partition(": ")
    if not message:
        return reason
    names = {"declaration": "Declaration", "signature": "Signature", "watermark": "Watermark",
             "detector": "Detector", "input": "File", "credentials": "Content Credentials"}  # fmt: skip
    return f"{names.get(source, source.capitalize())}: {message}"


def _policy(ev: Mapping[str, Any]) -> str:
    return f"The site policy's action for it is {str(ev['action']).upper()}."


def _export_words(ev: Mapping[str, Any]) -> str:
    """"a PNG export", "a JPEG image in a PDF"."""
    export = ev.get("export") or {}
    fmt = str(export.get("format") or "image").upper()
    return f"a {fmt} image in a PDF" if export.get("container") == "pdf" else f"a {fmt} export"


def _credentials_words(ev: Mapping[str, Any], *, generator: bool = True) -> str:
    """Who signed an export's C2PA manifest (and, with ``generator``, what software made it), in words."""
    c = ev.get("content_credentials") or {}
    signer = c.get("signer") or "an unnamed signer"
    trust = "a trusted signer" if c.get("signer_trusted") else "a signer on no trust list of this site"
    types = and_list(c.get("digital_source_types") or ()) or "none"
    made = f"; claim generator {c.get('claim_generator') or 'not named'}" if generator else ""
    return f"The manifest is signed by {signer} ({trust}){made}; digital source type {types}."


@explains("declared_synthetic")
def _declared(f: Finding) -> str:
    ev = f.evidence
    caught_by = list(ev.get("caught_by", ()))
    if caught_by == ["watermark"] and ev.get("export"):
        lead = (f"{_files(f)} ({_export_words(ev)}) was caught by its watermark: its pixels carry the invisible "
                "mark medverify's generators put in every image they make. An export carries no signature or "
                "synthetic declaration; the mark survived the export.")  # fmt: skip
    elif caught_by == ["watermark"]:
        lead = (f"{_files(f)} was caught by its watermark: its pixels carry the invisible mark medverify's "
                "generators put in every image they make, although the file has no signature and no synthetic "
                "declaration (they were stripped).")  # fmt: skip
    elif caught_by == ["Content Credentials"] and ev.get("content_credentials"):
        c = ev["content_credentials"]
        made = c.get("claim_generator") or "an unnamed claim generator"
        return (f"{_files(f)} ({_export_words(ev)}) is declared synthetic by its C2PA Content Credentials, made by "
                f"{made}: the manifest attached to the image says a generative model made it, yet it was "
                f"submitted as a patient's scan. {_credentials_words(ev, generator=False)} {_policy(ev)}")  # fmt: skip
    else:
        lead = (f"{_files(f)} says itself that it is synthetic (its {and_list(ev.get('caught_by', ()))}), yet it "
                "was submitted as a patient's scan.")  # fmt: skip
    return f"{lead} {_reasons(ev)} {_policy(ev)}"


def _scores(ev: Mapping[str, Any]) -> str:
    """The detector's scores; the threshold that decided is in the verdict's reason (the site policy may set its
    own), so the model's thresholds are named as the model's."""
    d = ev.get("detector")
    if not d:
        return ""
    return (f"Scores of detector {d.get('model_tag')}: synthetic {d['synthetic_score']:.3f}, tamper "
            f"{d['tamper_score']:.3f} (the model's own thresholds: {d['threshold']:.3f} and "
            f"{d['tamper_threshold']:.3f}).")  # fmt: skip


@explains("tampered")
def _tampered(f: Finding) -> str:
    ev = f.evidence
    by = and_list(ev.get("caught_by", ()))
    if ev.get("content_credentials") and list(ev.get("caught_by", ())) == ["Content Credentials"]:
        lead = (f"{_files(f)} ({_export_words(ev)}) was changed after its C2PA Content Credentials were signed: "
                "the manifest's signature or its hash of the image (hard binding) no longer matches.")  # fmt: skip
        return " ".join(x for x in (lead, _reasons(ev), _credentials_words(ev), _policy(ev)) if x)
    lead = f"{_files(f)} was changed after it was made or signed (found by its {by})."
    return " ".join(x for x in (lead, _reasons(ev), _scores(ev) if "detector" in by else "", _policy(ev)) if x)


@explains("suspected_synthetic")
def _suspected(f: Finding) -> str:
    ev = f.evidence
    lead = (f"The detector judges {_files(f)} likely generated by a machine-learning model, and nothing in its "
            "provenance (signature, declaration, watermark) explains it.")  # fmt: skip
    return " ".join(x for x in (lead, _reasons(ev), _scores(ev), _policy(ev)) if x)


@explains("signature_problem")
def _signature(f: Finding) -> str:
    ev = f.evidence
    verdict = _VERDICT_WORDS.get(str(ev["verdict"]), str(ev["verdict"]))
    return f"{_files(f)} is {verdict}, and its signature raises a question. {_reasons(ev)} {_policy(ev)}"


@explains("unreadable")
def _unreadable(f: Finding) -> str:
    ev = f.evidence
    error = ev.get("error") or _reasons(ev)
    return (f"{_files(f)} could not be checked: {error}. None of the checks says anything about it, so it is "
            "reported, not passed.")  # fmt: skip


@explains("undecodable_pixels")
def _undecodable(f: Finding) -> str:
    return (f"The pixels of {_files(f)} could not be decoded ({f.evidence.get('error')}), so it was not compared "
            "with other images for reuse.")  # fmt: skip


@explains("no_images")
def _no_images(f: Finding) -> str:
    return "The claim lists no image that could be found: there is nothing to check."


# -- FHIR cross-checks (verifier.claims.fhir.rules) -----------------------------------------------------------------


def _fhir(f: Finding) -> str:
    """The FHIR element(s) a finding rests on, as "The claim's FHIR bundle (Patient/p1.birthDate)"."""
    elements = [str(e) for e in f.evidence.get("fhir") or ()]
    return f"The claim's FHIR bundle ({and_list(elements)})" if elements else "The claim's FHIR bundle"


def _fhir_in(f: Finding) -> str:
    """:func:`_fhir` within a sentence."""
    return "t" + _fhir(f)[1:]


def _per_image(values: Mapping[str, Any], what: str) -> str:
    return and_list(f"{name} has {what} {words(v)}" for name, v in values.items())


@explains("fhir_image_without_study")
def _fhir_no_study(f: Finding) -> str:
    ev = f.evidence
    return (f"{_per_image(ev['image_studies'], 'Study Instance UID')}, but no ImagingStudy of {_fhir_in(f)} has that "
            "UID: the image is not part of the imaging the claim describes.")  # fmt: skip


@explains("fhir_study_without_images")
def _fhir_no_images(f: Finding) -> str:
    ev = f.evidence
    missing = ev.get("missing_instances")
    if missing:
        return (f"{ev['study']} in {_fhir_in(f)} lists {ev['instances_listed']} image(s) of study "
                f"{ev['study_instance_uid']}; {len(missing)} of them were not submitted with the claim.")  # fmt: skip
    return (f"{ev['study']} in {_fhir_in(f)} describes study {ev['study_instance_uid']}, but no image of that "
            "study was submitted with the claim.")  # fmt: skip


@explains("fhir_name_mismatch")
def _fhir_name(f: Finding) -> str:
    return (f"{_fhir(f)} names the patient {f.evidence['claimed']}, but "
            f"{_per_image(f.evidence['names'], 'the patient name')} (DICOM Patient's Name).")  # fmt: skip


@explains("fhir_birth_date_mismatch")
def _fhir_birth(f: Finding) -> str:
    return (f"{_fhir(f)} gives birth date {f.evidence['claimed']}, but "
            f"{_per_image(f.evidence['birth_dates'], 'birth date')} (DICOM Patient's Birth Date).")  # fmt: skip


@explains("fhir_sex_mismatch")
def _fhir_sex(f: Finding) -> str:
    return (f"{_fhir(f)} gives gender {f.evidence['claimed']}, but {_per_image(f.evidence['sexes'], 'sex')} "
            "(DICOM Patient's Sex).")  # fmt: skip


@explains("fhir_date_mismatch")
def _fhir_date(f: Finding) -> str:
    ev = f.evidence
    apart = and_list(f"{abs(int(d))} days {'after' if int(d) > 0 else 'before'}" for d in ev["days_off"].values())
    return (f"{_fhir(f)} gives {ev['claimed']}, but {_per_image(ev['study_dates'], 'study date')} ({apart}; "
            f"{ev['tolerance_days']} day(s) allowed): the image may not be the one the claim bills for.")  # fmt: skip


@explains("fhir_date_after_claim")
def _fhir_after(f: Finding) -> str:
    return (f"The claim was created on {f.evidence['claimed']} ({_fhir_in(f)}), but "
            f"{_per_image(f.evidence['study_dates'], 'study date')}: the image was made after the claim.")  # fmt: skip


@explains("fhir_modality_mismatch")
def _fhir_modality(f: Finding) -> str:
    return (f"{_fhir(f)} says the study is {f.evidence['claimed']}, but "
            f"{_per_image(f.evidence['modalities'], 'modality')} (DICOM Modality).")  # fmt: skip


@explains("fhir_body_site_mismatch")
def _fhir_site(f: Finding) -> str:
    ev = f.evidence
    return (f"{_fhir(f)} gives body site SNOMED CT {ev['snomed']}, which is {str(ev['claimed']).lower()} in DICOM "
            f"terms, but {_per_image(ev['body_parts'], 'Body Part Examined')}.")  # fmt: skip


@explains("fhir_laterality_mismatch")
def _fhir_side(f: Finding) -> str:
    side = {"R": "right", "L": "left"}
    return (f"{_fhir(f)} says the {side.get(str(f.evidence['claimed']), f.evidence['claimed'])} side, but "
            f"{_per_image(f.evidence['lateralities'], 'laterality')} (DICOM Laterality).")  # fmt: skip


@explains("fhir_diagnosis_implausible")
def _fhir_diagnosis(f: Finding) -> str:
    ev = f.evidence
    return (f"{_fhir(f)} claims ICD-10 {ev['icd10']} ({ev['meaning']}), which is shown by "
            f"{and_list(ev['expected_modalities'])} of the {and_list(str(r).lower() for r in ev['expected_regions'])}; "
            f"the images are {words(ev['imaged'])}. None of them can show it.")  # fmt: skip
