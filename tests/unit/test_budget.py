"""CostControl: admission, reservations under concurrency, thresholds, restart, day rollover."""

from __future__ import annotations

import asyncio
import random
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from aibox_router.accounting import RequestRecord
from aibox_router.config import AlertsConfig, RouterConfig
from aibox_router.config_load import parse_config
from aibox_router.cost import CostControl, SqliteLedger
from aibox_router.cost.alerts import Alert, Alerter
from aibox_router.cost.ledger import CutoffState
from aibox_router.internal import Usage
from aibox_router.metrics import Metrics
from tests.support.gauges import reservations

# test-cloud: $1 input / $5 output per million tokens, so 20 000 output tokens cost exactly $0.10.
TENTH = 20_000


def make_config(state_dir: Path, *, tz: str = "UTC", daily: float = 10.0, alert: float = 8.0,
                cutoff: float = 12.0, clients: list[dict[str, Any]] | None = None) -> RouterConfig:
    return parse_config({
        "server": {"state_dir": str(state_dir)},
        "clients": clients or [],
        "backends": {"cloud": {"type": "anthropic", "base_url": "http://127.0.0.1:9"},
                     "local": {"type": "ollama", "base_url": "http://127.0.0.1:9"}},
        "targets": {"claude": {"backend": "cloud", "model": "test-cloud"},
                    "local": {"backend": "local", "model": "qwen2.5:14b"}},
        "default_target": "local",
        "budgets": {"timezone": tz, "daily_budget": daily, "alert_threshold": alert, "emergency_cutoff": cutoff,
                    "reserve_output_tokens_cap": 32000},
        "prices": [{"prefix": "test-cloud", "input": 1.0, "output": 5.0}],
    }, env={})


class FakeClock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


class RecordingAlerter(Alerter):
    """The real Alerter's interface, delivering into a list (channels are tested in test_alerts)."""

    def __init__(self) -> None:
        super().__init__(AlertsConfig())
        self.sent: list[Alert] = []

    def send(self, alert: Alert) -> None:
        self.sent.append(alert)


def local_ts(tz: str, *args: int) -> float:
    return datetime(*args, tzinfo=ZoneInfo(tz)).timestamp()  # type: ignore[misc]


def record(clock: FakeClock, *, output_tokens: int = 0, client: str = "cc", rule: str = "hard",
           cloud: bool = True, **kw: Any) -> RequestRecord:
    return RequestRecord(ts=clock(), client=client, rule=rule, target="claude" if cloud else "local",
                         backend="cloud" if cloud else "local", model="test-cloud" if cloud else "qwen2.5:14b",
                         protocol="anthropic", stream=True, cloud=cloud, usage=Usage(output_tokens=output_tokens),
                         **kw)


def open_cc(cfg: RouterConfig, clock: FakeClock, alerter: RecordingAlerter | None = None) -> CostControl:
    return CostControl.open(cfg, clock=clock, metrics=Metrics(), alerter=alerter or RecordingAlerter(),
                            poll_interval_s=0)


async def admit(cc: CostControl, *, max_tokens: int = TENTH, client: str = "cc", input_tokens: int = 0):
    return await cc.admit(target="claude", model="test-cloud", client=client,
                          request={"max_tokens": max_tokens}, input_tokens=input_tokens)


def ledger_spend(state_dir: Path, day: str) -> Decimal:
    led = SqliteLedger.in_state_dir(state_dir)
    try:
        return led.day_totals(day).cloud_spend
    finally:
        led.close()


T0 = local_ts("UTC", 2026, 1, 15, 12, 0)


