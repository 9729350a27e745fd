"""Turn benchmark runs into a summary, a table, routing recommendations and the JSON file.

``model_performance.json`` (format version 1)::

    {"version": 1, "generated_at": ISO time, "config": path, "gpu": "...", "repeat": N,
     "tasks": [{"name", "type", "max_tokens", "check"}],
     "runs": [BenchRun fields ...],
     "summary": {target: {"backend", "model", "runs", "errors", "pass_rate", "ttft_ms_median",
                          "tokens_per_s_median", "total_ms_median", "energy_j_median",
                          "by_task_type": {type: {same figures}}}},
     "recommendations": {task_type: {"target", "pass_rate", "tokens_per_s_median", "ttft_ms_median"}}}

``pass_rate`` counts runs of tasks that have a check; where no task of a group has one it is
the share of runs that produced an answer at all.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .runner import BenchRun
from .suite import BenchTask

FORMAT_VERSION = 1


def _median(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 3) if known else None


def figures(runs: Sequence[BenchRun]) -> dict[str, Any]:
    checked = [r for r in runs if r.passed is not None]
    if checked:
        pass_rate: float | None = sum(1 for r in checked if r.passed) / len(checked)
    else:
        pass_rate = sum(1 for r in runs if r.ok) / len(runs) if runs else None
    ok = [r for r in runs if r.ok]
    return {
        "runs": len(runs),
        "errors": sum(1 for r in runs if r.error),
        "checked": len(checked),
        "pass_rate": round(pass_rate, 4) if pass_rate is not None else None,
        "ttft_ms_median": _median(r.ttft_ms for r in ok),
        "tokens_per_s_median": _median(r.tokens_per_s for r in ok),
        "total_ms_median": _median(r.total_ms for r in ok),
        "energy_j_median": _median(r.energy_j for r in ok),
    }


def summarize(runs: Sequence[BenchRun]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for target in dict.fromkeys(r.target for r in runs):
        mine = [r for r in runs if r.target == target]
        entry = {"backend": mine[0].backend, "model": mine[0].model, **figures(mine)}
        entry["by_task_type"] = {tt: figures([r for r in mine if r.task_type == tt])
                                 for tt in dict.fromkeys(r.task_type for r in mine)}
        out[target] = entry
    return out


@dataclass(frozen=True)
class Recommendation:
    task_type: str
    target: str
    pass_rate: float | None
    tokens_per_s_median: float | None
    ttft_ms_median: float | None


def recommend(summary: dict[str, dict[str, Any]]) -> list[Recommendation]:
    """For each task type: the target with the best pass rate, then the most tokens/s, then the lowest TTFT."""
    task_types = dict.fromkeys(tt for entry in summary.values() for tt in entry["by_task_type"])
    recs: list[Recommendation] = []
    for tt in task_types:
        candidates = [(target, entry["by_task_type"][tt]) for target, entry in summary.items()
                      if tt in entry["by_task_type"] and entry["by_task_type"][tt]["runs"] > entry[
                          "by_task_type"][tt]["errors"]]
        if not candidates:
            continue

        def key(item: tuple[str, dict[str, Any]]) -> tuple[float, float, float]:
            f = item[1]
            return (-(f["pass_rate"] or 0.0), -(f["tokens_per_s_median"] or 0.0),
                    f["ttft_ms_median"] if f["ttft_ms_median"] is not None else float("inf"))

        target, f = min(candidates, key=key)
        recs.append(Recommendation(tt, target, f["pass_rate"], f["tokens_per_s_median"], f["ttft_ms_median"]))
    return recs


def no_local_pass(rec: Recommendation) -> bool:
    """Even the best local target failed every checked run of this task type."""
    return rec.pass_rate == 0


def rules_yaml(recs: Sequence[Recommendation], cloud_target: str | None = None) -> str:
    """Config lines routing each task type to its recommended target (types sharing a target merged).

    A task type no local target passed goes to *cloud_target*, the verdict the table states; with no
    cloud target it gets no rule, only a comment, so the YAML never routes it to a target that failed it.
    """
    by_target: dict[str, list[str]] = {}
    skipped: list[str] = []
    for r in recs:
        if no_local_pass(r):
            if cloud_target is None:
                skipped.append(r.task_type)
                continue
            by_target.setdefault(cloud_target, []).append(r.task_type)
        else:
            by_target.setdefault(r.target, []).append(r.task_type)
    lines = ["rules:"] if by_target else ["# no rules: no local target passed any task type"]
    lines += [f"  # {t}: no local target passed; no rule (default routing applies)" for t in skipped]
    for target, types in by_target.items():
        when = f'task == "{types[0]}"' if len(types) == 1 else \
            "task in (" + ", ".join(f'"{t}"' for t in types) + ")"
        lines += [f"  - name: bench-{target}", f"    when: '{when}'", f"    target: {target}"]
    return "\n".join(lines)


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def table(summary: dict[str, dict[str, Any]]) -> str:
    """The comparison table printed after a run."""
    header = ("target", "model", "runs", "errors", "pass", "TTFT", "tok/s", "total")
    rows = [header]
    for target, e in summary.items():
        rows.append((target, e["model"], str(e["runs"]), str(e["errors"]),
                     _fmt(e["pass_rate"] * 100 if e["pass_rate"] is not None else None, ".0f", "%"),
                     _fmt(e["ttft_ms_median"] / 1000 if e["ttft_ms_median"] is not None else None, ".2f", "s"),
                     _fmt(e["tokens_per_s_median"], ".1f"),
                     _fmt(e["total_ms_median"] / 1000 if e["total_ms_median"] is not None else None, ".2f", "s")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("(medians over answered runs; pass = share of checked runs whose answer passed its check)")
    return "\n".join(lines)


def progress_line(run: BenchRun, done: int, total: int) -> str:
    width = len(str(total))
    verdict = "ERROR" if run.error else ("PASS" if run.passed else "FAIL" if run.passed is False else "ok")
    figs = (f"ttft {_fmt(run.ttft_ms / 1000 if run.ttft_ms is not None else None, '.2f', 's')}  "
            f"{_fmt(run.tokens_per_s, '.1f')} tok/s  total {run.total_ms / 1000:.2f}s")
    tail = f"{verdict}: {run.error}" if run.error else verdict
    if run.passed is False and run.check_detail:
        tail += f" ({run.check_detail[:80]})"
    return f"[{done:>{width}}/{total}] {run.target} {run.task_type}/{run.task} #{run.repeat}  {figs}  {tail}"


def document(runs: Sequence[BenchRun], tasks: Sequence[BenchTask], *, config_path: str, repeat: int,
             gpu: str, with_recommendations: bool) -> dict[str, Any]:
    summary = summarize(runs)
    doc: dict[str, Any] = {
        "version": FORMAT_VERSION,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": config_path,
        "gpu": gpu,
        "repeat": repeat,
        "tasks": [{"name": t.name, "type": t.type, "max_tokens": t.max_tokens,
                   "check": t.check.type if t.check else None} for t in tasks],
        "runs": [r.as_dict() for r in runs],
        "summary": summary,
    }
    if with_recommendations:
        doc["recommendations"] = {r.task_type: {"target": r.target, "pass_rate": r.pass_rate,
                                                "tokens_per_s_median": r.tokens_per_s_median,
                                                "ttft_ms_median": r.ttft_ms_median}
                                  for r in recommend(summary)}
    return doc


def write_json(doc: dict[str, Any], path: str | Path) -> None:
    """Write atomically: a reader (the MCP server) never sees half a file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".model_performance.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
