"""Several gateway processes on one port: ``medverify gateway --workers N``.

One Python process checks instances on one core at a time (the GIL); a gateway that must use more cores runs as N
worker processes. Each worker is a whole gateway (:class:`~verifier.intake.gateway.Gateway`) listening on the same
port with SO_REUSEPORT, so the kernel spreads new associations over them; each has a spool of its own
(``SPOOL/worker-<i>``) and its own forwarder; they share the quarantine store (locked per file) and the audit
database, where appends are serialised on the log head row (``SELECT ... FOR UPDATE`` on PostgreSQL, the write
lock on SQLite), so the Merkle log stays one append-only sequence whichever process appends.

:class:`WorkerPool` is the supervisor: it starts the workers, starts again one that dies (a worker killed mid-
association loses nothing that was answered Success: its spool is on disk and its next start resumes it), and on
SIGTERM stops them all. A worker that dies three times in a row within ``min_uptime`` seconds of its start (bad
configuration, port taken) stops the pool instead of being restarted in a loop.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from verifier.intake.queue import QuarantineStore, Spool

__all__ = ["WorkerPool", "prepare_shared_state", "worker_spool"]

_log = logging.getLogger("medverify.intake")
_PR_SET_PDEATHSIG = 1


def worker_spool(spool_root: Path, index: int) -> Path:
    """The spool directory of worker ``index`` (1-based)."""
    return Path(spool_root) / f"worker-{index}"


def prepare_shared_state(spool_root: Path, quarantine_dir: Path, workers: int) -> int:
    """Before workers start: remove what a crash left staged in the shared quarantine, and move instances queued
    in spools no worker will run (the top spool of a one-process gateway, ``worker-<k>`` for k > ``workers``, or
    the reverse when going back to one process) into a spool that will be run. Returns how many were moved."""
    spool_root = Path(spool_root)
    QuarantineStore(quarantine_dir)  # as owner: removes stale staged temporaries
    orphans = sorted(p for p in spool_root.glob("worker-*") if p.is_dir() and p.name[7:].isdigit())
    if workers > 1:
        orphans = [p for p in orphans if int(p.name[7:]) > workers]
        target = Spool(worker_spool(spool_root, 1))
        sources = [spool_root, *orphans] if spool_root.is_dir() else orphans
    else:
        target = Spool(spool_root)
        sources = orphans
    moved = 0
    for source in sources:
        Spool(source)  # as owner: removes its stale staged temporaries
        moved += target.adopt(source)
    return moved


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the worker gets SIGTERM if the supervisor dies (even by SIGKILL), so no worker outlives it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class WorkerPool:
    """Runs ``command(i)`` for i in 1..N as child processes, restarting any that dies, until :meth:`stop`."""

    def __init__(
        self,
        command: Callable[[int], Sequence[str]],
        workers: int,
        *,
        env: dict[str, str] | None = None,
        min_uptime: float = 10.0,
        stop_timeout: float = 60.0,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.command = command
        self.workers = workers
        self.env = env
        self.min_uptime = min_uptime
        self.stop_timeout = stop_timeout
        self.restarts = 0
        self.failed: str | None = None
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._started: dict[int, float] = {}
        self._quick_exits: dict[int, int] = {}

    def _spawn(self, index: int) -> None:
        self._procs[index] = subprocess.Popen(
            list(self.command(index)), env=self.env, preexec_fn=_die_with_parent
        )
        self._started[index] = time.monotonic()

    def start(self) -> None:
        for index in range(1, self.workers + 1):
            self._spawn(index)

    def pids(self) -> list[int]:
        return [p.pid for p in self._procs.values()]

    def send(self, sig: int) -> None:
        """Pass ``sig`` on to every running worker (the supervisor's SIGHUP: each reloads trust and policy)."""
        for proc in list(self._procs.values()):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)

    def watch(self, stop: threading.Event, poll: float = 0.5) -> None:
        """Supervise until ``stop`` is set or a worker fails at start (then :attr:`failed` says which)."""
        while not stop.wait(poll):
            for index, proc in list(self._procs.items()):
                code = proc.poll()
                if code is None:
                    continue
                quick = time.monotonic() - self._started[index] < self.min_uptime
                self._quick_exits[index] = self._quick_exits.get(index, 0) + 1 if quick else 0
                if self._quick_exits[index] >= 3:
                    self.failed = f"worker {index} exited with status {code} right after each of 3 starts"
                    return
                self.restarts += 1
                _log.warning("gateway worker %d (pid %d) exited with status %s; starting it again",
                             index, proc.pid, code)  # fmt: skip
                self._spawn(index)

    def stop(self) -> None:
        """SIGTERM to every worker (each stops listening and finishes what it holds), SIGKILL after the timeout."""
        for proc in self._procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for proc in self._procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
