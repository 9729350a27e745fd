"""``aibox-router status``: one screen with the router, GPUs, backends, loaded models and today's budget.

The budget comes from the ledger in the state dir (the same file the daemon writes); where that
cannot be read (another user's state dir, no ledger yet) it comes from the running router's
``/metrics``.
"""

from __future__ import annotations

import asyncio
import json
import time
from decimal import Decimal
from typing import Any

import click
import httpx

from ..config import RouterConfig
from ..cost import BudgetLimits, CutoffState, SqliteLedger, day_of
from ..cost.budget_view import BudgetView, budget_view, summary
from ..gpu import GpuMonitor
from . import config_option
from .common import load_or_exit

_PROBE_TIMEOUT_S = 5.0


async def _router(url: str) -> dict[str, Any]:
    try:
        async with httpx.AsyncClient(timeout=_PROBE_TIMEOUT_S, trust_env=False) as client:
            r = await client.get(f"{url}/health")
        return {"url": url, "running": r.status_code == 200, "detail": f"HTTP {r.status_code}"}
    except httpx.HTTPError as e:
        return {"url": url, "running": False, "detail": f"{type(e).__name__}: {e}".rstrip(": ")}


async def _backend(name: str, config: RouterConfig) -> dict[str, Any]:
    from ..backends import create_backend  # the HTTP backends: loaded only when status runs

    bc = config.backends[name]
    info: dict[str, Any] = {"name": name, "type": bc.type, "url": bc.base_url, "cloud": bc.is_cloud}
    backend = create_backend(name, bc)
    try:
        try:
            ok, detail = await asyncio.wait_for(backend.health(), timeout=_PROBE_TIMEOUT_S)
        except Exception as e:  # noqa: BLE001 - a probe reports what went wrong, it does not fail
            ok, detail = False, f"{type(e).__name__}: {e}"
        info.update(reachable=ok, detail=detail)
        if ok and hasattr(backend, "loaded_models"):
            try:
                info["loaded"] = [{"name": m.get("name") or m.get("model"), "size_vram": m.get("size_vram"),
                                   "context_length": m.get("context_length"), "expires_at": m.get("expires_at")}
                                  for m in await backend.loaded_models()]
            except Exception as e:  # noqa: BLE001
                info["loaded_error"] = str(e)
    finally:
        await backend.aclose()
    return info


def _budget_from_ledger(config: RouterConfig) -> dict[str, Any]:
    ledger = SqliteLedger.in_state_dir(config.server.state_dir, create=False)
    try:
        view = budget_view(config, ledger, time.time())
        rows = ledger.rows(view.day, view.day)
    finally:
        ledger.close()
    return {
        "source": "ledger", **view.as_json(),
        "requests": len(rows), "local_requests": sum(1 for r in rows if not r.cloud),
        "cloud_requests": sum(1 for r in rows if r.cloud and r.status != "refused"),
        "refused": sum(1 for r in rows if r.status == "refused"),
        "energy_j": sum(r.energy_j or 0.0 for r in rows),
    }


async def _budget_from_metrics(url: str, config: RouterConfig) -> dict[str, Any]:
    # The metrics parser is needed only when the ledger cannot be read.
    from prometheus_client.parser import text_string_to_metric_families

    async with httpx.AsyncClient(timeout=_PROBE_TIMEOUT_S, trust_env=False) as client:
        # /metrics answers loopback without a key; elsewhere it needs server.metrics_token.
        token = config.server.metrics_token
        r = await client.get(f"{url}/metrics", headers={"authorization": f"Bearer {token}"} if token else None)
    r.raise_for_status()
    values = {s.name: s.value for fam in text_string_to_metric_families(r.text) for s in fam.samples}
    spend = values.get("aibox_router_spend_today_usd")
    if spend is None:
        raise ValueError("the router's /metrics has no aibox_router_spend_today_usd")
    limits = BudgetLimits.from_config(config)
    day = day_of(time.time(), limits.timezone)
    engaged = bool(values.get("aibox_router_cutoff_engaged", 0.0))
    view = BudgetView(day=day, timezone=config.budgets.timezone, spend=Decimal(str(spend)), limits=limits,
                      cutoff=CutoffState(engaged=engaged, day=day if engaged else ""))
    return {"source": f"{url}/metrics", **view.as_json()}


async def _budget(config: RouterConfig, url: str) -> dict[str, Any]:
    try:
        return await asyncio.to_thread(_budget_from_ledger, config)
    except Exception as ledger_error:  # noqa: BLE001 - fall back to the daemon, then report both reasons
        try:
            return await _budget_from_metrics(url, config)
        except Exception as metrics_error:  # noqa: BLE001
            return {"source": None, "error": f"ledger: {ledger_error}; metrics: {metrics_error}"}


