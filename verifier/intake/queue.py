"""Store and forward: a durable on-disk spool, the forwarder that empties it into the PACS, and the quarantine.

An accepted instance is written to the spool (temporary file, fsync, rename, fsync of the directory) *before* the
sender is told it was stored, so that a crash or a PACS outage loses nothing: the :class:`Forwarder` thread sends
what is in the spool with C-STORE, byte for byte in the transfer syntax it arrived in, and retries with exponential
backoff while the PACS cannot be reached. A restarted gateway resumes the spool where it stopped. A PACS that
refuses an instance outright (a failure status other than "out of resources", or no presentation context for it)
sends it to ``failed/`` with the reason next to it, for a person to look at: retrying cannot help.

File names are made from a sequence number and the SHA-256 of the content, never from a UID the sender chose.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import itertools
import json
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from verifier.intake.sidecar import directory_lock, merge_sidecar, read_sidecar

__all__ = [
    "Destination",
    "DirectorySync",
    "Forwarder",
    "QuarantineStore",
    "Spool",
    "atomic_write",
    "set_no_delay",
]

_log = logging.getLogger("medverify.intake")


def set_no_delay(assoc: Any) -> None:
    """Turn Nagle off on an association's socket: a small last PDU must not wait for a delayed ACK (~40 ms)."""
    sock = getattr(getattr(getattr(assoc, "dul", None), "socket", None), "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DirectorySync:
    """Group fsync of one directory: renames into it by concurrent threads are made durable together.

    A caller renames its file into the directory, then calls :meth:`sync`, which returns once an fsync of the
    directory that *started after* the call has finished. While one fsync runs, the callers that arrive wait for
    the next, and that one fsync covers all of them: under load one fsync per batch instead of one per file. An
    fsync that fails raises in every caller that waited for it.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._cond = threading.Condition()
        self._requested = 0
        self._synced = 0
        self._failed: tuple[int, OSError] | None = None
        self._running = False
        #: fsyncs of the directory done, and callers they served (for benchmarks).
        self.fsyncs = 0
        self.callers = 0

    def sync(self) -> None:
        """Make every rename into the directory that finished before this call durable."""
        with self._cond:
            self._requested += 1
            self.callers += 1
            ticket = self._requested
            while self._synced < ticket:
                if self._failed is not None and self._failed[0] >= ticket:
                    raise self._failed[1]
                if self._running:
                    self._cond.wait()
                    continue
                self._running = True
                target = self._requested  # every rename with a ticket up to here happened before the fsync starts
                self._cond.release()
                error: OSError | None = None
                try:
                    _fsync_dir(self.directory)
                except OSError as exc:
                    error = exc
                finally:
                    self._cond.acquire()
                    self._running = False
                    self.fsyncs += 1
                    self._cond.notify_all()
                if error is not None:
                    self._failed = (target, error)
                    raise error
                self._synced = max(self._synced, target)


def atomic_write(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` so that the file is either absent or complete, also after a crash."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".incoming-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)


@dataclasses.dataclass(frozen=True)
class Destination:
    """Where accepted instances go: ``HOST:PORT:AET``."""

    host: str
    port: int
    ae_title: str

    @classmethod
    def parse(cls, text: str) -> Destination:
        host, sep, rest = text.rpartition(":")
        host2, sep2, port = host.rpartition(":")
        if not sep or not sep2 or not host2 or not port.isdigit() or not rest:
            raise ValueError(f"expected HOST:PORT:AET, not {text!r}")
        if not 0 < int(port) < 65536 or len(rest) > 16:
            raise ValueError(f"bad port or AE title (at most 16 characters) in {text!r}")
        return cls(host=host2.strip("[]"), port=int(port), ae_title=rest)

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


class Spool:
    """The durable queue of accepted instances waiting to be forwarded (``*.dcm`` files in one directory)."""

    def __init__(self, directory: Path, *, owner: bool = True) -> None:
        """``owner``: this process runs the spool's gateway, so temporaries left by a crash are removed; another
        process that only adds to it (a reviewer releasing an instance) must not touch the gateway's staged files."""
        self.directory = Path(directory)
        self.failed_dir = self.directory / "failed"
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.failed_dir.mkdir(exist_ok=True, mode=0o700)
        for stale in self.directory.glob(".incoming-*.tmp") if owner else ():  # a crash between write and rename
            stale.unlink(missing_ok=True)
        self._counter = itertools.count()
        self._lock = threading.Lock()
        self._dir_sync = DirectorySync(self.directory)

    def put(self, data: bytes, *, sha256: str) -> Path:
        """Add an instance durably; return its spool file. Raises OSError if it cannot be written."""
        return self.commit(self.stage(data), sha256=sha256)

    def stage(self, data: bytes) -> Path:
        """Write ``data`` to a temporary file in the spool and fsync it (not yet queued). The gateway does this
        while the checks run, so that the slow part of durability overlaps them."""
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".incoming-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return Path(tmp)

    def name_for(self, sha256: str) -> str:
        """A new spool file name (oldest first when sorted); the gateway records it before it commits the file."""
        with self._lock:
            return f"{time.time_ns():020d}-{next(self._counter):06d}-{sha256[:32]}.dcm"

    def commit(self, staged: Path, *, sha256: str, name: str | None = None) -> Path:
        """Queue a staged file: rename it into the spool (as ``name``, default a new one) and fsync the directory;
        return its spool file. Only then does the forwarder see it. Concurrent commits share one directory fsync
        (:class:`DirectorySync`); each returns only once its own rename is durable."""
        path = self.directory / (name or self.name_for(sha256))
        try:
            os.replace(staged, path)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        self._dir_sync.sync()
        return path

    @staticmethod
    def discard(staged: Path) -> None:
        staged.unlink(missing_ok=True)

    def adopt(self, other: Path) -> int:
        """Move the instances queued in spool directory ``other`` (another worker's, no longer run) into this
        one, in their order, durably; return how many. Their audit records name the old file names."""
        moved = 0
        for path in sorted(other.glob("*.dcm")):
            os.replace(path, self.directory / path.name)
            moved += 1
        for path in sorted((other / "failed").glob("*")) if (other / "failed").is_dir() else ():
            os.replace(path, self.failed_dir / path.name)
        if moved:
            self._dir_sync.sync()
        return moved

    def pending(self, limit: int | None = None) -> list[Path]:
        """Spooled files, oldest first."""
        files = sorted(p for p in self.directory.glob("*.dcm") if p.is_file())
        return files[:limit] if limit is not None else files

    def __len__(self) -> int:
        return len(self.pending())

    def done(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def fail(self, path: Path, reason: str) -> Path:
        """Move a file the PACS refused for good to ``failed/``, with the reason in a JSON file next to it."""
        target = self.failed_dir / path.name
        os.replace(path, target)
        record = {"reason": reason, "when": dt.datetime.now(dt.UTC).isoformat()}
        atomic_write(target.with_suffix(".json"), json.dumps(record, indent=2).encode())
        return target


class QuarantineStore:
    """Instances kept aside for review: ``<sha256>.dcm`` and ``<sha256>.json`` (verdict, reasons, sender)."""

    def __init__(
        self,
        directory: Path,
        *,
        on_quarantine: Callable[[dict[str, Any]], None] | None = None,
        owner: bool = True,
    ) -> None:
        """``owner``: as for :class:`Spool`; gateway workers sharing one store are not owners (their supervisor
        removes what a crash left before it starts them)."""
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        for stale in self.directory.glob(".incoming-*.tmp") if owner else ():  # a crash between write and rename
            stale.unlink(missing_ok=True)
        #: Called after each arrival is kept (the quarantine webhook), never raising into the channel.
        self.on_quarantine = on_quarantine

    def path_for(self, sha256: str) -> Path:
        return self.directory / f"{sha256}.dcm"

    def stage(self, data: bytes) -> Path:
        """Write ``data`` to a fsynced temporary file in the store (not yet kept); OSError if it cannot."""
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".incoming-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return Path(tmp)

    def commit(self, staged: Path, *, sha256: str, record: dict[str, Any]) -> Path:
        """Keep a staged copy as ``<sha256>.dcm`` (the same content kept before: the staged copy is dropped) and
        add this arrival to its verdict file (see :mod:`verifier.intake.sidecar`); return the kept file."""
        path = self.path_for(sha256)
        with directory_lock(self.directory):
            try:
                if path.exists():
                    staged.unlink(missing_ok=True)
                else:
                    os.replace(staged, path)
                    _fsync_dir(self.directory)
            except BaseException:
                staged.unlink(missing_ok=True)
                raise
            self._add_arrival(path, record)
        self._notify(record)
        return path

    def put(self, data: bytes, *, sha256: str, record: dict[str, Any]) -> Path:
        """Keep ``data`` and add this arrival to its verdict file; the same content twice is kept once."""
        path = self.directory / f"{sha256}.dcm"
        with directory_lock(self.directory):
            if not path.exists():
                atomic_write(path, data)
            self._add_arrival(path, record)
        if record.get("audit_id") is not None:  # the Orthanc plugin writes twice: tell once, with the record
            self._notify(record)
        return path

    @staticmethod
    def _add_arrival(path: Path, record: dict[str, Any]) -> None:
        merged = merge_sidecar(read_sidecar(path.with_suffix(".json")), record)
        atomic_write(path.with_suffix(".json"), json.dumps(merged, indent=2, sort_keys=True).encode())

    def _notify(self, record: dict[str, Any]) -> None:
        if self.on_quarantine is not None:
            try:
                self.on_quarantine(record)
            except Exception:  # noqa: BLE001 - telling someone must never undo or fail the quarantine
                _log.exception("quarantine notification failed")

    @staticmethod
    def discard(staged: Path) -> None:
        staged.unlink(missing_ok=True)

    def __iter__(self) -> Iterator[Path]:
        return iter(sorted(self.directory.glob("*.dcm")))


#: C-STORE statuses after which a retry may succeed (0xA7xx: refused, out of resources).
def _retryable(status: int) -> bool:
    return 0xA700 <= status <= 0xA7FF


class Forwarder(threading.Thread):
    """Empties the spool into the PACS with C-STORE; retries with backoff while it cannot be reached."""

    def __init__(
        self,
        spool: Spool,
        destination: Destination,
        *,
        calling_ae_title: str,
        retry_initial: float = 1.0,
        retry_max: float = 60.0,
        batch: int = 64,
        timeout: float = 30.0,
    ) -> None:
        super().__init__(name="medverify-forwarder", daemon=True)
        self.spool = spool
        self.destination = destination
        self.calling_ae_title = calling_ae_title
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.batch = batch
        self.timeout = timeout
        self.forwarded = 0
        self.failed = 0
        self.last_error: str | None = None
        self._wake = threading.Event()
        self._halt = threading.Event()

    def notify(self) -> None:
        """A new file is in the spool."""
        self._wake.set()

    def stop(self, timeout: float | None = 10.0) -> None:
        self._halt.set()
        self._wake.set()
        if self.is_alive():
            self.join(timeout)

    def run(self) -> None:
        delay = self.retry_initial
        while not self._halt.is_set():
            self._wake.clear()
            files = self.spool.pending(self.batch)
            if not files:
                self._wake.wait(5.0)
                continue
            try:
                progressed = self._send(files)
            except Exception as exc:  # noqa: BLE001 - the forwarder must survive anything; it logs and retries
                progressed = False
                self.last_error = f"{type(exc).__name__}: {exc}"
                _log.warning("forwarding to %s failed: %s", self.destination, self.last_error)
            if progressed:
                delay = self.retry_initial
                continue
            _log.info("PACS %s unavailable (%s); retrying in %.1f s", self.destination, self.last_error, delay)
            self._halt.wait(delay)
            delay = min(self.retry_max, delay * 2)

    def _send(self, files: list[Path]) -> bool:
        """Send ``files`` over one association; True if any was delivered or settled for good."""
        from pydicom.uid import UID
        from pynetdicom import _config
        from pynetdicom.dsutils import split_dataset

        from verifier.intake._reactor import requestor_ae

        _config.STORE_SEND_CHUNKED_DATASET = True  # send the spooled bytes as they are, without decoding
        contexts: dict[tuple[str, str], list[Path]] = {}
        settled = False
        for path in files:
            try:
                meta, _offset = split_dataset(path)
                key = (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
            except Exception as exc:  # noqa: BLE001 - a spooled file we cannot even read the meta of
                self._give_up(path, f"the spooled file has no usable file meta ({type(exc).__name__}: {exc})")
                settled = True
                continue
            if key in contexts or len(contexts) < 120:
                contexts.setdefault(key, []).append(path)
        if not contexts:
            return settled
        ae = requestor_ae(self.calling_ae_title)  # its association blocks instead of polling every millisecond
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        for sop_class, syntax in contexts:
            ae.add_requested_context(UID(sop_class), [UID(syntax)])
        assoc = ae.associate(self.destination.host, self.destination.port, ae_title=self.destination.ae_title)
        if not assoc.is_established:
            refused = {str(cx.abstract_syntax) for cx in assoc.rejected_contexts} if assoc.is_aborted else set()
            if refused and not assoc.accepted_contexts:
                # The PACS answered but accepts none of these SOP class / transfer syntax pairs: retrying cannot
                # help (pynetdicom aborts an association without an accepted context).
                for (sop_class, syntax), paths in contexts.items():
                    if sop_class in refused:
                        for path in paths:
                            self._give_up(path, f"the PACS accepts no context for {sop_class} in {syntax}")
                return True
            self.last_error = "association rejected or aborted" if assoc.is_rejected else "no connection"
            return settled
        set_no_delay(assoc)
        try:
            for (sop_class, syntax), paths in contexts.items():
                for path in paths:
                    if self._halt.is_set() or not assoc.is_established:
                        return True
                    settled |= self._send_one(assoc, path, sop_class, syntax)
        finally:
            if assoc.is_established:
                assoc.release()
        return settled

    def _send_one(self, assoc: Any, path: Path, sop_class: str, syntax: str) -> bool:
        try:
            status = assoc.send_c_store(path)
        except ValueError as exc:  # no accepted presentation context for this SOP class / transfer syntax
            self._give_up(path, f"the PACS accepts no context for {sop_class} in {syntax}: {exc}")
            return True
        code = int(status.Status) if "Status" in status else None
        if code is None:
            self.last_error = "no C-STORE response (timeout or abort)"
            return False
        if code == 0x0000 or 0xB000 <= code <= 0xBFFF or code == 0x0001:
            self.spool.done(path)
            self.forwarded += 1
            _log.info("forwarded %s to %s (status 0x%04X)", path.name, self.destination, code)
            return True
        comment = str(status.get("ErrorComment", "") or "")
        if _retryable(code):
            self.last_error = f"PACS answered 0x{code:04X} {comment}".strip()
            return False
        self._give_up(path, f"the PACS refused it with status 0x{code:04X} {comment}".strip())
        return True

    def _give_up(self, path: Path, reason: str) -> None:
        self.failed += 1
        self.last_error = reason
        target = self.spool.fail(path, reason)
        _log.error("not forwarded, moved to %s: %s", target, reason)
