"""``aibox-router status`` against an Ollama double (loaded models), an unreachable backend and router,
and a real ledger file in a temporary state dir."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import yaml
from click.testing import CliRunner

from aibox_router.cli import main
from aibox_router.cost import CutoffState, LedgerRow, SqliteLedger, day_of
from tests.doubles.fake_ollama import FakeOllama, absent_url


def _config(tmp_path: Path, ollama_url: str) -> Path:
    cfg = {
        "server": {"state_dir": str(tmp_path / "state"), "port": 8088},
        "backends": {"ollama": {"type": "ollama", "base_url": ollama_url},
                     "spare": {"type": "openai", "base_url": absent_url() + "/v1"}},
        "targets": {"coder": {"backend": "ollama", "model": "qwen2.5-coder:7b"},
                    "other": {"backend": "spare", "model": "m"}},
        "default_target": "coder",
        "budgets": {"timezone": "Europe/Berlin", "daily_budget": 10, "alert_threshold": 8, "emergency_cutoff": 12},
        "gpu": {"enabled": False},
    }
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _ledger_with_spend(state_dir: Path) -> None:
    day = day_of(time.time(), ZoneInfo("Europe/Berlin"))
    ledger = SqliteLedger.in_state_dir(state_dir)
    try:
        common = {"ts": time.time(), "day": day, "client": "cc", "rule": "r", "protocol": "anthropic",
                  "stream": True}
        ledger.insert(LedgerRow(**common, target="claude", backend="cloud", model="claude-sonnet-4-6", cloud=True,
                                cost_usd=Decimal("2.5")))
        ledger.insert(LedgerRow(**common, target="coder", backend="ollama", model="qwen2.5-coder:7b", cloud=False,
                                energy_j=7200.0))
        ledger.set_cutoff(CutoffState(engaged=True, day=day, reason="runaway agent", by="ops", ts=time.time()))
    finally:
        ledger.close()


def test_status_screen(tmp_path: Path):
    with FakeOllama(["qwen2.5-coder:7b"]) as ollama:
        ollama.reply_text("hi")  # a chat loads the model, so /api/ps lists it
        httpx.post(f"{ollama.url}/api/chat", json={"model": "qwen2.5-coder:7b", "stream": False,
                                                   "messages": [{"role": "user", "content": "x"}]})
        config = _config(tmp_path, ollama.url)
        _ledger_with_spend(tmp_path / "state")
        result = CliRunner().invoke(main, ["status", "-c", str(config), "--url", absent_url()])
    assert result.exit_code == 3, result.output  # the router is not running: monitoring must see it
    out = result.output
    assert "router   NOT RUNNING at http://127.0.0.1:" in out
    assert "gpu      no GPU (GPU monitoring disabled in config" in out
    assert "ok   ollama (ollama)" in out and "ollama 0.12.6" in out
    assert "loaded: qwen2.5-coder:7b (4.7 GiB VRAM" in out
    assert "DOWN spare (openai)" in out
    assert "$2.50 of $10.00 (25%) spent, $7.50 left; alert at $8.00, cutoff at $12.00" in out
    assert "cutoff   ENGAGED: cloud calls refused (runaway agent)" in out
    assert "requests 2 today: 1 local, 1 cloud, 0 refused, GPU energy 0.002 kWh" in out


def test_status_json_without_ledger_or_router(tmp_path: Path):
    config = _config(tmp_path, absent_url())
    result = CliRunner().invoke(main, ["status", "-c", str(config), "--url", absent_url(), "--json"])
    assert result.exit_code == 3, result.output
    data = json.loads(result.output)
    assert data["router"]["running"] is False
    assert [b["reachable"] for b in data["backends"]] == [False, False]
    assert data["budget"]["source"] is None and "no ledger" in data["budget"]["error"]
    assert data["gpu"]["available"] is False
    assert not (tmp_path / "state").exists()  # status only reads; it never creates a ledger


def test_status_probes_the_configured_address_and_exits_by_what_is_down(tmp_path: Path):
    from aibox_router.cli.status import router_url
    from aibox_router.config_load import load_config
    from tests.support.router_process import RouterProcess

    with FakeOllama(["qwen2.5-coder:7b"]) as ollama:
        cfg = yaml.safe_load(_config(tmp_path, ollama.url).read_text())
        cfg["server"]["state_dir"] = str(tmp_path / "router-state")
        with RouterProcess(cfg, tmp_path) as router:
            config = load_config(router.config_path)
            assert router_url(config) == router.url  # server.host/port, not a hard-coded loopback
            result = CliRunner().invoke(main, ["status", "-c", str(router.config_path)])
            assert result.exit_code == 0, result.output
            assert f"router   running at {router.url}" in result.output
        # The router still runs on the same address in the next block; its only backend is now down.
        cfg["backends"] = {"ollama": {"type": "ollama", "base_url": absent_url()}}
        cfg["targets"] = {"coder": {"backend": "ollama", "model": "m"}}
        with RouterProcess(cfg, tmp_path) as router:
            result = CliRunner().invoke(main, ["status", "-c", str(router.config_path)])
            assert result.exit_code == 4, result.output
            assert "no backend answers" in result.stderr


def test_router_url_maps_wildcard_addresses_to_loopback(tmp_path: Path):
    from aibox_router.cli.status import router_url
    from aibox_router.config_load import parse_config

    def url(host: str) -> str:
        return router_url(parse_config({"server": {"host": host, "port": 9000}, "backends": {}, "targets": {},
                                        "default_target": "x"} | _minimal_targets(), "t", env={}))

    assert url("0.0.0.0") == "http://127.0.0.1:9000"
    assert url("::") == "http://[::1]:9000"
    assert url("192.168.10.88") == "http://192.168.10.88:9000"


def _minimal_targets() -> dict:
    return {"backends": {"o": {"type": "ollama", "base_url": "http://127.0.0.1:1"}},
            "targets": {"x": {"backend": "o", "model": "m"}}}
