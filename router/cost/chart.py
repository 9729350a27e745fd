"""``report --chart``: the report as one picture a manager can read, as PNG or a self-contained HTML page.

One figure for any range from 1 to 90 days, always the same size: a headline strip with the totals,
the savings and the three success measures (PASS/FAIL), cloud spend per period against the budget
(bars over budget in red, each with its amount), and the share of queries answered locally per
period against the goal. Past ``WEEKLY_AFTER_DAYS`` days the periods are weeks (ending on the last
day of the report), so 60 or 90 days stay readable. Legends sit outside the plotting areas, so they
never cover data.

matplotlib is imported here only (the CLI loads this module only when a chart is asked for) and
runs on the Agg backend: the router host has no display.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .report import LOCAL_SHARE_GOAL, Report, format_report

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Up to this many days, one bar per day; beyond, one bar per week (a month of days still fits).
WEEKLY_AFTER_DAYS = 31
FIGSIZE_IN = (11.0, 7.5)
DPI = 100  # 1100 x 750 px whatever the range

SPEND = "#2e86c1"
OVER = "#c0392b"
BUDGET = "#1e8449"
CUTOFF = "#c0392b"
LOCAL_OK = "#27ae60"
LOCAL_LOW = "#e67e22"
PASS = "#1e8449"
FAIL = "#c0392b"
UNKNOWN = "#7f8c8d"


@dataclass(frozen=True)
class Period:
    """One bar: a day, or a week of days."""

    first: str
    last: str
    days: int
    spend_usd: float
    budget_usd: float
    cloud_calls: int
    local_calls: int

    @property
    def label(self) -> str:
        if self.first == self.last:
            return self.first[5:]  # MM-DD
        return f"{self.first[5:]}\n–{self.last[5:]}"

    @property
    def local_share(self) -> float | None:
        total = self.cloud_calls + self.local_calls
        return self.local_calls / total if total else None


def periods(rep: Report) -> list[Period]:
    """The report's days, or its weeks (counted back from the last day) past WEEKLY_AFTER_DAYS days."""
    days = rep.daily
    size = 1 if len(days) <= WEEKLY_AFTER_DAYS else 7
    groups = []
    end = len(days)
    while end > 0:
        start = max(0, end - size)
        groups.append(days[start:end])
        end = start
    groups.reverse()
    return [Period(first=g[0].day, last=g[-1].day, days=len(g),
                   spend_usd=float(sum((d.spend_usd for d in g), Decimal(0))),
                   budget_usd=float(sum((d.budget_usd for d in g), Decimal(0))),
                   cloud_calls=sum(d.cloud_calls for d in g), local_calls=sum(d.local_calls for d in g))
            for g in groups]


def _title(rep: Report) -> str:
    if rep.first_day == rep.last_day:
        day = date.fromisoformat(rep.first_day)
        return f"aibox-router: cloud spend and local share on {day:%a %d %b %Y}"
    return f"aibox-router: cloud spend and local share, {rep.first_day} to {rep.last_day} ({rep.days} days)"


def _headline(rep: Report) -> list[tuple[str, str, str]]:
    """(caption, value, colour) boxes for the strip above the plots."""
    share = rep.local_share
    boxes = [
        ("cloud spend", f"${rep.spend_usd:.2f} of ${rep.budget_usd:.2f}",
         OVER if rep.spend_usd > rep.budget_usd else "#1b2631"),
        ("queries", f"{rep.queries:,} ({rep.local_calls:,} local, {rep.cloud_calls:,} cloud"
                    + (f", {rep.refused:,} refused)" if rep.refused else ")"), "#1b2631"),
        ("saved vs all-cloud", f"${rep.savings_usd:.2f} of ${rep.all_cloud_usd:.2f}"
         + (f" ({rep.reference_model})" if rep.reference_model else ""), PASS if rep.savings_usd > 0 else "#1b2631"),
    ]
    for m in rep.measures():
        verdict = "n/a" if m.passed is None else ("PASS" if m.passed else "FAIL")
        colour = UNKNOWN if m.passed is None else (PASS if m.passed else FAIL)
        boxes.append((f"{m.name} ({m.goal})", verdict if m.passed is None else f"{verdict}: {m.value}", colour))
    if share is None:
        boxes[1] = ("queries", "none in this range", UNKNOWN)
    return boxes


