"""The spend report: what the ledger says about a range of budget days, and whether goals are met.

Pure functions over ledger rows, so the numbers can be checked against hand-made records. The
goals are the project's success measures: local answers fast (p95 under 5 s), at least 80% of
queries answered locally, and under $0.10 per query on average.

Queries are answered calls: a call that ended in an error (a failed local attempt before a
fallback answered, an upstream failure) is not a query, and a refusal is counted on its own.

**All-cloud cost** is what the period would have cost with every local answer sent to the cloud:
each local answer priced at the model its client asked for (``claude-haiku-*`` at Haiku's price;
a name with no price, such as an OpenAI client's target name, at the reference model), with the
share of its prompt that the period's cloud calls read from the prompt cache billed as cache
reads (Claude Code's turns are mostly cache reads). With no cloud calls to measure that share,
no caching is assumed, and the report says so. **Savings** are that minus what was spent, minus
the GPU's electricity where it was measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from ..config import PriceConfig, RouterConfig
from ..internal import Usage
from ..pricing import cost_usd, find_price, usd
from .budget_view import money
from .ledger import LedgerRow

LOCAL_P95_GOAL_MS = 5000.0
LOCAL_SHARE_GOAL = 0.80
COST_PER_QUERY_GOAL = Decimal("0.10")
JOULES_PER_KWH = 3_600_000


@dataclass
class Group:
    calls: int = 0
    cloud_calls: int = 0
    local_calls: int = 0
    errors: int = 0
    spend_usd: Decimal = Decimal(0)
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass
class DayLine:
    day: str
    spend_usd: Decimal
    budget_usd: Decimal
    cloud_calls: int
    local_calls: int

    @property
    def local_share(self) -> float | None:
        total = self.cloud_calls + self.local_calls
        return self.local_calls / total if total else None


@dataclass
class Measure:
    name: str
    goal: str
    value: str
    passed: bool | None  # None: no data to judge


@dataclass
class Report:
    first_day: str
    last_day: str
    days: int
    reference_model: str
    cloud_calls: int = 0
    local_calls: int = 0
    refused: int = 0
    spend_usd: Decimal = Decimal(0)
    budget_usd: Decimal = Decimal(0)
    errors: int = 0  # calls that ended in an error (not queries)
    local_at_cloud_price_usd: Decimal = Decimal(0)
    cache_read_share: float = 0.0  # of the cloud calls' prompt tokens, applied to local answers
    cache_read_share_measured: bool = False  # False: no cloud calls in the period, no caching assumed
    estimated_token_share: float | None = None  # of the local tokens priced, the share estimated
    local_latency_p50_ms: float | None = None
    local_latency_p95_ms: float | None = None
    local_ttft_p50_ms: float | None = None
    local_ttft_p95_ms: float | None = None
    energy_kwh: float = 0.0
    electricity_usd: Decimal = Decimal(0)
    availability: dict[str, float] = field(default_factory=dict)
    by_rule: dict[str, Group] = field(default_factory=dict)
    by_model: dict[str, Group] = field(default_factory=dict)
    by_client: dict[str, Group] = field(default_factory=dict)
    daily: list[DayLine] = field(default_factory=list)

    @property
    def queries(self) -> int:
        return self.cloud_calls + self.local_calls

    @property
    def local_share(self) -> float | None:
        return self.local_calls / self.queries if self.queries else None

    @property
    def budget_remaining_usd(self) -> Decimal:
        return max(Decimal(0), self.budget_usd - self.spend_usd)

    @property
    def all_cloud_usd(self) -> Decimal:
        """What the same traffic would have cost with every local answer sent to the cloud."""
        return self.spend_usd + self.local_at_cloud_price_usd

    @property
    def savings_usd(self) -> Decimal:
        """All-cloud cost less what was spent: cloud spend and the GPU's electricity."""
        return self.local_at_cloud_price_usd - self.electricity_usd

    @property
    def cost_per_query_usd(self) -> Decimal | None:
        return self.spend_usd / self.queries if self.queries else None

    def measures(self) -> list[Measure]:
        p95 = self.local_latency_p95_ms
        share = self.local_share
        cpq = self.cost_per_query_usd
        return [
            Measure("local answers fast", f"p95 < {LOCAL_P95_GOAL_MS / 1000:.0f} s",
                    "n/a" if p95 is None else f"p95 {p95 / 1000:.2f} s",
                    None if p95 is None else p95 < LOCAL_P95_GOAL_MS),
            Measure("mostly local", f">= {LOCAL_SHARE_GOAL:.0%} local", "n/a" if share is None else f"{share:.1%}",
                    None if share is None else share >= LOCAL_SHARE_GOAL),
            Measure("cheap per query", f"< ${COST_PER_QUERY_GOAL}", "n/a" if cpq is None else f"${cpq:.4f}",
                    None if cpq is None else cpq < COST_PER_QUERY_GOAL),
        ]


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile: the smallest value with at least p of the values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p * len(ordered)) - 1)]