async def test_concurrent_calls_cannot_overshoot_the_budget(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    cc = open_cc(make_config(tmp_path), clock)
    await cc.settle(None, record(clock, output_tokens=1_900_000))  # $9.50 spent: $0.50 left
    outcomes: list[str] = []

    async def call(i: int) -> None:
        adm = await admit(cc)  # worst case $0.10
        if not adm.allowed:
            outcomes.append(adm.refusal)
            return
        assert adm.reservation is not None and adm.reservation.amount_usd == Decimal("0.1")
        await asyncio.sleep(random.uniform(0, 0.02))
        await cc.settle(adm.reservation, record(clock, output_tokens=TENTH))  # costs its worst case
        outcomes.append("ok")

    await asyncio.gather(*(call(i) for i in range(50)))
    # 9.50 + 4 x 0.10 = 9.90; a fifth would reach 10.00 (>= budget is refused)
    assert outcomes.count("ok") == 4
    assert outcomes.count("budget") == 46
    snap = cc.snapshot()
    assert snap.spend_usd == Decimal("9.9") and snap.reserved_usd == 0 and snap.in_flight == 0
    cc.close()
    assert ledger_spend(tmp_path, "2026-01-15") == Decimal("9.9")


async def test_cheaper_calls_free_their_reservation_but_never_overshoot(tmp_path: Path) -> None:
    """100 calls arrive in a seeded order while earlier ones are still in flight; in-flight calls
    settle (several at once, in the writer thread) at a seeded cost below their worst case. The
    order is driven by the test, not by wall-clock sleeps, so the outcome does not shift with load."""
    clock = FakeClock(T0)
    cc = open_cc(make_config(tmp_path), clock)
    await cc.settle(None, record(clock, output_tokens=1_900_000))  # $9.50 spent: room for 4 worst cases
    rng = random.Random(7)
    admitted, in_flight = 0, []
    for _ in range(100):
        adm = await admit(cc)
        snap = cc.snapshot()
        assert snap.spend_usd + snap.reserved_usd < Decimal(10)  # never more held than the budget
        if adm.allowed:
            admitted += 1
            in_flight.append(adm.reservation)
        if in_flight and (not adm.allowed or rng.random() < 0.3):
            # A random few of the calls in flight end, concurrently, each cheaper than its worst case.
            ending = rng.sample(in_flight, rng.randint(1, len(in_flight)))
            in_flight = [r for r in in_flight if r not in ending]
            await asyncio.gather(*(cc.settle(r, record(clock, output_tokens=rng.randint(0, TENTH)))
                                   for r in ending))
    await asyncio.gather(*(cc.settle(r, record(clock, output_tokens=rng.randint(0, TENTH))) for r in in_flight))
    snap = cc.snapshot()
    cc.close()
    spent = ledger_spend(tmp_path, "2026-01-15")
    assert admitted > 4  # calls cheaper than their worst case left room for more
    assert spent < Decimal(10) and spent == snap.spend_usd
    assert snap.reserved_usd == 0 and snap.in_flight == 0


async def test_settle_frees_the_reservation_even_when_pricing_fails(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever goes wrong while settling, the reservation is released (else it would hold budget
    until a restart) and the call counts at its worst case, never at less."""
    clock = FakeClock(T0)
    cc = open_cc(make_config(tmp_path), clock)
    adm = await admit(cc)  # $0.10
    assert adm.reservation is not None and cc.snapshot().in_flight == 1

    def broken(*args: Any) -> Decimal:
        raise ValueError("no price")

    monkeypatch.setattr("aibox_router.cost.budget.cost_usd", broken)
    await cc.settle(adm.reservation, record(clock, output_tokens=100))
    snap = cc.snapshot()
    assert snap.in_flight == 0 and snap.reserved_usd == 0
    assert snap.spend_usd == Decimal("0.1")
    cc.close()
    assert ledger_spend(tmp_path, "2026-01-15") == Decimal("0.1")


async def test_reservations_in_flight_are_exported_as_gauges(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    metrics = Metrics()
    cc = CostControl.open(make_config(tmp_path), clock=clock, metrics=metrics, alerter=RecordingAlerter())

    def gauges() -> tuple[float, float]:
        return reservations(metrics.render()[0].decode())

    first, second = await admit(cc), await admit(cc, max_tokens=TENTH // 2)  # $0.10 and $0.05
    assert gauges() == (pytest.approx(0.15), 2.0)
    await cc.settle(first.reservation, record(clock, output_tokens=10))
    assert gauges() == (pytest.approx(0.05), 1.0)
    await cc.settle(second.reservation, record(clock, status="error", http_status=502))
    assert gauges() == (0.0, 0.0)
    cc.close()


async def test_reservation_is_worst_case_with_output_cap(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    cc = open_cc(make_config(tmp_path), clock)
    a = await admit(cc, max_tokens=100_000, input_tokens=10_000)  # output capped at 32 000
    assert a.reservation is not None
    # 10 000 prompt tokens at the 1-hour cache write rate (2 x $1) + 32 000 x $5, per million
    assert a.reservation.amount_usd == Decimal("0.18")
    b = await cc.admit(target="claude", model="test-cloud", client="cc", request={}, input_tokens=0)
    assert b.reservation is not None and b.reservation.amount_usd == Decimal("0.16")  # no max_tokens: the cap
    assert cc.snapshot().reserved_usd == Decimal("0.34")
    await cc.settle(a.reservation, record(clock, output_tokens=1000))
    await cc.settle(b.reservation, record(clock, status="error", http_status=502))
    snap = cc.snapshot()
    assert snap.reserved_usd == 0 and snap.spend_usd == Decimal("0.005")
    cc.close()


async def test_per_client_budget(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    cfg = make_config(tmp_path, clients=[{"name": "a", "key": "a" * 16, "daily_budget": 0.25},
                                         {"name": "b", "key": "b" * 16}])
    cc = open_cc(cfg, clock)
    first, second, third = [await admit(cc, client="a") for _ in range(3)]
    assert first.allowed and second.allowed  # 0.10, then 0.20 reserved
    assert not third.allowed and third.refusal == "client_budget"  # 0.20 + 0.10 >= 0.25
    assert (await admit(cc, client="b")).allowed
    await cc.settle(first.reservation, record(clock, client="a", output_tokens=TENTH))
    await cc.settle(second.reservation, record(clock, client="a", output_tokens=TENTH))
    assert (await admit(cc, client="a")).refusal == "client_budget"  # spent 0.20 now
    assert cc.snapshot().client_spend["a"] == Decimal("0.2")
    cc.close()


async def test_thresholds_alert_once_per_day_and_cutoff_engages(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    alerts = RecordingAlerter()
    cc = open_cc(make_config(tmp_path), clock, alerts)
    await cc.settle(None, record(clock, output_tokens=1_500_000))  # $7.50
    assert alerts.sent == []
    await cc.settle(None, record(clock, output_tokens=200_000))  # $8.50
    await cc.settle(None, record(clock, output_tokens=20_000))  # $8.60: no second alert
    assert [a.kind for a in alerts.sent] == ["alert_threshold"]
    assert alerts.sent[0].spend_usd == Decimal("8.5") and alerts.sent[0].day == "2026-01-15"
    assert (await admit(cc, max_tokens=400_000)).allowed is True  # 8.60 + 0.16 (capped) < 10
    await cc.settle(None, record(clock, output_tokens=300_000))  # $10.10
    assert [a.kind for a in alerts.sent] == ["alert_threshold", "daily_budget"]
    refused = await admit(cc)
    assert refused.refusal == "budget" and "10.00" in refused.reason
    assert not cc.snapshot().cutoff_engaged
    await cc.settle(None, record(clock, output_tokens=400_000))  # $12.10: emergency
    assert [a.kind for a in alerts.sent] == ["alert_threshold", "daily_budget", "emergency_cutoff"]
    snap = cc.snapshot()
    assert snap.cutoff_engaged and snap.cutoff.by == "daemon"
    assert (await admit(cc)).refusal == "cutoff"
    await cc.settle(None, record(clock, output_tokens=1))
    assert len(alerts.sent) == 3
    cc.close()


async def test_spend_cutoff_and_alert_markers_survive_restart(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    cfg = make_config(tmp_path)
    cc = open_cc(cfg, clock)
    await cc.settle(None, record(clock, output_tokens=2_500_000))  # $12.50
    await cc.settle(None, record(clock, cloud=False, rule="coding", output_tokens=5000))
    assert cc.snapshot().cutoff_engaged
    cc.close()

    alerts = RecordingAlerter()
    cc = open_cc(cfg, clock, alerts)
    snap = cc.snapshot()
    assert snap.spend_usd == Decimal("12.5")
    assert snap.cutoff_engaged and "12.50" in snap.cutoff.reason
    assert (await admit(cc)).refusal == "cutoff"
    assert cc.rule_count_today("hard") == 1 and cc.rule_count_today("coding") == 1
    await cc.settle(None, record(clock, output_tokens=10))
    assert alerts.sent == []  # already sent before the restart
    cc.close()


@pytest.mark.parametrize(("tz", "evening", "utc_day"), [
    ("America/Los_Angeles", (2026, 1, 15, 23, 59, 0), "2026-01-16"),  # 07:59 UTC the next day
    ("Asia/Tokyo", (2026, 1, 15, 23, 59, 0), "2026-01-15"),  # 14:59 UTC the same day
])
async def test_day_rolls_over_at_local_midnight(tmp_path: Path, tz: str, evening: tuple[int, ...],
                                                utc_day: str) -> None:
    clock = FakeClock(local_ts(tz, *evening))
    assert datetime.fromtimestamp(clock.t, ZoneInfo("UTC")).date().isoformat() == utc_day
    alerts = RecordingAlerter()
    cc = open_cc(make_config(tmp_path, tz=tz), clock, alerts)
    assert cc.today() == "2026-01-15"
    await cc.settle(None, record(clock, output_tokens=2_500_000))  # $12.50: cutoff
    assert (await admit(cc)).refusal == "cutoff"
    assert len(alerts.sent) == 3

    clock.t = local_ts(tz, 2026, 1, 16, 0, 0, 1)
    assert cc.today() == "2026-01-16"
    snap = cc.snapshot()
    assert snap.spend_usd == 0 and not snap.cutoff_engaged  # lifted by the new day
    adm = await admit(cc)
    assert adm.allowed
    await cc.settle(adm.reservation, record(clock, output_tokens=1_700_000))  # $8.50 on the new day
    assert [a.kind for a in alerts.sent][3:] == ["alert_threshold"]  # once per threshold *per day*
    cc.close()

    led = SqliteLedger.in_state_dir(tmp_path)
    assert led.day_totals("2026-01-15").cloud_spend == Decimal("12.5")
    assert led.day_totals("2026-01-16").cloud_spend == Decimal("8.5")
    assert led.get_cutoff().day == "2026-01-15"
    led.close()


async def test_call_that_arrived_before_midnight_counts_for_the_old_day(tmp_path: Path) -> None:
    tz = "Asia/Tokyo"
    clock = FakeClock(local_ts(tz, 2026, 1, 15, 23, 59, 50))
    cc = open_cc(make_config(tmp_path, tz=tz), clock)
    adm = await admit(cc)
    rec = record(clock, output_tokens=TENTH)
    clock.t += 20  # settles after midnight
    await cc.settle(adm.reservation, rec)
    assert cc.snapshot().spend_usd == 0 and cc.snapshot().reserved_usd == 0
    cc.close()
    assert ledger_spend(tmp_path, "2026-01-15") == Decimal("0.1")


async def test_daemon_notices_cutoff_engaged_and_released_by_another_process(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    cc = open_cc(make_config(tmp_path), clock)
    assert (await admit(cc)).allowed
    cli = SqliteLedger.in_state_dir(tmp_path)
    cli.set_cutoff(CutoffState(engaged=True, day="2026-01-15", reason="manual", by="operator", ts=clock()))
    refused = await admit(cc)
    assert refused.refusal == "cutoff" and "operator" in refused.reason
    cli.set_cutoff(CutoffState(engaged=False, day="2026-01-15", reason="released", by="operator"))
    assert (await admit(cc)).allowed
    # A cutoff left over from yesterday does not hold today.
    cli.set_cutoff(CutoffState(engaged=True, day="2026-01-14", reason="old", by="operator"))
    assert (await admit(cc)).allowed
    cli.close()
    cc.close()


async def test_released_cutoff_reengages_while_spend_is_over_it(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    alerts = RecordingAlerter()
    cfg = make_config(tmp_path)
    cc = open_cc(cfg, clock, alerts)
    await cc.settle(None, record(clock, output_tokens=2_500_000))
    cc.release_cutoff(by="operator")
    assert not cc.snapshot().cutoff_engaged
    assert (await admit(cc)).refusal == "cutoff"
    assert cc.snapshot().cutoff_engaged
    assert len(alerts.sent) == 3  # no duplicate emergency alert
    # Raising the limits (SIGHUP) and releasing lets cloud calls through again.
    cc.reload(make_config(tmp_path, daily=20, alert=15, cutoff=25))
    cc.release_cutoff(by="operator")
    assert (await admit(cc)).allowed
    cc.close()


async def test_rule_counts_include_started_calls(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    cc = open_cc(make_config(tmp_path), clock)
    assert cc.rule_count_today("hard") == 0
    cc.rule_started("hard")
    cc.rule_started("hard")
    assert cc.rule_count_today("hard") == 2
    await cc.settle(None, record(clock, output_tokens=10))
    assert cc.rule_count_today("hard") == 2  # one settled, one in flight
    await cc.settle(None, record(clock, status="refused", http_status=400))
    assert cc.rule_count_today("hard") == 1  # refused calls did not use the rule
    await cc.settle(None, record(clock, cloud=False, downgraded=True))
    assert cc.rule_count_today("hard") == 1  # nor did calls the budget sent elsewhere
    cc.close()


async def test_cancelled_settle_still_writes_and_releases(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    cc = open_cc(make_config(tmp_path), clock)
    adm = await admit(cc)
    task = asyncio.create_task(cc.settle(adm.reservation, record(clock, output_tokens=TENTH)))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    snap = cc.snapshot()
    assert snap.reserved_usd == 0 and snap.spend_usd == Decimal("0.1")
    cc.close()  # waits for the writer thread
    assert ledger_spend(tmp_path, "2026-01-15") == Decimal("0.1")


async def test_settle_prices_the_record_and_updates_metrics(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    metrics = Metrics()
    cc = CostControl.open(make_config(tmp_path), clock=clock, metrics=metrics, alerter=RecordingAlerter())
    cloud = record(clock, output_tokens=TENTH, fallback=True)
    cloud.usage.input_tokens = 1000
    await cc.settle(None, cloud)
    assert cloud.cost_usd == Decimal("0.101")
    local = record(clock, cloud=False, rule="coding", output_tokens=50_000, downgraded=True)
    await cc.settle(None, local)
    assert local.cost_usd == 0  # local models are free unless priced
    text = metrics.render()[0].decode()
    assert 'aibox_router_requests_total{backend="cloud",rule="hard",status="ok"} 1.0' in text
    assert 'aibox_router_tokens_total{backend="local",kind="output"} 50000.0' in text
    assert 'aibox_router_tokens_total{backend="cloud",kind="input"} 1000.0' in text
    assert "aibox_router_fallbacks_total 1.0" in text
    assert "aibox_router_downgrades_total 1.0" in text
    assert "aibox_router_spend_today_usd 0.101" in text
    assert "aibox_router_budget_remaining_usd 9.899" in text
    assert "aibox_router_cutoff_engaged 0.0" in text
    cc.close()
    assert "spend_today_usd" not in metrics.render()[0].decode()  # closed: no stale gauges


class RecordingLedger(SqliteLedger):
    """The real SQLite ledger, noting which inserts asked for an fsync."""

    def __init__(self, path: Path):
        super().__init__(path)
        self.durable: list[tuple[bool, bool]] = []  # (cloud, durable) per insert

    def insert(self, row: Any, *, durable: bool = True) -> int:
        self.durable.append((row.cloud, durable))
        return super().insert(row, durable=durable)

    def try_insert(self, row: Any) -> int | None:
        self.durable.append((row.cloud, False))
        return super().try_insert(row)


async def test_cloud_rows_are_fsynced_and_local_rows_reach_the_disk_within_the_sync_interval(
        tmp_path: Path) -> None:
    from .test_ledger import rows_in_database_file

    clock = FakeClock(T0)
    store = RecordingLedger(tmp_path / "ledger.sqlite3")
    cc = CostControl(make_config(tmp_path), store, clock=clock, metrics=Metrics(), alerter=RecordingAlerter(),
                     sync_interval_s=0.05)
    await cc.settle(None, record(clock, cloud=False, rule="coding"))
    await cc.settle(None, record(clock, cloud=True, output_tokens=10))
    assert store.durable == [(False, False), (True, True)]
    await cc.settle(None, record(clock, cloud=False, rule="coding"))
    deadline = asyncio.get_running_loop().time() + 10
    while rows_in_database_file(store.path, tmp_path) < 3:
        assert asyncio.get_running_loop().time() < deadline, "local rows never reached the database file"
        await asyncio.sleep(0.05)
    cc.close()


async def test_close_puts_the_last_local_rows_on_disk(tmp_path: Path) -> None:
    from .test_ledger import rows_in_database_file

    clock = FakeClock(T0)
    cc = CostControl(make_config(tmp_path), SqliteLedger(tmp_path / "ledger.sqlite3"), clock=clock,
                     metrics=Metrics(), alerter=RecordingAlerter(), sync_interval_s=3600)
    other = SqliteLedger(tmp_path / "ledger.sqlite3")  # another process's connection keeps the WAL open
    other.day_totals("2026-01-15")
    await cc.settle(None, record(clock, cloud=False, rule="coding"))
    cc.close()
    assert rows_in_database_file(tmp_path / "ledger.sqlite3", tmp_path) == 1
    other.close()


async def test_local_row_waits_in_the_writer_thread_while_another_process_holds_the_ledger(
        tmp_path: Path) -> None:
    import sqlite3

    clock = FakeClock(T0)
    cc = open_cc(make_config(tmp_path), clock)
    other = sqlite3.connect(tmp_path / "ledger.sqlite3", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # e.g. `cutoff engage` writing at this moment
    settling = asyncio.create_task(cc.settle(None, record(clock, cloud=False, rule="coding")))
    await asyncio.sleep(0.3)
    assert not settling.done()  # waiting for the lock, in the writer thread: the loop runs on
    other.execute("COMMIT")
    await asyncio.wait_for(settling, 10)
    other.close()
    cc.close()
    led = SqliteLedger.in_state_dir(tmp_path)
    assert [r.rule for r in led.rows("2026-01-15", "2026-01-15")] == ["coding"]
    led.close()


async def test_a_cloud_call_unsettled_at_shutdown_is_recorded_at_its_reservation(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    cc = open_cc(make_config(tmp_path), clock)
    settled = await admit(cc, max_tokens=1000)
    unsettled = await admit(cc, max_tokens=2000, input_tokens=100)
    assert settled.reservation is not None and unsettled.reservation is not None
    assert not await cc.wait_settled(timeout_s=0.1)
    await cc.settle(settled.reservation, record(clock, output_tokens=10))
    cc.close()  # a forced shutdown: the second call never settled
    led = SqliteLedger.in_state_dir(tmp_path)
    try:
        rows = led.rows("2026-01-15", "2026-01-15")
    finally:
        led.close()
    assert len(rows) == 2
    lost = rows[1]
    assert (lost.status, lost.usage_estimated, lost.cloud) == ("aborted", True, True)
    assert lost.cost_usd == unsettled.reservation.amount_usd == Decimal("0.0102")  # 100 x $2 + 2000 x $5 per million
    assert lost.model == "test-cloud" and lost.target == "claude" and lost.backend == "cloud"
