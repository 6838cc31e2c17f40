"""The gateway's event-driven associations (verifier.intake._reactor), over real associations on loopback: they
answer like pynetdicom's own, release and abort cleanly, and an idle one blocks instead of polling."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from verifier.intake._reactor import IDLE_WAIT, make_event_driven, requestor_ae, supported

pytestmark = pytest.mark.skipif(not supported(), reason="the reactor loops are copied from pynetdicom 3.0")


@pytest.fixture
def server() -> Iterator[dict[str, Any]]:
    """A Storage SCP whose associations are made event-driven as the gateway makes them (EVT_CONN_OPEN)."""
    seen: dict[str, Any] = {"assocs": [], "made": [], "stored": 0, "released": threading.Event()}

    def on_open(event: Any) -> None:
        seen["made"].append(make_event_driven(event.assoc))
        seen["assocs"].append(event.assoc)

    def on_store(event: Any) -> int:
        seen["stored"] += 1
        return 0x0000

    ae = AE("SCP")
    ae.add_supported_context(CTImageStorage, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    handlers = [(evt.EVT_CONN_OPEN, on_open), (evt.EVT_C_STORE, on_store),
                (evt.EVT_RELEASED, lambda e: seen["released"].set())]  # fmt: skip
    srv = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
    seen["port"] = srv.server_address[1]
    try:
        yield seen
    finally:
        srv.shutdown()


def _client(event_driven: bool = False) -> AE:
    ae = requestor_ae("SCU") if event_driven else AE("SCU")
    ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1"])
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    return ae


def _wait_until(check: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_event_driven_association_answers_and_releases(server: dict[str, Any]) -> None:
    import pydicom

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assoc = _client().associate("127.0.0.1", server["port"])
    assert assoc.is_established
    assert server["made"] == [True]
    acceptor = server["assocs"][0]
    assert type(acceptor).__name__ == "EventDrivenAssociation"
    assert type(acceptor.dul).__name__ == "EventDrivenDUL"
    for _ in range(5):
        assert assoc.send_c_store(ds).Status == 0x0000
    assert assoc.send_c_echo().Status == 0x0000
    assert server["stored"] == 5
    assoc.release()
    assert assoc.is_released
    assert server["released"].wait(5)
    assert _wait_until(lambda: not acceptor.is_alive() and not acceptor.dul.is_alive())
    assert acceptor.dul._wake_w.fileno() == -1  # its wake-up sockets are closed with it


def test_idle_association_blocks_instead_of_polling(server: dict[str, Any]) -> None:
    assoc = _client().associate("127.0.0.1", server["port"])
    assert assoc.is_established
    acceptor = server["assocs"][0]
    assert acceptor.dul.waits < 10_000  # it has started
    before = acceptor.dul.waits
    time.sleep(0.5)
    idle_waits = acceptor.dul.waits - before
    # pynetdicom's own loop would go round about 500 times in 0.5 s (1 ms sleeps); this one wakes every IDLE_WAIT.
    assert idle_waits <= 0.5 / IDLE_WAIT + 3
    assert assoc.send_c_echo().Status == 0x0000  # and it still answers at once after the wait
    assoc.release()
    assert assoc.is_released


def test_peer_abort_ends_the_event_driven_association(server: dict[str, Any]) -> None:
    assoc = _client().associate("127.0.0.1", server["port"])
    assert assoc.is_established
    acceptor = server["assocs"][0]
    assoc.abort()
    assert _wait_until(lambda: not acceptor.is_alive() and not acceptor.dul.is_alive())
    assert acceptor.is_aborted


def test_a_started_association_is_left_as_it_is(server: dict[str, Any]) -> None:
    assoc = _client().associate("127.0.0.1", server["port"])
    assert assoc.is_established
    try:
        assert make_event_driven(assoc) is False  # running (and a requestor): pynetdicom's own loops stay
        assert type(assoc).__name__ == "Association"
    finally:
        assoc.release()


def test_requestor_association_of_the_forwarder_is_event_driven(server: dict[str, Any]) -> None:
    import pydicom

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assoc = _client(event_driven=True).associate("127.0.0.1", server["port"])
    assert assoc.is_established
    assert type(assoc).__name__ == "EventDrivenAssociation"
    for _ in range(3):
        assert assoc.send_c_store(ds).Status == 0x0000
    before = assoc.dul.waits
    time.sleep(0.3)
    assert assoc.dul.waits - before <= 0.3 / IDLE_WAIT + 3
    assert assoc.send_c_echo().Status == 0x0000
    started = time.monotonic()
    assoc.release()
    assert assoc.is_released
    assert _wait_until(lambda: not assoc.is_alive() and not assoc.dul.is_alive())
    assert time.monotonic() - started < 1.0
    assert server["stored"] == 3
