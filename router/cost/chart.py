"""``report --chart``: daily cloud spend against the budget, and the local share, as PNG or HTML.

matplotlib is imported here only (the CLI loads this module only when a chart is asked for) and
runs on the Agg backend: the router host has no display.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from .report import LOCAL_SHARE_GOAL, Report


def render_png(rep: Report, *, emergency_cutoff: float | None = None) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    days = [d.day[5:] for d in rep.daily]  # MM-DD keeps a month of labels readable
    spend = [float(d.spend_usd) for d in rep.daily]
    budget = [float(d.budget_usd) for d in rep.daily]
    share = [float("nan") if d.local_share is None else d.local_share * 100 for d in rep.daily]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(6.0, 0.45 * len(days) + 3), 6.5), sharex=True)
    try:
        ax1.bar(days, spend, color=["#c0392b" if s > b else "#2e86c1" for s, b in zip(spend, budget, strict=True)],
                label="cloud spend")
        ax1.plot(days, budget, color="#27ae60", linestyle="-", marker="", label="daily budget")
        if emergency_cutoff is not None:
            ax1.axhline(emergency_cutoff, color="#c0392b", linestyle="--", linewidth=1, label="emergency cutoff")
        ax1.set_ylabel("USD")
        ax1.set_title(f"aibox-router: daily cloud spend and local share, {rep.first_day} .. {rep.last_day}")
        ax1.legend(loc="upper left")
        ax2.plot(days, share, marker="o", color="#8e44ad", label="local share")
        ax2.axhline(LOCAL_SHARE_GOAL * 100, color="#27ae60", linestyle="--", linewidth=1, label="goal")
        ax2.set_ylim(0, 100)
        ax2.set_ylabel("% of queries answered locally")
        ax2.legend(loc="lower left")
        ax2.tick_params(axis="x", rotation=45)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        return buf.getvalue()
    finally:
        plt.close(fig)


def render_html(rep: Report, *, emergency_cutoff: float | None = None) -> str:
    """One self-contained page (the PNG inlined) so it can be mailed or opened offline."""
    png = base64.b64encode(render_png(rep, emergency_cutoff=emergency_cutoff)).decode()
    rows = "\n".join(
        f"<tr><td>{html.escape(d.day)}</td><td>${d.spend_usd:.2f}</td><td>${d.budget_usd:.2f}</td>"
        f"<td>{d.cloud_calls}</td><td>{d.local_calls}</td>"
        f"<td>{'n/a' if d.local_share is None else format(d.local_share, '.0%')}</td></tr>"
        for d in rep.daily)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>aibox-router spend {html.escape(rep.first_day)} .. {html.escape(rep.last_day)}</title>
<style>body{{font-family:sans-serif}} td,th{{padding:2px 10px;text-align:right}}</style></head>
<body><h1>aibox-router: cloud spend and local share</h1>
<img alt="daily spend and local share" src="data:image/png;base64,{png}">
<table><tr><th>day</th><th>spend</th><th>budget</th><th>cloud</th><th>local</th><th>local share</th></tr>
{rows}
</table></body></html>
"""


def write_chart(rep: Report, path: str | Path, *, emergency_cutoff: float | None = None) -> Path:
    p = Path(path)
    if p.suffix.lower() in (".html", ".htm"):
        p.write_text(render_html(rep, emergency_cutoff=emergency_cutoff), encoding="utf-8")
    elif p.suffix.lower() == ".png":
        p.write_bytes(render_png(rep, emergency_cutoff=emergency_cutoff))
    else:
        raise ValueError(f"{p}: chart file must end in .png or .html")
    return p
