"""Where a scan's checks run: forked local processes, or a Dask cluster. Workers only check files; the driver
alone writes the audit database."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from provenance.trust import TrustPolicy
from provenance.watermark import WatermarkKey
from verifier.checker import Check, Checker
from verifier.detection import DetectorSetup
from verifier.errors import InputError
from verifier.policy import Policy
from verifier.result import FileResult

__all__ = ["DaskExecutor", "Executor", "LocalExecutor", "TrustSpec", "check_batch"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrustSpec:
    """A trust policy as plain, picklable data (anchor certificates in PEM and the revocation lists), for
    workers on other machines: they rebuild the :class:`TrustPolicy` and never see a key store."""

    anchors_pem: tuple[bytes, ...]
    revoked_serials: tuple[tuple[str, int], ...] = ()
    revoked_fingerprints: tuple[str, ...] = ()
    unsafe_trust_everything: bool = False

    @classmethod
    def from_policy(cls, policy: TrustPolicy) -> TrustSpec:
        # TrustPolicy exposes no accessor for its revocation lists yet; read them where it keeps them.
        serials: Iterable[tuple[str, int]] = policy.revoked_serials
        fingerprints: Iterable[str] = policy.revoked_fingerprints
        return cls(
            anchors_pem=tuple(a.public_bytes(serialization.Encoding.PEM) for a in policy.anchors),
            revoked_serials=tuple(sorted((str(i), int(s)) for i, s in serials)),
            revoked_fingerprints=tuple(sorted(str(f) for f in fingerprints)),
            unsafe_trust_everything=policy.trusts_everything,
        )

    def to_policy(self) -> TrustPolicy:
        if self.unsafe_trust_everything:
            return TrustPolicy.unsafe_trust_everything()
        return TrustPolicy(
            anchors=[x509.load_pem_x509_certificate(pem) for pem in self.anchors_pem],
            revoked_serials=self.revoked_serials,
            revoked_fingerprints=self.revoked_fingerprints,
        )

    def digest(self) -> str:
        h = hashlib.sha256()
        for part in (*self.anchors_pem, repr(self.revoked_serials).encode(), repr(self.revoked_fingerprints).encode()):
            h.update(len(part).to_bytes(8, "big") + part)
        h.update(b"1" if self.unsafe_trust_everything else b"0")
        return h.hexdigest()


_WORKER_POLICIES: dict[str, TrustPolicy] = {}


def check_batch(
    paths: Sequence[str],
    checks: frozenset[Check],
    trust: TrustSpec,
    site_policy: Policy,
    watermark_keys: Sequence[WatermarkKey] = (),
    detector: DetectorSetup | None = None,
    not_run: Mapping[Check, str] | None = None,
) -> list[FileResult]:
    """Check ``paths`` where this runs (a Dask worker): one result per path (per image of an export), never an
    exception per file.

    The worker's :class:`~verifier.checker.Checker` is rebuilt from the parts that travel (the trust policy as
    plain data, rebuilt once per worker and trust policy)."""
    key = trust.digest()
    policy = _WORKER_POLICIES.get(key)
    if policy is None:
        policy = _WORKER_POLICIES[key] = trust.to_policy()
    checker = Checker(
        checks=checks, not_run=dict(not_run or {}), trust=policy, site_policy=site_policy,
        watermark_keys=tuple(watermark_keys), detector=detector,
    )  # fmt: skip
    return [r for p in paths for r in checker.check_file(p)]


# ------------------------------------------------------------------------------------------------- executors


class Executor(Protocol):
    """Runs the checks of a scan. Results may come in any order; each path gives one (an export one per image)."""

    description: str

    def map(self, paths: Sequence[str], checker: Checker) -> Iterator[FileResult]: ...

    def close(self) -> None: ...


class LocalExecutor:
    """Forked local worker processes (:meth:`verifier.checker.Checker.check_all`); ``workers=1`` checks
    in-process."""

    def __init__(self, workers: int = 1) -> None:
        if workers < 1:
            raise InputError("--workers must be at least 1")
        self.workers = workers
        self.description = f"{workers} local process{'es' if workers > 1 else ''}"

    def map(self, paths: Sequence[str], checker: Checker) -> Iterator[FileResult]:
        return checker.check_all([Path(p) for p in paths], workers=self.workers)

    def close(self) -> None:
        pass


class DaskExecutor:
    """Batches of files sent to a Dask distributed cluster at ``address``, or to a new local cluster (``local``:
    processes, ``workers`` of them with one thread each, no dashboard). The workers must see the files at the
    same paths (a shared file system) and have medverify installed."""

    def __init__(self, address: str, *, workers: int = 2, batch_size: int = 32) -> None:
        try:
            # Untyped library: used through Any.
            distributed: Any = importlib.import_module("distributed")
        except ModuleNotFoundError:
            raise InputError("--dask needs Dask distributed: pip install 'medverify[dask]'") from None
        self.batch_size = batch_size
        self._cluster: Any = None
        try:
            if address == "local":
                # No dashboard; the scheduler's HTTP server (health, metrics) would still take port 8787 and warn
                # when anything else holds it: an ephemeral loopback port instead.
                self._cluster = distributed.LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1",
                    scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                )
                self._client: Any = distributed.Client(self._cluster)
            else:
                # Timeout: Dask's distributed.comm.timeouts.connect setting.
                self._client = distributed.Client(address)
        except (OSError, TimeoutError) as exc:
            self.close()
            raise InputError(f"cannot reach the Dask scheduler at {address}: {exc}") from exc
        n = len(self._client.scheduler_info().get("workers", {}))
        self.description = f"Dask cluster {self._client.scheduler.address} ({n} worker{'s' if n != 1 else ''})"

    def map(self, paths: Sequence[str], checker: Checker) -> Iterator[FileResult]:
        distributed: Any = importlib.import_module("distributed")
        tls = self._client.scheduler.address.startswith("tls://")
        if checker.watermark_keys and self._cluster is None and not tls:
            # Watermark keys are secrets: they may travel only to a local cluster or over TLS.
            checker = checker.without(
                Check.WATERMARK,
                "the watermark keys are secrets and travel to Dask workers only over TLS (a tls:// scheduler "
                "address) or to --dask local",
            )
        watermark_keys = checker.watermark_keys
        spec = TrustSpec.from_policy(checker.trust)
        [spec_future] = self._client.scatter([spec], broadcast=True)
        keys_future = None
        if watermark_keys:
            [keys_future] = self._client.scatter([tuple(watermark_keys)], broadcast=True)
        batches = [list(paths[i : i + self.batch_size]) for i in range(0, len(paths), self.batch_size)]
        limit = max(4, 4 * max(1, len(self._client.scheduler_info().get("workers", {}))))
        pending = iter(batches)
        queue = distributed.as_completed()

        def submit_next() -> bool:
            batch = next(pending, None)
            if batch is None:
                return False
            queue.add(
                self._client.submit(
                    check_batch, batch, checker.checks, spec_future, checker.site_policy, keys_future or (),
                    checker.detector, dict(checker.not_run), pure=False,
                )
            )
            return True

        for _ in range(limit):
            if not submit_next():
                break
        for future in queue:
            results: list[FileResult] = future.result()
            future.release()
            submit_next()
            yield from results

    def close(self) -> None:
        client = getattr(self, "_client", None)
        if client is not None:
            client.close()
        if self._cluster is not None:
            self._cluster.close()
