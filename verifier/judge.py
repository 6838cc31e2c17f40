"""What judged a file: the checks that ran, the trust store and its revocations, the site policy, the watermark keys
and the detector model, condensed into a :class:`Judge` whose :attr:`~Judge.digest` an incremental scan keeps with
each file, and which a running server compares to notice that its trust or policy changed on disk.

A verdict is only as current as what gave it: a file checked before a certificate was trusted, a key revoked, the
policy tightened or the detector replaced would keep its old verdict for ever if a scan skipped it because its bytes
did not change. :meth:`Judge.changes` names what differs between two judges, for messages and audit records.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provenance.trust import TrustPolicy, fingerprint_sha256

if TYPE_CHECKING:
    from verifier.checker import Checker
    from verifier.policy import Policy

__all__ = ["Judge", "model_identity", "policy_identity", "trust_identity"]

#: The parts of a judge, in the order messages name them.
_PARTS = ("checks", "trust", "policy", "watermark_keys", "model")
_LABELS = {
    "checks": "checks",
    "trust": "trust store and revocations",
    "policy": "site policy",
    "watermark_keys": "watermark keys",
    "model": "detector model",
}


def _short(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def trust_identity(trust: TrustPolicy) -> str:
    """A digest of the trust anchors and the revocations (any added, removed or revoked certificate changes it)."""
    if trust.trusts_everything:
        return "unsafe-trust-everything"
    return _short(
        {
            "anchors": sorted(fingerprint_sha256(a) for a in trust.anchors),
            "revoked_serials": sorted([issuer, str(serial)] for issuer, serial in trust.revoked_serials),
            "revoked_fingerprints": sorted(trust.revoked_fingerprints),
        }
    )


def policy_identity(policy: Policy) -> str:
    """The policy's version and a digest of its content (an edit that forgot to raise the version still counts)."""
    return f"{policy.version}:{_short(policy.to_dict())}"


def model_identity(bundle: Path | None) -> str:
    """The detector bundle's model tag and weight digest, read from its ``config.json`` (no weights, no torch)."""
    if bundle is None:
        from verifier.setup import shipped_detector_bundle

        bundle = shipped_detector_bundle()
        if bundle is None:
            return "none"
    try:
        record = json.loads((bundle / "config.json").read_text(encoding="utf-8"))
        tag = record["config"]["tag"]
        digest = str(record.get("digest") or "")[:16]
    except (OSError, ValueError, KeyError, TypeError):
        return f"unreadable:{bundle}"
    return f"{tag}:{digest}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Judge:
    """What a :class:`~verifier.checker.Checker` judges with, each part as a short string that changes with it."""

    #: The checks that ran, and those asked for that could not (a check that could not run was not judged by).
    checks: str
    trust: str
    policy: str
    watermark_keys: str
    model: str

    @classmethod
    def of(cls, checker: Checker) -> Judge:
        from verifier.checker import Check

        ran = sorted(c.value for c in checker.checks)
        skipped = sorted(c.value for c in checker.not_run)
        checks = ",".join(ran) + (f" (not run: {','.join(skipped)})" if skipped else "")
        keys = "-"
        if Check.WATERMARK in checker.checks:
            keys = ",".join(sorted(str(k.key_id) for k in checker.watermark_keys))
        if Check.DETECTOR in checker.checks:
            model = model_identity(checker.detector.model if checker.detector is not None else None)
        else:
            model = "-"
        return cls(
            checks=checks,
            # A file that was not signature-checked was judged by no trust store.
            trust=trust_identity(checker.trust) if Check.SIGNATURE in checker.checks else "-",
            policy=policy_identity(checker.site_policy),
            watermark_keys=keys,
            model=model,
        )

    @property
    def digest(self) -> str:
        """SHA-256 (hex) of every part: what the scan state keeps with each file."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def to_dict(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in _PARTS}

    @classmethod
    def from_dict(cls, data: Any) -> Judge | None:
        """The judge stored as :meth:`to_dict` gave it, or None when ``data`` is not one."""
        if not isinstance(data, dict) or not all(isinstance(data.get(n), str) for n in _PARTS):
            return None
        return cls(**{n: data[n] for n in _PARTS})

    def changes(self, earlier: Judge | None) -> list[str]:
        """What differs from ``earlier``, in words ("trust store and revocations", "site policy", ...); every part
        when ``earlier`` is unknown."""
        if earlier is None:
            return ["what judged it is not recorded"]
        return [_LABELS[n] for n in _PARTS if getattr(self, n) != getattr(earlier, n)]
