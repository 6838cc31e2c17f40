"""``medverify quarantine list | show | release | reject``: quarantine review for scripts.

The same operations as the review pages (``medverify serve``, /ui/quarantine) and /v1/quarantine, on the same
directories; a decision's audit record names the OS user who ran the command.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from verifier.cli import _common, app
from verifier.cli._options import DbOption
from verifier.errors import InputError

if TYPE_CHECKING:
    from verifier.review.desk import ReviewDesk

__all__ = ["quarantine_app"]

quarantine_app = typer.Typer(help="Review quarantined instances: list, show, release, reject (each audited).",
                             no_args_is_help=True)  # fmt: skip
app.add_typer(quarantine_app, name="quarantine")

QuarantineDirOption = Annotated[
    Path | None,
    typer.Option("--quarantine", help="The gateway's and Orthanc plugin's quarantine (default: HOME/quarantine)."),
]
SpoolOption = Annotated[
    Path | None, typer.Option("--spool", help="The gateway's spool, where releases go (default: HOME/spool).")
]
StoreOption = Annotated[
    Path | None,
    typer.Option("--store-dir", help="The STOW-RS store of `medverify serve` (default: HOME/intake/stow)."),
]
FormatOption = Annotated[str, typer.Option("--format", "-f", help="text or jsonl.")]
CommentOption = Annotated[str, typer.Option("--comment", "-m", help="Why (required; kept in the audit record).")]


@contextmanager
def _desk(db: str | None, quarantine: Path | None, spool: Path | None, store_dir: Path | None) -> Iterator[ReviewDesk]:
    from verifier.api.storage import InstanceStore
    from verifier.setup import open_audit_log, open_review_desk

    settings = _common.settings()
    store = InstanceStore(store_dir or settings.home / "intake" / "stow")
    with open_audit_log(settings, db=db) as log:
        yield open_review_desk(settings, log, quarantine=quarantine, gateway_spool=spool, stow_store=store)


def _check_format(output_format: str, allowed: tuple[str, ...] = ("text", "jsonl")) -> None:
    if output_format not in allowed:
        raise InputError(f"--format must be {' or '.join(allowed)}, not {output_format!r}")


@quarantine_app.command("list", help="Quarantined instances across every channel, newest first.")
def list_(
    verdict: Annotated[str | None, typer.Option("--verdict", help="Only this verdict.")] = None,
    channel: Annotated[str | None, typer.Option("--channel", help="gateway, orthanc-dicom, stow-rs, ...")] = None,
    since: Annotated[str | None, typer.Option("--since", help="Arrived on or after YYYY-MM-DD.")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Arrived on or before YYYY-MM-DD.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many.")] = 100,
    output_format: FormatOption = "text",
    quarantine: QuarantineDirOption = None,
    spool: SpoolOption = None,
    store_dir: StoreOption = None,
    db: DbOption = None,
) -> int:
    _check_format(output_format)
    with _desk(db, quarantine, spool, store_dir) as desk:
        page = desk.page(verdict=verdict, channel=channel, since=since, until=until, limit=limit)
    rows = [e.summary() for e in page.entries]
    if output_format == "jsonl":
        sys.stdout.write("".join(json.dumps(r) + "\n" for r in rows))
        return 0
    for r in rows:
        who = f"{r['channel']}" + (f" AE {r['ae_title']}" if r["ae_title"] else "")
        _common.console.print(
            f"{r['id']}  {r['received']}  {r['verdict'] or '-'}  patient {escape(str(r['patient_id'] or '-'))}  "
            f"acc. {escape(str(r['accession_number'] or '-'))}  {escape(who)}",
            highlight=False,
        )
    _common.err_console.print(f"{page.total} waiting; {len(rows)} shown", highlight=False)
    return 0


@quarantine_app.command(help="One instance: identifiers, verdict, reasons, reports, arrivals and any decision.")
def show(
    entry_id: Annotated[str, typer.Argument(help="The id from `quarantine list` (<bin>-<sha256>).")],
    output_format: Annotated[str, typer.Option("--format", "-f", help="text or json.")] = "text",
    quarantine: QuarantineDirOption = None,
    spool: SpoolOption = None,
    store_dir: StoreOption = None,
    db: DbOption = None,
) -> int:
    from verifier.review.views import labelled_rows

    _check_format(output_format, ("text", "json"))
    with _desk(db, quarantine, spool, store_dir) as desk:
        entry = desk.get(entry_id)
    data: dict[str, Any] = {**entry.summary(), "arrival_records": entry.arrivals}
    data.update({k: entry.field(k) for k in ("signature", "watermark", "detector")})
    if output_format == "json":
        sys.stdout.write(json.dumps(data) + "\n")
        return 0
    for label, value in labelled_rows(data):
        _common.console.print(f"{label}: {escape(value)}", highlight=False)
    return 0


def _decide(decision_name: str, entry_id: str, comment: str, dirs: tuple[Any, ...]) -> int:
    from verifier.audit import Channel
    from verifier.audit.entry import local_actor
    from verifier.review.desk import Decision, Reviewer

    user, host = local_actor()
    reviewer = Reviewer(label=f"{user}@{host} (CLI)", channel=Channel.CLI)
    with _desk(*dirs) as desk:
        outcome = desk.decide(entry_id, Decision(decision_name), reviewer=reviewer, comment=comment)
    _common.err_console.print(
        f"{outcome.decision.past} {outcome.entry_id} to {outcome.destination} (audit #{outcome.audit_id})",
        highlight=False,
    )
    return 0


@quarantine_app.command(help="Send an instance on to where it was going (the gateway's forward queue, ...).")
def release(
    entry_id: Annotated[str, typer.Argument(help="The id from `quarantine list`.")],
    comment: CommentOption,
    quarantine: QuarantineDirOption = None,
    spool: SpoolOption = None,
    store_dir: StoreOption = None,
    db: DbOption = None,
) -> int:
    return _decide("release", entry_id, comment, (db, quarantine, spool, store_dir))


@quarantine_app.command(help="Move an instance to the rejected store.")
def reject(
    entry_id: Annotated[str, typer.Argument(help="The id from `quarantine list`.")],
    comment: CommentOption,
    quarantine: QuarantineDirOption = None,
    spool: SpoolOption = None,
    store_dir: StoreOption = None,
    db: DbOption = None,
) -> int:
    return _decide("reject", entry_id, comment, (db, quarantine, spool, store_dir))
