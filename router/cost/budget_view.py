"""Today's budget as operators and tools see it: one view, one money format.

``budget show``, ``status`` and the MCP tool ``usage_report`` all show where today's cloud budget
stands. Each used to add up the ledger and format the dollars itself (three shapes, three money
formats); they now read a :class:`BudgetView` and print it through :meth:`BudgetView.as_json` or
:func:`summary`.

Money has one format per medium: :func:`money` in JSON (a decimal string with six places, exact,
as ``report --json`` writes it) and :func:`dollars` on a screen (``$12.35``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from ..config import RouterConfig
from .budget import BudgetLimits, day_of
from .ledger import CutoffState, DayTotals

_MICRO_USD = Decimal("0.000001")


def money(amount: Decimal) -> str:
    """USD for JSON: a decimal string to the millionth of a dollar (``"12.250000"``)."""
    return str(amount.quantize(_MICRO_USD))


def dollars(amount: Decimal | float | str) -> str:
    """USD for a screen: ``$12.25``."""
    return f"${Decimal(str(amount)):.2f}"


class BudgetSource(Protocol):
    """The ledger reads the view needs (SqliteLedger has them)."""

    def day_totals(self, day: str) -> DayTotals: ...

    def get_cutoff(self) -> CutoffState: ...

    def alerts_sent(self, day: str) -> set[str]: ...


@dataclass(frozen=True)
class BudgetView:
    """Where one budget day stands: cloud spend against the configured limits, and the cutoff."""

    day: str
    timezone: str
    spend: Decimal
    limits: BudgetLimits
    cutoff: CutoffState = field(default_factory=CutoffState)
    # None where the source does not say (the daemon's /metrics): left out of the JSON, not shown as 0.
    client_spend: Mapping[str, Decimal] | None = None
    alerts_sent: frozenset[str] | None = None

    @property
    def remaining(self) -> Decimal:
        return max(Decimal(0), self.limits.daily_budget - self.spend)

    @property
    def cutoff_engaged(self) -> bool:
        return self.cutoff.active_on(self.day)

    def clients(self) -> dict[str, tuple[Decimal, Decimal | None]]:
        """Spend and daily budget (None: no budget of its own) of every client that has either."""
        spent = self.client_spend or {}
        names = sorted(set(spent) | set(self.limits.client_budgets))
        return {c: (spent.get(c, Decimal(0)), self.limits.client_budgets.get(c)) for c in names}

    def as_json(self) -> dict[str, Any]:
        """The one JSON shape of today's budget (money as :func:`money` strings). ``cutoff`` is the
        last cutoff event (``engaged``: it holds today); ``alerts_sent`` and ``clients`` only where
        the source knows them."""
        out: dict[str, Any] = {
            "day": self.day, "timezone": self.timezone,
            "spend_usd": money(self.spend), "daily_budget_usd": money(self.limits.daily_budget),
            "remaining_usd": money(self.remaining),
            "alert_threshold_usd": money(self.limits.alert_threshold),
            "emergency_cutoff_usd": money(self.limits.emergency_cutoff),
            "cutoff": {"engaged": self.cutoff_engaged, "day": self.cutoff.day, "reason": self.cutoff.reason,
                       "by": self.cutoff.by},
        }
        if self.alerts_sent is not None:
            out["alerts_sent"] = sorted(self.alerts_sent)
        if self.client_spend is not None:
            out["clients"] = {c: {"spend_usd": money(spend),
                                  "daily_budget_usd": None if cap is None else money(cap)}
                              for c, (spend, cap) in self.clients().items()}
        return out


def summary(view: Mapping[str, Any]) -> str:
    """One line from :meth:`BudgetView.as_json`: ``$2.50 of $10.00 (25%) spent, $7.50 left; ...``."""
    spend, daily = Decimal(view["spend_usd"]), Decimal(view["daily_budget_usd"])
    share = f" ({spend / daily:.0%})" if daily else ""
    return (f"{dollars(spend)} of {dollars(daily)}{share} spent, {dollars(view['remaining_usd'])} left; "
            f"alert at {dollars(view['alert_threshold_usd'])}, "
            f"cutoff at {dollars(view['emergency_cutoff_usd'])}")


def budget_view(config: RouterConfig, ledger: BudgetSource | None, now: float) -> BudgetView:
    """Today's view (the budget day *now* falls on) from *ledger*; None: no ledger yet, nothing spent."""
    limits = BudgetLimits.from_config(config)
    day = day_of(now, limits.timezone)
    if ledger is None:
        return BudgetView(day=day, timezone=config.budgets.timezone, spend=Decimal(0), limits=limits,
                          client_spend={}, alerts_sent=frozenset())
    totals = ledger.day_totals(day)
    return BudgetView(day=day, timezone=config.budgets.timezone, spend=totals.cloud_spend, limits=limits,
                      cutoff=ledger.get_cutoff(), client_spend=dict(totals.client_spend),
                      alerts_sent=frozenset(ledger.alerts_sent(day)))
