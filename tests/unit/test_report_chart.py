"""The report's chart for every range from 1 to 90 days: one size, the expected series, readable labels.

The report is built from ledger rows with known spend and query counts (a realistic month: most
days under budget, some over, local share around the 80% goal), then drawn as the CLI draws it.
"""

from __future__ import annotations

import struct
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from aibox_router.config import RouterConfig
from aibox_router.config_load import parse_config
from aibox_router.cost.chart import (
    DPI,
    FIGSIZE_IN,
    WEEKLY_AFTER_DAYS,
    build_figure,
    describe,
    periods,
    write_chart,
)
from aibox_router.cost.ledger import LedgerRow
from aibox_router.cost.report import Report, build_report

LAST_DAY = "2026-12-01"


def config() -> RouterConfig:
    return parse_config({
        "server": {"state_dir": "/tmp/unused"},
        "backends": {"local": {"type": "ollama", "base_url": "http://127.0.0.1:9"},
                     "cloud": {"type": "anthropic", "base_url": "http://127.0.0.1:9"}},
        "targets": {"coder": {"backend": "local", "model": "qwen"},
                    "claude": {"backend": "cloud", "model": "test-cloud"}},
        "default_target": "coder",
        "prices": [{"prefix": "test-cloud", "input": 3.0, "output": 15.0}],
    }, env={})


def rows_for(days: int) -> list[LedgerRow]:
    rows = []
    last = date.fromisoformat(LAST_DAY)
    for i in range(days):
        day = (last - timedelta(days=i)).isoformat()
        spend = Decimal("14.50") if i % 9 == 4 else Decimal(str(3 + (i * 7) % 6))  # some days over $10
        locals_ = 30 + (i * 13) % 20
        common = {"ts": 0.0, "day": day, "client": "a", "protocol": "anthropic", "stream": True}
        rows += [LedgerRow(**common, rule="hard", target="claude", backend="cloud", model="test-cloud", cloud=True,
                           cost_usd=spend / 8, input_tokens=20_000, output_tokens=2_000) for _ in range(8)]
        rows += [LedgerRow(**common, rule="coding", target="coder", backend="local", model="qwen", cloud=False,
                           latency_ms=1800.0, ttft_ms=300.0, input_tokens=20_000, output_tokens=2_000)
                 for _ in range(locals_)]
    return rows


def report_for(days: int) -> Report:
    first = (date.fromisoformat(LAST_DAY) - timedelta(days=days - 1)).isoformat()
    return build_report(rows_for(days), config(), first_day=first, last_day=LAST_DAY)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("days", [1, 2, 7, 14, 30, 31, 32, 60, 90])
def test_every_range_is_one_readable_figure_with_every_series(tmp_path: Path, days: int) -> None:
    rep = report_for(days)
    png = write_chart(rep, tmp_path / f"report-{days}d.png", emergency_cutoff=12.0).read_bytes()
    assert png_size(png) == (int(FIGSIZE_IN[0] * DPI), int(FIGSIZE_IN[1] * DPI))  # not a 3300 px strip

    fig = build_figure(rep, emergency_cutoff=12.0)
    shown = describe(fig)
    expected_bars = days if days <= WEEKLY_AFTER_DAYS else -(-days // 7)
    assert len(periods(rep)) == expected_bars and expected_bars <= WEEKLY_AFTER_DAYS
    spend = shown["spend"]
    # Bars (one per period), then the legend's own patches are not counted: ax.patches holds bars only.
    assert spend["bars"] == expected_bars
    assert "spend within budget" in spend["legend"]
    assert "spend over budget" in spend["legend"]  # red has its legend entry
    assert any(t.startswith("budget") for t in spend["legend"]) and "emergency cutoff" in spend["legend"]
    assert len(spend["texts"]) == expected_bars and all(t.startswith("$") for t in spend["texts"])  # value labels
    ax = next(a for a in fig.axes if a.get_label() == "spend")
    budget_lines = [c for c in ax.collections if c.get_label() == "budget"]
    assert budget_lines and len(budget_lines[0].get_segments()) == expected_bars  # drawn even for one day
    share = shown["local share"]
    assert share["bars"] == expected_bars and len(share["texts"]) == expected_bars
    assert all(t.endswith("%") or "%\n" in t for t in share["texts"])
    headline = " ".join(shown["headline"]["texts"])
    for caption in ("cloud spend", "saved vs all-cloud", "local answers fast", "mostly local", "cheap per query"):
        assert caption in headline
    assert ("PASS" in headline) or ("FAIL" in headline)
    assert len(shown["local share"]["ticks"]) <= 16  # labels that can be read, not 60 rotated dates
    # Legends sit outside the plotting area, so they cannot cover a bar.
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for a in fig.axes:
        legend = a.get_legend()
        if legend is not None:
            box = legend.get_window_extent(renderer)
            assert box.x0 >= a.get_window_extent(renderer).x1
            assert box.x1 <= fig.bbox.x1  # and inside the picture, not cut off
    title = fig._suptitle.get_text()
    assert LAST_DAY in title or "01 Dec 2026" in title
    assert fig._suptitle.get_window_extent(renderer).x1 <= fig.bbox.x1  # not clipped


def test_one_day_shows_the_day_and_its_budget_line() -> None:
    shown = describe(build_figure(report_for(1), emergency_cutoff=12.0))
    assert shown["local share"]["ticks"] == ["12-01"]
    assert shown["spend"]["texts"] == ["$5.00"] or shown["spend"]["texts"][0].startswith("$")


def test_weeks_end_on_the_last_day_and_add_up() -> None:
    rep = report_for(60)
    weeks = periods(rep)
    assert weeks[-1].last == LAST_DAY and weeks[-1].days == 7 and weeks[0].days == 60 - 8 * 7
    assert sum(w.days for w in weeks) == 60
    assert abs(sum(w.spend_usd for w in weeks) - float(rep.spend_usd)) < 1e-6
    assert sum(w.budget_usd for w in weeks) == pytest.approx(float(rep.budget_usd))


def test_html_has_the_summary_the_measures_and_the_picture(tmp_path: Path) -> None:
    page = write_chart(report_for(7), tmp_path / "r.html", emergency_cutoff=12.0).read_text()
    assert "data:image/png;base64," in page
    assert "Success measures" in page and ("PASS" in page or "FAIL" in page)
    assert "all-cloud cost" in page and "local share" in page  # the report's text summary
    assert page.count("<tr><td>2026-") == 7
