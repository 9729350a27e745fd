"""``bench --chart PATH.png``: one figure comparing the targets (matplotlib, headless Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def draw_chart(summary: dict[str, dict[str, Any]], path: str | Path) -> None:
    """Three panels: tokens/s and time to first token per target, pass rate per task type and target."""
    import matplotlib  # heavy and needed only for --chart: imported when drawing

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = list(summary)
    labels = [f"{t}\n{summary[t]['model']}" for t in targets]
    task_types = list(dict.fromkeys(tt for e in summary.values() for tt in e["by_task_type"]))
    fig, axes = plt.subplots(1, 3, figsize=(max(12, 3 * len(targets) + 6), 4.8))
    try:
        tps = [summary[t]["tokens_per_s_median"] or 0 for t in targets]
        axes[0].bar(labels, tps, color="tab:blue")
        axes[0].set_title("Generation speed (median)")
        axes[0].set_ylabel("output tokens / s")

        ttft = [(summary[t]["ttft_ms_median"] or 0) / 1000 for t in targets]
        axes[1].bar(labels, ttft, color="tab:orange")
        axes[1].set_title("Time to first token (median)")
        axes[1].set_ylabel("seconds")

        width = 0.8 / max(1, len(targets))
        for i, t in enumerate(targets):
            rates = [(summary[t]["by_task_type"].get(tt, {}).get("pass_rate") or 0) * 100 for tt in task_types]
            xs = [x + i * width for x in range(len(task_types))]
            axes[2].bar(xs, rates, width=width, label=t)
        axes[2].set_xticks([x + width * (len(targets) - 1) / 2 for x in range(len(task_types))])
        axes[2].set_xticklabels(task_types, rotation=20, ha="right", fontsize="small")
        axes[2].set_ylim(0, 105)
        axes[2].set_title("Pass rate by task type")
        axes[2].set_ylabel("%")
        axes[2].legend(fontsize="small")
        for ax in axes[:2]:
            ax.tick_params(axis="x", labelsize="small")
        fig.suptitle("aibox-router bench: local models")
        fig.tight_layout()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
