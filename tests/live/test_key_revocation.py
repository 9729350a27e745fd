"""Revoking a client key: remove the client from the config, SIGHUP the real router process, and
the key is refused (401) on its next request, on the API and on /mcp, also inside an MCP session
opened before the reload. Prints how long after the SIGHUP the key was first refused (the
benchmark benchmarks/key_revocation.py repeats the measurement)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.support.router_process import RouterProcess
from tests.support.silent_backend import SilentBackend

ALICE_KEY = "sk-aibox-alice-revocation-1"
BOB_KEY = "sk-aibox-bob-revocation-2"
_LIST_TOOLS = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
_MCP_HEADERS = {"accept": "application/json, text/event-stream", "mcp-protocol-version": "2025-06-18"}


def config(backend_url: str, clients: list[dict[str, Any]]) -> dict[str, Any]:
    return {"backends": {"local": {"type": "openai", "base_url": backend_url, "connect_timeout_s": 1}},
            "targets": {"small": {"backend": "local", "model": "m"}},
            "default_target": "small", "clients": clients, "gpu": {"enabled": False},
            "server": {"log_level": "info"}}


def both(backend_url: str) -> dict[str, Any]:
    return config(backend_url, [{"name": "alice", "key": ALICE_KEY}, {"name": "bob", "key": BOB_KEY}])


def first_refusal(router: RouterProcess, key: str, since: float,
                  timeout_s: float = 15) -> tuple[float, float]:
    """Seconds from *since* until *key* is refused on /v1/models and on /mcp (polled every 10 ms)."""
    api = mcp = None
    deadline = since + timeout_s
    with httpx.Client(base_url=router.url, headers={"Authorization": f"Bearer {key}"}, timeout=5) as http:
        while (api is None or mcp is None) and time.monotonic() < deadline:
            if api is None and http.get("/v1/models").status_code == 401:
                api = time.monotonic() - since
            if mcp is None and http.post("/mcp", json=_LIST_TOOLS, headers=_MCP_HEADERS).status_code == 401:
                mcp = time.monotonic() - since
            time.sleep(0.01)
    assert api is not None and mcp is not None, f"not refused within {timeout_s} s:\n{router.logs()[-3000:]}"
    return api, mcp


def status_of(router: RouterProcess, key: str) -> int:
    """The status of an authenticated API request with *key* (blocking: the router is another process)."""
    return httpx.get(f"{router.url}/v1/models", headers={"x-api-key": key}).status_code


def sdk_client(router: RouterProcess, key: str) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"})
    return Client(streamable_http_client(f"{router.url}/mcp", http_client=http))


@pytest.fixture
def hung_backend() -> Any:
    with SilentBackend() as hung:
        yield hung


async def test_removed_client_is_refused_after_sighup(tmp_path: Path, hung_backend: SilentBackend,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    # A backend that never answers: the reload's context-window probe of it waits its full
    # timeout, which revocation must not wait for.
    with RouterProcess(both(hung_backend.url), tmp_path) as router:
        async with sdk_client(router, BOB_KEY) as bob, sdk_client(router, ALICE_KEY) as alice:
            assert len((await bob.list_tools()).tools) == 3
            assert status_of(router, BOB_KEY) == 200

            router.write_config(config(hung_backend.url, [{"name": "alice", "key": ALICE_KEY}]))
            sighup = time.monotonic()
            router.reload()
            api_s, mcp_s = first_refusal(router, BOB_KEY, sighup)

            with pytest.raises(MCPError, match="Invalid API key"):  # the session opened before the reload
                await bob.list_tools()
            assert len((await alice.list_tools()).tools) == 3
        router.wait_for_log("config reloaded")
        assert status_of(router, ALICE_KEY) == 200 and status_of(router, BOB_KEY) == 401
    with capsys.disabled():
        print(f"\n[revocation] SIGHUP -> key refused: API {api_s * 1000:.0f} ms, /mcp {mcp_s * 1000:.0f} ms "
              "(with a backend that never answers the reload's probe)")


def test_added_client_waits_for_the_whole_reload(tmp_path: Path) -> None:
    """A key the new config adds is accepted once the reload completes, not refused forever."""
    alice_only = config("http://127.0.0.1:9/v1", [{"name": "alice", "key": ALICE_KEY}])
    with RouterProcess(alice_only, tmp_path) as router:
        assert httpx.get(f"{router.url}/v1/models", headers={"x-api-key": BOB_KEY}).status_code == 401
        router.write_config(both("http://127.0.0.1:9/v1"))
        router.reload()
        router.wait_for_log("config reloaded")
        assert httpx.get(f"{router.url}/v1/models", headers={"x-api-key": BOB_KEY}).status_code == 200
        answer = httpx.post(f"{router.url}/mcp", json=_LIST_TOOLS,
                            headers={**_MCP_HEADERS, "x-api-key": BOB_KEY})
        assert answer.status_code == 200, answer.text
