"""``medverify gateway``: the DICOM Storage SCP that checks every instance before the PACS stores it."""

from __future__ import annotations

import logging
import signal
import ssl
import threading
from pathlib import Path
from typing import Annotated

import typer

from verifier.cli import _common, app
from verifier.cli._net import parse_forward, parse_listen, server_tls_context
from verifier.cli._options import DbOption, IntakeChecksOption, ModelOption, PolicyOption, TrustOption
from verifier.errors import ConfigError, InputError
from verifier.setup import open_intake, quarantine_webhook

__all__ = ["gateway", "gateway_ssl_context"]


def gateway_ssl_context(cert: Path | None, key: Path | None, client_ca: Path | None) -> ssl.SSLContext | None:
    """The DICOM TLS server context of ``--tls-cert/--tls-key [--tls-ca]`` (see :mod:`verifier.cli._net`)."""
    checked = server_tls_context(cert, key, client_ca, client_ca_option="--tls-ca")
    return None if checked is None else checked[0]


@app.command(help="Run the DICOM gateway: check each C-STORE, forward accepted instances, quarantine or refuse.")
def gateway(
    forward: Annotated[str, typer.Option("--forward", help="The PACS that gets accepted instances: HOST:PORT:AET.")],
    listen: Annotated[str, typer.Option("--listen", help="Address to listen on, HOST:PORT.")] = "127.0.0.1:11112",
    ae_title: Annotated[str, typer.Option("--ae-title", help="The gateway's own AE title.")] = "MEDVERIFY",
    quarantine: Annotated[
        Path | None, typer.Option("--quarantine", help="Quarantine directory (default: setting, else HOME/quarantine).")
    ] = None,
    spool: Annotated[
        Path | None, typer.Option("--spool", help="Store-and-forward spool (default: setting, else HOME/spool).")
    ] = None,
    allow: Annotated[
        list[str] | None,
        typer.Option("--allow", help="Allowed caller AE or AE@ADDRESS (repeatable; adds to gateway_allowed_callers)."),
    ] = None,
    checks: IntakeChecksOption = None,
    model: ModelOption = None,
    trust: TrustOption = None,
    policy_file: PolicyOption = None,
    db: DbOption = None,
    retry_max: Annotated[
        float, typer.Option("--retry-max", min=0.1, help="Longest wait between forwarding retries, seconds.")
    ] = 60.0,
    max_associations: Annotated[
        int,
        typer.Option("--max-associations", min=1, max=1000, help="Concurrent associations (more: rejected)."),
    ] = 64,
    tls_cert: Annotated[
        Path | None, typer.Option("--tls-cert", help="PEM certificate (chain): every association is DICOM TLS.")
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option(
            "--tls-key",
            help="PEM private key of --tls-cert; if encrypted, its passphrase comes from MEDVERIFY_TLS_KEY_PASSPHRASE "
            "or the file named by MEDVERIFY_TLS_KEY_PASSPHRASE_FILE.",
        ),
    ] = None,
    tls_ca: Annotated[
        Path | None,
        typer.Option("--tls-ca", help="PEM CA certificate(s): senders must present a certificate it issued."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every instance (to stderr).")] = False,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            max=64,
            help="Gateway processes on the one port (SO_REUSEPORT; the kernel spreads associations), each with its "
            "own spool SPOOL/worker-<i>; they share the quarantine and the audit database (use PostgreSQL).",
        ),
    ] = 1,
    worker_index: Annotated[int, typer.Option("--worker-index", hidden=True, min=0)] = 0,
) -> int:
    """Serve until interrupted (SIGINT or SIGTERM); spooled instances are forwarded after a restart."""
    from verifier.intake.gateway import Gateway, parse_allowed_callers

    host, port = parse_listen(listen)
    destination = parse_forward(forward)
    if not ae_title or len(ae_title) > 16:
        raise InputError("--ae-title must have 1 to 16 characters")
    ssl_context = gateway_ssl_context(tls_cert, tls_key, tls_ca)
    settings = _common.settings()
    allowed = parse_allowed_callers([settings.gateway_allowed_callers, *(allow or [])])
    if not allowed:
        raise ConfigError(
            "no calling AE title is allowed to store: pass --allow AE[@ADDRESS] or set gateway_allowed_callers"
        )
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("medverify.intake").setLevel(logging.INFO if verbose else logging.WARNING)
    spool_root = spool or settings.intake_spool_dir or settings.home / "spool"
    quarantine_dir = quarantine or settings.intake_quarantine_dir or settings.home / "quarantine"
    if worker_index == 0 and workers > 1:
        if port == 0:
            raise InputError("--workers needs a fixed --listen port (the workers share it)")
        worker_args = [
            "--forward", forward, "--listen", f"{host}:{port}", "--ae-title", ae_title,
            "--spool", str(Path(spool_root).absolute()), "--quarantine", str(Path(quarantine_dir).absolute()),
            "--retry-max", str(retry_max), "--max-associations", str(max_associations),
            *[a for item in allow or () for a in ("--allow", item)],
            *[a for item in trust or () for a in ("--trust", str(Path(item).absolute()))],
            *_pairs(("--checks", checks), ("--model", model), ("--policy", policy_file), ("--tls-cert", tls_cert),
                    ("--tls-key", tls_key), ("--tls-ca", tls_ca)),
            *(["--verbose"] if verbose else []),
        ]  # fmt: skip
        return _supervise(workers, spool_root, quarantine_dir, worker_args, db=db, listen=f"{host}:{port}")
    if worker_index == 0:
        from verifier.intake.workers import prepare_shared_state

        moved = prepare_shared_state(spool_root, quarantine_dir, 1)
        if moved:
            _common.err_console.print(f"took over {moved} instance(s) from the spools of earlier workers",
                                      highlight=False)  # fmt: skip
    intake = open_intake(
        settings, checks, trust=trust or (), policy_file=policy_file, db=db, model=model, notify=_common.note,
        reload_channel="intake",
    )  # fmt: skip
    webhook = quarantine_webhook(settings)
    if worker_index:
        from verifier.intake.workers import worker_spool

        spool_dir = worker_spool(spool_root, worker_index)
    else:
        spool_dir = spool_root
    server = Gateway(
        intake=intake,
        ae_title=ae_title,
        host=host,
        port=port,
        forward=destination,
        spool_dir=spool_dir,
        quarantine_dir=quarantine_dir,
        allowed=allowed,
        retry_max=retry_max,
        ssl_context=ssl_context,
        max_associations=max_associations,
        on_quarantine=webhook,
        shared_port=worker_index > 0,
        owns_quarantine=worker_index == 0,
        worker=worker_index or None,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    from verifier.intake.reload import reload_on_sighup

    reload_on_sighup(intake)
    try:
        server.start()
    except OSError as exc:
        intake.close()
        raise InputError(f"cannot listen on {listen}: {exc.strerror}") from None
    names = intake.checker.describe()
    tls_note = " (DICOM TLS, client certificates required)" if tls_ca else " (DICOM TLS)" if ssl_context else ""
    who = f"medverify gateway {ae_title}" + (f" worker {worker_index}" if worker_index else "")
    _common.err_console.print(
        f"{who} listening on {host}:{server.port}{tls_note}; forwarding to {destination}; "
        f"checks: {names}; {len(server.spool)} instance(s) in the spool",
        highlight=False,
    )
    try:
        while not stop.wait(1.0):
            pass
    finally:
        server.stop()
        if webhook is not None:
            webhook.close()
    counts = ", ".join(f"{n} {a}" for a, n in server.counts.items())
    grouped = intake.group_stats
    group_note = f"; {grouped.records} audit records in {grouped.transactions} transactions" if grouped else ""
    _common.err_console.print(
        f"{'worker ' + str(worker_index) + ' ' if worker_index else ''}gateway stopped: {counts}{group_note}; "
        f"{len(server.spool)} left in the spool",
        highlight=False,
    )
    return 0


def _pairs(*options: tuple[str, object]) -> list[str]:
    out: list[str] = []
    for name, value in options:
        if value is not None:
            out += [name, str(Path(value).absolute()) if isinstance(value, Path) else str(value)]
    return out


def _supervise(
    workers: int, spool_root: Path, quarantine_dir: Path, args: list[str], *, db: str | None, listen: str
) -> int:
    """``--workers N``: run ``gateway ARGS --worker-index i`` for i in 1..N on the one port, until SIGINT/SIGTERM.

    ``--db`` goes to the workers in the environment (MEDVERIFY_DB_URL), never on a command line that ``ps``
    shows."""
    import os
    import sys

    from verifier.intake.workers import WorkerPool, prepare_shared_state

    moved = prepare_shared_state(spool_root, quarantine_dir, workers)
    if moved:
        _common.err_console.print(f"moved {moved} queued instance(s) into worker 1's spool", highlight=False)
    env = dict(os.environ)
    if db:
        env["MEDVERIFY_DB_URL"] = db
    base = [sys.executable, "-c", "from verifier.cli import app_main; app_main()", "gateway", *args]
    pool = WorkerPool(lambda i: [*base, "--worker-index", str(i)], workers, env=env)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: pool.send(signal.SIGHUP))  # each worker reloads trust and policy
    pool.start()
    _common.err_console.print(
        f"medverify gateway: {workers} worker processes on {listen} (pids {', '.join(map(str, pool.pids()))}); "
        f"spools {spool_root}/worker-1..{workers}",
        highlight=False,
    )
    try:
        pool.watch(stop)
    finally:
        pool.stop()
    if pool.failed is not None:
        raise InputError(f"gateway {pool.failed}; see its message above")
    _common.err_console.print(f"gateway workers stopped ({pool.restarts} restart(s))", highlight=False)
    return 0

