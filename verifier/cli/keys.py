"""``medverify keys``: the local CA, signing keys, trusted certificates, revocation and rotation."""

from __future__ import annotations

import enum
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from provenance.errors import KeyStoreError
from provenance.keys import (
    PASSPHRASE_ENV,
    KeyAlgorithm,
    KeyInfo,
    KeyRole,
    KeyStore,
    create_passphrase_file,
)
from verifier import setup
from verifier.cli import _common, app
from verifier.settings import Settings

__all__ = ["keys_app"]

keys_app = typer.Typer(
    help=(
        "Manage signing keys: a local CA issues one X.509 certificate per key; keys have a role "
        "(generator, acquisition, audit), can be rotated and revoked, and external certificates can be "
        f"trusted. Private keys are encrypted with the passphrase from {PASSPHRASE_ENV}, the "
        "key_passphrase_file setting, or a prompt."
    ),
    no_args_is_help=True,
)
app.add_typer(
    keys_app, name="keys", help="Manage signing keys, the local CA, the trust store and revocation."
)


class OutputFormat(enum.StrEnum):
    TABLE = "table"
    JSON = "json"


def _store() -> KeyStore:
    return setup.open_keystore(_common.settings())


def _record(action: str, **details: object) -> None:
    """One audit record per key event (channel ``keys``); an unreachable database is an explicit error."""
    from verifier.audit import AuditEntry, Channel, EventKind

    # signer=False: a key event must not create the audit key as a side effect; checkpoints come from the
    # commands that write many records, or from `medverify audit checkpoint`.
    log = setup.open_audit_log(_common.settings(), signer=False)
    try:
        log.append(
            AuditEntry(
                event=EventKind.KEY,
                channel=Channel.KEYS,
                verdict=action,
                details={k: v if isinstance(v, str | int | bool | None) else str(v) for k, v in details.items()},
            ).with_local_actor()
        )
    finally:
        log.close()


def _info_details(info: KeyInfo) -> dict[str, object]:
    return {
        "name": info.name,
        "role": info.role.value,
        "algorithm": info.algorithm.value,
        "serial": f"{info.serial:x}",
        "fingerprint_sha256": info.fingerprint_sha256,
    }


def _describe(info: KeyInfo) -> str:
    return (
        f"[bold]{info.name}[/] ({info.role}, {info.algorithm}) serial {info.serial:x} "
        f"sha256 {info.fingerprint_sha256[:16]}… valid until {info.not_after:%Y-%m-%d}"
    )


@keys_app.command("init")
def init_command(
    generate_passphrase_file: Annotated[
        bool,
        typer.Option(
            "--generate-passphrase-file",
            help=(
                "Write a random passphrase to keys_dir/passphrase (or the key_passphrase_file setting), "
                "mode 0600, before creating the keys. For demos and unattended use only: the passphrase then "
                f"lives next to the keys. In production set {PASSPHRASE_ENV} or answer the prompt."
            ),
        ),
    ] = False,
) -> None:
    """Create the local CA and the default 'generator' signing key (does nothing if they exist).

    The passphrase comes from MEDVERIFY_KEY_PASSPHRASE, the passphrase file, or a prompt on a terminal; with none
    of them (a script, a service), a random one is written to the passphrase file, as any first use does.
    """
    settings = _common.settings()
    if generate_passphrase_file:
        _generate_passphrase_file(settings)
    created = setup.init_keys(settings, interactive=True)
    if created is not None and created.passphrase_file is not None:
        _common.note(created.message())
    for info in created.keys if created is not None else ():
        _common.console.print(f"created {_describe(info)}", highlight=False)
        _record("created", **_info_details(info))
    if created is None:
        _common.console.print(f"key store {settings.keys_dir} is already initialised", highlight=False)
    store = setup.open_keystore(settings)
    ca = store.ca_certificate()
    _common.console.print(f"local CA: {ca.subject.rfc4514_string()}", highlight=False)


def _generate_passphrase_file(settings: Settings) -> None:
    path = setup.passphrase_file_path(settings)
    if os.environ.get(PASSPHRASE_ENV):
        raise KeyStoreError(f"--generate-passphrase-file conflicts with {PASSPHRASE_ENV}, which takes precedence")
    if path.exists():
        _common.err_console.print(f"passphrase file {path} already exists; using it")
    elif (settings.keys_dir / "ca").exists():
        raise KeyStoreError(
            f"the key store {settings.keys_dir} already exists; a new passphrase would not decrypt its keys"
        )
    else:
        create_passphrase_file(path)
        _common.err_console.print(
            f"[bold yellow]warning:[/] wrote a new key passphrase to {path}; it now lives next to the "
            f"keys, so anyone who can read that directory can use them. In production set "
            f"{PASSPHRASE_ENV} or use the interactive prompt instead.",
            highlight=False,
        )


