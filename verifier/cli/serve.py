"""``medverify serve``: the HTTP API (FastAPI on uvicorn) — verify uploads, read audit records, STOW-RS intake."""

from __future__ import annotations

import json
import os
import ssl
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from verifier.cli import _common, app
from verifier.cli._net import (
    TLS_KEY_PASSPHRASE_ENV,
    TLS_KEY_PASSPHRASE_FILE_ENV,
    parse_forward,
    parse_listen,
    server_tls_context,
)
from verifier.cli._options import DbOption, IntakeChecksOption, ModelOption, PolicyOption, TrustOption
from verifier.errors import InputError
from verifier.setup import open_intake, open_review, quarantine_webhook

if TYPE_CHECKING:
    from verifier.api import ApiConfig
    from verifier.intake.decide import Intake
    from verifier.intake.queue import Destination

__all__ = ["tls_options", "worker_app"]

def tls_options(cert: Path | None, key: Path | None, client_ca: Path | None) -> dict[str, Any]:
    """uvicorn's ssl_* arguments for the TLS options, checked now (a bad file or passphrase is a clear error)."""
    checked = server_tls_context(cert, key, client_ca, client_ca_option="--tls-client-ca")
    if checked is None:
        return {}
    _, password = checked
    options: dict[str, Any] = {"ssl_certfile": str(cert), "ssl_keyfile": str(key), "ssl_keyfile_password": password}
    if client_ca is not None:
        options |= {"ssl_ca_certs": str(client_ca), "ssl_cert_reqs": ssl.CERT_REQUIRED}
    return options


def _api_config(
    intake: Intake,
    store_dir: Path,
    destination: Destination | None,
    ae_title: str,
    *,
    max_body_bytes: int,
    max_concurrent: int,
    worker: bool = False,
) -> ApiConfig:
    """What the API serves with: the intake, its tokens, the STOW-RS store (cleared of what a killed server left)
    and the forwarder to the PACS, if any. ``worker``: one of ``serve --workers N``, which shares the store and the
    spool with the others: it removes nothing at start (the supervising process did) and does not run the
    forwarder (the supervising process does, for all of them)."""
    from verifier.api import ApiConfig
    from verifier.api.storage import InstanceStore
    from verifier.audit.tokens import TokenStore

    if intake.audit_log is None:  # pragma: no cover - open_intake opens it unless audit=False
        raise InputError("the HTTP API needs the audit log")
    store = InstanceStore(store_dir)
    stale = 0 if worker else store.remove_stale()  # temporaries of uploads a killed server never recorded/answered
    if stale:
        _common.err_console.print(f"removed {stale} unfinished upload(s) left by an earlier run", highlight=False)
    forwarder = None
    if destination is not None:
        from verifier.intake.queue import Forwarder, Spool

        forwarder = Forwarder(Spool(store.root / "spool", owner=not worker), destination, calling_ae_title=ae_title)
    settings = _common.settings()
    spool = forwarder.spool.directory if forwarder is not None else None
    review = open_review(settings, intake, stow_store=store, stow_spool=spool)
    return ApiConfig(
        intake=intake,
        tokens=TokenStore(intake.audit_log),
        store=store,
        max_body_bytes=max_body_bytes,
        max_concurrent=max_concurrent,
        forward=forwarder,
        review=review,
        on_quarantine=quarantine_webhook(settings),
        audit_trust=review.trusted,
    )


def _missing_api(exc: ModuleNotFoundError) -> InputError:
    return InputError(f"the HTTP API needs the api extra ({exc.name} is missing): pip install 'medverify[api]'")


