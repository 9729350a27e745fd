"""Admission control: the daily budget, per-client budgets, in-flight reservations, the cutoff.

How overshoot is prevented: before a cloud call, ``admit`` reserves the call's worst-case cost
(bounds.py: every prompt token at the dearest input rate, ``max_tokens`` output, as lowered to
``reserve_output_tokens_cap``, every allowed web search, the mode multipliers) and refuses when
today's settled spend + every in-flight reservation + this worst case would reach the budget.
As each call settles at or under its reservation, settled spend never passes the budget.
``admit`` does not await between reading the totals and taking the
reservation, so on one asyncio loop no two calls can both take the last dollar. ``settle``
swaps the reservation for the real cost in one synchronous step after the ledger write, so at
no moment is a call counted neither as reserved nor as spent.

Budget days are dates in ``budgets.timezone``; a call belongs to the day it arrived. The clock
is injectable so tests can cross midnight anywhere.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

from ..accounting import Admission, RequestRecord, Reservation
from ..config import PriceConfig, RouterConfig
from ..internal import Request
from ..metrics import METRICS, BudgetGauges, Metrics
from ..pricing import UnpricedMode, cost_usd, find_price, usd, worst_case_cost
from .alerts import ALERT_THRESHOLD, DAILY_BUDGET, EMERGENCY_CUTOFF, Alerter, threshold_alert
from .bounds import WEB_SEARCH_RESULT_TOKENS, output_token_bound, web_search_bound
from .ledger import CutoffState, LedgerRow, LedgerStore, SqliteLedger

log = logging.getLogger("aibox_router.cost")

Clock = Callable[[], float]

# Local calls' ledger rows are committed without an fsync; they reach the disk within this long.
LOCAL_ROWS_SYNC_S = 1.0


def day_of(ts: float, tz: ZoneInfo) -> str:
    """The budget day (YYYY-MM-DD in *tz*) that unix time *ts* falls on."""
    return datetime.fromtimestamp(ts, tz).date().isoformat()


@dataclass(frozen=True)
class BudgetLimits:
    timezone: ZoneInfo
    daily_budget: Decimal
    alert_threshold: Decimal
    emergency_cutoff: Decimal
    reserve_output_tokens_cap: int
    client_budgets: dict[str, Decimal]

    @classmethod
    def from_config(cls, config: RouterConfig) -> BudgetLimits:
        b = config.budgets
        return cls(timezone=ZoneInfo(b.timezone), daily_budget=usd(b.daily_budget),
                   alert_threshold=usd(b.alert_threshold), emergency_cutoff=usd(b.emergency_cutoff),
                   reserve_output_tokens_cap=b.reserve_output_tokens_cap,
                   client_budgets={c.name: usd(c.daily_budget) for c in config.clients
                                   if c.daily_budget is not None})

    def thresholds(self) -> list[tuple[str, Decimal]]:
        return [(ALERT_THRESHOLD, self.alert_threshold), (DAILY_BUDGET, self.daily_budget),
                (EMERGENCY_CUTOFF, self.emergency_cutoff)]


def due_alerts(spend: Decimal, limits: BudgetLimits, sent: set[str]) -> list[tuple[str, Decimal]]:
    """Thresholds *spend* has reached whose alert has not gone out today."""
    return [(kind, t) for kind, t in limits.thresholds() if spend > 0 and spend >= t and kind not in sent]


@dataclass
class BudgetSnapshot:
    """Where today's budget stands (``budget show``, metrics, the server's status page)."""

    day: str
    spend_usd: Decimal
    reserved_usd: Decimal
    daily_budget: Decimal
    alert_threshold: Decimal
    emergency_cutoff: Decimal
    cutoff: CutoffState
    in_flight: int = 0
    client_spend: dict[str, Decimal] = field(default_factory=dict)
    client_budgets: dict[str, Decimal] = field(default_factory=dict)

    @property
    def remaining_usd(self) -> Decimal:
        return max(Decimal(0), self.daily_budget - self.spend_usd)

    @property
    def cutoff_engaged(self) -> bool:
        return self.cutoff.active_on(self.day)


@dataclass
class _Held:
    amount: Decimal
    client: str
    day: str
    target: str = ""
    model: str = ""
    ts: float = 0.0


def _most_expensive(prices: list[PriceConfig]) -> PriceConfig | None:
    return max(prices, key=lambda p: (p.output, p.input, p.long_output or 0, p.long_input or 0), default=None)


class CostControl:
    """The pipeline's accounting, backed by the ledger: the pipeline's ``admit``/``settle``."""

    def __init__(self, config: RouterConfig, store: LedgerStore, *, clock: Clock = time.time,
                 metrics: Metrics | None = None, alerter: Alerter | None = None,
                 poll_interval_s: float = 1.0, sync_interval_s: float = LOCAL_ROWS_SYNC_S):
        self._config = config
        self._limits = BudgetLimits.from_config(config)
        self.store = store
        self.clock = clock
        self.metrics = metrics if metrics is not None else METRICS
        self.alerts = alerter if alerter is not None else Alerter(config.alerts)
        self._poll_interval_s = poll_interval_s
        self._last_poll = float("-inf")
        # One writer thread: ledger commits (with their fsync) never block the event loop, and
        # they happen in the order calls settled.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aibox-ledger")
        self._sync_interval_s = sync_interval_s
        self._sync_timer: asyncio.TimerHandle | None = None
        self._syncing: asyncio.Future[bool] | None = None
        self._closed = False
        self._ids = itertools.count(1)
        self._reservations: dict[int, _Held] = {}
        self._rule_inflight: dict[str, int] = {}
        self._day = ""
        self._spend = Decimal(0)
        self._client_spend: dict[str, Decimal] = {}
        self._rule_counts: dict[str, int] = {}
        self._alerts_sent: set[str] = set()
        self._cutoff = store.get_cutoff()
        self._roll()
        self.metrics.set_budget_source(self._gauges)

    @classmethod
    def open(cls, config: RouterConfig, *, clock: Clock = time.time, metrics: Metrics | None = None,
             alerter: Alerter | None = None, store: LedgerStore | None = None,
             poll_interval_s: float = 1.0) -> CostControl:
        """Open (creating if needed) ``<state_dir>/ledger.sqlite3`` and load today's totals."""
        if store is None:
            store = SqliteLedger.in_state_dir(Path(config.server.state_dir))
        return cls(config, store, clock=clock, metrics=metrics, alerter=alerter, poll_interval_s=poll_interval_s)

    def reload(self, config: RouterConfig) -> None:
        """Take a new config (SIGHUP). Reservations and today's totals carry over."""
        old_tz = self._limits.timezone
        self._config = config
        self._limits = BudgetLimits.from_config(config)
        self.alerts.reload(config.alerts)
        if self._limits.timezone != old_tz:
            self._day = ""  # the day boundary moved: recount today from the ledger
        self._roll()

    def close(self) -> None:
        """Finish pending ledger writes, put them on disk and close the store (alerts in flight:
        see ``aclose``)."""
        self._closed = True
        if self._sync_timer is not None:
            self._sync_timer.cancel()
        self._writer.shutdown(wait=True)
        self._record_unsettled()
        try:
            self.store.flush()
        except Exception:  # closing anyway: the rows are committed, only not yet fsynced
            log.exception("ledger: could not sync the last local rows to disk")
        self.metrics.clear_budget_source(self._gauges)
        self.store.close()

    async def aclose(self) -> None:
        await self.alerts.drain()
        self.close()

    async def wait_settled(self, timeout_s: float) -> bool:
        """Wait (bounded) until every admitted cloud call has settled: on shutdown, after the
        backends were closed, the calls still in flight fail fast and settle with an estimate."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._reservations and loop.time() < deadline:
            await asyncio.sleep(0.05)
        return not self._reservations

    def _record_unsettled(self) -> None:
        """Cloud calls that never settled (a forced shutdown): the API may have billed them, and
        nothing says how much, so each is recorded at its reservation, flagged as estimated."""
        for held in list(self._reservations.values()):
            target = self._config.targets.get(held.target)
            row = LedgerRow(ts=held.ts, day=held.day, client=held.client, rule="", target=held.target,
                            backend=target.backend if target else "", model=held.model, protocol="", stream=False,
                            cloud=True, usage_estimated=True, cost_usd=held.amount, status="aborted",
                            http_status=499, error="the router shut down before this cloud call settled; "
                                                    "recorded at its reserved worst case")
            try:
                self.store.insert(row, durable=True)
                log.error("shutdown: a cloud call to %s had not settled; recorded at its reservation $%s",
                          held.model, held.amount)
            except Exception:
                log.exception("shutdown: could not record an unsettled cloud call to %s ($%s reserved)",
                              held.model, held.amount)
        self._reservations.clear()

    async def drain_alerts(self) -> None:
        await self.alerts.drain()

    async def _store(self, row: LedgerRow, *, durable: bool) -> None:
        """Commit *row* before the answer goes out. Rows about money are fsynced first; a local
        call's row is synced with the next batch (see ledger.py on durability)."""
        loop = asyncio.get_running_loop()
        if not durable:
            self._schedule_sync(loop)
            # Without an fsync the write is a WAL append of some tens of microseconds: cheaper
            # right here than the hand-off to the writer thread, unless another writer holds the
            # ledger (then the thread waits for it, not the event loop).
            if self.store.try_insert(row) is not None:
                return
        write = loop.run_in_executor(self._writer, functools.partial(self.store.insert, row, durable=durable))
        # shield: a cancelled caller (client went away) must not cancel a queued write.
        await asyncio.shield(write)

    def _schedule_sync(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._sync_timer is None and self._syncing is None and not self._closed:
            self._sync_timer = loop.call_later(self._sync_interval_s, self._sync, loop)

    def _sync(self, loop: asyncio.AbstractEventLoop) -> None:
        """Put the local rows committed so far on disk, in the writer thread (after queued writes)."""
        self._sync_timer = None
        self._syncing = loop.run_in_executor(self._writer, self.store.flush)
        self._syncing.add_done_callback(lambda done: self._synced(done, loop))

    def _synced(self, done: asyncio.Future[bool], loop: asyncio.AbstractEventLoop) -> None:
        self._syncing = None
        if done.cancelled():
            return
        error = done.exception()
        if error is not None:
            self.metrics.ledger_errors.inc()
            log.error("ledger: syncing local rows to disk failed (will retry): %s", error)
        if error is not None or not done.result():
            self._schedule_sync(loop)  # a reader held the WAL, or the disk failed: try again

    # -- state ------------------------------------------------------------------------------

    def today(self) -> str:
        return day_of(self.clock(), self._limits.timezone)

    def _roll(self) -> None:
        """Start a new budget day when the clock passed midnight in the budget time zone."""
        today = self.today()
        if today == self._day:
            return
        totals = self.store.day_totals(today)
        self._day = today
        self._spend = totals.cloud_spend
        self._client_spend = dict(totals.client_spend)
        self._rule_counts = dict(totals.rule_counts)
        self._alerts_sent = self.store.alerts_sent(today)
        if self._cutoff.engaged and self._cutoff.day != today:
            log.info("new budget day %s: the emergency cutoff of %s is lifted", today, self._cutoff.day)

    def _poll_state(self) -> None:
        """Notice a cutoff engaged or released by the CLI (another process), cheaply."""
        now = time.monotonic()
        if now - self._last_poll < self._poll_interval_s:
            return
        self._last_poll = now
        if self.store.changed():
            self._cutoff = self.store.get_cutoff()

    def _reserved(self, day: str, client: str | None = None) -> Decimal:
        return sum((h.amount for h in self._reservations.values()
                    if h.day == day and (client is None or h.client == client)), Decimal(0))

    def snapshot(self) -> BudgetSnapshot:
        self._roll()
        self._poll_state()
        lim = self._limits
        return BudgetSnapshot(day=self._day, spend_usd=self._spend, reserved_usd=self._reserved(self._day),
                              daily_budget=lim.daily_budget, alert_threshold=lim.alert_threshold,
                              emergency_cutoff=lim.emergency_cutoff, cutoff=self._cutoff,
                              in_flight=len(self._reservations), client_spend=dict(self._client_spend),
                              client_budgets=dict(lim.client_budgets))

    def _gauges(self) -> BudgetGauges:
        s = self.snapshot()
        return BudgetGauges(spend_today_usd=float(s.spend_usd), budget_remaining_usd=float(s.remaining_usd),
                            cutoff_engaged=s.cutoff_engaged, reserved_usd=float(s.reserved_usd),
                            calls_in_flight=s.in_flight)

    def rule_count_today(self, rule: str) -> int:
        """Requests *rule* sent today (settled in the ledger, plus started with ``rule_started``)."""
        self._roll()
        return self._rule_counts.get(rule, 0) + self._rule_inflight.get(rule, 0)

    def rule_started(self, rule: str) -> None:
        """Optional: count a call of *rule* as soon as it is routed, so concurrent calls cannot all
        pass a rule's daily_limit before any of them settles. ``settle`` ends the count."""
        self._rule_inflight[rule] = self._rule_inflight.get(rule, 0) + 1

    # -- cutoff -----------------------------------------------------------------------------

    def engage_cutoff(self, reason: str, by: str) -> CutoffState:
        self._roll()
        self._cutoff = CutoffState(engaged=True, day=self._day, reason=reason, by=by, ts=self.clock())
        self.store.set_cutoff(self._cutoff)
        log.error("emergency cutoff engaged for %s by %s: %s", self._day, by, reason)
        return self._cutoff

    def release_cutoff(self, by: str, reason: str = "released") -> CutoffState:
        self._cutoff = CutoffState(engaged=False, day=self._day, reason=reason, by=by, ts=self.clock())
        self.store.set_cutoff(self._cutoff)
        log.warning("emergency cutoff released by %s", by)
        return self._cutoff

    def _check_thresholds(self) -> None:
        """Alert once per threshold per day; engage the cutoff at emergency_cutoff."""
        cutoff = self._limits.emergency_cutoff
        if self._spend > 0 and self._spend >= cutoff and not self._cutoff.active_on(self._day):
            # Also after an operator released it: spend over the line means cut off until the
            # day ends or the limit is raised.
            self.engage_cutoff(f"cloud spend ${self._spend:.2f} reached the emergency cutoff ${cutoff:.2f}",
                               by="daemon")
        for kind, threshold in due_alerts(self._spend, self._limits, self._alerts_sent):
            self._alerts_sent.add(kind)
            try:
                first = self.store.mark_alert(self._day, kind, self.clock())
            except Exception:  # a failed marker must not stop serving: alert anyway
                log.exception("could not record alert %s in the ledger", kind)
                first = True
            if first:
                self.alerts.send(threshold_alert(kind, day=self._day, spend=self._spend,
                                                 daily_budget=self._limits.daily_budget, threshold=threshold))

    # -- Accounting -------------------------------------------------------------------------

    async def admit(self, *, target: str, model: str, client: str, request: Request,
                    input_tokens: int) -> Admission:
        # No await from here to the return: the check and the reservation are one atomic step.
        self._roll()
        self._poll_state()
        day, lim = self._day, self._limits
        if self._cutoff.active_on(day):
            return Admission(allowed=False, refusal="cutoff",
                             reason=f"emergency cutoff engaged for {day} by {self._cutoff.by}: "
                                    f"{self._cutoff.reason}")
        reserved = self._reserved(day)
        if self._spend > 0 and self._spend >= lim.emergency_cutoff:
            # Settled spend is over the line (the limit was lowered, or the cutoff was released
            # without raising it): engage and alert as settle would have.
            self._check_thresholds()
            return Admission(allowed=False, refusal="cutoff",
                             reason=f"emergency cutoff: cloud spend ${self._spend:.2f} reached "
                                    f"${lim.emergency_cutoff:.2f}")
        if self._spend + reserved >= lim.emergency_cutoff:
            return Admission(allowed=False, refusal="cutoff",
                             reason=f"emergency cutoff: ${self._spend:.2f} spent and ${reserved:.2f} in flight "
                                    f"reach ${lim.emergency_cutoff:.2f}")
        price = find_price(self._config.prices, model)
        if price is None:
            # The config check requires prices for cloud targets; a model outside them is held at
            # the dearest known price rather than at $0.
            log.error("no price for cloud model %r (target %s); reserving at the highest configured price",
                      model, target)
            price = _most_expensive(list(self._config.prices or []))
        # input_tokens is the pipeline's upper bound on the prompt (bounds.prompt_token_bound).
        searches = web_search_bound(request)
        try:
            worst = worst_case_cost(price, input_tokens + searches * WEB_SEARCH_RESULT_TOKENS,
                                    output_token_bound(request, lim.reserve_output_tokens_cap),
                                    web_searches=searches, speed=request.get("speed"),
                                    inference_geo=request.get("inference_geo"))
        except UnpricedMode as e:
            return Admission(allowed=False, refusal="unpriced", reason=str(e))
        if self._spend + reserved + worst >= lim.daily_budget:
            return Admission(allowed=False, refusal="budget",
                             reason=f"daily cloud budget ${lim.daily_budget:.2f} for {day}: ${self._spend:.2f} "
                                    f"spent, ${reserved:.2f} in flight, this call may cost ${worst:.4f}")
        client_budget = lim.client_budgets.get(client)
        if client_budget is not None:
            c_spend = self._client_spend.get(client, Decimal(0))
            c_reserved = self._reserved(day, client)
            if c_spend + c_reserved + worst >= client_budget:
                return Admission(allowed=False, refusal="client_budget",
                                 reason=f"client {client!r} daily cloud budget ${client_budget:.2f}: "
                                        f"${c_spend:.2f} spent, ${c_reserved:.2f} in flight, this call may "
                                        f"cost ${worst:.4f}")
        rid = next(self._ids)
        self._reservations[rid] = _Held(amount=worst, client=client, day=day, target=target, model=model,
                                        ts=self.clock())
        return Admission(allowed=True, reservation=Reservation(id=rid, amount_usd=worst, client=client))

    async def settle(self, reservation: Reservation | None, record: RequestRecord) -> None:
        """Price *record*, store it durably, release *reservation*, then alert/cut off as due.

        A ledger failure is logged and counted, not raised: the call already happened, and the
        in-memory totals still hold the spend so the budget keeps being enforced.
        """
        self._roll()
        day = day_of(record.ts, self._limits.timezone)
        try:
            # Everything that can fail sits inside this try: the finally below must release the
            # reservation whatever happens, or it would hold budget until the router restarts.
            try:
                record.cost_usd = cost_usd(find_price(self._config.prices, record.model), record.usage)
            except Exception:
                # Unpriceable usage: count the call at its reserved worst case, never at less.
                record.cost_usd = reservation.amount_usd if reservation is not None else Decimal(0)
                log.exception("could not price a %s call to %s; counted at its reservation $%s", record.status,
                              record.model, record.cost_usd)
            row = LedgerRow.from_record(record, day=day, cost_usd=record.cost_usd)
            await self._store(row, durable=record.cloud)
        except asyncio.CancelledError:
            raise
        except Exception:  # the call happened: keep its spend in memory, log, go on
            self.metrics.ledger_errors.inc()
            log.exception("ledger write failed for a %s call to %s (cost $%s)", record.status, record.model,
                          record.cost_usd)
        finally:
            # Synchronous from here: the reservation becomes spend in one step.
            if reservation is not None:
                self._reservations.pop(reservation.id, None)
            if self._rule_inflight.get(record.rule, 0) > 0:
                self._rule_inflight[record.rule] -= 1
            self._roll()
            if day == self._day:
                if record.cloud:
                    self._spend += record.cost_usd
                    self._client_spend[record.client] = (self._client_spend.get(record.client, Decimal(0))
                                                         + record.cost_usd)
                if record.status != "refused" and not record.downgraded:
                    self._rule_counts[record.rule] = self._rule_counts.get(record.rule, 0) + 1
            self.metrics.observe(record)
            self._check_thresholds()