def day_range(last_day: str, days: int) -> tuple[str, str]:
    last = date.fromisoformat(last_day)
    return (last - timedelta(days=days - 1)).isoformat(), last.isoformat()


def default_reference_model(config: RouterConfig) -> str | None:
    """The model of the first cloud target, the one local traffic would otherwise have gone to."""
    for name, target in config.targets.items():
        if config.target_is_cloud(name):
            return target.model
    return None


def _prompt_tokens(r: LedgerRow) -> int:
    return r.input_tokens + r.cache_write_5m_tokens + r.cache_write_1h_tokens + r.cache_read_tokens


def cloud_cache_read_share(rows: list[LedgerRow]) -> float | None:
    """The share of the answered cloud calls' prompt tokens that were cache reads (None: no data)."""
    answered = [r for r in rows if r.cloud and r.status not in ("error", "refused")]
    prompt = sum(_prompt_tokens(r) for r in answered)
    return sum(r.cache_read_tokens for r in answered) / prompt if prompt else None


def local_at_cloud_price(r: LedgerRow, price: PriceConfig | None, cache_read_share: float) -> Decimal:
    """What local answer *r* would have cost in the cloud, its prompt cached like the cloud calls'."""
    prompt = _prompt_tokens(r)
    cached = round(prompt * cache_read_share)
    return cost_usd(price, Usage(input_tokens=prompt - cached, cache_read_input_tokens=cached,
                                 output_tokens=r.output_tokens))


def _add(groups: dict[str, Group], key: str, r: LedgerRow) -> None:
    g = groups.setdefault(key or "(none)", Group())
    g.calls += 1
    if r.cloud:
        g.cloud_calls += 1
        g.spend_usd += r.cost_usd
    else:
        g.local_calls += 1
    g.errors += r.status == "error"
    g.input_tokens += r.input_tokens + r.cache_write_5m_tokens + r.cache_write_1h_tokens + r.cache_read_tokens
    g.output_tokens += r.output_tokens


