"""``medverify audit ...`` and ``medverify db ...``: query, export, verify and prove the audit log.

Exit codes: 0 the log (or proof) checks out, 1 tampering or a bad proof was found, 2 an error stopped work.
"""

from __future__ import annotations

import csv
import datetime as dt
import enum
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from verifier.audit import (
    AuditRecord,
    AuditStatus,
    Channel,
    InclusionProof,
    ProofStatus,
    SignedCheckpoint,
    _db,
    check_proof,
)
from verifier.cli import _common, app
from verifier.cli._options import DbOption, TrustCertOption
from verifier.errors import AuditError, InputError
from verifier.setup import checkpoint_signers, open_audit_log

__all__ = ["audit_app", "db_app"]

audit_app = typer.Typer(
    help=(
        "The tamper-evident audit log: every verification, signing, generation, key event and scan. "
        "Records form an RFC 9162 Merkle log with signed checkpoints."
    ),
    no_args_is_help=True,
)
db_app = typer.Typer(help="Create and migrate the audit database.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
app.add_typer(db_app, name="db")


class ListFormat(enum.StrEnum):
    TABLE = "table"
    JSON = "json"
    JSONL = "jsonl"
    TSV = "tsv"
    CSV = "csv"


class ExportFormat(enum.StrEnum):
    JSONL = "jsonl"
    CSV = "csv"


class ReportFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


def _parse_time(value: str | None, option: str) -> dt.datetime | None:
    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise InputError(f"{option} must be an ISO 8601 date or time, not {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


@contextmanager
def _output(path: Path | None) -> Iterator[IO[str]]:
    if path is None:
        yield sys.stdout
        sys.stdout.flush()
        return
    try:
        with open(path, "w", encoding="utf-8", newline="") as fh:
            yield fh
    except OSError as error:
        raise InputError(f"cannot write {path}: {error.strerror}") from error


_CSV_COLUMNS = (
    "id",
    "leaf_index",
    "leaf_hash",
    "when",
    "event",
    "channel",
    "path",
    "sop_instance_uid",
    "file_sha256",
    "os_user",
    "host",
    "peer_ae_title",
    "peer_address",
    "api_token_id",
    "model_tag",
    "policy_version",
    "verdict",
    "action",
    "signature_report",
    "watermark_report",
    "detection_report",
    "details",
)


def _write_records(records: Iterator[AuditRecord], fmt: str, out: IO[str]) -> int:
    count = 0
    if fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(_CSV_COLUMNS)
        for record in records:
            data = record.to_json_dict()
            writer.writerow(
                [
                    json.dumps(v, sort_keys=True) if isinstance(v, dict) else ("" if v is None else v)
                    for v in (data[c] for c in _CSV_COLUMNS)
                ]
            )
            count += 1
    else:
        for record in records:
            out.write(json.dumps(record.to_json_dict(), sort_keys=True, ensure_ascii=False) + "\n")
            count += 1
    return count


#: The columns of ``audit list`` as a table or TSV.
_LIST_COLUMNS = ("id", "when (UTC)", "event", "channel", "verdict", "action", "path", "sop_instance_uid")


def _list_row(record: AuditRecord) -> list[str]:
    e = record.entry
    return [
        str(record.id),
        e.when.strftime("%Y-%m-%d %H:%M:%S"),
        e.event,
        e.channel.value,
        e.verdict or "",
        e.action or "",
        e.path or "",
        e.sop_instance_uid or "",
    ]


def _tsv_field(value: str) -> str:
    # TSV has no quoting: a tab or newline inside a value would start a new field or record.
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


@audit_app.command("list")
def list_command(
    since: Annotated[
        str | None, typer.Option(help="Only records at or after this time (ISO 8601, UTC if no zone).")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Only records before this time.")] = None,
    verdict: Annotated[
        list[str] | None,
        typer.Option(
            help="Only records with this verdict (repeatable; any case). A value that is no verdict is an error "
            "that lists the valid ones."
        ),
    ] = None,
    action: Annotated[
        list[str] | None, typer.Option(help="Only records with this action: accept, flag, quarantine, reject, ...")
    ] = None,
    channel: Annotated[list[Channel] | None, typer.Option(help="Only records from this channel (repeatable).")] = None,
    event: Annotated[list[str] | None, typer.Option(help="Only records of this event kind (repeatable).")] = None,
    path_glob: Annotated[
        str | None, typer.Option("--path-glob", "--path", help="Only paths matching this shell pattern.")
    ] = None,
    uid: Annotated[str | None, typer.Option("--uid", help="Only records of this SOP Instance UID.")] = None,
    sha256: Annotated[str | None, typer.Option("--sha256", help="Only records of the file with this SHA-256.")] = None,
    limit: Annotated[int, typer.Option(min=0, help="Records per page (0: all on one page).")] = 100,
    page: Annotated[int, typer.Option(min=1, help="Which page (1: the newest records).")] = 1,
    oldest_first: Annotated[bool, typer.Option("--oldest-first", help="Oldest records first.")] = False,
    fmt: Annotated[
        ListFormat, typer.Option("--format", help="table (for people), json, jsonl, tsv or csv (for programs).")
    ] = ListFormat.TABLE,
    db: DbOption = None,
) -> None:
    """List records, newest first, a page at a time; stderr says how many matched and which page this is.

    Nothing is cut short when stdout is not a terminal; json/jsonl carry every field of each record.
    """
    from verifier.audit.search import AuditQuery, normalise_actions, normalise_verdicts, search

    with open_audit_log(_common.settings(), db=db, signer=False) as log:
        query = AuditQuery(
            since=_parse_time(since, "--since"),
            until=_parse_time(until, "--until"),
            verdicts=normalise_verdicts(log, verdict or ()),
            actions=normalise_actions(log, action or ()),
            channels=tuple(c.value for c in channel or ()),
            events=tuple(event or ()),
            path_glob=path_glob,
            uid=uid,
            sha256=sha256,
        )
        result = search(log, query, limit=limit or None, page=page, newest_first=not oldest_first)
    note = result.describe()
    if result.page < result.pages:
        note += f"; next: --page {result.page + 1}"
    _common.err_console.print(note, highlight=False)
    if fmt is ListFormat.TABLE:
        table = Table(box=box.SIMPLE)
        for column in _LIST_COLUMNS[:-1]:
            table.add_column(column, overflow="fold")
        for r in result.records:
            table.add_row(*(escape(v) for v in _list_row(r)[:-1]))
        if _common.console.is_terminal:
            _common.console.print(table)
        else:  # a pipe or a file: never cut a path or a verdict to a guessed width
            Console(file=sys.stdout, width=100_000, soft_wrap=True, no_color=True).print(table)
    elif fmt is ListFormat.TSV:
        out = sys.stdout
        out.write("\t".join(c.replace(" (UTC)", "") for c in _LIST_COLUMNS) + "\n")
        for r in result.records:
            out.write("\t".join(_tsv_field(v) for v in _list_row(r)) + "\n")
    elif fmt is ListFormat.JSON:
        payload = {
            "total": result.total,
            "offset": result.offset,
            "limit": result.limit,
            "page": result.page,
            "pages": result.pages,
            "newest_first": result.newest_first,
            "records": [r.to_json_dict() for r in result.records],
        }
        sys.stdout.write(json.dumps(payload, sort_keys=True, ensure_ascii=False, indent=1) + "\n")
    else:
        _write_records(iter(result.records), fmt.value, sys.stdout)


@audit_app.command("show")
def show_command(record_id: Annotated[int, typer.Argument(help="Record id.")], db: DbOption = None) -> None:
    """Print one record as JSON."""
    with open_audit_log(_common.settings(), db=db, signer=False) as log:
        record = log.get(record_id)
    sys.stdout.write(json.dumps(record.to_json_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n")


@audit_app.command("export")
def export_command(
    fmt: Annotated[ExportFormat, typer.Option("--format", help="Output format.")] = ExportFormat.JSONL,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write here instead of stdout.")
    ] = None,
    db: DbOption = None,
) -> None:
    """Export every record, oldest first."""
    with open_audit_log(_common.settings(), db=db, signer=False) as log, _output(output) as out:
        count = _write_records(log.query(), fmt.value, out)
    if output is not None:
        _common.err_console.print(f"exported {count} records to {output}")


@audit_app.command("verify")
def verify_command(
    trust_cert: TrustCertOption = None,
    fmt: Annotated[ReportFormat, typer.Option("--format", help="Output format.")] = ReportFormat.TEXT,
    db: DbOption = None,
) -> int:
    """Recompute the whole log; exit 1, naming the first bad record, if a record was edited or moved."""
    settings = _common.settings()
    trusted = checkpoint_signers(settings, trust_cert, create=True, notify=_common.note)
    with open_audit_log(settings, db=db, signer=False) as log:
        result = log.verify(trusted=trusted)
    if fmt is ReportFormat.JSON:
        sys.stdout.write(json.dumps(result.to_json_dict(), sort_keys=True) + "\n")
    elif result.status is AuditStatus.VALID:
        _common.console.print(f"[green]valid[/]: {result.reason}; root {result.root_hash}")
        if result.unanchored_records:
            _common.console.print(
                f"{result.unanchored_records} newest records are not yet under a signed checkpoint "
                "(run `medverify audit checkpoint`)"
            )
    else:
        first = (
            "" if result.first_bad_record_id is None else f" first bad record: {result.first_bad_record_id};"
        )
        _common.console.print(f"[bold red]{result.status.value}[/]:{first} {result.reason}", highlight=False)
    return 0 if result.status is AuditStatus.VALID else 1


@audit_app.command("prove")
def prove_command(
    record_id: Annotated[int, typer.Argument(help="Record id.")],
    tree_size: Annotated[
        int | None, typer.Option(help="Prove against the checkpoint of this size (default: the latest).")
    ] = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write the proof here.")] = None,
    db: DbOption = None,
) -> None:
    """Print an inclusion proof (JSON) of a record against a signed checkpoint."""
    with open_audit_log(_common.settings(), db=db, signer=False) as log:
        proof = log.prove(record_id, tree_size=tree_size)
    with _output(output) as out:
        out.write(json.dumps(proof.to_json_dict(), indent=2, ensure_ascii=False) + "\n")


@audit_app.command("check-proof")
def check_proof_command(
    proof_file: Annotated[Path, typer.Argument(metavar="PROOF", help="Proof from `medverify audit prove`.")],
    checkpoint_file: Annotated[
        Path,
        typer.Argument(metavar="CHECKPOINT", help="Checkpoint from `medverify audit checkpoint --export`."),
    ],
    trust_cert: TrustCertOption = None,
    fmt: Annotated[ReportFormat, typer.Option("--format", help="Output format.")] = ReportFormat.TEXT,
) -> int:
    """Check offline that a record is in the log a signed checkpoint vouches for (exit 1 if not)."""
    proof = InclusionProof.from_file(proof_file)
    checkpoint = SignedCheckpoint.from_file(checkpoint_file)
    result = check_proof(proof, checkpoint, trusted=checkpoint_signers(_common.settings(), trust_cert))
    if fmt is ReportFormat.JSON:
        data: dict[str, Any] = {
            "status": result.status.value,
            "reason": result.reason,
            "record_id": result.record_id,
            "tree_size": result.tree_size,
            "signer_sha256": result.signer_sha256,
        }
        sys.stdout.write(json.dumps(data, sort_keys=True) + "\n")
    else:
        colour = "green" if result.status is ProofStatus.VALID else "bold red"
        _common.console.print(
            f"[{colour}]{result.status.value}[/]: {result.reason} (signer sha256 {result.signer_sha256})",
            highlight=False,
        )
    return 0 if result.status is ProofStatus.VALID else 1


@audit_app.command("checkpoint")
def checkpoint_command(
    export: Annotated[
        Path | None,
        typer.Option(
            "--export",
            help="Also write the latest signed checkpoint (JSON, with the signer's certificate) here.",
        ),
    ] = None,
    sign: Annotated[
        bool, typer.Option("--sign/--no-sign", help="Sign the current head now (needs the audit key).")
    ] = True,
    db: DbOption = None,
) -> None:
    """Sign a checkpoint of the log now, and optionally export the latest one for anchoring elsewhere."""
    settings = _common.settings()
    with open_audit_log(settings, db=db, signer=sign, interactive=True) as log:
        cp = log.checkpoint() if sign else log.latest_checkpoint()
    if cp is None:
        raise AuditError(
            "there is no signed checkpoint yet; run `medverify audit checkpoint` with the audit key"
        )
    _common.console.print(f"checkpoint: {cp.tree_size} records, root {cp.root_hash}", highlight=False)
    if export is not None:
        with _output(export) as out:
            out.write(json.dumps(cp.to_json_dict(), indent=2) + "\n")
        _common.err_console.print(f"exported to {export}")


@db_app.command("upgrade")
def db_upgrade_command(
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
    db: DbOption = None,
) -> None:
    """Create the audit database or migrate it to the newest schema."""
    url = db or _common.settings().database_url
    engine = _db.make_engine(url)
    try:
        with _db.db_errors(url):
            current = _db.upgrade(engine, revision)
    finally:
        engine.dispose()
    _common.console.print(f"audit database {_db.redact(url)} is at revision {current}", highlight=False)


@db_app.command("current")
def db_current_command(db: DbOption = None) -> None:
    """Print the schema revision of the audit database and the newest one known."""
    url = db or _common.settings().database_url
    engine = _db.make_engine(url)
    try:
        with _db.db_errors(url):
            current = _db.current_revision(engine)
    finally:
        engine.dispose()
    head = _db.head_revision()
    state = "up to date" if current == head else "needs `medverify db upgrade`"
    _common.console.print(
        f"{_db.redact(url)}: revision {current or 'none (not created)'}; newest {head} ({state})",
        highlight=False,
    )
