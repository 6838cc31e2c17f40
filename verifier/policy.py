"""Verdicts and the site policy: the one explainable step that combines the separate reports.

The signature, watermark and detector reports stay separate and typed (ARCHITECTURE.md, "Reports and
decisions"); :func:`decide` reads them and returns a :class:`Verdict` whose every reason names the report it came
from. The site policy (TOML) maps the verdict to an action; its ``version`` is recorded with every audit record.

Decision order (first match wins):

1. the input could not be read: ``UNREADABLE`` / ``MALFORMED``;
2. a signature whose MAC does not match, or whose structure is broken, a pixel binding whose decoded pixels
   differ from those signed, or a signed file whose Pixel Data nothing vouches for, unless it was re-encoded after
   signing (a ``TRANSCODED`` signature): ``TAMPERED``;
   C2PA Content Credentials (in a PNG, JPEG or TIFF export) whose claim signature or hard binding fails:
   ``TAMPERED``;
3. Synthetic Data (0008,001C) = YES, the standard's own declaration, signed or not, or a valid, trusted signature of
   a ``generator`` key covering the pixels, or intact C2PA Content Credentials whose digital source type is
   ``trainedAlgorithmicMedia`` or ``compositeWithTrainedAlgorithmicMedia``: ``DECLARED_SYNTHETIC``;
4. our generator watermark in the pixels with no signature left: ``DECLARED_SYNTHETIC`` ("provenance recovered
   from watermark");
5. a detector tamper score at or above the tamper threshold (the policy's ``tamper_threshold``, else the model's
   own, chosen at 1 % false positives on held-out real images): ``TAMPERED``;
6. a valid, trusted signature of an ``acquisition`` key covering the pixels: ``AUTHENTIC``;
7. a synthetic score at or above the synthetic threshold (the policy's ``synthetic_threshold``, else the model's
   own): ``SUSPECTED_SYNTHETIC``;
8. a signature over an earlier encoding of the pixels (``TRANSCODED``) with no pixel binding that vouches for the
   pixels now (a dcmsign signature has none; or they cannot be decoded): ``TRANSCODED``, flagged by default;
9. otherwise ``NO_EVIDENCE``.

A signature ``TRANSCODED`` whose file's pixel binding matches (medverify signed it; the pixels were re-encoded
losslessly since) counts for nothing by itself: the binding signature, over everything but the pixel encoding, is
intact, and with the decoded pixels equal to those signed it covers the pixels (steps 3 and 6).

Elements added after signing (present but covered by no signature), and signatures that are intact but whose
signer is untrusted, revoked or expired, do not change the status; they add a reason and raise the action to at
least the policy's ``uncovered_action`` / ``untrusted_action``. A check that was asked for but could not run (no
watermark key yet, no detector model) adds a reason "not run: why" and changes nothing else; so does a check that
does not apply to the input ("not applicable: why", e.g. the DICOM signature check on a PNG export). C2PA Content
Credentials that are intact but signed by no one on a trust list say so in a reason and change nothing else (their
declaration of a synthetic image still counts: a file that declares itself synthetic is believed, as with Synthetic
Data); a manifest that cannot be parsed adds a reason and raises the action to at least ``uncovered_action``.
"""

from __future__ import annotations

import dataclasses
import enum
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provenance.credentials import ContentCredentials, CredentialsStatus
from provenance.models import PixelBindingStatus, SignatureInfo, SignatureReport, SignatureStatus
from verifier.errors import ConfigError
from verifier.reports import DetectionFailure, WatermarkNotChecked

if TYPE_CHECKING:  # torch is imported only when a detector runs
    from detectors.models import DetectionReport
    from verifier.reports import DetectionOutcome, WatermarkOutcome

__all__ = [
    "DEFAULT_POLICY", "Action", "Policy", "Reason", "Verdict", "VerdictStatus", "decide", "load_policy", "score_text",
]


