"""Nothing is dropped silently: an ignored override header, a downgrade and a refusal each leave their
reason in the router's log line, and a client-budget refusal says what it is (not "the cutoff").

The router runs as a real process; the Anthropic double and the Ollama double are its backends.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.doubles.fake_anthropic import FakeAnthropic
from tests.doubles.fake_ollama import FakeOllama
from tests.support.router_process import RouterProcess

KEY = "developer-key-0123456789"
HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
BODY = {"model": "claude-sonnet-4-5", "max_tokens": 32, "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture(scope="module")
def router(tmp_path_factory) -> Iterator[RouterProcess]:
    with FakeAnthropic() as cloud, FakeOllama(models=["qwen"]) as ollama:
        config = {
            # A zero client budget: every cloud request of this client is refused by its own budget.
            "clients": [{"name": "dev", "key": KEY, "daily_budget": 0.0}],
            "backends": {"cloud": {"type": "anthropic", "base_url": cloud.url, "api_key_env": "TEST_ROUTER_KEY"},
                         "ollama": {"type": "ollama", "base_url": ollama.url}},
            "targets": {"claude": {"backend": "cloud", "model": "claude-sonnet-4-5", "fallback": ["local"]},
                        "claude-only": {"backend": "cloud", "model": "claude-sonnet-4-5"},
                        "local": {"backend": "ollama", "model": "qwen"}},
            "default_target": "local",
            "prices": [{"prefix": "claude-sonnet-4", "input": 3.0, "output": 15.0}],
            "gpu": {"enabled": False},
        }
        with RouterProcess(config, tmp_path_factory.mktemp("drops"),
                           env={"TEST_ROUTER_KEY": "router-key-xyz"}) as proc:
            yield proc


def test_an_unknown_override_target_is_logged_with_what_was_done_instead(router):
    r = httpx.post(f"{router.url}/v1/messages", json=BODY, headers={**HEADERS, "x-aibox-target": "gpt-7"}, timeout=30)
    assert r.status_code == 200 and r.headers["x-aibox-target"] == "local"
    logs = router.wait_for_log("named unknown target 'gpt-7'")
    assert "routed to local" in logs


def test_a_downgrade_logs_its_reason(router):
    r = httpx.post(f"{router.url}/v1/messages", json=BODY, headers={**HEADERS, "x-aibox-target": "claude"}, timeout=30)
    assert r.status_code == 200 and r.headers["x-aibox-downgraded"] == "true"
    log = router.wait_for_log("refused claude")
    line = [ln for ln in log.splitlines() if "reason=" in ln and "refused claude" in ln]
    assert "client 'dev' daily cloud budget" in line[-1] and "target=local" in line[-1]


def test_a_client_budget_refusal_names_the_client_budget_not_the_cutoff(router):
    r = httpx.post(f"{router.url}/v1/messages", json={**BODY, "model": "claude-only"}, headers=HEADERS, timeout=30)
    assert r.status_code == 400 and r.headers["x-should-retry"] == "false"
    message = r.json()["error"]["message"]
    assert "client 'dev' daily cloud budget" in message and "raises your client budget" in message
    assert "cutoff" not in message
    assert "status=400" in router.wait_for_log("status=400 ")