def build_figure(rep: Report, *, emergency_cutoff: float | None = None) -> Figure:
    """The chart as a matplotlib Figure (the tests inspect it; render_png draws it)."""
    # matplotlib is heavy: imported only when a chart is drawn.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    bars = periods(rep)
    weekly = any(p.days > 1 for p in bars)
    n = len(bars)
    x = list(range(n))
    fig = Figure(figsize=FIGSIZE_IN, dpi=DPI)
    FigureCanvasAgg(fig)  # Agg: the router host has no display (no pyplot, no global figure state)
    grid = fig.add_gridspec(3, 1, height_ratios=[0.8, 2.5, 1.6], hspace=0.45, left=0.07, right=0.75,
                            top=0.91, bottom=0.10)
    fig.suptitle(_title(rep), fontsize=14, fontweight="bold")

    # -- headline strip ------------------------------------------------------------------------
    strip = fig.add_subplot(grid[0])
    strip.set_axis_off()
    strip.set_label("headline")
    boxes = _headline(rep)
    per_row = 3
    rows = math.ceil(len(boxes) / per_row)
    for i, (caption, value, colour) in enumerate(boxes):
        col, row = i % per_row, i // per_row
        bx, by = col / per_row + 0.005, 1 - (row + 1) / rows
        # parse_math=False: "$3.00 of $10.00" is money, not a TeX formula.
        strip.text(bx, by + 0.55 / rows, caption, transform=strip.transAxes, fontsize=9, color="#566573",
                   parse_math=False)
        strip.text(bx, by + 0.12 / rows, value, transform=strip.transAxes, fontsize=10, fontweight="bold",
                   color=colour, parse_math=False)

    # -- spend vs budget -----------------------------------------------------------------------
    ax1 = fig.add_subplot(grid[1])
    ax1.set_label("spend")
    spend = [p.spend_usd for p in bars]
    budget = [p.budget_usd for p in bars]
    over = [s > b for s, b in zip(spend, budget, strict=True)]
    ax1.bar(x, spend, width=0.6, color=[OVER if o else SPEND for o in over], zorder=2)
    # The budget as a line over each bar: visible for a single day as for ninety.
    ax1.hlines(budget, [i - 0.42 for i in x], [i + 0.42 for i in x], colors=BUDGET, linewidth=2.2, zorder=3,
               label="budget")
    cutoffs: list[float] = []
    if emergency_cutoff is not None:
        cutoffs = [emergency_cutoff * p.days for p in bars]
        ax1.hlines(cutoffs, [i - 0.42 for i in x], [i + 0.42 for i in x], colors=CUTOFF, linestyles="--",
                   linewidth=1.2, zorder=3, label="emergency cutoff")
    top = max([*spend, *budget, *cutoffs, 0.01]) * 1.22
    ax1.set_ylim(0, top)
    for i, s in enumerate(spend):
        ax1.annotate(f"${s:,.2f}", (i, s), parse_math=False, xytext=(0, 3), textcoords="offset points",
                     ha="center", va="bottom",
                     fontsize=8 if n <= 16 else 7, rotation=0 if n <= 16 else 90, zorder=4)
    ax1.set_ylabel("USD per week" if weekly else "USD per day")
    ax1.set_title("Cloud spend against the budget" + (" (weekly)" if weekly else ""), fontsize=11, loc="left")
    ax1.grid(axis="y", alpha=0.3, zorder=0)
    handles = [Patch(color=SPEND, label="spend within budget"), Patch(color=OVER, label="spend over budget"),
               Line2D([], [], color=BUDGET, linewidth=2.2,
                      label="budget" + (" (per week)" if weekly else " (per day)"))]
    if emergency_cutoff is not None:
        handles.append(Line2D([], [], color=CUTOFF, linestyle="--", label="emergency cutoff"))
    ax1.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)

    # -- local share -----------------------------------------------------------------------------
    ax2 = fig.add_subplot(grid[2], sharex=ax1)
    ax2.set_label("local share")
    shares = [p.local_share for p in bars]
    heights = [0.0 if s is None else s * 100 for s in shares]
    colours = [UNKNOWN if s is None else (LOCAL_OK if s >= LOCAL_SHARE_GOAL else LOCAL_LOW) for s in shares]
    ax2.bar(x, heights, width=0.6, color=colours, zorder=2)
    ax2.axhline(LOCAL_SHARE_GOAL * 100, color=BUDGET, linestyle="--", linewidth=1.2, zorder=3)
    for i, (share, p) in enumerate(zip(shares, bars, strict=True)):
        text = "no queries" if share is None else f"{share:.0%}"
        if share is not None and n <= 10:
            text += f"\n{p.local_calls + p.cloud_calls:,} q"
        ax2.annotate(text, (i, heights[i]), xytext=(0, 3), textcoords="offset points", ha="center", va="bottom",
                     fontsize=8 if n <= 16 else 6.5, rotation=0 if n <= 16 else 90, zorder=4)
    ax2.set_ylim(0, 135)
    ax2.set_yticks([0, 25, 50, 75, 100])
    ax2.set_ylabel("% answered locally")
    ax2.set_title("Queries answered by local models", fontsize=11, loc="left")
    ax2.grid(axis="y", alpha=0.3, zorder=0)
    ax2.legend(handles=[Patch(color=LOCAL_OK, label=f"local share >= {LOCAL_SHARE_GOAL:.0%}"),
                        Patch(color=LOCAL_LOW, label="local share below goal"),
                        Line2D([], [], color=BUDGET, linestyle="--", label=f"goal {LOCAL_SHARE_GOAL:.0%}")],
               loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)

    # -- x axis: every label when they fit, else every k-th --------------------------------------
    stride = max(1, math.ceil(n / 16))
    ax2.set_xticks(x[::stride], [bars[i].label for i in x[::stride]], fontsize=8)
    ax2.set_xlim(-0.7 if n > 1 else -1.5, n - 0.3 if n > 1 else 1.5)
    ax1.tick_params(axis="x", labelbottom=False)
    ax2.set_xlabel("week (first day – last day)" if weekly else "day (MM-DD)")
    return fig


