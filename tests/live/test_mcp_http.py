"""The MCP tools over the network: a real router process serves them at ``/mcp`` (Streamable HTTP),
driven by the official ``mcp`` SDK client and by the plain JSON-RPC exchange Claude Code's
``--transport http`` registration makes; ask_local is answered by the REAL local model (llama.cpp
serving SmolLM2-135M, the session fixture ``llama_url``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from aibox_router.cost import SqliteLedger
from tests.support.router_process import RouterProcess

ALICE_KEY = "sk-aibox-alice-5b1e0c8d2f"
BOB_KEY = "sk-aibox-bob-9a7c3e11d4"  # bob may use the cloud target only
# What a registration with --header "Authorization: Bearer KEY" sends, as Claude Code speaks it.
LEGACY_VERSION = "2025-06-18"
_ACCEPT = "application/json, text/event-stream"


def router_config(llama_url: str) -> dict[str, Any]:
    return {
        "backends": {
            "llama": {"type": "openai", "base_url": llama_url, "read_timeout_s": 240},
            # Never contacted: ask_local does not use the cloud.
            "cloud": {"type": "anthropic", "base_url": "http://127.0.0.1:9",
                      "api_key_env": "AIBOX_TEST_NO_KEY"},
        },
        "targets": {
            "small": {"backend": "llama", "model": "smollm2", "max_output_tokens": 32},
            "claude": {"backend": "cloud", "model": "claude-sonnet-4-6", "fallback": ["small"]},
        },
        "rules": [{"name": "coding", "when": 'task in ("code_generation", "debugging")', "target": "small"}],
        "default_target": "small",
        "clients": [{"name": "alice", "key": ALICE_KEY},
                    {"name": "bob", "key": BOB_KEY, "targets": ["claude"]}],
        "budgets": {"timezone": "UTC"},
        "gpu": {"enabled": False},
        "server": {"log_level": "info"},
    }


@pytest.fixture(scope="module")
def router(llama_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    with RouterProcess(router_config(llama_url), tmp_path_factory.mktemp("mcp-http")) as process:
        yield process


def sdk_client(router: RouterProcess, headers: dict[str, str]) -> Client:
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(240))
    return Client(streamable_http_client(f"{router.url}/mcp", http_client=http), read_timeout_seconds=240)


def _text(result: Any) -> str:
    assert not result.is_error, result
    return "".join(getattr(block, "text", "") for block in result.content)


def ledger_rows(router: RouterProcess) -> list[Any]:
    ledger = SqliteLedger.in_state_dir(router.workdir / "state", create=False)
    try:
        return ledger.rows("0000-01-01", "9999-12-31")
    finally:
        ledger.close()


async def test_sdk_client_calls_the_tools_as_its_client(router: RouterProcess) -> None:
    async with sdk_client(router, {"Authorization": f"Bearer {ALICE_KEY}"}) as client:
        assert {t.name for t in (await client.list_tools()).tools} == {"ask_local", "list_local_models",
                                                                        "usage_report"}
        coded = _text(await client.call_tool("ask_local", {
            "task_type": "code_generation", "prompt": "Write a Python function that adds two numbers.",
            "max_tokens": 24}))
        answer, _, footer = coded.rpartition("\n---\n")
        assert answer.strip() and "local model smollm2" in footer and "rule coding" in footer, coded
        usage = json.loads(_text(await client.call_tool("usage_report", {})))
        assert usage["caller"]["client"] == "alice" and usage["caller"]["requests"] >= 1

    rows = [r for r in ledger_rows(router) if r.client == "alice"]
    assert [(r.protocol, r.target, r.model, r.cloud, r.status) for r in rows] == [
        ("mcp", "small", "smollm2", False, "ok")]
    assert rows[0].task == "code_generation" and rows[0].output_tokens > 0


async def test_x_api_key_header_and_the_clients_targets(router: RouterProcess) -> None:
    async with sdk_client(router, {"x-api-key": BOB_KEY}) as client:
        models = json.loads(_text(await client.call_tool("list_local_models", {})))
        assert models["targets"] == []  # bob's targets list names no local target
        refused = await client.call_tool("ask_local", {"task_type": "debugging",
                                                       "prompt": "Why does x fail?"})
        message = "".join(b.text for b in refused.content)
        assert refused.is_error and "may use only the targets claude" in message, message
    assert not [r for r in ledger_rows(router) if r.client == "bob" and r.status == "ok"]


async def test_sdk_client_without_a_valid_key_is_refused(router: RouterProcess) -> None:
    for headers in ({}, {"Authorization": "Bearer sk-not-a-client-key"}):
        with pytest.raises(ExceptionGroup) as refused:  # the SDK raises from its task group
            async with sdk_client(router, headers) as client:
                await client.list_tools()
        assert "MCPError" in _flatten(refused.value) and "API key" in _flatten(refused.value), \
            _flatten(refused.value)


def test_whoami_names_the_keys_own_targets(router: RouterProcess) -> None:
    bob = httpx.get(f"{router.url}/aibox/whoami", headers={"x-api-key": BOB_KEY})
    assert bob.status_code == 200 and bob.json() == {
        "client": "bob", "targets": [{"name": "claude", "model": "claude-sonnet-4-6", "cloud": True}],
        "default_target": None, "override_header": "x-aibox-target", "daily_budget_usd": None,
        "mcp_path": "/mcp"}
    alice = httpx.get(f"{router.url}/aibox/whoami", headers={"Authorization": f"Bearer {ALICE_KEY}"}).json()
    assert [t["name"] for t in alice["targets"]] == ["small", "claude"] and alice["default_target"] == "small"
    refused = httpx.get(f"{router.url}/aibox/whoami")
    assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"


def _flatten(exc: BaseException) -> str:
    parts = [f"{type(exc).__name__}: {exc}"]
    for inner in getattr(exc, "exceptions", ()):
        parts.append(_flatten(inner))
    return "\n".join(parts)


def test_plain_requests_get_401_and_405_in_json(router: RouterProcess) -> None:
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                  "params": {"protocolVersion": LEGACY_VERSION, "capabilities": {},
                             "clientInfo": {"name": "probe", "version": "0"}}}
    for headers, expected in (({}, "Missing API key"), ({"x-api-key": "sk-wrong"}, "Invalid API key"),
                              ({"Authorization": "Bearer sk-wrong"}, "Invalid API key")):
        answer = httpx.post(f"{router.url}/mcp", json=initialize, headers={"accept": _ACCEPT, **headers})
        assert answer.status_code == 401, answer.text
        assert answer.headers["content-type"] == "application/json"
        error = answer.json()["error"]
        assert expected in error["message"] and error["data"]["type"] == "authentication_error"
    stream = httpx.get(f"{router.url}/mcp", headers={"accept": "text/event-stream",
                                                     "Authorization": f"Bearer {ALICE_KEY}"})
    assert stream.status_code == 405 and stream.headers["allow"] == "POST, DELETE"


def test_the_exchange_claude_code_makes(router: RouterProcess) -> None:
    """The JSON-RPC that a `claude mcp add --transport http ... --header "Authorization: Bearer KEY"`
    registration sends: initialize, the initialized notification, tools/list, tools/call."""
    headers = {"accept": _ACCEPT, "content-type": "application/json", "Authorization": f"Bearer {ALICE_KEY}"}
    with httpx.Client(base_url=router.url, headers=headers, timeout=240) as http:
        init = http.post("/mcp", json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": LEGACY_VERSION, "capabilities": {}, "clientInfo": {"name": "claude-code",
                                                                                  "version": "2"}}})
        assert init.status_code == 200, init.text
        result = _rpc_result(init)
        assert result["protocolVersion"] == LEGACY_VERSION and result["serverInfo"]["name"] == "aibox-local"
        session = {"mcp-protocol-version": LEGACY_VERSION}
        if "mcp-session-id" in init.headers:
            session["mcp-session-id"] = init.headers["mcp-session-id"]
        done = http.post("/mcp", headers=session,
                         json={"jsonrpc": "2.0", "method": "notifications/initialized"})
        assert done.status_code == 202, done.text
        listed = _rpc_result(http.post("/mcp", headers=session,
                                       json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        assert {t["name"] for t in listed["tools"]} == {"ask_local", "list_local_models", "usage_report"}
        called = _rpc_result(http.post("/mcp", headers=session, json={
            "jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "list_local_models", "arguments": {}}}))
        assert not called.get("isError") and "smollm2" in called["content"][0]["text"]


def _rpc_result(response: httpx.Response) -> dict[str, Any]:
    """The result of a JSON-RPC answer sent as JSON or as an SSE stream (the transport's choice)."""
    assert response.status_code == 200, response.text
    if response.headers["content-type"].startswith("text/event-stream"):
        data = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
        message = json.loads(data[-1])
    else:
        message = response.json()
    assert "result" in message, message
    result: dict[str, Any] = message["result"]
    return result


def test_open_mode_follows_the_api(llama_url: str, tmp_path: Path) -> None:
    """No clients in the config: the API takes requests without a key, and so does /mcp (as "anonymous")."""
    config = router_config(llama_url)
    del config["clients"]
    with RouterProcess(config, tmp_path) as router:
        assert httpx.get(f"{router.url}/v1/models").status_code == 200
        answer = httpx.post(f"{router.url}/mcp", headers={"accept": _ACCEPT}, json={
            "jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": LEGACY_VERSION, "capabilities": {},
                "clientInfo": {"name": "t", "version": "0"}}})
        assert _rpc_result(answer)["serverInfo"]["name"] == "aibox-local"
