"""An upstream that rejects the router's own API key (401/403) is the router's problem, not the developer's.

The router runs as a real process against the Anthropic double (which checks x-api-key like the real
API) holding a different key than the router sends, the Ollama double as the local fallback, and a
loopback webhook receiver standing in for the operator's alert channel.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.doubles.fake_anthropic import FakeAnthropic
from tests.doubles.fake_ollama import FakeOllama
from tests.support.router_process import RouterProcess

CLIENT_KEY = "developer-key-0123456789"
HEADERS = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}
BODY = {"model": "claude-sonnet-4-5", "max_tokens": 32, "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
def webhook() -> Iterator[list[dict[str, Any]]]:
    bodies: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        bodies.append({"url": f"http://127.0.0.1:{server.server_address[1]}/hook"})
        yield bodies
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def router(tmp_path, webhook) -> Iterator[RouterProcess]:
    url = webhook.pop(0)["url"]
    with FakeAnthropic(api_key="the-key-anthropic-accepts") as cloud, FakeOllama(models=["qwen"]) as ollama:
        config = {
            "clients": [{"name": "dev", "key": CLIENT_KEY}],
            "backends": {"cloud": {"type": "anthropic", "base_url": cloud.url, "api_key_env": "TEST_ROUTER_KEY"},
                         "ollama": {"type": "ollama", "base_url": ollama.url}},
            "targets": {"claude": {"backend": "cloud", "model": "claude-sonnet-4-5", "fallback": ["local"]},
                        "claude-only": {"backend": "cloud", "model": "claude-sonnet-4-5"},
                        "local": {"backend": "ollama", "model": "qwen"}},
            "default_target": "claude",
            "prices": [{"prefix": "claude-sonnet-4", "input": 3.0, "output": 15.0}],
            "alerts": {"webhook": {"url": url}, "retry_backoff_s": 0.01},
            "gpu": {"enabled": False},
        }
        with RouterProcess(config, tmp_path, env={"TEST_ROUTER_KEY": "a-revoked-router-key"}) as proc:
            yield proc


def test_rejected_router_key_falls_back_marks_the_backend_down_and_alerts_once(router, webhook):
    for stream in (False, True):
        r = httpx.post(f"{router.url}/v1/messages", json={**BODY, "stream": stream}, headers=HEADERS, timeout=30)
        assert r.status_code == 200, r.text
        assert r.headers["x-aibox-target"] == "local" and r.headers["x-aibox-fallback"] == "true"

    ready = httpx.get(f"{router.url}/ready", timeout=30).json()
    assert ready["backends"]["cloud"]["reachable"] is False
    # /ready names no internals; why the backend is down is in the log, for the operator
    assert "rejected the router's own API key" in router.logs()
    assert ready["backends"]["ollama"]["reachable"] is True

    metrics = httpx.get(f"{router.url}/metrics", timeout=10).text
    assert 'aibox_router_backend_up{backend="cloud"} 0.0' in metrics
    assert 'aibox_router_backend_up{backend="ollama"} 1.0' in metrics
    assert 'aibox_router_backend_credentials_rejected{backend="cloud"} 1.0' in metrics

    deadline = time.monotonic() + 10
    while not webhook and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # a second alert, if one were (wrongly) sent, would arrive by now
    assert len(webhook) == 1, webhook
    assert webhook[0]["kind"] == "backend_credentials_rejected" and "'cloud'" in webhook[0]["title"]
    assert "a-revoked-router-key" not in router.logs()


@pytest.mark.parametrize("path,protocol", [("/v1/messages", "anthropic"), ("/v1/chat/completions", "openai")])
def test_with_no_fallback_the_client_gets_a_5xx_that_blames_the_router(router, path, protocol):
    body = ({**BODY, "model": "claude-only"} if protocol == "anthropic"
            else {"model": "claude-only", "messages": [{"role": "user", "content": "hello"}]})
    r = httpx.post(f"{router.url}{path}", json=body, headers=HEADERS, timeout=30)
    assert 500 <= r.status_code < 600
    error = r.json()["error"]
    assert error["type"] == ("api_error" if protocol == "anthropic" else "server_error")
    assert "router" in error["message"] and "not a problem with your key" in error["message"]
    assert "invalid x-api-key" not in error["message"]