@keys_app.command("create")
def create_command(
    name: Annotated[str, typer.Argument(help="Key name: a-z, 0-9, '_', '.', '-' (at most 64 characters).")],
    role: Annotated[KeyRole, typer.Option("--role", "-r", help="What the key signs.", case_sensitive=False)],
    algorithm: Annotated[
        KeyAlgorithm,
        typer.Option(
            "--algorithm",
            "-a",
            help="Key algorithm. RSA works in every DICOM signature profile; ECDSA only without a profile.",
            case_sensitive=False,
        ),
    ] = KeyAlgorithm.RSA_3072,
    validity_days: Annotated[
        int, typer.Option("--validity-days", min=1, help="Certificate lifetime in days.")
    ] = 825,
) -> None:
    """Create a signing key with a certificate from the local CA."""
    info = _store().create(name, role, algorithm, validity_days=validity_days)
    _common.console.print(f"created {_describe(info)}", highlight=False)
    _record("created", **_info_details(info))


@keys_app.command("list")
def list_command(
    output_format: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="Output format.", case_sensitive=False)
    ] = OutputFormat.TABLE,
) -> None:
    """List every signing key generation: active, retired (rotated out) and revoked."""
    store = _store()
    infos = store.list()
    if output_format is OutputFormat.JSON:
        sys.stdout.write(json.dumps([i.to_json() for i in infos], indent=2) + "\n")
        return
    table = Table(title=f"signing keys in {store.directory}", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("name", overflow="fold", min_width=12)
    for column in ("role", "algorithm", "status", "serial", "sha256", "expires"):
        table.add_column(column, no_wrap=True)
    styles = {"active": "green", "retired": "yellow", "revoked": "red"}
    for info in infos:
        table.add_row(
            info.name,
            str(info.role),
            str(info.algorithm),
            f"[{styles[info.status]}]{info.status}[/]",
            f"{info.serial:x}"[:8],
            info.fingerprint_sha256[:8],
            f"{info.not_after:%Y-%m-%d}",
        )
    _common.console.print(table)


@keys_app.command("export-cert")
def export_cert_command(
    name: Annotated[str, typer.Argument(help="Key name, or 'ca' for the local CA certificate.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the PEM here instead of standard output.")
    ] = None,
) -> None:
    """Print the PEM certificate of a key's current generation (or of the local CA)."""
    pem = _store().export_certificate(name)
    if output is None:
        sys.stdout.write(pem.decode("ascii"))
        return
    try:
        output.write_bytes(pem)
    except OSError as exc:
        raise KeyStoreError(f"cannot write {output}: {exc.strerror}") from exc
    _common.err_console.print(f"wrote {output}", highlight=False)


@keys_app.command("trust")
def trust_command(
    cert_file: Annotated[
        Path,
        typer.Argument(help="A PEM or DER certificate: a CA, or a signer to trust as it is.", dir_okay=False),
    ],
) -> None:
    """Add an external certificate to the trust store."""
    try:
        data = cert_file.read_bytes()
    except OSError as exc:
        raise KeyStoreError(f"cannot read {cert_file}: {exc.strerror}") from exc
    record = _store().trust(data)
    kind = "CA" if record.is_ca else "signer"
    _record("trusted", subject=record.subject, fingerprint_sha256=record.fingerprint_sha256, is_ca=record.is_ca)
    _common.console.print(
        f"trusted {kind} {record.subject} sha256 {record.fingerprint_sha256[:16]}… "
        f"valid until {record.not_after:%Y-%m-%d}",
        highlight=False,
    )


@keys_app.command("revoke")
def revoke_command(name: Annotated[str, typer.Argument(help="Key name.")]) -> None:
    """Revoke a key's current generation: it can no longer sign and its signatures verify as REVOKED."""
    info = _store().revoke(name)
    _record("revoked", **_info_details(info))
    _common.console.print(f"revoked {_describe(info)}", highlight=False)
    _common.console.print(f"run `medverify keys rotate {name}` to issue a replacement", highlight=False)


@keys_app.command("rotate")
def rotate_command(name: Annotated[str, typer.Argument(help="Key name.")]) -> None:
    """Issue a new generation of a key; the old one is retired (its signatures still verify)."""
    info = _store().rotate(name)
    _record("rotated", **_info_details(info))
    _common.console.print(f"rotated {_describe(info)}", highlight=False)
