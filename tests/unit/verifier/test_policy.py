"""The site policy and the decision step: every rule, in its order, with its reasons."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from provenance.models import (
    PixelBinding,
    PixelBindingStatus,
    SignatureInfo,
    SignatureReport,
    SignatureStatus,
    UncoveredElement,
)
from provenance.watermark import WatermarkReport, WatermarkStatus
from verifier.errors import ConfigError
from verifier.policy import DEFAULT_POLICY, Action, Policy, VerdictStatus, decide, load_policy, score_text
from verifier.reports import DetectionFailure

if TYPE_CHECKING:
    from detectors.models import DetectionReport


def _sig(status: SignatureStatus, role: str | None = "acquisition") -> SignatureInfo:
    return SignatureInfo(status=status, uid="2.25.1", signer="CN=x", role=role, reasons=("why",))


def _report(
    *sigs: SignatureInfo, uncovered: int = 0, pixels: bool | None = True, binding: PixelBindingStatus | None = None
) -> SignatureReport:
    elements = tuple(UncoveredElement(tag=f"(0010,40{i:02d})", keyword="") for i in range(uncovered))
    found = None
    if binding is not None:
        found = PixelBinding(
            status=binding, signature_uid="2.25.2", signed_transfer_syntax="1.2.840.10008.1.2.1",
            transfer_syntax="1.2.840.10008.1.2.5", reason=f"binding {binding.value.lower()}",
        )  # fmt: skip
    return SignatureReport.combine(tuple(sigs), elements, pixels, found)


def _scores(
    synthetic: float = 0.0, threshold: float = 0.5, tamper: float = 0.0, tamper_threshold: float = 0.5
) -> DetectionReport:
    """A detector's report with these scores and thresholds (the rest as a one-patch image gives it)."""
    from detectors.models import DetectionReport

    return DetectionReport(
        synthetic_score=synthetic, tamper_score=tamper, threshold=threshold, tamper_threshold=tamper_threshold,
        model_tag="test-model", heatmap=np.zeros((1, 1), np.float32), patch_size=64, patch_positions=((0, 0),),
        frame_shape=(64, 64),
    )  # fmt: skip


def test_unreadable_and_malformed_input() -> None:
    v = decide(policy=DEFAULT_POLICY, input_error=("UNREADABLE", "not DICOM"))
    assert (v.status, v.action) == (VerdictStatus.UNREADABLE, Action.REJECT)
    assert decide(policy=DEFAULT_POLICY, input_error=("MALFORMED", "cut")).status is VerdictStatus.MALFORMED
    assert v.reasons[0].source == "input"


@pytest.mark.parametrize("broken", [SignatureStatus.INVALID, SignatureStatus.MALFORMED])
def test_broken_signature_is_tampered_even_next_to_a_valid_one(broken: SignatureStatus) -> None:
    v = decide(policy=DEFAULT_POLICY, signature=_report(_sig(SignatureStatus.VALID), _sig(broken)))
    assert (v.status, v.action) == (VerdictStatus.TAMPERED, Action.REJECT)
    assert any(r.source == "signature" and broken.value in r.message for r in v.reasons)


def test_signed_file_with_uncovered_pixels_is_tampered() -> None:
    v = decide(policy=DEFAULT_POLICY, signature=_report(_sig(SignatureStatus.VALID), pixels=False))
    assert v.status is VerdictStatus.TAMPERED


def test_transcoded_without_a_pixel_binding_is_flagged_not_tampered() -> None:
    """A dcmsign signature over an earlier encoding: nothing vouches for the pixels, nothing shows them changed."""
    v = decide(policy=DEFAULT_POLICY, signature=_report(_sig(SignatureStatus.TRANSCODED), pixels=False))
    assert (v.status, v.action) == (VerdictStatus.TRANSCODED, Action.FLAG)
    assert any("TRANSCODED" in r.message for r in v.reasons)
    assert any("no pixel binding" in r.message for r in v.reasons)
    # A site may decide otherwise; a detector's tamper score still wins.
    strict = Policy.from_mapping({"version": "strict-1", "actions": {"TRANSCODED": "quarantine"}})
    assert decide(policy=strict, signature=_report(_sig(SignatureStatus.TRANSCODED), pixels=False)).action is (
        Action.QUARANTINE
    )
    tampered = decide(
        policy=DEFAULT_POLICY,
        signature=_report(_sig(SignatureStatus.TRANSCODED), pixels=False),
        detector=_scores(tamper=0.9),
    )
    assert tampered.status is VerdictStatus.TAMPERED


def test_transcoded_with_a_matching_pixel_binding_is_authentic() -> None:
    report = _report(
        _sig(SignatureStatus.TRANSCODED), _sig(SignatureStatus.VALID), pixels=True, binding=PixelBindingStatus.MATCH
    )
    assert report.problem_found is False
    v = decide(policy=DEFAULT_POLICY, signature=report)
    assert (v.status, v.action) == (VerdictStatus.AUTHENTIC, Action.ACCEPT)
    assert [r.message for r in v.reasons][:2] == [
        "valid signature by CN=x covering the pixels",
        "pixel binding MATCH: binding match",
    ]
    generator = _report(
        _sig(SignatureStatus.TRANSCODED, "generator"), _sig(SignatureStatus.VALID, "generator"), pixels=True,
        binding=PixelBindingStatus.MATCH,
    )  # fmt: skip
    assert decide(policy=DEFAULT_POLICY, signature=generator).status is VerdictStatus.DECLARED_SYNTHETIC


