"""Event-driven reactors for the gateway's associations (pynetdicom 3.0).

pynetdicom runs two threads per association and both poll: the DUL reactor sleeps 1 ms whenever it found nothing to
do, and the association reactor sleeps 1 ms on every turn (``_run_loop_delay``, and a literal ``time.sleep(0.001)``
in ``Association._run_reactor``; its own TODO: "try and make this event based"). No setting changes either. With 20
open associations that is some 40,000 wake-ups a second, each taking the interpreter lock from the threads that
check instances (51 % of the gateway's py-spy samples at 20 associations, benchmarks/README.md).

:func:`make_event_driven` turns a new, not yet started association into one whose two threads block
instead:

- the DUL thread waits in ``select`` on the association's socket and on a wake-up socket, which is written when
  the association thread hands it a primitive to send (``send_pdu``) or stops it (``kill_dul``);
- the association thread waits on an event that the DUL thread sets after every state-machine action (a decoded
  DIMSE message, a release or abort request: whatever the association reactor looks for), when it stops, when
  the association is killed, and when a local caller pauses the reactor to send (``_reactor_checkpoint.clear``).

Both loops are otherwise pynetdicom's own, line for line, but for one fix: the association reactor checks again,
after passing its pause point, that no caller paused it meanwhile, before it takes a message off the queue (else it
can take the response a caller of ``send_c_store`` waits for, which then times out: "Received unexpected C-STORE
service message", the unanswered C-STOREs of the benchmark's senders, benchmarks/README.md). Both still wake at
least every :data:`IDLE_WAIT` seconds, so timers (ARTIM, the network idle timeout) and anything this module does not
signal are seen as before, only later by at most that. The gateway applies it to the associations it accepts from its
``EVT_CONN_OPEN`` handler, which pynetdicom calls after creating the association and before starting its threads,
and the forwarder to those it requests through :func:`requestor_ae`. Other pynetdicom versions are left as they are
(:func:`supported`), since the loops are copied from 3.0.
"""

from __future__ import annotations

import functools
import queue
import select
import socket
import ssl
import threading
import time
from typing import Any, cast

__all__ = ["IDLE_WAIT", "make_event_driven", "requestor_ae", "supported"]

#: Longest a reactor thread blocks without a signal (seconds): how late a timer expiry is seen.
IDLE_WAIT = 0.05


@functools.cache
def supported() -> bool:
    """Whether the installed pynetdicom is one whose reactor loops this module copies (3.0.x)."""
    import pynetdicom

    return str(pynetdicom.__version__).startswith("3.0.")


class _Checkpoint(threading.Event):
    """The association's ``_reactor_checkpoint``: pausing the reactor also wakes it, so that it reaches the pause
    at once instead of after its wait."""

    def __init__(self, work: threading.Event) -> None:
        super().__init__()
        self._work = work

    def clear(self) -> None:
        super().clear()
        self._work.set()


def make_event_driven(assoc: Any) -> bool:
    """Make the association ``assoc`` (created, threads not started) block instead of polling; True if
    done. Does nothing (False) with an unsupported pynetdicom or an association already started."""
    if not supported() or assoc.is_alive() or assoc._started_dul:
        return False
    from pynetdicom.association import Association
    from pynetdicom.dul import DULServiceProvider

    if type(assoc) is not Association or type(assoc.dul) is not DULServiceProvider:  # someone else's subclass
        return False
    assoc = cast(Any, assoc)
    work = threading.Event()
    dul = _dul_class()(assoc, work)
    old = assoc.dul
    dul.socket = old.socket
    # The socket already queued its connection event (Evt5) on the old provider: take its queues over.
    dul.event_queue, dul.to_provider_queue = old.event_queue, old.to_provider_queue
    dul.to_user_queue, dul._recv_pdu = old.to_user_queue, old._recv_pdu
    dul.artim_timer.timeout = old.artim_timer.timeout
    dul._idle_timer.timeout = old._idle_timer.timeout
    checkpoint = _Checkpoint(work)
    if assoc._reactor_checkpoint.is_set():
        checkpoint.set()
    assoc._work = work
    assoc._reactor_checkpoint = checkpoint
    assoc.dul = dul
    assoc.__class__ = _association_class()
    return True


def requestor_ae(ae_title: str) -> Any:
    """A pynetdicom ``AE`` whose ``associate`` gives event-driven associations (the forwarder's, to the PACS): it
    converts each one in ``_create_socket``, which ``AE.associate`` calls after creating the association and before
    requesting it. With an unsupported pynetdicom it is a plain ``AE``."""
    from pynetdicom import AE

    if "ae" not in _CLASSES:

        class EventDrivenAE(AE):
            def _create_socket(self, assoc: Any, address: Any, tls_args: Any) -> Any:
                make_event_driven(assoc)
                return super()._create_socket(assoc, address, tls_args)

        _CLASSES["ae"] = EventDrivenAE
    return _CLASSES["ae"](ae_title=ae_title) if supported() else AE(ae_title=ae_title)


_CLASSES: dict[str, type] = {}