def render_png(rep: Report, *, emergency_cutoff: float | None = None) -> bytes:
    fig = build_figure(rep, emergency_cutoff=emergency_cutoff)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def render_html(rep: Report, *, emergency_cutoff: float | None = None) -> str:
    """One self-contained page (the PNG inlined, the report's summary and the daily table) to mail or
    open offline."""
    png = base64.b64encode(render_png(rep, emergency_cutoff=emergency_cutoff)).decode()
    measures = "\n".join(
        f"<tr><td>{html.escape(m.name)}</td><td>{html.escape(m.goal)}</td><td>{html.escape(m.value)}</td>"
        f"<td class=\"{_verdict_class(m.passed)}\">{'n/a' if m.passed is None else ('PASS' if m.passed else 'FAIL')}"
        "</td></tr>" for m in rep.measures())
    rows = "\n".join(
        f"<tr><td>{html.escape(d.day)}</td><td>${d.spend_usd:.2f}</td><td>${d.budget_usd:.2f}</td>"
        f"<td>{d.cloud_calls}</td><td>{d.local_calls}</td>"
        f"<td>{'n/a' if d.local_share is None else format(d.local_share, '.0%')}</td></tr>"
        for d in rep.daily)
    title = html.escape(_title(rep))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:1150px}} td,th{{padding:2px 10px;text-align:right}}
td:first-child,th:first-child{{text-align:left}} .pass{{color:{PASS};font-weight:bold}}
.fail{{color:{FAIL};font-weight:bold}} .na{{color:{UNKNOWN}}} pre{{background:#f4f6f7;padding:8px}}</style></head>
<body><h1>{title}</h1>
<h2>Success measures</h2>
<table><tr><th>measure</th><th>goal</th><th>value</th><th>verdict</th></tr>
{measures}
</table>
<img alt="cloud spend against the budget and the local share" src="data:image/png;base64,{png}">
<h2>Summary</h2>
<pre>{html.escape(format_report(rep))}</pre>
<h2>Per day</h2>
<table><tr><th>day</th><th>spend</th><th>budget</th><th>cloud</th><th>local</th><th>local share</th></tr>
{rows}
</table></body></html>
"""


def _verdict_class(passed: bool | None) -> str:
    return "na" if passed is None else ("pass" if passed else "fail")


def chart_format(path: str | Path) -> str:
    """``png`` or ``html`` from the file name; ValueError for anything else."""
    suffix = Path(path).suffix.lower()
    if suffix == ".png":
        return "png"
    if suffix in (".html", ".htm"):
        return "html"
    raise ValueError(f"{path}: chart file must end in .png or .html")


def write_chart(rep: Report, path: str | Path, *, emergency_cutoff: float | None = None) -> Path:
    p = Path(path)
    if chart_format(p) == "html":
        p.write_text(render_html(rep, emergency_cutoff=emergency_cutoff), encoding="utf-8")
    else:
        p.write_bytes(render_png(rep, emergency_cutoff=emergency_cutoff))
    return p


def describe(fig: Any) -> dict[str, Any]:
    """What a figure shows, for tests: bar counts, legend labels and the axes' names."""
    out: dict[str, Any] = {}
    for ax in fig.axes:
        legend = ax.get_legend()
        out[ax.get_label()] = {
            "bars": len(ax.patches),
            "legend": [t.get_text() for t in legend.get_texts()] if legend else [],
            "texts": [t.get_text() for t in ax.texts],
            "ticks": [t.get_text() for t in ax.get_xticklabels()],
        }
    return out
