"""How ``verify`` and ``scan`` show a checked file, and the exit code their results give."""

from __future__ import annotations

from collections.abc import Sequence

from rich.markup import escape

from verifier.cli import _common
from verifier.policy import Action, score_text
from verifier.result import FileResult

__all__ = ["FORMATS", "exit_code", "print_result"]

#: The ``--format`` values of the commands that print one result a file.
FORMATS = ("text", "json", "jsonl")

_ACTION_STYLE = {Action.ACCEPT: "green", Action.FLAG: "yellow", Action.QUARANTINE: "magenta", Action.REJECT: "red"}


def exit_code(results: Sequence[FileResult]) -> int:
    """ClamAV convention: 1 if something was found (the policy does not simply accept a file), else 2 if an error
    stopped a check (unreadable input), else 0."""
    if any(r.problem_found for r in results):
        return 1
    if any(r.failed for r in results):
        return 2
    return 0


def print_result(result: FileResult) -> None:
    """The verdict, action and path of one file, then its signatures, detector scores and reasons."""
    style = _ACTION_STYLE[result.verdict.action]
    line = f"[{style}]{result.verdict.status.value:<19} {result.verdict.action.value:<10}[/] {escape(result.label)}"
    cred = result.credentials
    if cred is not None:
        line += escape(f"\n    C2PA Content Credentials {cred.status.value}, signed by {cred.signer or '?'}, claim "
                       f"generator {cred.claim_generator or '?'}, source type {', '.join(cred.source_types) or '?'}")
    sig = result.signature
    if sig is not None and sig.signatures:
        parts = []
        for s in sig.signatures:
            who = s.signer or "unknown signer"
            role = f", role {s.role}" if s.role else ""
            what = "pixel binding, " if s.pixel_binding else ""
            parts.append(f"{s.status.value} by {who}{role} ({s.mac_algorithm or '?'}, {what}{len(s.covered)} elements)")
        line += "\n    " + "\n    ".join(escape(p) for p in parts)
    det = result.detection_dict()
    if det is not None and det.get("synthetic_score") is not None:
        line += (
            f"\n    detector {escape(str(det.get('model_tag')))}: synthetic {score_text(det['synthetic_score'])} "
            f"(threshold {score_text(det.get('threshold', 0.0))}), tamper {score_text(det['tamper_score'])} "
            f"(threshold {score_text(det.get('tamper_threshold', 0.0))})"
        )
        if det.get("heatmap"):
            line += f", heatmap {escape(str(det['heatmap']))}"
    for reason in result.reasons:
        line += f"\n    - {escape(reason)}"
    _common.console.print(line, highlight=False)
