"""Today's budget, one view: ``budget show``, ``status`` and the MCP tool ``usage_report`` read the
same ledger through router/cost/budget_view.py and report the same figures in the same money format.

Real parts: a real ledger file in a temporary state dir, the real CLI commands, the real MCP tool
function over a real runtime (its backends point at closed loopback ports and are never called)."""

from __future__ import annotations

import asyncio
import json
import time
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml
from click.testing import CliRunner

from aibox_router.cli import main
from aibox_router.config_load import load_config
from aibox_router.cost import CutoffState, LedgerRow, SqliteLedger, day_of
from aibox_router.cost.budget_view import budget_view, dollars, money, summary
from aibox_router.mcp_server import RuntimeHolder, usage_report

TZ = "Pacific/Auckland"
CLOSED = "http://127.0.0.1:9"
BUDGET_KEYS = ("day", "timezone", "spend_usd", "daily_budget_usd", "remaining_usd", "alert_threshold_usd",
               "emergency_cutoff_usd", "cutoff")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "router.yml"
    path.write_text(yaml.safe_dump({
        "server": {"state_dir": str(tmp_path / "state")},
        "clients": [{"name": "alice", "key": "a" * 16, "daily_budget": 2.5},
                    {"name": "bob", "key": "b" * 16}],
        "backends": {"cloud": {"type": "anthropic", "base_url": CLOSED},
                     "local": {"type": "ollama", "base_url": CLOSED}},
        "targets": {"claude": {"backend": "cloud", "model": "test-cloud"},
                    "coder": {"backend": "local", "model": "qwen"}},
        "default_target": "coder",
        "budgets": {"timezone": TZ, "daily_budget": 10.0, "alert_threshold": 8.0, "emergency_cutoff": 12.0},
        "prices": [{"prefix": "test-cloud", "input": 1.0, "output": 5.0}],
        "gpu": {"enabled": False},
    }))
    return path


def spend(config: Path, *rows: tuple[str, str], cutoff: bool = False, alert: str | None = None) -> str:
    """Cloud rows (client, USD) on today's budget day and a local row; optionally the cutoff, an alert."""
    day = day_of(time.time(), ZoneInfo(TZ))
    led = SqliteLedger.in_state_dir(load_config(config).server.state_dir)
    try:
        for client, amount in rows:
            led.insert(LedgerRow(ts=time.time(), day=day, client=client, rule="r", target="claude",
                                 backend="cloud", model="test-cloud", protocol="anthropic", stream=False,
                                 cloud=True, cost_usd=Decimal(amount)))
        led.insert(LedgerRow(ts=time.time(), day=day, client="bob", rule="r", target="coder", backend="local",
                             model="qwen", protocol="anthropic", stream=False, cloud=False))
        if cutoff:
            led.set_cutoff(CutoffState(engaged=True, day=day, reason="runaway agent", by="ops",
                                       ts=time.time()))
        if alert:
            led.mark_alert(day, alert, time.time())
    finally:
        led.close()
    return day


def test_money_has_one_format_per_medium() -> None:
    assert money(Decimal("12.25")) == "12.250000" and money(Decimal("0.0000004")) == "0.000000"
    assert money(Decimal("1.2345678")) == "1.234568"
    assert dollars(Decimal("12.255")) == "$12.26" and dollars("7.5") == "$7.50" and dollars(0.1) == "$0.10"


def test_the_view_adds_up_the_ledger(config: Path) -> None:
    day = spend(config, ("alice", "1.25"), ("alice", "0.50"), ("bob", "9.00"), cutoff=True,
                alert="alert_threshold")
    cfg = load_config(config)
    led = SqliteLedger.in_state_dir(cfg.server.state_dir, create=False)
    try:
        view = budget_view(cfg, led, time.time())
    finally:
        led.close()
    assert view.day == day and view.spend == Decimal("10.75") and view.remaining == 0  # never below 0
    assert view.cutoff_engaged and view.alerts_sent == {"alert_threshold"}
    data = view.as_json()
    assert data["spend_usd"] == "10.750000" and data["remaining_usd"] == "0.000000"
    assert data["cutoff"] == {"engaged": True, "day": day, "reason": "runaway agent", "by": "ops"}
    assert data["clients"] == {"alice": {"spend_usd": "1.750000", "daily_budget_usd": "2.500000"},
                               "bob": {"spend_usd": "9.000000", "daily_budget_usd": None}}
    assert summary(data) == ("$10.75 of $10.00 (108%) spent, $0.00 left; alert at $8.00, cutoff at $12.00")


def test_without_a_ledger_nothing_is_spent(config: Path) -> None:
    view = budget_view(load_config(config), None, time.time())
    assert view.spend == 0 and view.remaining == Decimal(10) and not view.cutoff_engaged
    assert view.as_json()["clients"]["alice"] == {"spend_usd": "0.000000", "daily_budget_usd": "2.500000"}


def test_budget_show_status_and_usage_report_show_the_same_budget(config: Path) -> None:
    spend(config, ("alice", "2.125"), ("bob", "0.5"), cutoff=True)
    runner = CliRunner()
    shown = json.loads(runner.invoke(main, ["budget", "show", "-c", str(config), "--json"]).stdout)
    status = runner.invoke(main, ["status", "-c", str(config), "--url", CLOSED, "--json"])
    from_status = json.loads(status.stdout)["budget"]
    assert from_status["source"] == "ledger"

    async def from_mcp() -> dict:
        holder = RuntimeHolder(load_config(config))
        try:
            return await usage_report(holder)
        finally:
            await holder.aclose()

    usage = asyncio.run(from_mcp())
    expected = {"spend_usd": "2.625000", "daily_budget_usd": "10.000000", "remaining_usd": "7.375000",
                "alert_threshold_usd": "8.000000", "emergency_cutoff_usd": "12.000000", "timezone": TZ}
    for surface in (shown, from_status, usage):
        assert {k: surface[k] for k in expected} == expected
        assert {k: surface[k] for k in BUDGET_KEYS} == {k: shown[k] for k in BUDGET_KEYS}
    assert usage["cutoff"]["engaged"] is True and usage["requests"] == 3 and usage["served_locally"] == 1
    assert usage["by_target"]["claude"]["cost_usd"] == "2.625000"  # per-target money in the same format
    screen = runner.invoke(main, ["status", "-c", str(config), "--url", CLOSED]).stdout
    assert "$2.62 of $10.00 (26%) spent, $7.38 left; alert at $8.00, cutoff at $12.00" in screen
    show = runner.invoke(main, ["budget", "show", "-c", str(config)]).stdout
    assert "cloud spend      $2.62 of $10.00  ($7.38 remaining)" in show
    assert "client alice            $2.12 of $2.50" in show
