"""Reports, audit records and proofs as labelled rows for the review pages (no raw JSON on screen)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from verifier.audit import AuditLog, TrustedCertificates

__all__ = ["ProofView", "audit_rows", "labelled_rows", "proof_view"]

#: Labels for keys that read badly as words.
_LABELS = {
    "sha256": "SHA-256",
    "sop_instance_uid": "SOP Instance UID",
    "sop_class_uid": "SOP Class UID",
    "ae_title": "AE title",
    "peer_ae_title": "Peer AE title",
    "api_token_id": "API token id",
    "mac_algorithm": "MAC algorithm",
    "model_tag": "Model",
    "false_alarm_probability": "False-alarm probability",
    "key_id": "Key id",
    "file_sha256": "File SHA-256",
    "check_ms": "Check time (ms)",
}
#: Values longer than this are cut (certificates, long hex strings).
_VALUE_CHARS = 200


def _label(key: str) -> str:
    return _LABELS.get(key) or key.replace("_", " ").capitalize()


def _value(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= _VALUE_CHARS else text[: _VALUE_CHARS - 1] + "…"


def labelled_rows(data: Any, prefix: str = "", depth: int = 0) -> list[tuple[str, str]]:
    """``data`` (a report's JSON form) as (label, text) rows: nested objects flattened with "›", lists of plain
    values joined, lists of objects numbered."""
    rows: list[tuple[str, str]] = []
    if not isinstance(data, Mapping):
        return [(prefix or "Value", _value(data))]
    for key, value in data.items():
        label = f"{prefix} › {_label(str(key))}" if prefix else _label(str(key))
        if isinstance(value, Mapping) and depth < 4:
            rows.extend(labelled_rows(value, label, depth + 1))
        elif isinstance(value, list | tuple) and value and all(isinstance(v, Mapping) for v in value) and depth < 4:
            for i, item in enumerate(value, 1):
                rows.extend(labelled_rows(item, f"{label} {i}", depth + 1))
        elif isinstance(value, list | tuple):
            rows.append((label, ", ".join(_value(v) for v in value) if value else "none"))
        else:
            rows.append((label, _value(value)))
    return rows


def audit_rows(record: Mapping[str, Any]) -> list[tuple[str, str]]:
    """An audit record's own fields (the reports are shown once, in their own panels)."""
    keep = ("id", "leaf_index", "leaf_hash", "event", "channel", "when", "path", "file_sha256", "peer_ae_title",
            "peer_address", "api_token_id", "os_user", "host", "verdict", "action", "policy_version")  # fmt: skip
    rows = [(_label(k), _value(record.get(k))) for k in keep if record.get(k) is not None]
    details = record.get("details")
    if isinstance(details, Mapping):
        intake = details.get("intake")
        if isinstance(intake, Mapping):
            rows.extend(labelled_rows(intake, "Intake"))
        review = details.get("review")
        if isinstance(review, Mapping):
            rows.extend(labelled_rows(review, "Review"))
    return rows


@dataclasses.dataclass(frozen=True)
class ProofView:
    """An inclusion proof as the page shows it: checked or not, and why."""

    status: str
    reason: str
    rows: list[tuple[str, str]]


def proof_view(log: AuditLog, record_id: int, trusted: TrustedCertificates | None) -> ProofView:
    """The inclusion proof of ``record_id`` against the latest signed checkpoint, checked offline."""
    from verifier.audit import ProofStatus, check_proof
    from verifier.errors import AuditError

    try:
        checkpoint = log.latest_checkpoint()
        if checkpoint is None or checkpoint.tree_size < record_id:
            why = "no signed checkpoint covers this record yet (medverify audit checkpoint signs one)"
            return ProofView("pending", why, [])
        proof = log.prove(record_id, tree_size=checkpoint.tree_size)
    except AuditError as exc:
        return ProofView("error", exc.diagnostics(), [])
    rows = [
        ("Record", str(proof.record_id)),
        ("Leaf index", str(proof.leaf_index)),
        ("Leaf hash", proof.leaf_hash),
        ("Checkpoint", f"{checkpoint.tree_size} records, signed {checkpoint.created_at:%Y-%m-%d %H:%M:%S} UTC"),
        ("Root hash", proof.root_hash),
        ("Audit path", f"{len(proof.audit_path)} hashes"),
    ]
    if trusted is None:
        return ProofView("unchecked", "the proof leads to the checkpoint's root; its signer was not checked", rows)
    check = check_proof(proof, checkpoint, trusted=trusted)
    status = "valid" if check.status is ProofStatus.VALID else "invalid"
    return ProofView(status, check.reason or "the record is in the log the trusted checkpoint signs", rows)
