"""Prometheus metrics on a registry of our own (not prometheus_client's global one).

A private registry keeps tests independent and lets ``/metrics`` show only what the router
means to export. Counters are updated as requests settle; the budget gauges are computed when
Prometheus scrapes, from whatever source cost control registered, so they are never stale.
Other parts (GPU telemetry) add their own collectors with :func:`register_collector`.

Exported names (all prefixed ``aibox_router_``)::

    requests_total{rule,backend,status}   calls that ended, by outcome
    tokens_total{backend,kind}            kind: input, output, cache_write_5m, cache_write_1h, cache_read
    fallbacks_total                       calls answered by a fallback target
    downgrades_total                      cloud-bound calls sent to a local target by the budget
    cost_usd_total{backend}               settled spend (all days)
    spend_today_usd                       cloud spend of the current budget day
    budget_remaining_usd                  daily budget minus today's spend, never below 0
    cutoff_engaged                        1 while the emergency cutoff holds
    budget_reserved_usd                   worst cases held by cloud calls in flight (today)
    cloud_calls_in_flight                 cloud calls admitted and not yet settled
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from .accounting import RequestRecord

PREFIX = "aibox_router_"


@dataclass(frozen=True)
class BudgetGauges:
    spend_today_usd: float
    budget_remaining_usd: float
    cutoff_engaged: bool
    reserved_usd: float = 0.0
    calls_in_flight: int = 0


class _BudgetCollector(Collector):
    def __init__(self) -> None:
        self.source: Callable[[], BudgetGauges] | None = None

    def collect(self) -> Iterator[Metric]:
        if self.source is None:
            return
        g = self.source()
        yield GaugeMetricFamily(PREFIX + "spend_today_usd", "Cloud spend of the current budget day in USD.",
                                value=g.spend_today_usd)
        yield GaugeMetricFamily(PREFIX + "budget_remaining_usd",
                                "Daily cloud budget left today in USD (never below 0).",
                                value=g.budget_remaining_usd)
        yield GaugeMetricFamily(PREFIX + "cutoff_engaged", "1 while the emergency cutoff refuses cloud calls.",
                                value=1.0 if g.cutoff_engaged else 0.0)
        # Stays above 0 with no traffic only if a call's reservation was never released.
        yield GaugeMetricFamily(PREFIX + "budget_reserved_usd",
                                "Worst-case cost held by today's cloud calls in flight, in USD.", value=g.reserved_usd)
        yield GaugeMetricFamily(PREFIX + "cloud_calls_in_flight", "Cloud calls admitted and not yet settled.",
                                value=g.calls_in_flight)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(PREFIX + "requests_total", "Calls that ended, by rule, backend and status.",
                                ["rule", "backend", "status"], registry=r)
        self.tokens = Counter(PREFIX + "tokens_total", "Tokens processed, by backend and kind.",
                              ["backend", "kind"], registry=r)
        self.fallbacks = Counter(PREFIX + "fallbacks_total", "Calls answered by a fallback target.", registry=r)
        self.downgrades = Counter(PREFIX + "downgrades_total",
                                  "Cloud-bound calls sent to a local target because of the budget.", registry=r)
        self.cost = Counter(PREFIX + "cost_usd_total", "Settled spend in USD, by backend.", ["backend"],
                            registry=r)
        self.ledger_errors = Counter(PREFIX + "ledger_write_errors_total",
                                     "Settled calls the ledger failed to store.", registry=r)
        self._budget = _BudgetCollector()
        r.register(self._budget)

    def set_budget_source(self, source: Callable[[], BudgetGauges] | None) -> None:
        """Where the scrape-time budget gauges come from (cost control registers itself)."""
        self._budget.source = source

    def clear_budget_source(self, source: Callable[[], BudgetGauges]) -> None:
        """Unhook *source* if it is still the registered one (a replaced one stays)."""
        if self._budget.source == source:
            self._budget.source = None

    def register_collector(self, collector: Collector) -> None:
        self.registry.register(collector)

    def observe(self, record: RequestRecord) -> None:
        backend = record.backend or record.target or "none"
        self.requests.labels(rule=record.rule, backend=backend, status=record.status).inc()
        u = record.usage
        for kind, n in (("input", u.input_tokens), ("output", u.output_tokens),
                        ("cache_write_5m", u.cache_creation_input_tokens),
                        ("cache_write_1h", u.cache_creation_1h_input_tokens),
                        ("cache_read", u.cache_read_input_tokens)):
            if n:
                self.tokens.labels(backend=backend, kind=kind).inc(n)
        if record.fallback:
            self.fallbacks.inc()
        if record.downgraded:
            self.downgrades.inc()
        if record.cost_usd:
            self.cost.labels(backend=backend).inc(float(record.cost_usd))

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type, for a ``/metrics`` endpoint."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


# The process-wide instance the server exports; tests make their own Metrics().
METRICS = Metrics()


def register_collector(collector: Collector) -> None:
    METRICS.register_collector(collector)


def render() -> tuple[bytes, str]:
    return METRICS.render()
