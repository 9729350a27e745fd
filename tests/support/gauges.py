"""Read the router's unlabelled gauges out of a Prometheus text exposition (``/metrics``)."""

from __future__ import annotations


def gauge_values(text: str) -> dict[str, float]:
    """Every sample without labels in *text*, by metric name."""
    return {name: float(value) for name, _, value in (line.partition(" ") for line in text.splitlines())
            if name and not name.startswith("#") and "{" not in name}


def reservations(text: str) -> tuple[float, float]:
    """(reserved USD, cloud calls in flight): both 0 when no budget reservation is held."""
    values = gauge_values(text)
    return values["aibox_router_budget_reserved_usd"], values["aibox_router_cloud_calls_in_flight"]
