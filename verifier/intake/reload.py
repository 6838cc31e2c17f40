"""Trust, revocation and site-policy changes reach a running intake (``serve``, ``gateway``, the Orthanc plugin)
without a restart.

A :class:`CheckerReloader` looks, before each check, at what the checker's trust and policy were read from (the key
store's folders and files, the ``--trust`` files, the policy file): a few ``stat`` calls. When any of them changed, it
reads the trust policy and the site policy again and, if what judges a file changed (:class:`~verifier.judge.Judge`),
hands the intake a new :class:`~verifier.checker.Checker`. ``SIGHUP`` forces a reload. Every reload, and every failed
one (a policy file caught half-written: the previous checker stays), leaves an audit record (event ``reload``), so
that the log says from which moment a newly trusted certificate or a revocation counted.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from verifier.audit import AuditEntry, AuditLog, Channel
from verifier.checker import Checker
from verifier.errors import MedverifyError
from verifier.judge import Judge
from verifier.policy import load_policy
from verifier.settings import Settings

if TYPE_CHECKING:
    from verifier.intake.decide import Intake

__all__ = ["CheckerReloader", "reload_on_sighup"]

_log = logging.getLogger("medverify.intake")

#: The parts of a judge a reload can change (the checks, keys and detector model need a restart).
_RELOADED = ("trust", "policy")


class CheckerReloader:
    """Rebuilds a checker's trust policy and site policy when their files change; thread-safe."""

    def __init__(
        self,
        settings: Settings,
        *,
        trust: Sequence[Path] = (),
        policy_file: Path | None = None,
        audit_log: AuditLog | None = None,
        channel: Channel = Channel.INTAKE,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        self._settings = settings
        self._trust = tuple(Path(p) for p in trust)
        self._policy_file = policy_file or settings.policy_file
        self._audit_log = audit_log
        self._channel = channel
        self._notify = notify
        self._lock = threading.Lock()
        self._stamp = self._current_stamp()
        #: Reloads done (changes taken in, and forced ones), for status lines and tests.
        self.reloads = 0

    def _watched(self) -> list[Path]:
        keys = self._settings.keys_dir
        paths = [keys]
        try:
            with os.scandir(keys) as it:
                # The trust store's folders and files (trusted/, ca/, revoked.json, the index), one level down.
                paths += [Path(e.path) for e in it if not e.name.startswith(".")]
        except OSError:
            pass
        paths += list(self._trust)
        if self._policy_file is not None:
            paths.append(self._policy_file)
        return paths

    def _current_stamp(self) -> tuple[tuple[str, int, int], ...]:
        out = []
        for path in self._watched():
            try:
                st = path.stat()
            except OSError:
                out.append((str(path), -1, -1))
                continue
            out.append((str(path), st.st_mtime_ns, st.st_size))
        return tuple(sorted(out))

    def refresh(self, checker: Checker, *, force: bool = False, trigger: str = "change") -> Checker:
        """``checker``, or a new one when its trust or policy files changed (``force``: read them again anyway)."""
        stamp = self._current_stamp()
        if not force and stamp == self._stamp:
            return checker
        with self._lock:
            if not force and stamp == self._stamp:
                return checker
            self._stamp = stamp
            return self._reload(checker, trigger)

    def _reload(self, checker: Checker, trigger: str) -> Checker:
        from verifier.setup import load_trust_policy

        before = Judge.of(checker)
        try:
            fresh = dataclasses.replace(
                checker,
                trust=load_trust_policy(self._settings, self._trust),
                site_policy=load_policy(self._policy_file),
            )
        except (MedverifyError, ValueError, OSError) as exc:
            message = exc.diagnostics() if isinstance(exc, MedverifyError) else str(exc)
            _log.warning("reload (%s) failed, the previous trust and policy stay: %s", trigger, message)
            self._record(checker, {"trigger": trigger, "error": message[:500], "kept": "previous"})
            return checker
        after = Judge.of(fresh)
        changed = after.changes(before)
        if not changed and trigger == "change":
            return checker  # a file was touched, nothing that judges changed
        self.reloads += 1
        details: dict[str, Any] = {"trigger": trigger, "changed": changed}
        for part in _RELOADED:
            details[part] = {"before": getattr(before, part), "after": getattr(after, part)}
        self._record(fresh, details)
        text = ", ".join(changed) or "nothing changed"
        _log.info("reloaded trust and site policy (%s): %s", trigger, text)
        if self._notify is not None:
            self._notify(f"reloaded trust and site policy ({trigger}): {text}")
        return fresh

    def _record(self, checker: Checker, details: dict[str, Any]) -> None:
        if self._audit_log is None:
            return
        entry = AuditEntry(
            event="reload",
            channel=self._channel,
            policy_version=checker.site_policy.version,
            details={"reload": details},
        ).with_local_actor()
        try:
            self._audit_log.append(entry)
        except MedverifyError as exc:  # the reload stands; the checks' own records fail closed as before
            _log.error("the reload could not be recorded: %s", exc.diagnostics())


def reload_on_sighup(intake: Intake) -> None:
    """SIGHUP makes ``intake`` read its trust store, revocations and site policy again, in a thread (the reload
    writes an audit record, which a signal handler must not wait for). Call it from the main thread."""

    def handler(_signum: int, _frame: object) -> None:
        threading.Thread(target=intake.reload, kwargs={"trigger": "SIGHUP"}, name="medverify-reload").start()

    signal.signal(signal.SIGHUP, handler)
