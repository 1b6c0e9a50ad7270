"""Prometheus metrics, read from the registry and hub at scrape time.

Nothing is counted on the per-chunk path: byte totals are summed when a
transfer ends, and gauges are read when Prometheus asks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from collections.abc import Iterator

    from prometheus_client.metrics_core import Metric

    from hoodypipe.hub import Hub
    from hoodypipe.pipes import Registry


class Metrics:
    content_type = CONTENT_TYPE_LATEST.encode()

    def __init__(self, registry: Registry, hub: Hub) -> None:
        self.pipes = registry
        self.hub = hub
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self)

    def collect(self) -> Iterator[Metric]:
        transfers = CounterMetricFamily(
            "hoodypipe_transfers", "Transfers ended, by kind and outcome", labels=["kind", "outcome"]
        )
        for outcome, count in sorted(self.pipes.outcomes.items()):
            transfers.add_metric(["pipe", outcome], count)  # live and ws transfers are still to come
        yield transfers
        yield CounterMetricFamily(
            "hoodypipe_relayed_bytes", "Bytes relayed by ended transfers", value=self.pipes.bytes_relayed
        )
        rejections = CounterMetricFamily("hoodypipe_rejections", "Requests refused, by status", labels=["status"])
        for code, count in sorted(self.pipes.rejections.items()):
            rejections.add_metric([str(code)], count)
        yield rejections
        yield GaugeMetricFamily("hoodypipe_pending_pipes", "Pipes waiting for their parties", value=self.pipes.waiting)
        yield GaugeMetricFamily("hoodypipe_active_pipes", "Pipes streaming", value=self.pipes.streaming)
        yield GaugeMetricFamily("hoodypipe_spectators", "Open ?progress streams", value=self.hub.spectator_count)
        yield GaugeMetricFamily("hoodypipe_watched_pipes", "Names with spectators", value=len(self.hub.watches))
        yield GaugeMetricFamily(
            "hoodypipe_retained_finals", "Finished transfers' final states in this process", value=len(self.hub.finals)
        )
        yield GaugeMetricFamily("hoodypipe_receipts", "Receipts kept in this process", value=len(self.hub.receipts))
        store = self.hub.store
        errors = CounterMetricFamily(
            "hoodypipe_store_errors", "Failures of the retained-state store, by operation", labels=["operation"]
        )
        for operation, count in sorted(store.errors.items()):
            errors.add_metric([operation], count)
        yield errors
        yield GaugeMetricFamily("hoodypipe_store_queued", "Final states not yet in the store", value=store.queued)

    def render(self) -> bytes:
        return generate_latest(self.registry)