def build_report(rows: list[LedgerRow], config: RouterConfig, *, first_day: str, last_day: str,
                 reference_model: str | None = None) -> Report:
    ref = reference_model or default_reference_model(config) or ""
    ref_price = find_price(config.prices, ref) if ref else None
    in_range = [r for r in rows if first_day <= r.day <= last_day]
    measured_share = cloud_cache_read_share(in_range)
    n_days = (date.fromisoformat(last_day) - date.fromisoformat(first_day)).days + 1
    daily_budget = usd(config.budgets.daily_budget)
    rep = Report(first_day=first_day, last_day=last_day, days=n_days, reference_model=ref,
                 budget_usd=daily_budget * n_days, cache_read_share=measured_share or 0.0,
                 cache_read_share_measured=measured_share is not None)
    priced_tokens = estimated_tokens = 0
    per_day = {(date.fromisoformat(first_day) + timedelta(days=i)).isoformat(): DayLine(
        day=(date.fromisoformat(first_day) + timedelta(days=i)).isoformat(), spend_usd=Decimal(0),
        budget_usd=daily_budget, cloud_calls=0, local_calls=0) for i in range(n_days)}
    latencies: list[float] = []
    ttfts: list[float] = []
    served: dict[str, list[int]] = {}  # backend -> [non-error, all]
    joules = 0.0
    for r in in_range:
        line = per_day[r.day]
        if r.cloud:
            rep.spend_usd += r.cost_usd
            line.spend_usd += r.cost_usd
        if r.energy_j:
            joules += r.energy_j
        if r.status == "refused":
            rep.refused += 1
            continue
        rep.errors += r.status == "error"
        if r.status == "error":
            pass  # an attempt, not a query: counted per backend and group below
        elif r.cloud:
            rep.cloud_calls += 1
            line.cloud_calls += 1
        else:
            rep.local_calls += 1
            line.local_calls += 1
            asked = find_price(config.prices, r.requested_model) if r.requested_model else None
            rep.local_at_cloud_price_usd += local_at_cloud_price(r, asked or ref_price, rep.cache_read_share)
            tokens = _prompt_tokens(r) + r.output_tokens
            priced_tokens += tokens
            estimated_tokens += tokens if r.usage_estimated else 0
            if r.status == "ok":
                latencies.append(r.latency_ms)
                if r.ttft_ms is not None:
                    ttfts.append(r.ttft_ms)
        counts = served.setdefault(r.backend or "(none)", [0, 0])
        counts[0] += r.status != "error"
        counts[1] += 1
        _add(rep.by_rule, r.rule, r)
        _add(rep.by_model, r.model, r)
        _add(rep.by_client, r.client, r)
    rep.daily = list(per_day.values())
    rep.availability = {b: ok / n for b, (ok, n) in sorted(served.items())}
    rep.local_latency_p50_ms, rep.local_latency_p95_ms = percentile(latencies, 0.5), percentile(latencies, 0.95)
    rep.local_ttft_p50_ms, rep.local_ttft_p95_ms = percentile(ttfts, 0.5), percentile(ttfts, 0.95)
    rep.estimated_token_share = estimated_tokens / priced_tokens if priced_tokens else None
    rep.energy_kwh = joules / JOULES_PER_KWH
    rep.electricity_usd = Decimal(str(rep.energy_kwh)) * usd(config.gpu.electricity_usd_per_kwh)
    return rep


def _money(d: Decimal | None) -> str | None:
    return None if d is None else money(d)


def report_to_json(rep: Report) -> dict[str, Any]:
    def groups(gs: dict[str, Group]) -> dict[str, Any]:
        return {k: {"calls": g.calls, "cloud_calls": g.cloud_calls, "local_calls": g.local_calls,
                    "errors": g.errors, "spend_usd": _money(g.spend_usd), "input_tokens": g.input_tokens,
                    "output_tokens": g.output_tokens} for k, g in sorted(gs.items())}

    return {
        "first_day": rep.first_day, "last_day": rep.last_day, "days": rep.days,
        "cloud_calls": rep.cloud_calls, "local_calls": rep.local_calls, "refused": rep.refused,
        "errors": rep.errors,
        "queries": rep.queries, "local_share": rep.local_share,
        "spend_usd": _money(rep.spend_usd), "budget_usd": _money(rep.budget_usd),
        "budget_remaining_usd": _money(rep.budget_remaining_usd),
        "reference_model": rep.reference_model, "all_cloud_usd": _money(rep.all_cloud_usd),
        "savings_usd": _money(rep.savings_usd), "cost_per_query_usd": _money(rep.cost_per_query_usd),
        "local_at_cloud_price_usd": _money(rep.local_at_cloud_price_usd),
        "cache_read_share": rep.cache_read_share,
        "cache_read_share_source": "measured" if rep.cache_read_share_measured else "assumed (no cloud calls)",
        "estimated_token_share": rep.estimated_token_share,
        "local_latency_ms": {"p50": rep.local_latency_p50_ms, "p95": rep.local_latency_p95_ms},
        "local_ttft_ms": {"p50": rep.local_ttft_p50_ms, "p95": rep.local_ttft_p95_ms},
        "energy_kwh": rep.energy_kwh, "electricity_usd": _money(rep.electricity_usd),
        "availability": rep.availability,
        "by_rule": groups(rep.by_rule), "by_model": groups(rep.by_model), "by_client": groups(rep.by_client),
        "daily": [{"day": d.day, "spend_usd": _money(d.spend_usd), "budget_usd": _money(d.budget_usd),
                   "cloud_calls": d.cloud_calls, "local_calls": d.local_calls, "local_share": d.local_share}
                  for d in rep.daily],
        "measures": [{"name": m.name, "goal": m.goal, "value": m.value,
                      "result": "n/a" if m.passed is None else ("pass" if m.passed else "fail")}
                     for m in rep.measures()],
    }


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f} ms"