def score_text(value: float) -> str:
    """A detector score or threshold for people: three decimals, or as many more (up to six) as it takes to tell a
    value short of 1 from 1 (a threshold of 0.99982 must not read "1.000", like one that never flags)."""
    for digits in range(3, 7):
        text = f"{value:.{digits}f}"
        if value >= 1.0 or not text.startswith("1."):
            return text
    return "0.999999"  # short of 1 by less than half a millionth: still not 1


class VerdictStatus(enum.StrEnum):
    AUTHENTIC = "AUTHENTIC"
    DECLARED_SYNTHETIC = "DECLARED_SYNTHETIC"
    TAMPERED = "TAMPERED"
    SUSPECTED_SYNTHETIC = "SUSPECTED_SYNTHETIC"
    NO_EVIDENCE = "NO_EVIDENCE"
    UNREADABLE = "UNREADABLE"
    MALFORMED = "MALFORMED"
    #: Signed, then re-encoded: the signature covers an earlier encoding of the pixels and nothing vouches for the
    #: pixels now (no pixel binding, or one that cannot be checked). Neither proven authentic nor altered.
    TRANSCODED = "TRANSCODED"


class Action(enum.StrEnum):
    """What the site does with the file, from least to most severe."""

    ACCEPT = "accept"
    FLAG = "flag"
    QUARANTINE = "quarantine"
    REJECT = "reject"

    @property
    def severity(self) -> int:
        return list(Action).index(self)


