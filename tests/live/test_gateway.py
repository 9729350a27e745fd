"""The router as a real server on loopback, driven by the official Anthropic and OpenAI SDKs.

Backends: the Anthropic API double (tests/doubles/fake_anthropic.py), the real llama.cpp server with
SmolLM2-135M, and the Ollama double (tests/doubles/fake_ollama.py).
"""

from __future__ import annotations

import json
import threading
import time

import anthropic
import httpx
import openai
import pytest
import yaml

from tests.doubles.fake_anthropic import Reply
from tests.doubles.fake_ollama import FakeOllama
from tests.support.router_process import RouterProcess, free_port

CLIENT_KEY = "test-client-key-0123456789"
ROUTER_ANTHROPIC_KEY = "sk-ant-router-own-key-abcdef"
CLOUD_MODEL = "claude-sonnet-4-5-20250929"


def gateway_config(anthropic_url: str, llama_url: str, ollama_url: str) -> dict:
    return {
        "clients": [{"name": "claude-code", "key": CLIENT_KEY}],
        "backends": {
            "cloud": {"type": "anthropic", "base_url": anthropic_url, "api_key_env": "AIBOX_TEST_ANTHROPIC_KEY"},
            "llama": {"type": "openai", "base_url": llama_url},
            "ollama": {"type": "ollama", "base_url": ollama_url},
            "dead": {"type": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1", "connect_timeout_s": 1},
        },
        "targets": {
            "claude": {"backend": "cloud", "model": CLOUD_MODEL, "fallback": ["local"]},
            "local": {"backend": "llama", "model": "smollm2", "max_output_tokens": 64},
            "coder": {"backend": "ollama", "model": "qwen2.5-coder:7b", "num_ctx": 32768, "keep_alive": "30m"},
            "broken": {"backend": "dead", "model": "x", "fallback": ["coder", "local"]},
        },
        "aliases": {"claude-haiku-*": "local"},
        "rules": [
            {"name": "coding", "when": 'task in ("code_generation", "debugging")', "target": "coder"},
            {"name": "hard", "when": "complexity > 8", "target": "claude"},
        ],
        "default_target": "local",
        "prices": [{"prefix": "claude-sonnet-4", "input": 3.0, "output": 15.0}],
        "gpu": {"enabled": False},
    }


@pytest.fixture(scope="module")
def ollama():
    with FakeOllama(models=["qwen2.5-coder:7b"]) as fake:
        yield fake


@pytest.fixture(scope="module")
def router(tmp_path_factory, fake_anthropic_server, llama_url, ollama):
    work = tmp_path_factory.mktemp("gateway")
    proc = RouterProcess(gateway_config(fake_anthropic_server.url, llama_url, ollama.url), work,
                         env={"AIBOX_TEST_ANTHROPIC_KEY": ROUTER_ANTHROPIC_KEY})
    with proc:
        yield proc


@pytest.fixture
def claude(router):
    return anthropic.Anthropic(base_url=router.url, api_key=CLIENT_KEY, max_retries=0)


@pytest.fixture
def oai(router):
    return openai.OpenAI(base_url=f"{router.url}/v1", api_key=CLIENT_KEY, max_retries=0)


TO_CLOUD = {"x-aibox-target": "claude"}


# -- Anthropic protocol in, cloud out --------------------------------------------------------------


def test_non_streaming_to_cloud_uses_router_key_and_passes_fields_through(claude, fake_anthropic):
    fake_anthropic.replies.append(Reply.text("Bonjour!", input_tokens=40, output_tokens=5))
    raw = claude.messages.with_raw_response.create(
        model="claude-sonnet-4-6", max_tokens=100, messages=[{"role": "user", "content": "Say hi"}],
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        metadata={"user_id": "u-1"}, extra_headers={**TO_CLOUD, "anthropic-beta": "some-beta-2025"},
        extra_body={"future_field": {"kept": True}},
    )
    message = raw.parse()
    assert message.content[0].text == "Bonjour!"
    assert message.usage.input_tokens == 40 and message.usage.output_tokens == 5
    assert raw.headers["x-aibox-backend"] == "cloud" and raw.headers["x-aibox-rule"] == "override"
    sent = fake_anthropic.requests[-1]
    assert sent.headers["x-api-key"] == ROUTER_ANTHROPIC_KEY
    assert CLIENT_KEY not in json.dumps(sent.headers)
    assert sent.headers["anthropic-beta"] == "some-beta-2025"
    assert sent.body["future_field"] == {"kept": True}
    assert sent.body["metadata"] == {"user_id": "u-1"}
    assert sent.body["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert sent.body["model"] == CLOUD_MODEL


def test_beta_query_string_is_accepted(claude, fake_anthropic):
    fake_anthropic.replies.append(Reply.text("beta ok"))
    message = claude.beta.messages.create(model="claude-sonnet-4-6", max_tokens=50, extra_headers=TO_CLOUD,
                                          messages=[{"role": "user", "content": "hi"}])
    assert message.content[0].text == "beta ok"


def test_streaming_from_cloud_relays_every_event_type(claude, fake_anthropic):
    fake_anthropic.replies.append(Reply.thinking("Let me think.", "The answer is 4.", output_tokens=9))
    with claude.messages.stream(model="claude-sonnet-4-6", max_tokens=200, extra_headers=TO_CLOUD,
                                thinking={"type": "enabled", "budget_tokens": 1024},
                                messages=[{"role": "user", "content": "2+2?"}]) as stream:
        types = [event.type for event in stream]
        final = stream.get_final_message()
    assert {"message_start", "content_block_start", "content_block_delta", "content_block_stop",
            "message_delta", "message_stop"} <= set(types)
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].signature
    assert final.content[1].text == "The answer is 4."
    assert final.usage.output_tokens == 9
    assert fake_anthropic.requests[-1].body["thinking"] == {"type": "enabled", "budget_tokens": 1024}


def test_tool_use_round_trip_streaming(claude, fake_anthropic):
    tools = [{"name": "get_weather", "description": "Weather for a city",
              "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    fake_anthropic.replies.append(Reply.tool_use("get_weather", {"city": "Paris", "units": "metric"}))
    with claude.messages.stream(model="claude-sonnet-4-6", max_tokens=200, tools=tools, extra_headers=TO_CLOUD,
                                messages=[{"role": "user", "content": "Weather in Paris?"}]) as stream:
        first = stream.get_final_message()
    assert first.stop_reason == "tool_use"
    tool_use = next(b for b in first.content if b.type == "tool_use")
    assert tool_use.input == {"city": "Paris", "units": "metric"}

    fake_anthropic.replies.append(Reply.text("It is sunny in Paris."))
    second = claude.messages.create(
        model="claude-sonnet-4-6", max_tokens=200, tools=tools, extra_headers=TO_CLOUD,
        messages=[{"role": "user", "content": "Weather in Paris?"},
                  {"role": "assistant", "content": [b.model_dump() for b in first.content]},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id,
                                                "content": "sunny, 21C"}]}])
    assert second.content[0].text == "It is sunny in Paris."
    sent = fake_anthropic.requests[-1].body["messages"][2]["content"][0]
    assert sent == {"type": "tool_result", "tool_use_id": tool_use.id, "content": "sunny, 21C"}


