"""What a fleetshift metrics registry exposes: its series without prometheus_client's `<name>_created` ones.

Where it sits: between a private `CollectorRegistry` (the reconciler's, `reconciler.shell.metrics`; the agent can use
the same) and whatever exports it (the `/metrics` HTTP handler, a node-exporter textfile, a Pushgateway push). For
every counter and histogram series prometheus_client adds a `_created` series holding the time it was created:
nothing fleetshift documents reads it, and it doubles the series a Prometheus stores (the reconciler starts a dozen
deployment counters per group at 0). prometheus_client can only switch them off for the whole process
(`disable_created_metrics`), which a library must not do behind its host's back, so they are filtered here, per
registry.

Imported only by the metrics modules, never by `contract/__init__`: a process without metrics does not load
prometheus_client.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry


class WithoutCreated(Collector):
    """`registry` as exported: every family it collects, minus the `_created` samples. Also answers
    `restricted_registry(names)`, which prometheus_client's HTTP handler calls for `/metrics?name[]=...`."""

    def __init__(self, registry: CollectorRegistry, names: Iterable[str] | None = None) -> None:
        self.registry = registry
        self._source: Collector = registry if names is None else registry.restricted_registry(list(names))

    def restricted_registry(self, names: Iterable[str]) -> WithoutCreated:
        return WithoutCreated(self.registry, names)

    def collect(self) -> Iterator[Metric]:
        for family in self._source.collect():
            created = f"{family.name}_created"
            # collect() builds fresh families on every call, so trimming them changes nothing kept elsewhere.
            family.samples = [sample for sample in family.samples if sample.name != created]
            yield family


__all__ = ["WithoutCreated"]