@dataclasses.dataclass(frozen=True)
class Reason:
    """One reason for a verdict, tied to the report it came from."""

    source: str  # "input", "declaration", "signature", "credentials", "watermark", "detector"
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"source": self.source, "message": self.message}

    def __str__(self) -> str:
        return f"{self.source}: {self.message}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Policy:
    """A site policy: actions per verdict, escalations and thresholds."""

    version: str
    actions: Mapping[VerdictStatus, Action]
    uncovered_action: Action = Action.FLAG
    untrusted_action: Action = Action.FLAG
    #: Thresholds on the detector's calibrated scores; None: the model bundle's own (chosen at its target FPR).
    tamper_threshold: float | None = None
    synthetic_threshold: float | None = None

    def __post_init__(self) -> None:
        missing = [s.value for s in VerdictStatus if s not in self.actions]
        if missing:
            raise ConfigError(f"policy {self.version!r} has no action for {', '.join(missing)}")
        for name in ("tamper_threshold", "synthetic_threshold"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ConfigError(f"policy {name} must be between 0 and 1, not {value}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "<policy>") -> Policy:
        """Build a policy from parsed TOML; unknown keys and values are errors (a typo must not weaken it)."""
        known = {
            "version",
            "actions",
            "uncovered_action",
            "untrusted_action",
            "tamper_threshold",
            "synthetic_threshold",
        }
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown policy key(s) {', '.join(unknown)}")
        merged = {**{s.value: a.value for s, a in DEFAULT_POLICY.actions.items()}, **dict(data.get("actions", {}))}
        try:
            actions = {VerdictStatus(k): Action(str(v).lower()) for k, v in merged.items()}
            kwargs: dict[str, Any] = {
                "version": str(data.get("version") or ""),
                "actions": actions,
                "uncovered_action": Action(str(data.get("uncovered_action", DEFAULT_POLICY.uncovered_action)).lower()),
                "untrusted_action": Action(str(data.get("untrusted_action", DEFAULT_POLICY.untrusted_action)).lower()),
            }
            for name in ("tamper_threshold", "synthetic_threshold"):
                if data.get(name) is not None:
                    kwargs[name] = float(data[name])
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from exc
        if not kwargs["version"]:
            raise ConfigError(f"{source}: a site policy needs a version (it is recorded with every audit record)")
        return cls(**kwargs)

    @classmethod
    def from_file(cls, path: Path) -> Policy:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read policy file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"policy file {path} is not valid TOML: {exc}") from exc
        return cls.from_mapping(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "actions": {s.value: a.value for s, a in self.actions.items()},
            "uncovered_action": self.uncovered_action.value,
            "untrusted_action": self.untrusted_action.value,
            "tamper_threshold": self.tamper_threshold,
            "synthetic_threshold": self.synthetic_threshold,
        }


#: The documented default: accept what is proven authentic or shows no evidence, quarantine synthetic images,
#: reject tampered and unreadable files, flag signed files re-encoded since signing that nothing vouches for.
DEFAULT_POLICY = Policy(
    version="medverify-default-1",
    actions={
        VerdictStatus.AUTHENTIC: Action.ACCEPT,
        VerdictStatus.DECLARED_SYNTHETIC: Action.QUARANTINE,
        VerdictStatus.TAMPERED: Action.REJECT,
        VerdictStatus.SUSPECTED_SYNTHETIC: Action.QUARANTINE,
        VerdictStatus.NO_EVIDENCE: Action.ACCEPT,
        VerdictStatus.UNREADABLE: Action.REJECT,
        VerdictStatus.MALFORMED: Action.REJECT,
        VerdictStatus.TRANSCODED: Action.FLAG,
    },
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Verdict:
    """The final decision on one file: a status, the action the policy gives it, and why."""

    status: VerdictStatus
    action: Action
    reasons: tuple[Reason, ...]
    policy_version: str

    def __bool__(self) -> bool:
        raise TypeError("a Verdict has no truth value; compare .status or .action")

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "action": self.action.value,
            "reasons": [r.to_dict() for r in self.reasons],
            "policy_version": self.policy_version,
        }


def load_policy(path: Path | None) -> Policy:
    """The site policy in ``path`` (the ``policy_file`` setting), or the documented default."""
    return DEFAULT_POLICY if path is None else Policy.from_file(path)


def _escalate(action: Action, floor: Action) -> Action:
    return action if action.severity >= floor.severity else floor


def decide(
    *,
    policy: Policy,
    input_error: tuple[str, str] | None = None,
    signature: SignatureReport | None = None,
    watermark: WatermarkOutcome | None = None,
    detector: DetectionOutcome | None = None,
    synthetic_data: bool | None = None,
    not_run: Mapping[str, str] | None = None,
    credentials: ContentCredentials | None = None,
    not_applicable: Mapping[str, str] | None = None,
) -> Verdict:
    """Combine the reports into a verdict under ``policy`` (see the module docstring for the order).

    ``input_error`` is ``(kind, message)`` for unreadable input. ``None`` for a report means its check did not
    run; a :class:`~verifier.reports.WatermarkNotChecked` or :class:`~verifier.reports.DetectionFailure` means it
    ran and could not examine the image. ``synthetic_data`` is the file's Synthetic Data (0008,001C) (True: YES);
    ``not_run`` names the checks asked for that could not run, with why; ``not_applicable`` those that do not apply
    to this input. ``credentials`` are the C2PA Content Credentials of an image export (None: it has none).
    """
    reasons: list[Reason] = []
    floor = Action.ACCEPT
    skipped = dict(not_run or {})
    inapplicable = dict(not_applicable or {})

    def verdict(status: VerdictStatus) -> Verdict:
        action = _escalate(policy.actions[status], floor)
        told = tuple(Reason(check, f"not applicable: {why}") for check, why in inapplicable.items())
        told += tuple(Reason(check, f"not run: {why}") for check, why in skipped.items())
        return Verdict(status=status, action=action, reasons=(*reasons, *told), policy_version=policy.version)

    if input_error is not None:
        kind, message = input_error
        reasons.append(Reason("input", message))
        return verdict(VerdictStatus.MALFORMED if kind == "MALFORMED" else VerdictStatus.UNREADABLE)

    intact: tuple[SignatureInfo, ...] = ()
    unvouched = False
    if signature is not None:
        broken = [s for s in signature.signatures if s.status in (SignatureStatus.INVALID, SignatureStatus.MALFORMED)]
        for sig in broken:
            reasons.append(
                Reason("signature", f"signature {sig.uid or '?'} is {sig.status.value}: " + "; ".join(sig.reasons))
            )
        binding = signature.pixel_binding
        mismatch = binding is not None and binding.status is PixelBindingStatus.MISMATCH
        if binding is not None:
            reasons.append(Reason("signature", f"pixel binding {binding.status.value}: {binding.reason}"))
        vouched = binding is not None and binding.status is PixelBindingStatus.MATCH
        transcoded = [s for s in signature.signatures if s.status is SignatureStatus.TRANSCODED]
        unvouched = bool(signature.signatures) and signature.pixel_data_covered is False
        if unvouched and not transcoded:
            reasons.append(
                Reason("signature", "the file is signed but its Pixel Data is covered by no intact signature")
            )
        if broken or mismatch or (unvouched and not transcoded):
            return verdict(VerdictStatus.TAMPERED)
        if not vouched:
            for sig in transcoded:
                reasons.append(
                    Reason("signature", f"signature {sig.uid or '?'} is TRANSCODED: " + "; ".join(sig.reasons))
                )
        if unvouched and binding is None:
            reasons.append(Reason("signature", "no pixel binding to check (the signer made none)"))
        # Intact signatures still vouch for the header (a generator's declaration), but for the pixels only when
        # nothing is unvouched.
        intact = tuple(s for s in signature.signatures if s.status is not SignatureStatus.TRANSCODED)
        for sig in intact:
            if sig.status is not SignatureStatus.VALID:
                reasons.append(
                    Reason("signature", f"signature by {sig.signer} is {sig.status.value}: " + "; ".join(sig.reasons))
                )
                floor = _escalate(floor, policy.untrusted_action)
        if signature.uncovered and unvouched and transcoded:  # not added: only a TRANSCODED signature covers them
            reasons.append(
                Reason(
                    "signature", f"{len(signature.uncovered)} element(s) covered by no signature that can be checked"
                )
            )
            floor = _escalate(floor, policy.uncovered_action)
        elif signature.uncovered:
            shown = ", ".join(f"{u.tag} {u.keyword}".strip() for u in signature.uncovered[:8])
            reasons.append(
                Reason(
                    "signature", f"{len(signature.uncovered)} element(s) added or left outside every signature: {shown}"
                )
            )
            floor = _escalate(floor, policy.uncovered_action)

    declared_by_credentials = False
    if credentials is not None:
        generator = credentials.claim_generator
        made = f"claim generator {generator!r}" if generator else "no claim generator"
        signer = credentials.signer or "an unnamed signer"
        if credentials.status is CredentialsStatus.INVALID:
            failed = "; ".join(p for p in credentials.problems if not p.startswith("signingCredential.untrusted"))
            reasons.append(Reason("credentials", f"C2PA Content Credentials signed by {signer} ({made}) fail "
                                  f"validation: the image or its manifest changed after signing ({failed})"))
            return verdict(VerdictStatus.TAMPERED)
        if credentials.status is CredentialsStatus.MALFORMED:
            reasons.append(Reason("credentials", "C2PA Content Credentials are present but cannot be read: "
                                  f"{credentials.error or 'no active manifest'}"))
            floor = _escalate(floor, policy.uncovered_action)
        else:
            types = ", ".join(credentials.source_types) or "no digital source type"
            trust = "a trusted signer" if credentials.signer_trusted else "a signer on no trust list of this site"
            if credentials.declares_synthetic:
                declared_by_credentials = True
                reasons.append(Reason("credentials", f"C2PA Content Credentials signed by {signer} ({trust}) declare "
                                      f"the image made by a generative model ({types}); {made}"))
            else:
                reasons.append(Reason("credentials", f"C2PA Content Credentials signed by {signer} ({trust}), intact; "
                                      f"they declare: {types}; {made}"))
            lapsed = [p for p in credentials.problems
                      if p.startswith("signingCredential.") and not p.startswith("signingCredential.untrusted")]
            if lapsed:
                reasons.append(Reason("credentials", "the signing credential: " + "; ".join(lapsed)))
                floor = _escalate(floor, policy.untrusted_action)

    valid = [s for s in intact if s.status is SignatureStatus.VALID]
    generator_sigs = [s for s in valid if s.role == "generator"]
    if synthetic_data is True:
        reasons.append(Reason("declaration", "Synthetic Data (0008,001C) is YES: the file declares itself synthetic"))
    if generator_sigs:
        reasons.append(
            Reason("signature", f"signed by generator key {generator_sigs[0].signer}: a declared synthetic image")
        )
    if synthetic_data is True or generator_sigs or declared_by_credentials:
        return verdict(VerdictStatus.DECLARED_SYNTHETIC)

    if watermark is not None and not isinstance(watermark, WatermarkNotChecked) and watermark.present:
        # An export can keep the mark but not its payload bits: say so, not "payload None".
        payload = f"payload {watermark.payload}" if watermark.payload is not None else "payload not recovered"
        reasons.append(
            Reason(
                "watermark",
                "provenance recovered from watermark: the pixels carry medverify's generator mark "
                f"({payload}, false-alarm probability {watermark.false_alarm_probability:.1e})",
            )
        )
        return verdict(VerdictStatus.DECLARED_SYNTHETIC)

    scored = None if detector is None or isinstance(detector, DetectionFailure) else detector
    if scored is not None and _tampered(scored, policy):
        limit = policy.tamper_threshold if policy.tamper_threshold is not None else scored.tamper_threshold
        reasons.append(
            Reason("detector", f"tamper score {score_text(scored.tamper_score)} ≥ threshold {score_text(limit)} "
                               f"({scored.model_tag})")
        )
        return verdict(VerdictStatus.TAMPERED)

    acquisition = [s for s in valid if s.role in ("acquisition", None)]
    if acquisition and not unvouched:
        reasons.insert(0, Reason("signature", f"valid signature by {acquisition[0].signer} covering the pixels"))
        return verdict(VerdictStatus.AUTHENTIC)

    if scored is not None and _synthetic(scored, policy):
        threshold = policy.synthetic_threshold if policy.synthetic_threshold is not None else scored.threshold
        reasons.append(
            Reason(
                "detector",
                f"synthetic score {score_text(scored.synthetic_score)} ≥ threshold {score_text(threshold)} "
                f"({scored.model_tag}) "
                "and no provenance explains the file",
            )
        )
        return verdict(VerdictStatus.SUSPECTED_SYNTHETIC)

    if unvouched:  # a TRANSCODED signature, and nothing vouches for the pixels now
        return verdict(VerdictStatus.TRANSCODED)

    if signature is not None and not signature.signatures:
        reasons.append(Reason("signature", "no digital signature"))
    if isinstance(detector, DetectionFailure):
        reasons.append(Reason("detector", f"the image could not be scored: {detector.error}"))
    elif scored is None:
        if "detector" not in skipped and "detector" not in inapplicable:
            reasons.append(Reason("detector", "no detector was run"))
    else:
        reasons.append(
            Reason(
                "detector",
                f"synthetic score {scored.synthetic_score:.3f} and tamper score {scored.tamper_score:.3f} below "
                f"their thresholds ({scored.model_tag})",
            )
        )
    return verdict(VerdictStatus.NO_EVIDENCE)


def _tampered(report: DetectionReport, policy: Policy) -> bool:
    """At or above the policy's tamper threshold, else the model's own (``report.suspected_tampered``)."""
    if policy.tamper_threshold is None:
        return report.suspected_tampered
    return report.tamper_score >= policy.tamper_threshold


def _synthetic(report: DetectionReport, policy: Policy) -> bool:
    """At or above the policy's synthetic threshold, else the model's own (``report.suspected_synthetic``)."""
    if policy.synthetic_threshold is None:
        return report.suspected_synthetic
    return report.synthetic_score >= policy.synthetic_threshold
