"""Budgets end to end: the real router process, the Anthropic double as the cloud, Ollama's double as
the local fallback, many concurrent clients, and the operator commands on the same ledger."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import httpx
import pytest

from tests.doubles.fake_anthropic import Reply
from tests.doubles.fake_ollama import FakeOllama
from tests.support.gauges import reservations
from tests.support.router_process import RouterProcess

KEY = "budget-client-key-0123456789"
PRICE = {"prefix": "claude-sonnet-4", "input": 3.0, "output": 15.0}
# Each call: 1000 output tokens at $15/M = $0.015 plus a little input; worst case reserved the same.
MAX_TOKENS = 1000


def config(anthropic_url: str, ollama_url: str, daily: float, alert: float, cutoff: float) -> dict:
    return {
        "clients": [{"name": "dev", "key": KEY}],
        "backends": {"cloud": {"type": "anthropic", "base_url": anthropic_url, "api_key_env": "BUDGET_TEST_KEY"},
                     "ollama": {"type": "ollama", "base_url": ollama_url}},
        "targets": {"claude": {"backend": "cloud", "model": "claude-sonnet-4-6", "fallback": ["local"]},
                    "claude-only": {"backend": "cloud", "model": "claude-sonnet-4-6"},
                    "local": {"backend": "ollama", "model": "qwen2.5-coder:7b"}},
        "default_target": "claude",
        "budgets": {"timezone": "Asia/Tokyo", "daily_budget": daily, "alert_threshold": alert,
                    "emergency_cutoff": cutoff},
        "prices": [PRICE],
        "gpu": {"enabled": False},
    }


@pytest.fixture
def ollama():
    with FakeOllama(models=["qwen2.5-coder:7b"]) as fake:
        yield fake


def cli(router: RouterProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aibox_router", *args, "-c", str(router.config_path)],
                          check=False, capture_output=True, text=True, timeout=60, env=router.env)


def ask(url: str, target: str | None = None) -> httpx.Response:
    headers = {"x-api-key": KEY}
    if target:
        headers["x-aibox-target"] = target
    return httpx.post(f"{url}/v1/messages", headers=headers, timeout=60, json={
        "model": "claude-sonnet-4-6", "max_tokens": MAX_TOKENS,
        "messages": [{"role": "user", "content": "hello"}]})


def test_concurrent_cloud_requests_never_overshoot_and_overflow_is_served_locally(
        tmp_path, fake_anthropic, ollama):
    fake_anthropic.default_reply = Reply.text("cloud answer", input_tokens=20, output_tokens=MAX_TOKENS)
    fake_anthropic.delay_s = 0.3  # keep calls in flight together
    for _ in range(40):
        ollama.reply_text("local answer")
    router = RouterProcess(config(fake_anthropic.url, ollama.url, daily=0.10, alert=0.05, cutoff=0.12), tmp_path,
                           env={"BUDGET_TEST_KEY": "sk-ant-test"})
    with router:
        with ThreadPoolExecutor(max_workers=24) as pool:
            responses = list(pool.map(lambda _: ask(router.url), range(24)))
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
        cloud = [r for r in responses if r.headers["x-aibox-backend"] == "cloud"]
        local = [r for r in responses if r.headers["x-aibox-backend"] == "ollama"]
        assert cloud and local and len(cloud) + len(local) == 24
        assert all(r.headers.get("x-aibox-downgraded") == "true" for r in local)
        assert {r.json()["content"][0]["text"] for r in local} == {"local answer"}

        shown = json.loads(cli(router, "budget", "show", "--json").stdout)
        spend = Decimal(str(shown["spend_usd"]))
        per_call = (Decimal(20) * 3 + Decimal(MAX_TOKENS) * 15) / 1_000_000
        assert spend == per_call * len(cloud)
        assert spend < Decimal("0.10")  # never past the daily budget, let alone the cutoff
        metrics = httpx.get(f"{router.url}/metrics").text
        assert "aibox_router_spend_today_usd" in metrics


def test_cutoff_engaged_by_operator_refuses_cloud_without_retry_and_release_restores(
        tmp_path, fake_anthropic, ollama):
    fake_anthropic.default_reply = Reply.text("cloud answer", input_tokens=20, output_tokens=10)
    router = RouterProcess(config(fake_anthropic.url, ollama.url, daily=10, alert=8, cutoff=12), tmp_path,
                           env={"BUDGET_TEST_KEY": "sk-ant-test"})
    with router:
        cloud_answers = 1
        assert ask(router.url, "claude-only").headers["x-aibox-backend"] == "cloud"
        engaged = cli(router, "cutoff", "engage", "--reason", "test drill")
        assert engaged.returncode == 0, engaged.stderr
        refused = None
        for _ in range(40):  # the daemon notices the shared ledger's cutoff within about a second
            refused = ask(router.url, "claude-only")
            if refused.status_code != 200:
                break
            cloud_answers += 1
            time.sleep(0.1)
        assert refused is not None and refused.status_code == 400
        assert refused.headers["x-should-retry"] == "false"
        body = refused.json()
        assert body["type"] == "error" and "emergency cutoff" in body["error"]["message"]
        assert "Retrying will not help" in body["error"]["message"]
        # A target with a local fallback is still answered, downgraded.
        ollama.reply_text("local while cut off")
        downgraded = ask(router.url, "claude")
        assert downgraded.status_code == 200 and downgraded.headers["x-aibox-downgraded"] == "true"
        # The cutoff survives a restart of the router.
        router.stop()
        router.start()
        assert ask(router.url, "claude-only").status_code == 400
        assert cli(router, "cutoff", "release").returncode == 0
        for _ in range(40):
            ok = ask(router.url, "claude-only")
            if ok.status_code == 200:
                break
            time.sleep(0.1)
        assert ok.status_code == 200 and ok.headers["x-aibox-backend"] == "cloud"
        cloud_answers += 1
        report = json.loads(cli(router, "report", "--json").stdout)
        # The report reads the same ledger the daemon wrote: every cloud answer, 1 downgraded local one.
        assert (report["cloud_calls"], report["local_calls"]) == (cloud_answers, 1)
        assert report["refused"] >= 2


def reservations_held(router: RouterProcess, settle_s: float = 5.0) -> tuple[float, float]:
    """(reserved USD, cloud calls in flight) from /metrics once they reach 0, or after *settle_s*."""
    deadline = time.monotonic() + settle_s
    while True:
        held = reservations(httpx.get(f"{router.url}/metrics").text)
        if held == (0.0, 0.0) or time.monotonic() > deadline:
            return held
        time.sleep(0.1)


def test_cloud_calls_that_fail_or_are_abandoned_free_their_reservations(tmp_path, fake_anthropic, ollama):
    """Each call's worst case (~$0.04) holds most of the $0.05 budget, so a reservation left behind by
    any ending (an upstream 5xx, an error event, a cut stream, a client that hangs up) refuses the next."""
    router = RouterProcess(config(fake_anthropic.url, ollama.url, daily=0.05, alert=0.04, cutoff=1.0), tmp_path,
                           env={"BUDGET_TEST_KEY": "sk-ant-test"})
    body = {"model": "claude-sonnet-4-6", "max_tokens": MAX_TOKENS, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"x-api-key": KEY, "x-aibox-target": "claude-only"}
    with router:
        for stream in (False, True):
            fake_anthropic.replies.append(Reply.error(500))
            r = httpx.post(f"{router.url}/v1/messages", json={**body, "stream": stream}, headers=headers, timeout=30)
            assert r.status_code == 502, r.text
            assert reservations_held(router) == (0.0, 0.0)
        for reply in (Reply(stream_error="overloaded_error"), Reply(cut_after_events=3)):
            fake_anthropic.replies.append(reply)
            r = httpx.post(f"{router.url}/v1/messages", json={**body, "stream": True}, headers=headers, timeout=30)
            assert r.status_code == 200 and "event: error" in r.text, r.text
            assert reservations_held(router) == (0.0, 0.0)
        with httpx.stream("POST", f"{router.url}/v1/messages", json={**body, "stream": True}, headers=headers,
                          timeout=30) as r:
            assert r.status_code == 200 and next(r.iter_bytes())  # the answer began; hang up
        assert reservations_held(router) == (0.0, 0.0)
        fake_anthropic.delay_s = 1.0
        for stream in (False, True):
            with pytest.raises(httpx.TimeoutException):  # leave before the upstream answers
                httpx.post(f"{router.url}/v1/messages", json={**body, "stream": stream}, headers=headers,
                           timeout=0.3)
            assert reservations_held(router) == (0.0, 0.0)
        fake_anthropic.delay_s = 0.0
        r = httpx.post(f"{router.url}/v1/messages", json=body, headers=headers, timeout=30)
        assert r.status_code == 200 and r.headers["x-aibox-backend"] == "cloud", r.text