@app.command(
    help="Serve the HTTP API (POST /v1/verify, GET /v1/audit (search), /v1/audit/verify and /v1/audit/{id}, STOW-RS "
    "POST /dicomweb/studies, /v1/quarantine, /metrics) and the quarantine review pages (/ui/quarantine)."
)
def serve(
    listen: Annotated[str, typer.Option("--listen", help="HOST:PORT to listen on.")] = "127.0.0.1:8080",
    checks: IntakeChecksOption = None,
    trust: TrustOption = None,
    policy_file: PolicyOption = None,
    db: DbOption = None,
    model: ModelOption = None,
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
    tls_cert: Annotated[
        Path | None, typer.Option("--tls-cert", help="Serve HTTPS with this PEM certificate (chain).")
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option(
            "--tls-key",
            help=f"PEM private key of --tls-cert; if encrypted, its passphrase comes from {TLS_KEY_PASSPHRASE_ENV} "
            f"or the file named by {TLS_KEY_PASSPHRASE_FILE_ENV}.",
        ),
    ] = None,
    tls_client_ca: Annotated[
        Path | None,
        typer.Option("--tls-client-ca", help="Require client certificates issued by this CA (PEM): mutual TLS."),
    ] = None,
    openapi: Annotated[
        bool, typer.Option("--openapi", help="Print the OpenAPI schema (JSON) and exit; starts nothing.")
    ] = False,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            max=64,
            help="Server processes (uvicorn workers) on the one port; they share the store and the audit database "
            "(use PostgreSQL). /metrics then counts the process that answers.",
        ),
    ] = 1,
) -> int:
    """Run until interrupted. Every route but /v1/health and /openapi.json needs an API token (`tokens create`).

    Serve HTTPS (--tls-cert/--tls-key), or plain HTTP on loopback only: tokens are bearer secrets.
    """
    try:
        from verifier.api import create_app
    except ModuleNotFoundError as exc:
        raise _missing_api(exc) from None
    if openapi:
        sys.stdout.write(json.dumps(create_app().openapi(), indent=2) + "\n")
        return 0
    host, port = parse_listen(listen)
    tls = tls_options(tls_cert, tls_key, tls_client_ca)
    try:
        import uvicorn
    except ModuleNotFoundError as exc:
        raise _missing_api(exc) from None
    destination = parse_forward(forward) if forward is not None else None
    settings = _common.settings()
    intake = open_intake(
        settings, checks, trust=trust or (), policy_file=policy_file, db=db, model=model, notify=_common.note,
        reload_channel="api",
    )  # fmt: skip
    from verifier.intake.reload import reload_on_sighup

    reload_on_sighup(intake)
    intake.warm_up()  # lazy imports and first-call costs before the first request, not in it
    config = _api_config(intake, store_dir or settings.home / "intake" / "stow", destination, ae_title,
                         max_body_bytes=int(max_body_mb * 1024**2), max_concurrent=max_concurrent)  # fmt: skip
    scheme = "https" if tls else "http"
    tls_note = ("TLS, client certificates required; " if tls_client_ca is not None else "TLS; ") if tls else ""
    check_names = intake.checker.describe()
    _common.err_console.print(
        f"medverify API on {scheme}://{listen} ({tls_note}checks: {check_names}; "
        f"audit log {config.audit_log.url}; STOW-RS store {config.store.root}); "
        f"quarantine review on {scheme}://{listen}/ui/quarantine",
        highlight=False,
    )
    if config.review is not None and config.review.detector is not None:
        # The review pages' heatmaps need the detector (torch and the weights, seconds): load it in the background
        # now rather than in the first reviewer's request.
        from verifier.review.render import load_detector

        detector = config.review.detector
        threading.Thread(target=load_detector, args=(detector,), name="medverify-detector", daemon=True).start()
    forwarder = config.forward
    if forwarder is not None:
        forwarder.start()  # resumes what an earlier run left in the spool
        forwarder.notify()
        _common.err_console.print(f"forwarding stored instances to {destination}", highlight=False)
    served: Any = create_app(config)
    run_options: dict[str, Any] = {}
    if workers > 1:
        # uvicorn starts the workers from an import string; each builds its own app (worker_app) from these
        # options. The database URL goes in the environment, as MEDVERIFY_DB_URL, never on a command line.
        os.environ[_WORKER_ENV] = json.dumps({
            "checks": checks, "trust": [str(t) for t in trust or ()], "model": str(model) if model else None,
            "policy": str(policy_file) if policy_file else None, "store_dir": str(config.store.root),
            "forward": forward, "ae_title": ae_title, "max_body_bytes": int(max_body_mb * 1024**2),
            "max_concurrent": max_concurrent,
        })  # fmt: skip
        if db:
            os.environ["MEDVERIFY_DB_URL"] = db
        served, run_options = f"{__name__}:worker_app", {"factory": True, "workers": workers}
        _common.err_console.print(f"{workers} worker processes; the forwarder runs in this one", highlight=False)
    try:
        uvicorn.run(
            served,
            host=host,
            port=port,
            log_level="info",
            server_header=False,
            timeout_graceful_shutdown=10,
            **run_options,
            **tls,
        )
    finally:
        if forwarder is not None:
            forwarder.stop()
        intake.close()
    return 0


#: The options of ``serve --workers N``, for :func:`worker_app` in each worker process (JSON, no secrets).
_WORKER_ENV = "MEDVERIFY_SERVE_WORKER_OPTIONS"


def worker_app() -> Any:
    """The application of one ``serve --workers N`` process: uvicorn calls this in each worker. It checks and
    records like the single-process server; the store, the spool and the audit database are shared (appends are
    serialised in the database), and the forwarder runs in the supervising process only."""
    from verifier.api import create_app

    options = json.loads(os.environ[_WORKER_ENV])
    settings = _common.settings()
    intake = open_intake(
        settings,
        options["checks"],
        trust=[Path(t) for t in options["trust"]],
        policy_file=Path(options["policy"]) if options["policy"] else None,
        model=Path(options["model"]) if options["model"] else None,
    )
    intake.warm_up()
    destination = parse_forward(options["forward"]) if options["forward"] is not None else None
    config = _api_config(intake, Path(options["store_dir"]), destination, options["ae_title"],
                         max_body_bytes=options["max_body_bytes"], max_concurrent=options["max_concurrent"],
                         worker=True)  # fmt: skip
    return create_app(config)
