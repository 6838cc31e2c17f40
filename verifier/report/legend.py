"""What the words of a report mean: severities, verdicts and actions, as its legend shows them.

Kept beside the report and written for a reader who is not an engineer. A test checks that every verdict and
action of :mod:`verifier.policy` and every severity has its line here.
"""

from __future__ import annotations

from verifier.claims.models import Severity
from verifier.policy import Action, VerdictStatus

__all__ = ["ACTION_MEANINGS", "SEVERITY_MEANINGS", "VERDICT_MEANINGS"]

SEVERITY_MEANINGS: dict[Severity, str] = {
    Severity.HIGH: "The claim cannot stand as filed: a reused or generated image, an image changed after it was "
    "made, or an image acquired after the claim.",
    Severity.MEDIUM: "A contradiction the claimant must explain: another patient, sex, age, body part or date in "
    "the headers, an image that could not be checked.",
    Severity.LOW: "Worth a look, not evidence by itself (stripped identity elements, mixed equipment, pixels that "
    "could not be compared).",
    Severity.NONE: "No finding from the checks that ran (the top of the report says which ran).",
}

VERDICT_MEANINGS: dict[VerdictStatus, str] = {
    VerdictStatus.AUTHENTIC: "A valid signature of a trusted acquisition key covers the pixels: the image is as "
    "the scanner made it.",
    VerdictStatus.DECLARED_SYNTHETIC: "The image is machine-made, and says so: its own declaration or a "
    "generator's signature, or, once those are stripped, the generator's invisible watermark in its pixels.",
    VerdictStatus.TAMPERED: "The image was changed after it was signed, or the detector finds a local edit (a "
    "lesion put in or taken out).",
    VerdictStatus.SUSPECTED_SYNTHETIC: "No provenance explains the image, and the detector scores it as "
    "generated, above its threshold.",
    VerdictStatus.NO_EVIDENCE: "Nothing proves the image authentic and nothing found a problem. Not a clean bill: "
    "it says only that the checks that ran found nothing.",
    VerdictStatus.TRANSCODED: "Signed, then re-encoded: the signature covers an earlier encoding of the pixels and "
    "nothing vouches for them now.",
    VerdictStatus.UNREADABLE: "The file could not be read as a medical image; nothing was checked.",
    VerdictStatus.MALFORMED: "The file is broken or not what it claims to be; nothing was checked.",
}

ACTION_MEANINGS: dict[Action, str] = {
    Action.ACCEPT: "The site policy lets the image through.",
    Action.FLAG: "Let through, marked for a person to look at.",
    Action.QUARANTINE: "Held back until a person releases or rejects it.",
    Action.REJECT: "Refused.",
}
