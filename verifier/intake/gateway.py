"""The DICOM gateway: a Storage SCP in front of the PACS that checks every instance before it is stored.

Each C-STORE runs through :class:`~verifier.intake.decide.Intake` and gets an explicit answer:

- accept / flag: spooled durably, answered *Success*, and forwarded to the PACS by the
  :class:`~verifier.intake.queue.Forwarder` (store and forward);
- quarantine: kept in the quarantine store with its verdict, answered *Success* (the gateway has taken custody;
  the instance never reaches the PACS);
- reject: answered with a failure status (``0xC001`` refused by policy, ``0xC002`` unreadable or malformed; never
  a warning, which many senders take as stored) and an Error Comment with the reason.

Every instance leaves exactly one audit record with the calling AE title and address. A failure to spool, to
quarantine or to write the audit record answers ``0xA700`` (out of resources: the sender may retry) and stores
nothing, so that the gateway fails closed. Calling AE titles, optionally tied to addresses, are checked against the
configuration: an unknown title is refused at association, a known title from another address per instance
(``0x0124``, not authorised). With an SSL context every association is DICOM TLS.

Order of an accepted instance: the bytes are staged (fsynced temporary), the audit record is written, the file is
renamed into the queue, then Success is answered. So the forwarder only sends recorded instances, an audit failure
stores nothing, and a crash leaves at most a staged temporary (removed at start) or a queued file whose Success was
never sent (the sender sends it again: then it has two records, and the PACS gets it twice, harmlessly).
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from verifier.errors import ConfigError
from verifier.intake._reactor import make_event_driven
from verifier.intake.decide import Intake, IntakeDecision, Peer, error_comment
from verifier.intake.queue import Destination, Forwarder, QuarantineStore, Spool, set_no_delay
from verifier.intake.sidecar import sidecar_record
from verifier.policy import Action

if TYPE_CHECKING:
    from pydicom.dataset import Dataset
    from pynetdicom.events import Event
    from pynetdicom.transport import ThreadedAssociationServer

__all__ = [
    "STATUS_INTERNAL",
    "STATUS_NOT_AUTHORIZED",
    "STATUS_REFUSED",
    "STATUS_UNREADABLE",
    "AllowedCaller",
    "Gateway",
    "parse_allowed_callers",
]

_log = logging.getLogger("medverify.intake")

#: Failure statuses (PS3.4 Annex B: 0xCxxx "cannot understand", 0xA7xx "out of resources", 0x0124 "not authorized").
STATUS_REFUSED = 0xC001
STATUS_UNREADABLE = 0xC002
STATUS_INTERNAL = 0xA700
STATUS_NOT_AUTHORIZED = 0x0124


@dataclasses.dataclass(frozen=True)
class AllowedCaller:
    """A calling AE title allowed to store, optionally only from one address or network."""

    ae_title: str
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None

    def allows(self, ae_title: str, address: str) -> bool:
        if ae_title != self.ae_title:
            return False
        if self.network is None:
            return True
        try:
            return ipaddress.ip_address(address) in self.network
        except ValueError:
            return False

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.network}" if self.network is not None else self.ae_title


def parse_allowed_callers(specs: Iterable[str]) -> tuple[AllowedCaller, ...]:
    """Parse ``AE`` or ``AE@ADDRESS`` (an IP address or a network like ``10.1.0.0/16``); comma lists allowed."""
    out: list[AllowedCaller] = []
    for spec in specs:
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            title, _, where = part.partition("@")
            title = title.strip()
            if not title or len(title) > 16 or "\\" in title or not title.isprintable():
                raise ConfigError(f"bad calling AE title {title!r} in allowed callers (1 to 16 characters)")
            network = None
            if where:
                try:
                    network = ipaddress.ip_network(where.strip(), strict=False)
                except ValueError as exc:
                    raise ConfigError(f"bad address {where!r} for allowed caller {title}: {exc}") from None
            out.append(AllowedCaller(title, network))
    return tuple(out)


class Gateway:
    """A Storage SCP (all storage SOP classes, the usual transfer syntaxes, and Verification) that checks, then
    forwards, quarantines or refuses every instance."""

    def __init__(
        self,
        *,
        intake: Intake,
        ae_title: str,
        host: str,
        port: int,
        forward: Destination,
        spool_dir: Path,
        quarantine_dir: Path,
        allowed: Sequence[AllowedCaller],
        retry_initial: float = 1.0,
        retry_max: float = 60.0,
        ssl_context: ssl.SSLContext | None = None,
        max_associations: int = 64,
        on_quarantine: Callable[[dict[str, Any]], None] | None = None,
        shared_port: bool = False,
        owns_quarantine: bool = True,
        worker: int | None = None,
    ) -> None:
        """``shared_port``: listen with SO_REUSEPORT, so that several gateway processes (``medverify gateway
        --workers N``) accept on one port and the kernel spreads associations over them; each needs a spool of its
        own. ``owns_quarantine``: False for such workers, which share one quarantine store. ``worker``: the
        worker's number, written in each audit record (``details.intake.worker``)."""
        if not allowed:
            raise ConfigError(
                "no calling AE title is allowed to store: set gateway_allowed_callers or pass --allow AE[@ADDRESS]"
            )
        self.intake = intake
        self.ae_title = ae_title
        self.host = host
        self.port = port
        self.allowed = tuple(allowed)
        #: DICOM TLS (PS3.15 Annex B.1): every association is TLS; with a client CA loaded, clients need a certificate.
        self.ssl_context = ssl_context
        #: Concurrent associations accepted (pynetdicom's default is 10); more are rejected as transient.
        self.max_associations = max_associations
        self.shared_port = shared_port
        self.worker = worker
        self.spool = Spool(spool_dir)
        self.quarantine = QuarantineStore(quarantine_dir, on_quarantine=on_quarantine, owner=owns_quarantine)
        self.forwarder = Forwarder(
            self.spool, forward, calling_ae_title=ae_title, retry_initial=retry_initial, retry_max=retry_max
        )
        self._server: ThreadedAssociationServer | None = None
        self._staging = ThreadPoolExecutor(max_workers=4, thread_name_prefix="medverify-spool")
        self.counts: dict[str, int] = {a.value: 0 for a in Action}
        self._count_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Listen (in background threads) and start forwarding what is already in the spool."""
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        self.intake.warm_up()
        ae = AE(ae_title=self.ae_title)
        for cx in StoragePresentationContexts:
            if cx.abstract_syntax is not None:
                ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        ae.require_calling_aet = sorted({c.ae_title for c in self.allowed})
        ae.maximum_pdu_size = 0  # no limit on what we accept: fewer, larger PDUs
        ae.maximum_associations = self.max_associations
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_CONN_OPEN, _on_connection),
        ]
        server: ThreadedAssociationServer | None
        if self.shared_port:
            server = _listen_shared(ae, (self.host, self.port), self.ssl_context, handlers)
        else:
            server = ae.start_server(
                (self.host, self.port), block=False, ssl_context=self.ssl_context, evt_handlers=handlers
            )
        if server is None:  # pragma: no cover - only with block=True
            raise RuntimeError("pynetdicom did not start a server")
        self._server = server
        self.port = int(server.server_address[1])
        self.forwarder.start()
        if len(self.spool):
            _log.info("resuming %d spooled instance(s)", len(self.spool))
        self.forwarder.notify()

    def stop(self) -> None:
        """Stop listening and forwarding; what is still spooled is forwarded after the next start."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self.forwarder.stop()
        self._staging.shutdown(wait=True)
        self.intake.close()

    # -- handlers ----------------------------------------------------------------------------------------------

    @staticmethod
    def _peer(event: Event) -> tuple[str, str, Peer]:
        requestor = event.assoc.requestor
        ae_title = str(requestor.ae_title).strip()
        address = str(requestor.address)
        from verifier.audit import Channel

        return ae_title, address, Peer(channel=Channel.INTAKE, ae_title=ae_title, address=f"{address}:{requestor.port}")

    def _authorised(self, ae_title: str, address: str) -> bool:
        return any(c.allows(ae_title, address) for c in self.allowed)

    def _on_echo(self, event: Event) -> int:
        ae_title, address, _peer = self._peer(event)
        return 0x0000 if self._authorised(ae_title, address) else STATUS_NOT_AUTHORIZED

    def _on_store(self, event: Event) -> Dataset:
        """Check one instance and answer; any exception here becomes pynetdicom's failure status (fail closed)."""
        ae_title, address, peer = self._peer(event)
        data = _part10_bytes(event)
        # The spool's fsync (milliseconds on most disks) runs while the checks run; only an accepted instance is
        # then renamed into the queue.
        staging = self._staging.submit(self.spool.stage, data)
        try:
            decision = self.intake.check(data, peer)
            if not self._authorised(ae_title, address):
                why = f"calling AE {ae_title} not allowed from {address}"
                return self._refuse(decision, STATUS_NOT_AUTHORIZED, why)
            action = decision.action
            if action in (Action.ACCEPT, Action.FLAG):
                return self._forward(decision, staging)
            if action is Action.QUARANTINE:
                return self._quarantine(decision)
            code = STATUS_UNREADABLE if decision.result.failed else STATUS_REFUSED
            return self._refuse(decision, code, decision.summary())
        finally:
            staging.add_done_callback(_discard_unclaimed)

    def _forward(self, decision: IntakeDecision, staging: Future[Path]) -> Dataset:
        """Staged (fsynced) -> audit record -> rename into the queue -> Success, in this order: the forwarder never
        sees an instance without a record, and a crash before the rename leaves only a staged temporary (removed at
        the next start) for an instance that was not answered Success (the sender sends it again)."""
        try:
            staged = staging.result()
        except OSError as exc:
            return self._refuse(decision, STATUS_INTERNAL, f"gateway spool unavailable ({exc.strerror})")
        name = self.spool.name_for(decision.sha256)
        try:
            self._record(decision, outcome="forward-queued", status=0, spool_file=name)
        except Exception:  # noqa: BLE001 - no record, no storing: fail closed with a status the sender may retry
            _log.exception("audit record failed; refused an instance from %s", decision.peer.describe())
            return _status(STATUS_INTERNAL, "medverify audit log unavailable")  # the staged copy is discarded
        try:
            self.spool.commit(staged, sha256=decision.sha256, name=name)
        except OSError as exc:  # recorded as queued but not queued: a second record says so, the sender retries
            why = f"gateway spool unavailable ({exc.strerror})"
            with contextlib.suppress(Exception):
                self._record(decision, outcome="spool-failed", status=STATUS_INTERNAL, error_comment=error_comment(why))
            _log.error("could not queue %s: %s", name, why)
            return _status(STATUS_INTERNAL, error_comment(why))
        self.forwarder.notify()
        return _status(0x0000)

    def _quarantine(self, decision: IntakeDecision) -> Dataset:
        """As :meth:`_forward`: staged (fsynced) -> audit record -> rename into the quarantine -> Success, so that no
        quarantined copy exists without its record; the verdict file names the record."""
        try:
            staged = self.quarantine.stage(decision.data)
        except OSError as exc:
            return self._refuse(decision, STATUS_INTERNAL, f"quarantine store unavailable ({exc.strerror})")
        try:
            name = self.quarantine.path_for(decision.sha256).name
            try:
                recorded = self._record(decision, outcome="quarantined", status=0, quarantine_file=name)
            except Exception:  # noqa: BLE001 - as in _forward: nothing kept, a status the sender may retry
                _log.exception("audit record failed; refused an instance from %s", decision.peer.describe())
                return _status(STATUS_INTERNAL, "medverify audit log unavailable")
            record = sidecar_record(recorded, origin="gateway", gateway=self.ae_title)
            try:
                self.quarantine.commit(staged, sha256=decision.sha256, record=record)
            except OSError as exc:  # recorded as quarantined but not kept: a second record says so
                why = f"quarantine store unavailable ({exc.strerror})"
                with contextlib.suppress(Exception):
                    self._record(decision, outcome="quarantine-failed", status=STATUS_INTERNAL,
                                 error_comment=error_comment(why))  # fmt: skip
                _log.error("could not keep %s in the quarantine: %s", name, why)
                return _status(STATUS_INTERNAL, error_comment(why))
            return _status(0x0000)
        finally:
            QuarantineStore.discard(staged)  # a no-op once committed

    def _refuse(self, decision: IntakeDecision, code: int, why: str) -> Dataset:
        comment = error_comment(why)
        try:
            self._record(decision, outcome="refused", status=code, error_comment=comment)
        except Exception:  # noqa: BLE001 - refused either way; the log says the record is missing
            _log.exception("could not record a refused instance from %s", decision.peer.describe())
        return _status(code, comment)

    def _record(self, decision: IntakeDecision, **details: Any) -> IntakeDecision:
        if self.worker is not None:
            details["worker"] = self.worker
        recorded = self.intake.record(decision, **details)
        with self._count_lock:
            self.counts[decision.action.value] += 1
        _log.info(
            "%s %s %s -> %s (audit #%s, %.1f ms)",
            decision.peer.describe(),
            decision.sop_instance_uid or decision.sha256[:16],
            decision.result.verdict.status.value,
            details.get("outcome"),
            recorded.audit_id,
            decision.check_ms,
        )
        return recorded


