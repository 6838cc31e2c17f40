"""Prometheus metrics of ``GET /metrics`` (prometheus-client): what the intake decided, and what waits.

Counts come from the audit log at scrape time, so they cover every channel and process that writes to it (the
gateway, the Orthanc plugin, this server, scans, reviews) and survive restarts: ``medverify_audit_records`` by
event, channel, verdict and action. Depths are read from disk: the quarantine bins (waiting instances) and the
spools (instances waiting to be forwarded, and those the PACS refused for good).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from verifier.audit.stats import record_counts

if TYPE_CHECKING:
    from verifier.api.app import ApiConfig

__all__ = ["render_metrics"]


class _Collector(Collector):
    def __init__(self, config: ApiConfig, spools: dict[str, Path]) -> None:
        self.config = config
        self.spools = spools

    def collect(self) -> Iterator[Metric]:
        counts = CounterMetricFamily(
            "medverify_audit_records",
            "Audit records by event (intake, verify, review, ...), channel, verdict and action.",
            labels=["event", "channel", "verdict", "action"],
        )
        for row in record_counts(self.config.audit_log):
            counts.add_metric([row.event, row.channel, row.verdict, row.action], row.count)
        yield counts
        review = self.config.review
        depth = GaugeMetricFamily(
            "medverify_quarantine_depth", "Instances waiting for review, per quarantine bin.", labels=["bin"]
        )
        if review is not None:
            for name, qbin in review.desk.bins.items():
                depth.add_metric([name], sum(1 for _ in qbin.files()))
        yield depth
        spool = GaugeMetricFamily(
            "medverify_spool_depth",
            "Instances in a forwarding spool: waiting to be sent, or failed (refused by the PACS for good).",
            labels=["spool", "state"],
        )
        for name, directory in self.spools.items():
            spool.add_metric([name, "waiting"], _count(directory, "*.dcm"))
            spool.add_metric([name, "failed"], _count(directory / "failed", "*.dcm"))
        yield spool


def _count(directory: Path, pattern: str) -> int:
    return sum(1 for _ in directory.glob(pattern)) if directory.is_dir() else 0


def render_metrics(config: ApiConfig) -> bytes:
    """The Prometheus text exposition of the metrics above."""
    spools: dict[str, Path] = {}
    if config.forward is not None:
        spools["stow"] = config.forward.spool.directory
    if config.review is not None and config.review.desk.gateway_spool is not None:
        spools["gateway"] = config.review.desk.gateway_spool
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(config, spools))
    return generate_latest(registry)
