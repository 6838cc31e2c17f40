"""Group commit of audit records: concurrent appends share one transaction.

An intake channel under load records many instances at once (one per association or request), and each caller must
wait until its own record is committed before it answers the sender. Committing them one by one serialises the
callers on the log head row, one transaction (and on PostgreSQL one WAL flush) each. :class:`GroupCommit` lets
them share: every record handed in while a commit runs, or within ``max_wait`` seconds of the first one while the
caller says more are coming, is committed in one :meth:`~verifier.audit.AuditLog.append_many` transaction, and every
caller gets its own receipt only after that transaction has committed::

    group = GroupCommit(log)
    receipt = group.append(entry)        # from many threads; returns once the record is committed
    group.close()

The guarantee of :meth:`AuditLog.append` is kept: ``append`` returns only when the record is durable in the
database and raises when it is not. A batch that fails is tried again record by record, so that one record the
database refuses does not fail the others; when the database is down every caller of the batch gets the error.
The records of one batch get consecutive ids in the order they were handed in. Appends from other processes are
serialised with these in the database (the head row lock), not here.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Callable

from verifier.audit.entry import AuditEntry, AuditReceipt
from verifier.audit.log import AuditLog
from verifier.errors import AuditError

__all__ = ["GroupCommit", "GroupStats"]


@dataclasses.dataclass
class _Pending:
    entry: AuditEntry
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    receipt: AuditReceipt | None = None
    error: BaseException | None = None


@dataclasses.dataclass
class GroupStats:
    """How the appends were grouped so far (for logs and benchmarks)."""

    records: int = 0
    transactions: int = 0
    largest: int = 0

    @property
    def mean_batch(self) -> float:
        return self.records / self.transactions if self.transactions else 0.0


class GroupCommit:
    """Commits the records of concurrent callers in shared transactions (see the module help).

    ``max_wait``: how long the committer waits for more records after the first of a batch, but only while
    ``more_coming()`` says other callers are about to append (an idle channel never waits). ``max_batch`` bounds a
    transaction.
    """

    def __init__(
        self,
        log: AuditLog,
        *,
        max_wait: float = 0.002,
        max_batch: int = 256,
        more_coming: Callable[[], bool] | None = None,
    ) -> None:
        if max_wait < 0 or max_batch < 1:
            raise ValueError("max_wait must be >= 0 and max_batch >= 1")
        self.log = log
        self.max_wait = max_wait
        self.max_batch = max_batch
        self.stats = GroupStats()
        self._more_coming = more_coming or (lambda: False)
        self._queue: collections.deque[_Pending] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="medverify-audit-commit", daemon=True)
        self._thread.start()

    def append(self, entry: AuditEntry) -> AuditReceipt:
        """Record ``entry``; return once its transaction has committed. Raises what the log raises."""
        if not isinstance(entry, AuditEntry):
            raise TypeError("append takes AuditEntry objects")
        pending = _Pending(entry)
        with self._cond:
            if self._closed:
                raise AuditError("the audit log's group commit is closed")
            self._queue.append(pending)
            self._cond.notify()
        pending.done.wait()
        if pending.error is not None:
            raise pending.error
        if pending.receipt is None:  # pragma: no cover - the committer always sets one or the other
            raise AuditError("the audit record was neither committed nor refused")
        return pending.receipt

    def close(self) -> None:
        """Commit what was handed in, then stop; later appends raise."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    # -- the committer thread ------------------------------------------------------------------------------

    def _take(self) -> list[_Pending] | None:
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            if self.max_wait > 0 and len(self._queue) < self.max_batch and self._more_coming():
                deadline = time.monotonic() + self.max_wait
                while len(self._queue) < self.max_batch and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0 or not self._more_coming():
                        break
                    self._cond.wait(min(left, 0.0005))
            count = min(len(self._queue), self.max_batch)
            return [self._queue.popleft() for _ in range(count)]

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            self._commit(batch)

    def _commit(self, batch: list[_Pending]) -> None:
        try:
            receipts = self.log.append_many([p.entry for p in batch])
        except BaseException as error:  # noqa: BLE001 - every caller gets the error; none is left waiting
            if len(batch) == 1:
                batch[0].error = error
            else:
                for pending in batch:  # alone, so that one refused record does not fail the others
                    self._commit([pending])
                return
        else:
            for pending, receipt in zip(batch, receipts, strict=True):
                pending.receipt = receipt
            self.stats.records += len(batch)
            self.stats.transactions += 1
            self.stats.largest = max(self.stats.largest, len(batch))
        for pending in batch:
            pending.done.set()
