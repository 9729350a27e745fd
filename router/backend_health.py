"""What real calls taught the gateway about each backend: which ones are down, and why.

A backend whose upstream rejects the router's own credentials (HTTP 401/403) is the operator's
problem, not the developer's: it is marked down here (``/ready``, ``/metrics``, and through its
health probe ``status``), the operator is alerted once per outage, and the pipeline falls back.
Any other failure that made the pipeline pass a backend over marks it down too, until a call to
it succeeds again, so ``aibox_router_backend_up`` shows what clients are living with.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .cost.alerts import Alert
from .metrics import register_collector

log = logging.getLogger("aibox_router.backend_health")

CREDENTIALS_ALERT_KIND = "backend_credentials_rejected"


@dataclass(frozen=True)
class Down:
    reason: str
    since: float
    credentials: bool  # the upstream rejected the router's key: only an operator can fix it


class BackendHealth:
    """Per-backend state learned from calls; shared by a runtime and its reloaded successors."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self._down: dict[str, Down] = {}
        self._clock = clock

    def call_failed(self, backend: str, reason: str, *, credentials: bool, alerter: Any = None) -> None:
        """Mark *backend* down; alert once when it is a credentials rejection newly seen."""
        previous = self._down.get(backend)
        self._down[backend] = Down(reason, previous.since if previous else self._clock(), credentials)
        if credentials and not (previous and previous.credentials):
            log.error("backend %s is DOWN: %s. Requests fall back to other targets until the key is fixed.",
                      backend, reason)
            if alerter is not None:
                alerter.send(credentials_alert(backend, reason))

    def call_succeeded(self, backend: str) -> None:
        down = self._down.pop(backend, None)
        if down is not None:
            log.info("backend %s answers again (was down: %s)", backend, down.reason)

    def down(self, backend: str) -> Down | None:
        return self._down.get(backend)


def credentials_alert(backend: str, reason: str) -> Any:
    day = time.strftime("%Y-%m-%d", time.gmtime())
    return Alert(kind=CREDENTIALS_ALERT_KIND,
                 title=f"aibox-router: backend {backend!r} rejects the router's API key",
                 message=(f"{reason}. Its requests now go to fallback targets; fix the key in the router's "
                          "environment file and restart the router."),
                 day=day, spend_usd=Decimal(0), budget_usd=Decimal(0))


class BackendCollector(Collector):
    """``aibox_router_backend_up{backend}``: 0 while the last call to a backend failed."""

    def __init__(self, source: Callable[[], tuple[list[str], BackendHealth] | None]):
        self.source = source

    def collect(self) -> Iterator[Metric]:
        current = self.source()
        if current is None:
            return
        names, health = current
        up = GaugeMetricFamily("aibox_router_backend_up",
                               "1 unless the last call to this backend failed (0: down, e.g. its API key "
                               "was rejected).", labels=["backend"])
        rejected = GaugeMetricFamily("aibox_router_backend_credentials_rejected",
                                     "1 while the upstream rejects the router's API key for this backend.",
                                     labels=["backend"])
        for name in names:
            down = health.down(name)
            up.add_metric([name], 0.0 if down else 1.0)
            rejected.add_metric([name], 1.0 if down and down.credentials else 0.0)
        yield up
        yield rejected


_COLLECTOR: BackendCollector | None = None


def register_metrics(source: Callable[[], tuple[list[str], BackendHealth] | None]) -> None:
    """Export the backend gauges on ``/metrics``; later calls only re-point the one collector."""
    global _COLLECTOR
    if _COLLECTOR is None:
        _COLLECTOR = BackendCollector(source)
        register_collector(_COLLECTOR)
    else:
        _COLLECTOR.source = source
