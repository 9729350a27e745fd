"""``aibox-router bench``: measure the local models on code, debugging, explanation and docs tasks."""

from __future__ import annotations

import asyncio
import sys

import click

from ..gpu import GpuMonitor
from ..model_bench import report
from ..model_bench.runner import BenchRun, local_targets, run_bench
from ..model_bench.suite import TaskFileError, load_tasks
from . import config_option
from .common import default_config_path, load_or_exit


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


@click.command()
@config_option
@click.option("--tasks", "task_dirs", multiple=True, type=click.Path(exists=True),
              help="Directory (or file) of extra task YAML files; repeatable.")
@click.option("--no-builtin", is_flag=True, help="Run only the tasks given with --tasks.")
@click.option("--only", default=None, metavar="GLOBS",
              help="Comma-separated task names (globs) or task types to run, e.g. 'codegen-*,debugging'.")
@click.option("--models", default=None, metavar="TARGETS",
              help="Comma-separated target names (default: every local target).")
@click.option("--repeat", default=1, show_default=True, type=click.IntRange(1, 100), help="Runs per task.")
@click.option("--output", "-o", default="model_performance.json", show_default=True,
              type=click.Path(dir_okay=False), help="Where to write the results as JSON.")
@click.option("--chart", default=None, type=click.Path(dir_okay=False), help="Also draw a PNG chart here.")
@click.option("--recommend", is_flag=True, help="Say which target should back which task-type rule.")
@click.option("--no-warmup", is_flag=True, help="Do not load each model before timing it.")
def bench(config_path: str | None, task_dirs: tuple[str, ...], no_builtin: bool, only: str | None,
          models: str | None, repeat: int, output: str, chart: str | None, recommend: bool,
          no_warmup: bool) -> None:
    """Run benchmark tasks against local targets, through the router's backends, streaming.

    Measures time to first token, tokens/s and total time, checks answers where a task says how,
    prints one line per run (stderr) and a comparison table, and writes OUTPUT as JSON. Benchmark
    calls are not routed, budgeted or recorded in the ledger.
    """
    config = load_or_exit(config_path)
    try:
        tasks = load_tasks(list(task_dirs), builtin=not no_builtin, only=_split(only))
    except TaskFileError as e:
        raise click.ClickException(str(e)) from None
    if not tasks:
        raise click.ClickException("no benchmark tasks selected (check --tasks, --only, --no-builtin)")
    targets = _split(models) or local_targets(config)
    unknown = [t for t in targets if t not in config.targets]
    if unknown:
        raise click.ClickException(f"unknown target(s) {unknown}; configured: {sorted(config.targets)}")
    cloud = [t for t in targets if config.target_is_cloud(t)]
    if cloud:
        raise click.ClickException(f"{cloud} are cloud targets; bench measures local models (their calls "
                                   "would cost money outside the budget)")
    if not targets:
        raise click.ClickException("the config has no local targets to benchmark")

    gpu = GpuMonitor(config.gpu)
    click.echo(f"bench: {len(tasks)} task(s) x {len(targets)} target(s) x {repeat}: {', '.join(targets)}",
               err=True)
    click.echo(f"bench: {gpu.describe().splitlines()[0]}", err=True)

    def progress(run: BenchRun, done: int, total: int) -> None:
        click.echo(report.progress_line(run, done, total), err=True)
        sys.stderr.flush()

    runs = asyncio.run(run_bench(config, tasks, targets, repeat=repeat, progress=progress, gpu=gpu,
                                 warm_up=not no_warmup))
    doc = report.document(runs, tasks, config_path=config_path or default_config_path(), repeat=repeat,
                          gpu=gpu.describe(), with_recommendations=recommend)
    gpu.close()
    report.write_json(doc, output)
    click.echo(report.table(doc["summary"]))
    click.echo(f"\nresults written to {output}")
    if chart:
        from ..model_bench.chart import draw_chart  # matplotlib: loaded only when a chart is asked for

        draw_chart(doc["summary"], chart)
        click.echo(f"chart written to {chart}")
    if recommend:
        recs = report.recommend(doc["summary"])
        cloud_target = next((t for t in config.targets if config.target_is_cloud(t)), None)
        if not recs:
            click.echo("\nno recommendation: no target answered any task")
            return
        click.echo("\nrecommended targets by task type (best pass rate, then tokens/s, then TTFT):")
        for r in recs:
            rate = "-" if r.pass_rate is None else f"{r.pass_rate:.0%}"
            tps = "-" if r.tokens_per_s_median is None else f"{r.tokens_per_s_median:.1f} tok/s"
            if report.no_local_pass(r):
                verdict = f"{cloud_target} (cloud)" if cloud_target else "no rule"
                click.echo(f"  {r.task_type:<16} -> {verdict}  (no local target passed; best was {r.target} "
                           f"with pass {rate}: leave this task to the cloud)")
            else:
                click.echo(f"  {r.task_type:<16} -> {r.target}  (pass {rate}, {tps})")
        click.echo("\nconfig lines (place them in `rules:` above rules that would catch these tasks):")
        click.echo(report.rules_yaml(recs, cloud_target))