def test_transcoded_with_a_differing_or_undecodable_pixel_binding() -> None:
    sigs = (_sig(SignatureStatus.TRANSCODED), _sig(SignatureStatus.VALID))
    mismatch = _report(*sigs, pixels=False, binding=PixelBindingStatus.MISMATCH)
    assert mismatch.status is SignatureStatus.INVALID  # the pixels are proven to differ
    v = decide(policy=DEFAULT_POLICY, signature=mismatch)
    assert (v.status, v.action) == (VerdictStatus.TAMPERED, Action.REJECT)
    assert any("pixel binding MISMATCH" in r.message for r in v.reasons)
    # Undecodable: the intact binding signature vouches for the header, not for the pixels.
    v = decide(policy=DEFAULT_POLICY, signature=_report(*sigs, pixels=False, binding=PixelBindingStatus.UNDECODABLE))
    assert (v.status, v.action) == (VerdictStatus.TRANSCODED, Action.FLAG)
    assert any("pixel binding UNDECODABLE" in r.message for r in v.reasons)


def test_roles_decide_authentic_or_declared_synthetic() -> None:
    authentic = decide(policy=DEFAULT_POLICY, signature=_report(_sig(SignatureStatus.VALID, "acquisition")))
    assert (authentic.status, authentic.action) == (VerdictStatus.AUTHENTIC, Action.ACCEPT)
    synthetic = decide(policy=DEFAULT_POLICY, signature=_report(_sig(SignatureStatus.VALID, "generator")))
    assert (synthetic.status, synthetic.action) == (VerdictStatus.DECLARED_SYNTHETIC, Action.QUARANTINE)


def test_uncovered_elements_and_untrusted_signers_escalate_the_action() -> None:
    flagged = decide(policy=DEFAULT_POLICY, signature=_report(_sig(SignatureStatus.VALID), uncovered=2))
    assert (flagged.status, flagged.action) == (VerdictStatus.AUTHENTIC, Action.FLAG)
    untrusted = decide(policy=DEFAULT_POLICY, signature=_report(_sig(SignatureStatus.UNTRUSTED_SIGNER)))
    assert (untrusted.status, untrusted.action) == (VerdictStatus.NO_EVIDENCE, Action.FLAG)
    revoked = decide(policy=DEFAULT_POLICY, signature=_report(_sig(SignatureStatus.REVOKED)))
    assert revoked.action is Action.FLAG and any("REVOKED" in r.message for r in revoked.reasons)


def test_watermark_recovers_provenance_when_the_signature_is_gone() -> None:
    v = decide(
        policy=DEFAULT_POLICY,
        signature=_report(pixels=False),
        watermark=WatermarkReport(
            status=WatermarkStatus.PRESENT, false_alarm_probability=1e-12, payload=7, key_id="watermark-1", score=9.0
        ),
    )
    assert v.status is VerdictStatus.DECLARED_SYNTHETIC
    assert "recovered from watermark" in v.reasons[-1].message


def test_detector_scores_against_thresholds() -> None:
    unsigned = _report(pixels=False)
    tampered = decide(policy=DEFAULT_POLICY, signature=unsigned, detector=_scores(tamper=0.9, tamper_threshold=0.7))
    assert tampered.status is VerdictStatus.TAMPERED
    assert "tamper score 0.900" in tampered.reasons[-1].message
    # A head whose threshold is 1.0 (it did not separate real from fake in calibration) decides nothing.
    disabled = _scores(tamper=0.9, tamper_threshold=1.0)
    assert decide(policy=DEFAULT_POLICY, signature=unsigned, detector=disabled).status is VerdictStatus.NO_EVIDENCE
    suspected = decide(policy=DEFAULT_POLICY, signature=unsigned, detector=_scores(synthetic=0.8, threshold=0.6))
    assert (suspected.status, suspected.action) == (VerdictStatus.SUSPECTED_SYNTHETIC, Action.QUARANTINE)
    assert suspected.reasons[-1].source == "detector"
    # The score at the threshold counts (at/above).
    at = decide(policy=DEFAULT_POLICY, signature=unsigned, detector=_scores(synthetic=0.6, threshold=0.6))
    assert at.status is VerdictStatus.SUSPECTED_SYNTHETIC
    below = decide(policy=DEFAULT_POLICY, signature=unsigned, detector=_scores(synthetic=0.2, threshold=0.6))
    assert below.status is VerdictStatus.NO_EVIDENCE
    assert "below their thresholds" in below.reasons[-1].message
    failure = DetectionFailure(model_tag="test-model", threshold=0.6, tamper_threshold=0.7, error="no pixels")
    failed = decide(policy=DEFAULT_POLICY, signature=unsigned, detector=failure)
    assert failed.status is VerdictStatus.NO_EVIDENCE
    assert "could not be scored" in failed.reasons[-1].message
    # An acquisition signature outranks a high synthetic score; a high tamper score outranks the signature.
    signed = _report(_sig(SignatureStatus.VALID))
    high_synthetic, high_tamper = _scores(synthetic=0.99, threshold=0.5), _scores(tamper=0.99, tamper_threshold=0.5)
    assert decide(policy=DEFAULT_POLICY, signature=signed, detector=high_synthetic).status is VerdictStatus.AUTHENTIC
    assert decide(policy=DEFAULT_POLICY, signature=signed, detector=high_tamper).status is VerdictStatus.TAMPERED