def test_count_tokens_answers(claude, fake_anthropic):
    fake_anthropic.count_tokens_result = 1234
    result = claude.messages.count_tokens(model="claude-sonnet-4-6", extra_headers=TO_CLOUD,
                                          messages=[{"role": "user", "content": "Find all patterns"}])
    assert result.input_tokens > 0


# -- errors -------------------------------------------------------------------------------------------


def test_wrong_or_missing_key_is_401_in_each_protocol(router):
    bad = anthropic.Anthropic(base_url=router.url, api_key="not-a-client-key-000000", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as info:
        bad.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert info.value.body["error"]["type"] == "authentication_error"
    no_key = httpx.post(f"{router.url}/v1/messages", json={"model": "m", "max_tokens": 5, "messages": []})
    assert no_key.status_code == 401 and no_key.json()["type"] == "error"
    bad_oai = openai.OpenAI(base_url=f"{router.url}/v1", api_key="not-a-client-key-000000", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as oinfo:
        bad_oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert oinfo.value.status_code == 401 and "error" in oinfo.value.body or oinfo.value.code


def test_invalid_request_is_400_naming_the_field(router):
    r = httpx.post(f"{router.url}/v1/messages", headers={"x-api-key": CLIENT_KEY},
                   json={"model": "m", "max_tokens": "lots", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in r.json()["error"]["message"]
    r = httpx.post(f"{router.url}/v1/chat/completions", headers={"authorization": f"Bearer {CLIENT_KEY}"},
                   content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_cloud_4xx_is_passed_to_the_client_in_its_shape(claude, fake_anthropic):
    fake_anthropic.replies.append(Reply.error(429, "slow down"))
    with pytest.raises(anthropic.RateLimitError):
        claude.messages.create(model="claude-sonnet-4-6", max_tokens=5, extra_headers=TO_CLOUD,
                               messages=[{"role": "user", "content": "x"}])


# -- fallbacks ------------------------------------------------------------------------------------------


def test_cloud_5xx_falls_back_to_local_model(claude, fake_anthropic):
    fake_anthropic.replies.append(Reply.error(500, "boom"))
    raw = claude.messages.with_raw_response.create(model="claude-sonnet-4-6", max_tokens=20, extra_headers=TO_CLOUD,
                                                   messages=[{"role": "user", "content": "Say hello"}])
    assert raw.headers["x-aibox-target"] == "local" and raw.headers["x-aibox-fallback"] == "true"
    assert raw.parse().content[0].text.strip()


def test_connection_refused_falls_back_along_the_chain_streaming(claude, ollama):
    ollama.reply_text("def add(a, b): return a + b")
    with claude.messages.with_streaming_response.create(
            model="claude-sonnet-4-6", max_tokens=50, stream=True, extra_headers={"x-aibox-target": "broken"},
            messages=[{"role": "user", "content": "hi"}]) as response:
        assert response.headers["x-aibox-target"] == "coder"
        assert response.headers["x-aibox-fallback"] == "true"
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    text = "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta")
    assert text == "def add(a, b): return a + b"
    assert events[-1]["type"] == "message_stop"


# -- local backends ------------------------------------------------------------------------------------


def test_local_model_answers_anthropic_client_non_streaming_and_streaming(claude):
    raw = claude.messages.with_raw_response.create(
        model="claude-haiku-4-5", max_tokens=30, messages=[{"role": "user", "content": "Say hello"}])
    assert raw.headers["x-aibox-backend"] == "llama" and raw.headers["x-aibox-model"] == "smollm2"
    message = raw.parse()
    assert message.content[0].type == "text" and message.content[0].text.strip()
    assert message.usage.output_tokens > 0
    with claude.messages.stream(model="claude-haiku-4-5", max_tokens=30,
                                messages=[{"role": "user", "content": "Count to three"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text.strip() and final.stop_reason in ("end_turn", "max_tokens")


def test_ollama_gets_num_ctx_and_keep_alive_for_coding_tasks(claude, ollama):
    ollama.reply_text("Here is the function.")
    raw = claude.messages.with_raw_response.create(
        model="claude-sonnet-4-6", max_tokens=100,
        messages=[{"role": "user", "content": "Write a Python function that reverses a list"}])
    assert raw.headers["x-aibox-rule"] == "coding" and raw.headers["x-aibox-target"] == "coder"
    assert raw.parse().content[0].text == "Here is the function."
    sent = ollama.last_request
    assert sent["options"]["num_ctx"] == 32768 and sent["keep_alive"] == "30m"


def test_system_role_messages_inside_messages_reach_local_backends(claude, ollama):
    ollama.reply_text("ok")
    claude.messages.create(model="claude-sonnet-4-6", max_tokens=20, extra_headers={"x-aibox-target": "coder"},
                           messages=[{"role": "system", "content": "You are terse."},
                                     {"role": "user", "content": "hi"}])
    roles = [m["role"] for m in ollama.last_request["messages"]]
    assert roles[0] == "system" and "You are terse." in ollama.last_request["messages"][0]["content"]


# -- OpenAI protocol in -------------------------------------------------------------------------------


def test_openai_client_non_streaming_to_local_model(oai):
    raw = oai.chat.completions.with_raw_response.create(
        model="local", max_tokens=30, messages=[{"role": "user", "content": "Say hello"}])
    completion = raw.parse()
    assert raw.headers["x-aibox-target"] == "local"
    assert completion.choices[0].message.content.strip()
    assert completion.usage.completion_tokens > 0


def test_openai_client_streaming_has_usage_in_final_chunk(oai):
    chunks = list(oai.chat.completions.create(model="local", max_tokens=20, stream=True,
                                              stream_options={"include_usage": True},
                                              messages=[{"role": "user", "content": "Say hello"}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


def test_openai_client_tool_calls_through_cloud(oai, fake_anthropic):
    fake_anthropic.replies.append(Reply.tool_use("lookup", {"q": "aibox"}))
    completion = oai.chat.completions.create(
        model="claude", max_tokens=50, messages=[{"role": "user", "content": "look it up"}],
        tools=[{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}])
    call = completion.choices[0].message.tool_calls[0]
    assert completion.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "lookup" and json.loads(call.function.arguments) == {"q": "aibox"}
    assert fake_anthropic.requests[-1].body["tools"][0]["name"] == "lookup"


def test_openai_models_list(oai):
    names = {m.id for m in oai.models.list()}
    assert {"claude", "local", "coder", CLOUD_MODEL, "smollm2"} <= names


# -- operational endpoints, logging, reload ---------------------------------------------------------------


def test_health_ready_and_head(router):
    assert httpx.get(f"{router.url}/health").json() == {"status": "ok"}
    assert httpx.head(f"{router.url}/").status_code == 200
    ready = httpx.get(f"{router.url}/ready").json()
    assert ready["backends"]["llama"]["reachable"] is True
    assert ready["backends"]["dead"]["reachable"] is False


def test_no_key_ever_reaches_the_log(router):
    logs = router.logs()
    assert "aibox-router ready" in logs
    assert CLIENT_KEY not in logs and ROUTER_ANTHROPIC_KEY not in logs


def test_sighup_reload_bad_config_rejected_good_config_applied_streams_survive(router, claude, fake_anthropic):
    original = yaml.safe_load(router.config_path.read_text())
    # A stream that is in flight while the config changes twice.
    fake_anthropic.delay_s = 0
    fake_anthropic.replies.append(Reply.text("x" * 4000, output_tokens=1000))
    result: dict = {}

    def long_stream() -> None:
        with claude.messages.stream(model="claude-sonnet-4-6", max_tokens=2000, extra_headers=TO_CLOUD,
                                    messages=[{"role": "user", "content": "long"}]) as stream:
            chunks = []
            for text in stream.text_stream:
                chunks.append(text)
                time.sleep(0.002)
            result["text"] = "".join(chunks)

    t = threading.Thread(target=long_stream)
    t.start()
    try:
        router.config_path.write_text("rules: [\n")
        router.reload()
        router.wait_for_log("config reload rejected")
        assert httpx.get(f"{router.url}/health").status_code == 200
        changed = {**original, "budgets": {"daily_budget": 7.5, "alert_threshold": 5.0, "emergency_cutoff": 9.0}}
        router.config_path.write_text(yaml.safe_dump(changed))
        router.reload()
        router.wait_for_log("daily budget $7.50")
    finally:
        t.join(30)
        router.config_path.write_text(yaml.safe_dump(original))
        router.reload()
    assert result.get("text") == "x" * 4000


def ledger_rows(router) -> list[dict]:
    import sqlite3

    conn = sqlite3.connect(router.workdir / "state" / "ledger.sqlite3")
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM requests ORDER BY id")]
    finally:
        conn.close()


def test_client_abort_mid_stream_is_recorded_with_usage_seen_so_far(router):
    before = len(ledger_rows(router))
    with httpx.stream("POST", f"{router.url}/v1/messages", headers={"x-api-key": CLIENT_KEY}, timeout=60,
                      json={"model": "claude-haiku-4-5", "max_tokens": 2000, "stream": True,
                            "messages": [{"role": "user", "content": "Write a very long story about a robot."}]}
                      ) as response:
        assert response.headers["x-aibox-backend"] == "llama"
        received = b""
        for chunk in response.iter_bytes():
            received += chunk
            if received.count(b"content_block_delta") >= 5:
                break  # the client hangs up mid-answer
    for _ in range(100):
        rows = ledger_rows(router)[before:]
        if rows:
            break
        time.sleep(0.05)
    assert len(rows) == 1
    row = rows[0]
    assert row["status"] == "aborted" and row["backend"] == "llama" and row["stream"] == 1
    assert row["output_tokens"] >= 1 and row["usage_estimated"] == 1  # llama.cpp sends no usage when streaming
    assert row["ttft_ms"] is not None and row["latency_ms"] >= row["ttft_ms"]
