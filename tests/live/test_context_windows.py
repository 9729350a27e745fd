"""Context windows end to end: a real Claude Code request, the real llama.cpp server with a small window.

The router runs as a process (as the systemd unit runs it) in front of llama-cpp-python's server
with SmolLM2-135M started with ``--n_ctx 2048``, the Ollama stand-in (tests/doubles/fake_ollama.py,
``num_ctx`` 2048) and the Anthropic double (tests/doubles/fake_anthropic.py) as the cloud fallback.
The request is the one Claude Code 2.1.197 really sent (tests/fixtures/claude_code_request.json,
24 tools, ~78 KB): it cannot fit 2048 tokens, so it must never reach a local model.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from aibox_router.context import estimate_input_tokens
from aibox_router.cost import SqliteLedger
from tests.doubles.fake_ollama import FakeOllama
from tests.support import local_model
from tests.support.router_process import RouterProcess

CLIENT_KEY = "test-client-key-0123456789"
CLOUD_MODEL = "claude-sonnet-4-5-20250929"
N_CTX = 2048
CC_REQUEST = Path(__file__).parents[1] / "fixtures" / "claude_code_request.json"


@pytest.fixture(scope="module")
def small_llama_url():
    """The real llama.cpp server (llama-cpp-python) with SmolLM2 and a 2048-token context."""
    try:
        url, process = local_model.start_llama_server(n_ctx=N_CTX, alias="smollm2")
    except local_model.LocalModelMissing as e:
        pytest.fail(str(e))
    yield url
    local_model.stop_llama_server(process)


@pytest.fixture(scope="module")
def ollama():
    with FakeOllama(models=["qwen2.5-coder:7b"]) as fake:
        yield fake


def context_config(anthropic_url: str, llama_url: str, ollama_url: str) -> dict:
    small = {"backend": "llama", "model": "smollm2", "context_window": N_CTX, "max_output_tokens": 256}
    return {
        "clients": [{"name": "claude-code", "key": CLIENT_KEY}],
        "backends": {
            "cloud": {"type": "anthropic", "base_url": anthropic_url, "api_key_env": "AIBOX_TEST_ANTHROPIC_KEY"},
            "llama": {"type": "openai", "base_url": llama_url},
            "ollama": {"type": "ollama", "base_url": ollama_url},
        },
        "targets": {
            "claude": {"backend": "cloud", "model": CLOUD_MODEL},
            "local": {**small, "fallback": ["claude"]},
            "local-alone": small,
            "slow": {**small, "max_output_tokens": 1500, "stream_time_limit_s": 1.0},
            "coder": {"backend": "ollama", "model": "qwen2.5-coder:7b", "num_ctx": N_CTX, "max_output_tokens": 256,
                      "fallback": ["claude"]},
        },
        "default_target": "local",
        "prices": [{"prefix": "claude-sonnet-4", "input": 3.0, "output": 15.0}],
        "gpu": {"enabled": False},
    }


@pytest.fixture(scope="module")
def router(tmp_path_factory, fake_anthropic_server, small_llama_url, ollama):
    work = tmp_path_factory.mktemp("context")
    proc = RouterProcess(context_config(fake_anthropic_server.url, small_llama_url, ollama.url), work,
                         env={"AIBOX_TEST_ANTHROPIC_KEY": "sk-ant-router-own-key-abcdef"})
    with proc:
        yield proc


def ledger_rows(router: RouterProcess):
    store = SqliteLedger.in_state_dir(router.workdir / "state", create=False)
    try:
        return store.rows("0000-00-00", "9999-99-99")
    finally:
        store.close()


def post(router: RouterProcess, body: bytes, target: str | None = None) -> tuple[httpx.Response, bytes, float]:
    headers = {"x-api-key": CLIENT_KEY, "content-type": "application/json", "anthropic-version": "2023-06-01"}
    if target:
        headers["x-aibox-target"] = target
    started = time.perf_counter()
    with httpx.stream("POST", f"{router.url}/v1/messages?beta=true", content=body, headers=headers,
                      timeout=60) as response:
        data = response.read()
    return response, data, time.perf_counter() - started


def test_the_fixture_is_a_full_claude_code_request():
    body = json.loads(CC_REQUEST.read_bytes())
    assert len(body["tools"]) >= 20 and body["stream"] is True and body["max_tokens"] >= 32000
    assert estimate_input_tokens(body, "smollm2") > 4 * N_CTX


def test_claude_code_request_is_answered_by_the_fallback_with_the_skip_visible(router, fake_anthropic):
    before = {r.id for r in ledger_rows(router)}
    response, data, _ = post(router, CC_REQUEST.read_bytes())
    assert response.status_code == 200, data
    assert response.headers["x-aibox-target"] == "claude"
    assert response.headers["x-aibox-skipped"] == "local=context"
    assert response.headers["x-aibox-fallback"] == "true"
    assert b"event: message_stop" in data
    sent = fake_anthropic.requests[-1].body
    assert sent["model"] == CLOUD_MODEL and len(sent["tools"]) == len(json.loads(CC_REQUEST.read_bytes())["tools"])
    new = [r for r in ledger_rows(router) if r.id not in before]
    assert [(r.target, r.status, r.skipped) for r in new] == [("claude", "ok", "local=context")]  # none for local

    explained = subprocess.run(
        [sys.executable, "-m", "aibox_router", "route", "explain", "-c", str(router.config_path), str(CC_REQUEST)],
        capture_output=True, text=True, check=True, timeout=60)
    assert "skip  context:local: target local skipped: does not fit" in explained.stdout
    assert "x-aibox-skipped: local=context" in explained.stdout
    assert "answers: target claude" in explained.stdout


def test_without_a_fallback_the_anthropic_client_gets_prompt_is_too_long_promptly(router, fake_anthropic):
    body = json.loads(CC_REQUEST.read_bytes())
    client = anthropic.Anthropic(base_url=router.url, api_key=CLIENT_KEY, max_retries=0)
    before = len(fake_anthropic.requests)
    started = time.perf_counter()
    # Streamed, as Claude Code asks (the SDK insists on it for max_tokens this large).
    with pytest.raises(anthropic.BadRequestError) as caught, client.messages.stream(
            model=body["model"], max_tokens=body["max_tokens"], system=body["system"], tools=body["tools"],
            messages=body["messages"], extra_headers={"x-aibox-target": "local-alone"}) as stream:
        stream.get_final_message()
    elapsed = time.perf_counter() - started
    err = caught.value
    assert err.status_code == 400 and err.body["error"]["type"] == "invalid_request_error"
    assert re.fullmatch(r"prompt is too long: \d+ tokens > \d+ maximum", err.body["error"]["message"])
    assert err.response.headers["x-aibox-skipped"] == "local-alone=context"
    assert err.response.headers["x-should-retry"] == "false"
    assert len(fake_anthropic.requests) == before  # nothing went anywhere
    print(f"prompt-too-long answered in {elapsed * 1000:.1f} ms (client round trip)")
    rows = [r for r in ledger_rows(router) if r.target == "local-alone"]
    assert rows and rows[-1].status == "refused" and rows[-1].skipped == "local-alone=context"


def test_without_a_fallback_the_openai_client_gets_context_length_exceeded(router):
    system = json.loads(CC_REQUEST.read_bytes())["system"]
    text = "\n".join(block["text"] for block in system)
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key=CLIENT_KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="local-alone", max_tokens=100,
                                       messages=[{"role": "system", "content": text},
                                                 {"role": "user", "content": "hello"}])
    assert caught.value.status_code == 400 and caught.value.code == "context_length_exceeded"
    assert "maximum context length is" in caught.value.message


def test_a_prompt_that_fits_is_answered_locally_and_the_estimate_is_not_below_the_models_count(router):
    request = {"model": "claude-haiku-4-5", "max_tokens": 16,
               "system": "You are a terse assistant. Answer in one short sentence.",
               "messages": [{"role": "user", "content": "What is the capital of France? " * 20}]}
    response, data, _ = post(router, json.dumps(request).encode())
    assert response.status_code == 200, data
    assert response.headers["x-aibox-target"] == "local" and "x-aibox-skipped" not in response.headers
    counted = json.loads(data)["usage"]["input_tokens"]  # llama.cpp's own usage.prompt_tokens
    estimate = estimate_input_tokens(request, "smollm2")
    assert estimate >= counted, (estimate, counted)


def test_ollama_window_is_num_ctx_and_nothing_truncated_reaches_it(router, ollama, fake_anthropic):
    sent_before = len(ollama.requests)
    response, data, _ = post(router, CC_REQUEST.read_bytes(), target="coder")
    assert response.status_code == 200, data
    assert response.headers["x-aibox-target"] == "claude"
    assert response.headers["x-aibox-skipped"] == "coder=context"
    assert len(ollama.requests) == sent_before  # the stand-in would have truncated it

    request = {"model": "m", "max_tokens": 50, "messages": [{"role": "user", "content": "Explain recursion. " * 40}]}
    response, data, _ = post(router, json.dumps(request).encode(), target="coder")
    assert response.status_code == 200 and response.headers["x-aibox-target"] == "coder"
    assert ollama.last_request["options"]["num_ctx"] == N_CTX
    assert ollama.truncated[-1] is False
    evaluated = json.loads(data)["usage"]["input_tokens"]  # Ollama's prompt_eval_count
    assert 0 < evaluated <= N_CTX
    assert estimate_input_tokens(request, "qwen2.5-coder:7b") >= evaluated


def test_a_local_stream_past_its_wall_time_is_ended_with_an_error_event(router):
    request = {"model": "m", "max_tokens": 1500, "stream": True,
               "messages": [{"role": "user", "content": "Write a very long story about a dragon, in many chapters."}]}
    response, data, _ = post(router, json.dumps(request).encode(), target="slow")
    assert response.status_code == 200 and response.headers["x-aibox-target"] == "slow"
    text = data.decode()
    assert "event: error" in text and "longer than its limit of 1 s" in text
    assert "event: message_stop" not in text
    row = [r for r in ledger_rows(router) if r.target == "slow"][-1]
    assert (row.status, row.http_status) == ("error", 504)


def test_config_check_shows_each_window(router):
    result = subprocess.run([sys.executable, "-m", "aibox_router", "config", "check", str(router.config_path)],
                            capture_output=True, text=True, check=True, timeout=60)
    assert f"local (local): {N_CTX} tokens (targets.local.context_window)" in result.stdout
    assert f"coder (local): {N_CTX} tokens (targets.coder.num_ctx)" in result.stdout
    assert "claude (cloud): 200000 tokens" in result.stdout