def test_site_policy_thresholds_override_the_model() -> None:
    unsigned = _report(pixels=False)
    strict = Policy.from_mapping({"version": "strict", "synthetic_threshold": 0.3, "tamper_threshold": 0.95})
    report = _scores(synthetic=0.4, threshold=0.6, tamper=0.9, tamper_threshold=0.5)
    assert decide(policy=strict, signature=unsigned, detector=report).status is VerdictStatus.SUSPECTED_SYNTHETIC
    assert DEFAULT_POLICY.tamper_threshold is None and DEFAULT_POLICY.synthetic_threshold is None
    assert decide(policy=DEFAULT_POLICY, signature=unsigned, detector=report).status is VerdictStatus.TAMPERED


def test_policy_file_overrides_and_is_strict(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text('version = "hospital-7"\nuncovered_action = "quarantine"\n[actions]\nNO_EVIDENCE = "flag"\n')
    policy = load_policy(path)
    assert policy.version == "hospital-7"
    assert policy.actions[VerdictStatus.NO_EVIDENCE] is Action.FLAG
    assert policy.actions[VerdictStatus.TAMPERED] is Action.REJECT  # defaults fill the rest
    v = decide(policy=policy, signature=_report(_sig(SignatureStatus.VALID), uncovered=1))
    assert (v.action, v.policy_version) == (Action.QUARANTINE, "hospital-7")
    assert load_policy(None) is DEFAULT_POLICY
    for bad, message in [
        ('version = "x"\ntypo = 1\n', "unknown policy key"),
        ('[actions]\nTAMPERED = "reject"\n', "needs a version"),
        ('version = "x"\n[actions]\nTAMPERED = "ignore"\n', "ignore"),
        ('version = "x"\ntamper_threshold = 3\n', "between 0 and 1"),
    ]:
        path.write_text(bad)
        with pytest.raises(ConfigError, match=message):
            Policy.from_file(path)


def test_verdict_has_no_truth_value() -> None:
    with pytest.raises(TypeError):
        bool(decide(policy=DEFAULT_POLICY, input_error=("UNREADABLE", "x")))


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "acquisition-signed"])
def test_synthetic_data_yes_declares_the_image_synthetic_signed_or_not(signed: bool) -> None:
    signature = _report(_sig(SignatureStatus.VALID)) if signed else _report(pixels=None)
    v = decide(policy=DEFAULT_POLICY, signature=signature, synthetic_data=True)
    assert (v.status, v.action) == (VerdictStatus.DECLARED_SYNTHETIC, Action.QUARANTINE)
    assert any(r.source == "declaration" and "Synthetic Data (0008,001C) is YES" in r.message for r in v.reasons)
    assert decide(policy=DEFAULT_POLICY, signature=signature, synthetic_data=False).status is not (
        VerdictStatus.DECLARED_SYNTHETIC
    )


def test_synthetic_data_does_not_hide_tampering() -> None:
    v = decide(policy=DEFAULT_POLICY, signature=_report(_sig(SignatureStatus.INVALID)), synthetic_data=True)
    assert v.status is VerdictStatus.TAMPERED


def test_a_check_that_did_not_run_is_a_reason_and_changes_nothing_else() -> None:
    base = decide(policy=DEFAULT_POLICY, signature=_report(pixels=None))
    told = decide(policy=DEFAULT_POLICY, signature=_report(pixels=None), not_run={"watermark": "no key yet"})
    assert (told.status, told.action) == (base.status, base.action)
    assert told.reasons[-1].source == "watermark" and told.reasons[-1].message == "not run: no key yet"


def test_a_threshold_short_of_one_never_reads_as_one() -> None:
    """A threshold of 0.99982 is printed so that it differs from 1.000 (a threshold that never flags)."""
    assert (score_text(0.99982), score_text(0.994), score_text(1.0), score_text(0.1163)) == (
        "0.9998", "0.994", "1.000", "0.116")
    assert score_text(0.99999999) == "0.999999" and score_text(0.9999996) == "0.999999"
    verdict = decide(policy=DEFAULT_POLICY, detector=_scores(synthetic=0.99991, threshold=0.99982))
    assert verdict.status is VerdictStatus.SUSPECTED_SYNTHETIC
    assert "synthetic score 0.9999 ≥ threshold 0.9998 " in verdict.reasons[-1].message