def _gpu(config: RouterConfig) -> dict[str, Any]:
    monitor = GpuMonitor(config.gpu)
    try:
        snap = monitor.snapshot()
        return {"available": snap.available, "reason": snap.reason, "driver": snap.driver_version,
                "describe": monitor.describe(),
                "gpus": [{"index": g.index, "name": g.name, "utilization_pct": g.utilization_pct,
                          "memory_used_bytes": g.memory_used_bytes, "memory_total_bytes": g.memory_total_bytes,
                          "temperature_c": g.temperature_c, "power_w": g.power_w} for g in snap.gpus]}
    finally:
        monitor.close()


async def gather_status(config: RouterConfig, url: str) -> dict[str, Any]:
    router, budget, gpu, *backends = await asyncio.gather(
        _router(url), _budget(config, url), asyncio.to_thread(_gpu, config),
        *(_backend(name, config) for name in config.backends))
    return {"router": router, "gpu": gpu, "backends": backends, "budget": budget}


def _gib(n: int | None) -> str:
    return "?" if n is None else f"{n / 1024**3:.1f} GiB"


def render(status: dict[str, Any]) -> str:
    lines: list[str] = []
    r = status["router"]
    lines.append(f"router   {'running' if r['running'] else 'NOT RUNNING'} at {r['url']}"
                 + ("" if r["running"] else f" ({r['detail']})"))
    gpu = status["gpu"]
    gpu_lines = gpu["describe"].splitlines() or ["no GPU"]
    lines.append(f"gpu      {gpu_lines[0]}")
    lines += [f"         {line}" for line in gpu_lines[1:]]
    lines.append("backends")
    for b in status["backends"]:
        state = "ok  " if b["reachable"] else "DOWN"
        kind = f"{b['type']}{', cloud' if b['cloud'] else ''}"
        lines.append(f"  {state} {b['name']} ({kind}) {b['url']}: {b['detail']}")
        for m in b.get("loaded", []):
            ctx = f", ctx {m['context_length']}" if m.get("context_length") else ""
            until = f", until {m['expires_at']}" if m.get("expires_at") else ""
            lines.append(f"         loaded: {m['name']} ({_gib(m.get('size_vram'))} VRAM{ctx}{until})")
        if b["reachable"] and "loaded" in b and not b["loaded"]:
            lines.append("         loaded: none")
    bud = status["budget"]
    if bud.get("source") is None:
        lines.append(f"budget   unknown ({bud.get('error')})")
    else:
        lines.append(f"budget   today {bud['day']} ({bud['timezone']}): {summary(bud)}")
        reason = bud["cutoff"]["reason"]
        cutoff = "ENGAGED: cloud calls refused" + (f" ({reason})" if reason else "")
        lines.append(f"cutoff   {cutoff if bud['cutoff']['engaged'] else 'not engaged'}")
        if "requests" in bud:
            energy = f", GPU energy {bud['energy_j'] / 3.6e6:.3f} kWh" if bud.get("energy_j") else ""
            lines.append(f"requests {bud['requests']} today: {bud['local_requests']} local, "
                         f"{bud['cloud_requests']} cloud, {bud['refused']} refused{energy}")
        if bud["source"] != "ledger":
            lines.append(f"         (from {bud['source']})")
    return "\n".join(lines)


def router_url(config: RouterConfig) -> str:
    """Where the router listens according to its config; a wildcard address is probed on loopback."""
    host = config.server.host
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.server.port}"


# Exit statuses, so cron and monitoring can act on `status` alone.
EXIT_OK, EXIT_ROUTER_DOWN, EXIT_ALL_BACKENDS_DOWN = 0, 3, 4


def exit_status(result: dict[str, Any]) -> int:
    if not result["router"]["running"]:
        return EXIT_ROUTER_DOWN
    if result["backends"] and not any(b["reachable"] for b in result["backends"]):
        return EXIT_ALL_BACKENDS_DOWN
    return EXIT_OK


@click.command()
@config_option
@click.option("--url", default=None,
              help="The running router (default: server.host and server.port from the config; 0.0.0.0 is "
                   "probed on 127.0.0.1).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def status(config_path: str | None, url: str | None, as_json: bool) -> None:
    """Show the router, GPUs, backend health, loaded Ollama models and today's budget on one screen.

    Exit status: 0 when the router runs and at least one backend answers, 3 when the router is not
    running, 4 when it runs but no backend answers (for cron and monitoring).
    """
    config = load_or_exit(config_path)
    url = (url or router_url(config)).rstrip("/")
    result = asyncio.run(gather_status(config, url))
    click.echo(json.dumps(result, indent=2, default=str) if as_json else render(result))
    code = exit_status(result)
    if code != EXIT_OK and not as_json:
        click.echo("status: " + ("the router is not running" if code == EXIT_ROUTER_DOWN
                                 else "no backend answers: every request will fail"), err=True)
    raise SystemExit(code)