def format_report(rep: Report) -> str:
    period = rep.first_day if rep.days == 1 else f"{rep.first_day} .. {rep.last_day} ({rep.days} days)"
    share = "n/a" if rep.local_share is None else f"{rep.local_share:.1%}"
    cpq = "n/a" if rep.cost_per_query_usd is None else f"${rep.cost_per_query_usd:.4f}"
    lines = [
        f"aibox-router report for {period}",
        "",
        (f"  queries         {rep.queries}  (cloud {rep.cloud_calls}, local {rep.local_calls}; not counted: "
         f"refused {rep.refused}, errors {rep.errors})"),
        f"  local share     {share}",
        (f"  cloud spend     ${rep.spend_usd:.2f} of ${rep.budget_usd:.2f} budget "
         f"(${rep.budget_remaining_usd:.2f} remaining)"),
        (f"  all-cloud cost  ${rep.all_cloud_usd:.2f}: local answers priced at the model asked for "
         f"(else {rep.reference_model or 'n/a'}), {rep.cache_read_share:.0%} of their prompt as cache reads "
         f"({'as the cloud calls had' if rep.cache_read_share_measured else 'assumed: no cloud calls to measure'})"),
        (f"  savings         ${rep.savings_usd:.2f} (all-cloud cost less spend"
         f"{' and electricity' if rep.electricity_usd else ''}"
         + ("" if rep.estimated_token_share is None else f"; {rep.estimated_token_share:.0%} of local tokens estimated")
         + ")"),
        f"  cost per query  {cpq}",
        (f"  local latency   p50 {_ms(rep.local_latency_p50_ms)}, p95 {_ms(rep.local_latency_p95_ms)} "
         f"(first token p50 {_ms(rep.local_ttft_p50_ms)}, p95 {_ms(rep.local_ttft_p95_ms)})"),
    ]
    if rep.energy_kwh:
        lines.append(f"  GPU energy      {rep.energy_kwh:.3f} kWh (${rep.electricity_usd:.2f} electricity)")
    lines += ["", "Success measures"]
    for m in rep.measures():
        result = "n/a " if m.passed is None else ("PASS" if m.passed else "FAIL")
        lines.append(f"  [{result}] {m.name:<18} {m.value:<14} goal {m.goal}")
    if rep.availability:
        lines += ["", "Backend availability (share of calls without error)"]
        lines += [f"  {b:<20} {a:.1%}" for b, a in rep.availability.items()]
    for title, groups in (("rule", rep.by_rule), ("model", rep.by_model), ("client", rep.by_client)):
        if not groups:
            continue
        lines += ["", f"By {title}", f"  {'':<24} {'calls':>7} {'cloud':>7} {'local':>7} {'errors':>7} {'spend':>10}"]
        for key, g in sorted(groups.items(), key=lambda kv: (-kv[1].calls, kv[0])):
            lines.append(f"  {key[:24]:<24} {g.calls:>7} {g.cloud_calls:>7} {g.local_calls:>7} {g.errors:>7} "
                         f"{'$' + format(g.spend_usd, '.2f'):>10}")
    if rep.days > 1:
        lines += ["", "By day", f"  {'day':<12} {'spend':>10} {'budget':>10} {'local':>8}"]
        for d in rep.daily:
            s = "n/a" if d.local_share is None else f"{d.local_share:.0%}"
            lines.append(f"  {d.day:<12} {'$' + format(d.spend_usd, '.2f'):>10} "
                         f"{'$' + format(d.budget_usd, '.2f'):>10} {s:>8}")
    return "\n".join(lines)