def _dul_class() -> type:
    """The event-driven DUL service provider (built on first use: pynetdicom is imported lazily)."""
    if "dul" in _CLASSES:
        return _CLASSES["dul"]
    from pynetdicom.dul import LOGGER, DULServiceProvider
    from pynetdicom.pdu import A_ABORT_RQ

    class EventDrivenDUL(DULServiceProvider):
        def __init__(self, assoc: Any, work: threading.Event) -> None:
            super().__init__(assoc)
            self._work = work
            self._wake_r, self._wake_w = socket.socketpair()
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
            #: Times the reactor blocked (for tests: an idle association must not spin).
            self.waits = 0

        def _wake(self) -> None:
            try:
                self._wake_w.send(b"\0")
            except OSError:  # already full (it will wake) or closed (it has stopped)
                pass

        def send_pdu(self, primitive: Any) -> None:
            super().send_pdu(primitive)
            self._wake()

        def kill_dul(self) -> None:
            super().kill_dul()
            self._wake()

        def stop_dul(self) -> bool:
            # pynetdicom's, but the reactor is woken to see the flag instead of finding it after its wait.
            if self.state_machine.current_state == "Sta1":
                self._kill_thread = True
                self._wake()
                while self.is_alive():
                    time.sleep(self._run_loop_delay)
                return True
            return False

        def _wait(self) -> None:
            """Block until the peer sent data, a primitive was handed over, or IDLE_WAIT passed."""
            self.waits += 1
            watched: list[Any] = [self._wake_r]
            sock = self.socket
            raw = getattr(sock, "socket", None) if sock is not None and getattr(sock, "_is_connected", False) else None
            if raw is not None:
                if isinstance(raw, ssl.SSLSocket) and raw.pending():
                    return  # decrypted bytes already buffered: select would not see them
                watched.append(raw)
            try:
                ready, _, _ = select.select(watched, [], [], IDLE_WAIT)
            except (OSError, ValueError):  # the socket was closed under us: the loop finds out
                time.sleep(self._run_loop_delay)
                return
            if self._wake_r in ready:
                try:
                    while self._wake_r.recv(4096):
                        pass
                except OSError:
                    pass

        def run_reactor(self) -> None:
            try:
                self._run_event_driven()
            finally:
                self._wake_w.close()
                self._wake_r.close()
                self._work.set()

        def _run_event_driven(self) -> None:
            # pynetdicom 3.0's DULServiceProvider.run_reactor, with time.sleep(self._run_loop_delay) -> self._wait()
            # and the association thread woken after every action.
            self._idle_timer.start()
            sleep = False
            while True:
                if not self.assoc._dul_ready.is_set():
                    self.assoc._dul_ready.set()
                    sleep = True
                if sleep:
                    self._wait()
                if self._kill_thread:
                    break
                if self.artim_timer.expired:
                    self.event_queue.put("Evt18")
                try:
                    if self._process_recv_primitive():
                        pass
                    elif self._is_transport_event():
                        self._idle_timer.restart()
                except Exception as exc:  # noqa: BLE001 - as pynetdicom: abort the association, never crash
                    LOGGER.error("Exception in DUL.run(), aborting association")
                    LOGGER.exception(exc)
                    abort_pdu = A_ABORT_RQ()
                    abort_pdu.source = 0x02
                    abort_pdu.reason_diagnostic = 0x00
                    if self.socket is not None:
                        self.socket.send(abort_pdu.encode())
                    self.assoc.is_aborted = True
                    self.assoc.is_established = False
                    self.assoc._kill = True
                    self._kill_thread = True
                    return
                try:
                    event = self.event_queue.get(block=False)
                except queue.Empty:
                    sleep = True
                    continue
                self.state_machine.do_action(event)
                self._work.set()
                sleep = False

    _CLASSES["dul"] = EventDrivenDUL
    return EventDrivenDUL


def _association_class() -> type:
    """The event-driven association (its ``_run_reactor`` waits on the DUL's signal instead of sleeping)."""
    if "assoc" in _CLASSES:
        return _CLASSES["assoc"]
    from pynetdicom import evt
    from pynetdicom.association import LOGGER, Association

    class EventDrivenAssociation(Association):
        _work: threading.Event

        def kill(self) -> None:
            self._work.set()
            super().kill()

        def _run_reactor(self) -> None:
            # pynetdicom 3.0's Association._run_reactor, with the time.sleep(0.001) at the top of each turn ->
            # a wait at the bottom on the DUL's signal (cleared before the queues are looked at, so none is lost),
            # and the pause checked again before a message is taken (see below).
            self._is_paused = False
            while not self._kill:
                self._work.clear()
                self._is_paused = True
                self._reactor_checkpoint.wait()
                self._is_paused = False
                if not self._reactor_checkpoint.is_set():
                    # A caller paused the reactor after it passed the checkpoint but may have read the stale
                    # _is_paused = True and gone on to send: its response must not be taken off the queue here
                    # ("Received unexpected C-STORE service message", and the caller times out). Pause again.
                    continue

                context_id, msg = self.dimse.get_msg(block=False)
                if msg:
                    self._serve_request(msg, cast(int, context_id))

                if self.is_established and self.acse.is_release_requested():
                    self.acse.send_release(is_response=True)
                    LOGGER.info("Association Released")
                    self.is_released = True
                    self.is_established = False
                    evt.trigger(self, evt.EVT_RELEASED, {})
                    self.kill()
                    return

                if self.acse.is_aborted():
                    log_msg = "Association Aborted"
                    if self.acse.is_aborted("a-p-abort"):
                        log_msg += " (A-P-ABORT)"
                    LOGGER.info(log_msg)
                    self.dul.receive_pdu(wait=False)
                    self.is_aborted = True
                    self.is_established = False
                    evt.trigger(self, evt.EVT_ABORTED, {})
                    self.kill()
                    return

                if not self.dul.is_alive():
                    self.kill()
                    return

                if self.dul.idle_timer_expired():
                    LOGGER.error("Network timeout reached")
                    if self.network_timeout_response == "A-RELEASE":
                        self._is_paused = True
                        self._reactor_checkpoint.wait()
                        self.release()
                        self._is_paused = False
                    else:
                        self.abort()
                    self.kill()
                    return

                self._work.wait(IDLE_WAIT)

    _CLASSES["assoc"] = EventDrivenAssociation
    return EventDrivenAssociation
