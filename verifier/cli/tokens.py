"""``medverify tokens ...``: API tokens of the HTTP API (``medverify serve``).

A token is printed once, by ``tokens create``; the database keeps only its SHA-256. Creating and revoking a token
each leave an audit record (channel ``keys``, event ``token``) that names the token id, never the token.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from typing import Annotated

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from verifier.audit import AuditEntry, AuditLog, Channel
from verifier.audit.tokens import TokenInfo, TokenScope, TokenStore
from verifier.cli import _common, app
from verifier.cli._options import DbOption
from verifier.errors import InputError

__all__ = ["tokens_app"]

tokens_app = typer.Typer(
    help="API tokens of the HTTP API (medverify serve): create (shown once), list, revoke.",
    no_args_is_help=True,
)
app.add_typer(tokens_app, name="tokens")

def _open(db: str | None) -> AuditLog:
    from verifier.setup import open_audit_log

    return open_audit_log(_common.settings(), db=db)


def _record(log: AuditLog, action: str, info: TokenInfo) -> int:
    entry = AuditEntry(
        event="token",
        channel=Channel.KEYS,
        api_token_id=info.id,
        details={"action": action, "token": {"id": info.id, "name": info.name, "scope": info.scope.value}},
    ).with_local_actor()
    return log.append(entry).id


@tokens_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="What the token is for (e.g. 'orthanc-intake').")],
    scope: Annotated[
        TokenScope, typer.Option("--scope", help="verify, audit-read, review or admin (admin may do everything).")
    ],
    expires_days: Annotated[
        float | None, typer.Option("--expires-days", min=0, help="Lifetime in days (default: until revoked).")
    ] = None,
    output_format: Annotated[str, typer.Option("--format", "-f", help="text or json.")] = "text",
    db: DbOption = None,
) -> int:
    """Create a token and print it once: only its SHA-256 is stored, it cannot be shown again."""
    if output_format not in ("text", "json"):
        raise InputError(f"--format must be text or json, not {output_format!r}")
    expires_in = None if expires_days is None else dt.timedelta(days=expires_days)
    with _open(db) as log:
        issued = TokenStore(log).create(name, scope, expires_in=expires_in)
        audit_id = _record(log, "create", issued.info)
    if output_format == "json":
        sys.stdout.write(json.dumps({**issued.info.to_dict(), "token": issued.token, "audit_id": audit_id}) + "\n")
        return 0
    _common.err_console.print(
        f"created API token {issued.info.id} ({escape(issued.info.name)}, scope {issued.info.scope.value}"
        + (f", expires {issued.info.expires_at:%Y-%m-%d %H:%M} UTC" if issued.info.expires_at else "")
        + f", audit #{audit_id}). It is shown only now; store it in a secret store:",
        highlight=False,
    )
    # The token alone on stdout, so that `TOKEN=$(medverify tokens create ...)` works.
    sys.stdout.write(issued.token + "\n")
    return 0


@tokens_app.command("list")
def list_tokens(
    output_format: Annotated[str, typer.Option("--format", "-f", help="table or jsonl.")] = "table",
    db: DbOption = None,
) -> int:
    """List tokens (id, name, scope, state, dates); never the tokens themselves."""
    if output_format not in ("table", "jsonl"):
        raise InputError(f"--format must be table or jsonl, not {output_format!r}")
    with _open(db) as log:
        infos = TokenStore(log).list()
    if output_format == "jsonl":
        for info in infos:
            sys.stdout.write(json.dumps(info.to_dict()) + "\n")
        return 0
    table = Table(box=box.SIMPLE)
    for column in ("id", "name", "scope", "state", "created", "expires", "last used"):
        table.add_column(column, no_wrap=column != "name")

    def when(value: dt.datetime | None) -> str:
        return "-" if value is None else f"{value:%Y-%m-%dT%H:%MZ}"

    for info in infos:
        table.add_row(
            info.id,
            escape(info.name),
            info.scope.value,
            info.state(),
            when(info.created_at),
            when(info.expires_at),
            when(info.last_used_at),
        )
    _common.console.print(table)
    return 0


@tokens_app.command("revoke")
def revoke(
    token_id: Annotated[str, typer.Argument(help="The token id (from `tokens list`).")],
    db: DbOption = None,
) -> int:
    """Revoke a token: the API refuses it from the next request on."""
    with _open(db) as log:
        info, changed = TokenStore(log).revoke(token_id)
        if changed:
            audit_id = _record(log, "revoke", info)
            _common.console.print(f"revoked API token {info.id} ({escape(info.name)}, audit #{audit_id})")
        else:
            _common.console.print(f"API token {info.id} was already revoked")
    return 0
