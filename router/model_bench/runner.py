"""Run benchmark tasks against targets through the router's own backend adapters.

Each run streams, so the figures are what a client of the router would see:

* ``ttft_ms``: request sent -> first text (or tool/thinking) delta;
* ``total_ms``: request sent -> end of stream;
* ``tokens_per_s``: output tokens / generation time (first delta -> end of stream), using the
  backend's token count (estimated from characters where it reports none; ``usage_estimated``).

Benchmarks bypass rules, budgets and the ledger: they measure models, they are not traffic.
Targets run one after another, each task in turn, so a local server keeps one model loaded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..backends import Backend, BackendUnavailable, create_backend
from ..config import RouterConfig, TargetConfig
from ..errors import RouterError
from ..gpu import GpuMonitor, energy_between
from ..internal import CallContext, StreamEvent
from ..targets import prepare_for_target
from .suite import BenchTask

Progress = Callable[["BenchRun", int, int], None]


@dataclass
class BenchRun:
    target: str
    backend: str
    model: str
    task: str
    task_type: str
    repeat: int
    ok: bool = False  # an answer arrived without error
    error: str = ""
    ttft_ms: float | None = None
    total_ms: float = 0.0
    generation_ms: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    usage_estimated: bool = False
    tokens_per_s: float | None = None
    passed: bool | None = None  # None: the task has no check (or no answer to check)
    check_detail: str = ""
    answer_chars: int = 0
    answer_preview: str = ""
    energy_j: float | None = None  # GPU energy during the run (NVML counter), None without a GPU

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def local_targets(config: RouterConfig) -> list[str]:
    return [name for name in config.targets if not config.target_is_cloud(name)]


def _prepared(task: BenchTask, target: TargetConfig) -> dict[str, Any]:
    return prepare_for_target(task.request(target.model), target)


def _delta_text(event: StreamEvent) -> str | None:
    if event.get("type") != "content_block_delta":
        return None
    delta = event.get("delta") or {}
    return str(delta.get("text") or delta.get("partial_json") or delta.get("thinking") or "")


async def _consume(backend: Backend, request: dict[str, Any], target: TargetConfig, ctx: CallContext,
                   run: BenchRun, started: float) -> tuple[str, float | None]:
    """Stream one answer; return its text and the perf_counter time of the first delta."""
    parts: list[str] = []
    first: float | None = None
    async for event in backend.stream(request, target, ctx):
        text = _delta_text(event)
        if text is not None:
            if first is None:
                first = time.perf_counter()
                run.ttft_ms = (first - started) * 1000
            parts.append(text)
        elif event.get("type") == "error":
            raise RouterError(str((event.get("error") or {}).get("message", "error event in the stream")))
    return "".join(parts), first


async def measure(backend: Backend, target_name: str, target: TargetConfig, task: BenchTask, repeat: int,
                  gpu: GpuMonitor | None = None) -> BenchRun:
    """One task on one target: timings, tokens, the check verdict. Never raises for a model failure."""
    run = BenchRun(target=target_name, backend=backend.name, model=target.model, task=task.name,
                   task_type=task.type, repeat=repeat)
    ctx = CallContext()
    energy0 = gpu.energy_joules() if gpu is not None else None
    started = time.perf_counter()
    answer, first = "", None
    try:
        answer, first = await asyncio.wait_for(_consume(backend, _prepared(task, target), target, ctx, run, started),
                                               timeout=task.timeout_s)
        run.ok = bool(answer.strip())
        if not run.ok:
            run.error = "empty answer"
    except TimeoutError:
        run.error = f"timed out after {task.timeout_s:.0f}s"
    except BackendUnavailable as e:
        run.error = f"unavailable: {e.reason}"
    except RouterError as e:
        run.error = e.message
    except Exception as e:  # noqa: BLE001 - a broken adapter is a result to report, not a crash
        run.error = f"{type(e).__name__}: {e}"
    end = time.perf_counter()
    run.total_ms = (end - started) * 1000
    run.energy_j = energy_between(energy0, gpu.energy_joules() if gpu is not None else None)
    usage = ctx.usage
    run.input_tokens = usage.input_tokens
    run.output_tokens = usage.output_tokens
    run.usage_estimated = usage.estimated
    if run.output_tokens == 0 and answer:
        run.output_tokens, run.usage_estimated = max(1, len(answer) // 4), True
    if first is not None:
        run.generation_ms = (end - first) * 1000
        if run.generation_ms > 0 and run.output_tokens:
            run.tokens_per_s = run.output_tokens / (run.generation_ms / 1000)
    run.answer_chars = len(answer)
    run.answer_preview = answer[:400]
    if task.check is not None and run.ok:
        result = await asyncio.to_thread(task.check.evaluate, answer)
        run.passed, run.check_detail = result.passed, result.detail
    elif task.check is not None:
        run.passed, run.check_detail = False, "no answer"
    return run


async def _warm_up(backend: Backend, target: TargetConfig) -> None:
    """Load the model before timing it (a cold load is not what routed requests see)."""
    req = {"model": target.model, "max_tokens": 1, "stream": True,
           "messages": [{"role": "user", "content": "Hi"}]}
    try:
        await asyncio.wait_for(_drain(backend.stream(req, target, CallContext())), timeout=600)
    except Exception:  # noqa: BLE001, S110 - the measured runs report the failure properly
        pass


async def _drain(events: Any) -> None:
    async for _ in events:
        pass


async def run_bench(config: RouterConfig, tasks: Sequence[BenchTask], targets: Sequence[str], *,
                    repeat: int = 1, progress: Progress | None = None, gpu: GpuMonitor | None = None,
                    warm_up: bool = True) -> list[BenchRun]:
    """Every task x every target x *repeat*; *progress(run, done, total)* after each run."""
    unknown = [t for t in targets if t not in config.targets]
    if unknown:
        raise ValueError(f"unknown target(s) {unknown}; configured: {sorted(config.targets)}")
    backends: dict[str, Backend] = {}
    runs: list[BenchRun] = []
    total = len(tasks) * len(targets) * repeat
    try:
        for target_name in targets:
            target = config.targets[target_name]
            if target.backend not in backends:
                backends[target.backend] = create_backend(target.backend, config.backends[target.backend])
            backend = backends[target.backend]
            if warm_up:
                await _warm_up(backend, target)
            for task in tasks:
                for i in range(1, repeat + 1):
                    run = await measure(backend, target_name, target, task, i, gpu)
                    runs.append(run)
                    if progress is not None:
                        progress(run, len(runs), total)
    finally:
        for backend in backends.values():
            await backend.aclose()
    return runs