def _listen_shared(
    ae: Any, address: tuple[str, int], ssl_context: ssl.SSLContext | None, handlers: list[Any]
) -> ThreadedAssociationServer:
    """As ``ae.start_server(block=False)``, but the listening socket has SO_REUSEPORT, so that the other workers
    of ``gateway --workers N`` can listen on the same port (pynetdicom's own bind does not set it)."""
    from pynetdicom.transport import ThreadedAssociationServer

    class SharedPortServer(ThreadedAssociationServer):
        def server_bind(self) -> None:
            if self.socket is not None:
                self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            super().server_bind()

    server: ThreadedAssociationServer = ae.make_server(
        address, ssl_context=ssl_context, evt_handlers=handlers, server_class=SharedPortServer
    )
    threading.Thread(target=server.serve_forever, name="medverify-gateway-accept", daemon=True).start()
    ae._servers.append(server)  # as start_server does: server.shutdown() takes it off this list
    return server


def _discard_unclaimed(staging: Future[Path]) -> None:
    """Remove a staged spool file that was not committed (the instance was not accepted)."""
    if staging.exception() is None:
        Spool.discard(staging.result())  # a no-op after commit: the file was renamed away


def _on_connection(event: Event) -> None:
    """A new association, before its threads start: its threads block instead of polling every millisecond
    (:mod:`verifier.intake._reactor`), and Nagle is off on its socket (a small last PDU must not wait for a delayed
    ACK, ~40 ms)."""
    make_event_driven(event.assoc)
    set_no_delay(event.assoc)


def _status(code: int, comment: str | None = None) -> Dataset:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment
    return ds


def _part10_bytes(event: Event) -> bytes:
    """The received instance as a DICOM Part 10 file: preamble, the negotiated file meta, the data set as sent."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    buffer = DicomBytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, event.file_meta, enforce_standard=True)
    request: Any = event.request  # a C-STORE request: its DataSet holds the encoded data set as received
    buffer.write(request.DataSet.getvalue())
    return buffer.getvalue()
