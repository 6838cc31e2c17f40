"""What judged a file (:class:`verifier.judge.Judge`): each part changes the digest, and the change is named."""

from __future__ import annotations

import dataclasses

from provenance.keys import KeyStore
from provenance.trust import TrustPolicy
from provenance.watermark import WatermarkKey
from verifier.checker import Check, Checker
from verifier.judge import Judge
from verifier.policy import DEFAULT_POLICY, Action, VerdictStatus


def test_every_part_changes_the_digest_and_is_named(keystore: KeyStore) -> None:
    trust = keystore.trust_policy()
    base = Checker(checks=frozenset({Check.SIGNATURE}), trust=trust)
    judge = Judge.of(base)
    assert Judge.of(Checker(checks=frozenset({Check.SIGNATURE}), trust=keystore.trust_policy())) == judge
    assert Judge.from_dict(judge.to_dict()) == judge and Judge.from_dict({"checks": 1}) is None

    revoked = TrustPolicy(anchors=trust.anchors, revoked_fingerprints=["ab" * 32])
    stricter = dataclasses.replace(
        DEFAULT_POLICY, actions={**DEFAULT_POLICY.actions, VerdictStatus.NO_EVIDENCE: Action.FLAG}
    )  # same version, other content: still another policy
    variants = {
        "trust store and revocations": dataclasses.replace(base, trust=revoked),
        "site policy": dataclasses.replace(base, site_policy=stricter),
        "checks": Checker(checks=frozenset({Check.SIGNATURE}), not_run={Check.DETECTOR: "no model"}, trust=trust),
    }
    for name, checker in variants.items():
        other = Judge.of(checker)
        assert other.digest != judge.digest, name
        assert other.changes(judge) == [name]
    with_keys = Checker(
        checks=frozenset({Check.SIGNATURE, Check.WATERMARK}), trust=trust, watermark_keys=(WatermarkKey.generate(7),)
    )
    assert set(Judge.of(with_keys).changes(judge)) == {"checks", "watermark keys"}
    assert judge.changes(None) == ["what judged it is not recorded"]


def test_trust_does_not_judge_a_scan_without_the_signature_check(keystore: KeyStore) -> None:
    keys = (WatermarkKey.generate(1),)
    one = Checker(checks=frozenset({Check.WATERMARK}), trust=keystore.trust_policy(), watermark_keys=keys)
    other = dataclasses.replace(one, trust=TrustPolicy(anchors=keystore.trust_policy().anchors[:1],
                                                       revoked_fingerprints=["cd" * 32]))  # fmt: skip
    assert Judge.of(one) == Judge.of(other)
