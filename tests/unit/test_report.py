"""The report's numbers against hand-computed values for known ledger records; charts render."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from aibox_router.config import RouterConfig
from aibox_router.config_load import parse_config
from aibox_router.cost.chart import write_chart
from aibox_router.cost.ledger import LedgerRow, SqliteLedger
from aibox_router.cost.report import build_report, day_range, format_report, percentile, report_to_json


def make_config(tmp_path: Path) -> RouterConfig:
    return parse_config({
        "server": {"state_dir": str(tmp_path)},
        "backends": {"local": {"type": "ollama", "base_url": "http://127.0.0.1:9"},
                     "cloud": {"type": "anthropic", "base_url": "http://127.0.0.1:9"}},
        "targets": {"coder": {"backend": "local", "model": "qwen"},
                    "claude": {"backend": "cloud", "model": "test-cloud"},
                    "opus": {"backend": "cloud", "model": "test-opus"}},
        "default_target": "coder",
        "prices": [{"prefix": "test-cloud", "input": 1.0, "output": 5.0},
                   {"prefix": "test-opus", "input": 5.0, "output": 25.0}],
        "gpu": {"electricity_usd_per_kwh": 0.25},
    }, env={})


def rec(day: str, *, cloud: bool, **kw: Any) -> LedgerRow:
    base: dict[str, Any] = {"ts": 0.0, "day": day, "client": "a", "rule": "hard" if cloud else "coding",
                            "target": "claude" if cloud else "coder", "backend": "cloud" if cloud else "local",
                            "model": "test-cloud" if cloud else "qwen", "protocol": "anthropic", "stream": True,
                            "cloud": cloud}
    base.update(kw)
    return LedgerRow(**base)


@pytest.fixture
def ledger(tmp_path: Path) -> SqliteLedger:
    led = SqliteLedger.in_state_dir(tmp_path)
    d = "2026-01-15"
    led.insert(rec(d, cloud=True, output_tokens=20_000, cost_usd=Decimal("0.1"), client="a"))
    led.insert(rec(d, cloud=True, input_tokens=100_000, cost_usd=Decimal("0.1"), client="b"))
    led.insert(rec(d, cloud=True, status="refused", http_status=400, client="b"))
    for i in range(1, 9):
        led.insert(rec(d, cloud=False, latency_ms=1000.0 * i, ttft_ms=100.0 * i, input_tokens=1000,
                       output_tokens=1000, energy_j=360_000.0))
    for _ in range(2):
        led.insert(rec(d, cloud=False, status="error", http_status=502, latency_ms=100.0, error="refused"))
    led.insert(rec("2026-01-14", cloud=True, output_tokens=200_000, cost_usd=Decimal("1.0"), client="a"))
    led.insert(rec("2026-01-13", cloud=True, cost_usd=Decimal(50)))  # outside a 2-day report
    yield led
    led.close()


def test_one_day_report_matches_the_ledger(tmp_path: Path, ledger: SqliteLedger) -> None:
    cfg = make_config(tmp_path)
    rep = build_report(ledger.rows("2026-01-15", "2026-01-15"), cfg, first_day="2026-01-15", last_day="2026-01-15")
    # Queries are answered calls: the 2 failed local attempts and the refusal are not queries.
    assert (rep.cloud_calls, rep.local_calls, rep.refused, rep.errors, rep.queries) == (2, 8, 1, 2, 10)
    assert rep.local_share == pytest.approx(8 / 10)
    assert rep.spend_usd == Decimal("0.2")
    assert rep.budget_usd == Decimal("10.0") and rep.budget_remaining_usd == Decimal("9.8")
    # 8 local answers of 1000 in + 1000 out at test-cloud prices, no cache reads measured in the
    # cloud calls: 8 x 0.006; savings subtract the 0.8 kWh of electricity ($0.20).
    assert rep.reference_model == "test-cloud"
    assert (rep.cache_read_share, rep.cache_read_share_measured) == (0.0, True)
    assert rep.local_at_cloud_price_usd == Decimal("0.048")
    assert rep.all_cloud_usd == Decimal("0.248")
    assert rep.savings_usd == Decimal("0.048") - Decimal("0.2")
    assert rep.estimated_token_share == 0.0
    assert rep.cost_per_query_usd == Decimal("0.2") / 10
    assert rep.local_latency_p50_ms == 4000.0 and rep.local_latency_p95_ms == 8000.0
    assert rep.local_ttft_p50_ms == 400.0 and rep.local_ttft_p95_ms == 800.0
    assert rep.availability == {"cloud": 1.0, "local": 0.8}
    assert rep.energy_kwh == pytest.approx(0.8)
    assert rep.electricity_usd == Decimal("0.2")
    assert rep.by_rule["hard"].calls == 2 and rep.by_rule["hard"].spend_usd == Decimal("0.2")
    assert rep.by_rule["coding"].calls == 10 and rep.by_rule["coding"].errors == 2
    assert rep.by_client["b"].spend_usd == Decimal("0.1") and rep.by_client["b"].input_tokens == 100_000
    assert set(rep.by_model) == {"test-cloud", "qwen"}
    results = {m.name: m.passed for m in rep.measures()}
    assert results == {"local answers fast": False, "mostly local": True, "cheap per query": True}
    text = format_report(rep)
    assert "errors 2" in text and "0% of their prompt as cache reads" in text and "less spend and electricity" in text


def test_reference_model_and_multi_day(tmp_path: Path, ledger: SqliteLedger) -> None:
    cfg = make_config(tmp_path)
    first, last = day_range("2026-01-15", 2)
    assert (first, last) == ("2026-01-14", "2026-01-15")
    rep = build_report(ledger.rows(first, last), cfg, first_day=first, last_day=last, reference_model="test-opus")
    assert rep.days == 2 and rep.budget_usd == Decimal("20.0")
    assert rep.spend_usd == Decimal("1.2")
    assert rep.local_at_cloud_price_usd == Decimal("0.24")  # 8 x (1000 x 5 + 1000 x 25) / 1e6
    assert rep.savings_usd == Decimal("0.04")  # less $0.20 of electricity
    assert [(d.day, d.spend_usd, d.cloud_calls, d.local_calls) for d in rep.daily] == [
        ("2026-01-14", Decimal("1.0"), 1, 0), ("2026-01-15", Decimal("0.2"), 2, 8)]
    data = report_to_json(rep)
    assert data["spend_usd"] == "1.200000" and data["savings_usd"] == "0.040000"
    # 8 local of 11 queries = 72.7% < 80%; $1.20 / 11 = $0.109 > $0.10
    assert [m["result"] for m in data["measures"]] == ["fail", "fail", "fail"]
    assert data["daily"][0]["local_share"] == 0.0


def test_empty_report_has_no_verdicts(tmp_path: Path) -> None:
    rep = build_report([], make_config(tmp_path), first_day="2026-01-15", last_day="2026-01-15")
    assert rep.queries == 0 and rep.cost_per_query_usd is None and rep.local_share is None
    assert [m.passed for m in rep.measures()] == [None, None, None]


def test_percentile_nearest_rank() -> None:
    assert percentile([], 0.5) is None
    assert percentile([5.0], 0.95) == 5.0
    assert percentile([float(i) for i in range(1, 101)], 0.95) == 95.0
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0


def test_charts_render(tmp_path: Path, ledger: SqliteLedger) -> None:
    cfg = make_config(tmp_path)
    first, last = day_range("2026-01-15", 7)
    rep = build_report(ledger.rows(first, last), cfg, first_day=first, last_day=last)
    png = write_chart(rep, tmp_path / "c.png", emergency_cutoff=12.0)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    page = write_chart(rep, tmp_path / "c.html").read_text()
    assert "data:image/png;base64," in page and "<td>2026-01-15</td><td>$0.20</td>" in page
    with pytest.raises(ValueError, match="png or .html"):
        write_chart(rep, tmp_path / "c.svg")


def test_local_answers_are_priced_at_the_model_asked_for_with_the_cloud_calls_cache_share(tmp_path: Path) -> None:
    """Claude Code's Haiku-class background calls at Haiku's price; prompts cached like the cloud calls'."""
    cfg = parse_config({
        "server": {"state_dir": str(tmp_path)},
        "backends": {"local": {"type": "ollama", "base_url": "http://127.0.0.1:9"},
                     "cloud": {"type": "anthropic", "base_url": "http://127.0.0.1:9"}},
        "targets": {"coder": {"backend": "local", "model": "qwen"},
                    "claude": {"backend": "cloud", "model": "claude-sonnet-4-6"}},
        "default_target": "coder",
    }, env={})  # the embedded price table
    d = "2026-01-15"
    rows = [
        # The cloud calls read 90% of their prompts from the cache.
        rec(d, cloud=True, model="claude-sonnet-4-6", input_tokens=1000, cache_read_tokens=9000, cost_usd=Decimal(1)),
        rec(d, cloud=False, requested_model="claude-haiku-4-5-20251001", input_tokens=10_000, output_tokens=100),
        rec(d, cloud=False, requested_model="claude-sonnet-4-6", input_tokens=10_000, output_tokens=100,
            usage_estimated=True),
        rec(d, cloud=False, requested_model="coder", input_tokens=10_000, output_tokens=100),  # no price: reference
        rec(d, cloud=False, status="error", requested_model="claude-opus-4-6", input_tokens=10_000),  # not a query
    ]
    rep = build_report(rows, cfg, first_day=d, last_day=d)
    assert rep.cache_read_share == pytest.approx(0.9) and rep.cache_read_share_measured
    haiku = (1000 * Decimal(1) + 9000 * Decimal("0.1") + 100 * Decimal(5)) / 1_000_000
    sonnet = (1000 * Decimal(3) + 9000 * Decimal("0.3") + 100 * Decimal(15)) / 1_000_000
    assert rep.local_at_cloud_price_usd == haiku + 2 * sonnet
    assert rep.local_calls == 3 and rep.errors == 1
    assert rep.estimated_token_share == pytest.approx(1 / 3)
    data = report_to_json(rep)
    assert data["cache_read_share_source"] == "measured"


def test_without_cloud_calls_no_caching_is_assumed_and_said(tmp_path: Path) -> None:
    d = "2026-01-15"
    rep = build_report([rec(d, cloud=False, input_tokens=1000)], make_config(tmp_path), first_day=d, last_day=d)
    assert (rep.cache_read_share, rep.cache_read_share_measured) == (0.0, False)
    assert report_to_json(rep)["cache_read_share_source"] == "assumed (no cloud calls)"
    assert "assumed: no cloud calls to measure" in format_report(rep)
