"""``medverify serve``: the HTTP API (FastAPI on uvicorn) — verify uploads, read audit records, STOW-RS intake."""

from __future__ import annotations

import ipaddress
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from verifier.cli import _common, app
from verifier.cli.signing import ChecksOption, DbOption, PolicyOption, TrustOption
from verifier.errors import InputError

__all__ = ["parse_listen"]


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6) -> (host, port)."""
    host, sep, port_text = value.strip().rpartition(":")
    if not sep or not host:
        raise InputError(f"--listen takes HOST:PORT (e.g. 127.0.0.1:8080), not {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise InputError(f"--listen: {port_text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise InputError(f"--listen: port {port} is out of range")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise InputError(f"--listen: {host!r} is not an IP address (or localhost)") from None
    return host, port


def _missing_api(exc: ModuleNotFoundError) -> InputError:
    return InputError(f"the HTTP API needs the api extra ({exc.name} is missing): pip install 'medverify[api]'")


@app.command(help="Serve the HTTP API: POST /v1/verify, GET /v1/audit/{id}, STOW-RS POST /dicomweb/studies.")
def serve(
    listen: Annotated[str, typer.Option("--listen", help="HOST:PORT to listen on.")] = "127.0.0.1:8080",
    checks: ChecksOption = None,
    trust: TrustOption = None,
    policy_file: PolicyOption = None,
    db: DbOption = None,
    model: Annotated[
        Path | None, typer.Option("--model", help="Detector bundle for --checks detector (default: the setting).")
    ] = None,
    store_dir: Annotated[
        Path | None,
        typer.Option(
            "--store-dir",
            help="STOW-RS backend: accepted/ and quarantine/ go here (default: <home>/intake/stow).",
        ),
    ] = None,
    forward: Annotated[
        str | None,
        typer.Option(
            "--forward",
            help="HOST:PORT:AET of a PACS: STOW-RS also forwards what it stores there (C-STORE, durable spool).",
        ),
    ] = None,
    ae_title: Annotated[str, typer.Option("--ae-title", help="Calling AE title when forwarding.")] = "MEDVERIFY",
    max_body_mb: Annotated[
        float, typer.Option("--max-body-mb", min=0.001, help="Largest request body in MiB (413 above it).")
    ] = 256.0,
    max_concurrent: Annotated[
        int, typer.Option("--max-concurrent", min=1, help="Requests read and checked at once; more wait.")
    ] = 4,
    openapi: Annotated[
        bool, typer.Option("--openapi", help="Print the OpenAPI schema (JSON) and exit; starts nothing.")
    ] = False,
) -> int:
    """Run until interrupted. Every route but /v1/health and /openapi.json needs an API token (`tokens create`).

    Serve plain HTTP on loopback, or behind a TLS-terminating reverse proxy: tokens are bearer secrets.
    """
    try:
        from verifier.api import ApiConfig, create_app
    except ModuleNotFoundError as exc:
        raise _missing_api(exc) from None
    if openapi:
        sys.stdout.write(json.dumps(create_app().openapi(), indent=2) + "\n")
        return 0
    host, port = parse_listen(listen)
    try:
        import uvicorn
    except ModuleNotFoundError as exc:
        raise _missing_api(exc) from None
    from verifier.api.storage import InstanceStore
    from verifier.audit.tokens import TokenStore
    from verifier.intake.decide import IntakeChecker

    destination = None
    if forward is not None:
        from verifier.intake.queue import Destination

        try:
            destination = Destination.parse(forward)
        except ValueError as exc:
            raise InputError(f"--forward: {exc}") from None
    settings = _common.settings()
    checker = IntakeChecker.from_settings(
        settings, checks=checks, trust_extra=trust or (), policy_file=policy_file, db=db, model=model
    )
    checker.warm_up()  # lazy imports and first-call costs before the first request, not in it
    if checker.audit_log is None:  # pragma: no cover - from_settings opens it unless audit=False
        raise InputError("the HTTP API needs the audit log")
    store = InstanceStore(store_dir or settings.home / "intake" / "stow")
    forwarder = None
    if destination is not None:
        from verifier.intake.queue import Forwarder, Spool

        forwarder = Forwarder(Spool(store.root / "spool"), destination, calling_ae_title=ae_title)
    config = ApiConfig(
        checker=checker,
        tokens=TokenStore(checker.audit_log),
        store=store,
        max_body_bytes=int(max_body_mb * 1024**2),
        max_concurrent=max_concurrent,
        forward=forwarder,
    )
    _common.err_console.print(
        f"medverify API on http://{listen} (checks: {', '.join(sorted(c.value for c in checker.checks))}; "
        f"audit log {checker.audit_log.url}; STOW-RS store {config.store.root})",
        highlight=False,
    )
    if forwarder is not None:
        forwarder.start()  # resumes what an earlier run left in the spool
        forwarder.notify()
        _common.err_console.print(f"forwarding stored instances to {destination}", highlight=False)
    try:
        uvicorn.run(
            create_app(config),
            host=host,
            port=port,
            log_level="info",
            server_header=False,
            timeout_graceful_shutdown=10,
        )
    finally:
        if forwarder is not None:
            forwarder.stop()
        checker.close()
    return 0
