"""The /mcp endpoint inside the router app (Starlette's TestClient, no network) keeps serving when
the same app is started again: the SDK's session manager runs only once, so each start needs its
own. (Keys, 401 and 405 on /mcp: tests/live/test_mcp_http.py, against a real router process.)"""

from __future__ import annotations

from pathlib import Path

from starlette.testclient import TestClient

from aibox_router.config_load import parse_config
from aibox_router.server import create_app

KEY = "sk-aibox-unit-mcp-0123456789"
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "unit", "version": "0"}}}
HEADERS = {"accept": "application/json, text/event-stream"}


def app(tmp_path: Path) -> TestClient:
    config = parse_config({
        "server": {"state_dir": str(tmp_path)},
        "backends": {"local": {"type": "openai", "base_url": "http://127.0.0.1:9/v1"}},
        "targets": {"small": {"backend": "local", "model": "m", "context_window": 4096}},
        "default_target": "small", "clients": [{"name": "unit", "key": KEY}], "gpu": {"enabled": False}})
    return TestClient(create_app(config=config))


def test_the_endpoint_serves_again_after_a_restart_of_the_app(tmp_path: Path) -> None:
    client = app(tmp_path)
    for _ in range(2):
        with client:
            answer = client.post("/mcp", json=INITIALIZE, headers={**HEADERS, "x-api-key": KEY})
            assert answer.status_code == 200, answer.text
            assert "aibox-local" in answer.text

