"""OpenAIBackend against a REAL model: llama-cpp-python's server running SmolLM2-135M on the CPU.

Provisioned by scripts/ensure-local-model; the server is the session fixture ``llama_url`` in
tests/conftest.py. Skipped only when AIBOX_SKIP_LOCAL_MODEL=1; when the model is missing otherwise,
the tests fail and say how to provision it, so a CI that forgot the step does not pass silently.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from aibox_router.backends.openai import OpenAIBackend
from aibox_router.config import BackendConfig, TargetConfig
from aibox_router.internal import CallContext

TARGET = TargetConfig(backend="llama", model="smollm2", max_output_tokens=24)
REQUEST: dict[str, Any] = {
    "model": "smollm2", "max_tokens": 256, "temperature": 0,
    "system": [{"type": "text", "text": "You are a helpful assistant. Answer briefly.",
                "cache_control": {"type": "ephemeral"}}],
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
}


@pytest.fixture
async def backend(llama_url: str) -> Any:
    b = OpenAIBackend("llama", BackendConfig(type="openai", base_url=llama_url, read_timeout_s=120))
    yield b
    await b.aclose()


async def test_health_and_models(backend: OpenAIBackend) -> None:
    ok, _ = await backend.health()
    assert ok
    assert "smollm2" in await backend.list_models()


async def test_complete(backend: OpenAIBackend) -> None:
    ctx = CallContext()
    message = await backend.complete(REQUEST, TARGET, ctx)
    assert message["type"] == "message" and message["role"] == "assistant"
    text = "".join(b["text"] for b in message["content"] if b["type"] == "text")
    assert text.strip()
    assert message["stop_reason"] in ("end_turn", "max_tokens")
    # llama-cpp-python reports usage on non-streaming answers.
    assert not ctx.usage.estimated
    assert ctx.usage.input_tokens > 10 and 0 < ctx.usage.output_tokens <= 24  # capped by the target


async def test_stream(backend: OpenAIBackend) -> None:
    ctx = CallContext()
    events = [e async for e in backend.stream(REQUEST, TARGET, ctx)]
    types = [e["type"] for e in events]
    assert types[0] == "message_start" and types[-2:] == ["message_delta", "message_stop"]
    assert types.count("content_block_start") == types.count("content_block_stop") >= 1
    text = "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta")
    assert text.strip()
    final = events[-2]
    assert final["delta"]["stop_reason"] in ("end_turn", "max_tokens")
    assert final["usage"]["input_tokens"] > 0 and final["usage"]["output_tokens"] > 0
    assert (ctx.usage.input_tokens, ctx.usage.output_tokens) == (final["usage"]["input_tokens"],
                                                                 final["usage"]["output_tokens"])
    if ctx.usage.estimated:
        # The server streamed no usage (llama-cpp-python does not): counts come from text length.
        assert ctx.usage.output_tokens == max(1, -(-len(text) // 4))


async def test_tool_history_is_accepted(backend: OpenAIBackend) -> None:
    """A conversation with a tool call and its result is a valid request for the real server."""
    request = {**REQUEST, "tools": [{"name": "get_weather", "description": "Current weather for a city",
                                     "input_schema": {"type": "object",
                                                      "properties": {"city": {"type": "string"}}}}],
               "messages": [
                   {"role": "user", "content": "What is the weather in Paris?"},
                   {"role": "assistant", "content": [
                       {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
                   {"role": "user", "content": [
                       {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny, 21 C"}]},
               ]}
    message = await backend.complete(request, TARGET, CallContext())
    assert message["content"], json.dumps(message)
    events = [e async for e in backend.stream(request, TARGET, CallContext())]
    assert events[-1]["type"] == "message_stop"
