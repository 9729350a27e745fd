"""The MCP server end to end: the official ``mcp`` SDK client drives ``python -m aibox_router mcp``
over stdio, and ask_local is answered by a REAL local model (llama-cpp-python serving SmolLM2-135M).

Provisioned by scripts/ensure-local-model; the server is the session fixture ``llama_url``
(tests/conftest.py). Skipped only when AIBOX_SKIP_LOCAL_MODEL=1; when the
model is missing otherwise the tests fail and say how to provision it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from mcp import Client, StdioServerParameters

from aibox_router.cost import SqliteLedger


@pytest.fixture(scope="module")
def router_config(llama_url: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mcp")
    state = root / "state"
    state.mkdir()
    # What `aibox-router bench` leaves in the state dir; list_local_models must surface it.
    (state / "model_performance.json").write_text(json.dumps({
        "version": 1, "generated_at": "2026-01-01T00:00:00+00:00",
        "summary": {"small": {"model": "smollm2", "runs": 5, "pass_rate": 0.4, "tokens_per_s_median": 41.5,
                              "ttft_ms_median": 820.0, "total_ms_median": 3100.0}}}))
    config = {
        "server": {"state_dir": str(state), "log_level": "warning"},
        "backends": {
            "llama": {"type": "openai", "base_url": llama_url, "read_timeout_s": 240},
            # Never contacted: ask_local must not use the cloud even when a rule picks it.
            "cloud": {"type": "anthropic", "base_url": "http://127.0.0.1:9", "api_key_env": "AIBOX_TEST_NO_KEY"},
        },
        "targets": {
            "small": {"backend": "llama", "model": "smollm2", "max_output_tokens": 32},
            "claude": {"backend": "cloud", "model": "claude-sonnet-4-6", "fallback": ["small"]},
        },
        "rules": [
            {"name": "explain-in-cloud", "when": 'task == "explanation"', "target": "claude"},
            {"name": "coding", "when": 'task in ("code_generation", "debugging")', "target": "small"},
        ],
        "default_target": "small",
        "budgets": {"timezone": "UTC"},
        "prices": [{"prefix": "claude-sonnet-4", "input": 3.0, "output": 15.0}],
        "gpu": {"enabled": False},
    }
    path = root / "config.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def _server(config: Path) -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=["-m", "aibox_router", "mcp", "-c", str(config)],
                                 cwd=str(config.parent), env={"NO_PROXY": "127.0.0.1,localhost"})


def _text(result: Any) -> str:
    assert not result.is_error, result
    return "".join(getattr(block, "text", "") for block in result.content)


async def test_tools_over_stdio(router_config: Path) -> None:
    async with Client(_server(router_config), read_timeout_seconds=240) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert names == {"ask_local", "list_local_models", "usage_report"}

        coded = _text(await client.call_tool("ask_local", {
            "task_type": "code_generation", "prompt": "Write a Python function that adds two numbers.",
            "max_tokens": 32}))
        answer, _, footer = coded.rpartition("\n---\n")
        assert answer.strip(), coded
        assert "local model smollm2" in footer and "target small" in footer and "rule coding" in footer

        # The rules send explanations to the cloud; ask_local takes the cloud target's local fallback.
        explained = _text(await client.call_tool("ask_local", {
            "task_type": "explanation", "prompt": "Explain what a list is in Python.", "max_tokens": 16}))
        assert "local model smollm2" in explained and "rule mcp-local" in explained

        bad = await client.call_tool("ask_local", {"task_type": "poetry", "prompt": "x"})
        assert bad.is_error and "task_type must be one of" in "".join(b.text for b in bad.content)

        models = json.loads(_text(await client.call_tool("list_local_models", {})))
        (small,) = models["targets"]
        assert small["target"] == "small" and small["model"] == "smollm2" and small["reachable"] is True
        assert small["benchmark"]["tokens_per_s_median"] == 41.5

        usage = json.loads(_text(await client.call_tool("usage_report", {})))
        assert usage["mcp_requests"] == 2 and usage["served_locally"] == 2
        assert usage["by_target"]["small"]["requests"] == 2
        assert usage["spend_usd"] == "0.000000" and usage["cutoff"]["engaged"] is False

    ledger = SqliteLedger.in_state_dir(yaml.safe_load(router_config.read_text())["server"]["state_dir"],
                                       create=False)
    try:
        rows = ledger.rows("0000-01-01", "9999-12-31")
    finally:
        ledger.close()
    assert [(r.protocol, r.target, r.model, r.cloud, r.status) for r in rows] == [
        ("mcp", "small", "smollm2", False, "ok")] * 2
    assert {r.task for r in rows} == {"code_generation", "explanation"}
    assert all(r.output_tokens > 0 for r in rows)
