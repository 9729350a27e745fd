"""OllamaBackend against the fake Ollama HTTP API (a real HTTP server on a loopback port)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from aibox_router.backends import create_backend
from aibox_router.backends.base import BackendUnavailable
from aibox_router.backends.ollama import OllamaBackend
from aibox_router.config import BackendConfig, TargetConfig
from aibox_router.errors import UpstreamError, UpstreamStatusError
from aibox_router.internal import CallContext
from aibox_router.targets import prepare_for_target
from aibox_router.wire.ollama import to_ollama_request
from tests.doubles.fake_ollama import FakeOllama, Reply, absent_url

MODEL = "qwen2.5-coder:7b"
TARGET = TargetConfig(backend="ollama", model=MODEL, num_ctx=32768, keep_alive="30m", max_output_tokens=2048)
REQUEST: dict[str, Any] = {"model": MODEL, "max_tokens": 8000, "temperature": 0.3, "system": "Be terse.",
                           "messages": [{"role": "user", "content": "Say hello"}]}
TOOLS = [{"name": "read_file", "description": "Read a file",
          "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}}]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOllama]:
    with FakeOllama([MODEL]) as server:
        yield server


@pytest.fixture
async def backend(fake: FakeOllama) -> Any:
    fake.requests.clear()
    b = create_backend("ollama", BackendConfig(type="ollama", base_url=fake.url, read_timeout_s=10))
    assert isinstance(b, OllamaBackend)
    yield b
    await b.aclose()


async def collect(backend: OllamaBackend, request: dict[str, Any], ctx: CallContext,
                  target: TargetConfig = TARGET) -> list[dict[str, Any]]:
    return [e async for e in backend.stream(request, target, ctx)]


def text_of(events: list[dict[str, Any]]) -> str:
    return "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta")


async def test_sends_num_ctx_keep_alive_and_options(backend: OllamaBackend, fake: FakeOllama) -> None:
    fake.reply_text("Hello!")
    # The pipeline caps max_tokens (8000) to the target's max_output_tokens; the backend sends it on.
    request = prepare_for_target({**REQUEST, "stop_sequences": ["###"], "top_p": 0.8}, TARGET)
    await backend.complete(request, TARGET, CallContext())
    sent = fake.last_request
    assert sent["model"] == MODEL and sent["stream"] is False
    assert sent["keep_alive"] == "30m"
    assert sent["options"] == {"num_ctx": 32768, "num_predict": 2048, "temperature": 0.3, "top_p": 0.8,
                               "stop": ["###"]}
    assert sent["messages"] == [{"role": "system", "content": "Be terse."},
                                {"role": "user", "content": "Say hello"}]
    loaded = await backend.loaded_models()
    assert loaded[0]["name"] == MODEL and loaded[0]["context_length"] == 32768


async def test_unset_target_options_are_left_to_ollama(backend: OllamaBackend, fake: FakeOllama) -> None:
    fake.reply_text("ok")
    await backend.complete({"model": MODEL, "max_tokens": 10, "messages": REQUEST["messages"]},
                           TargetConfig(backend="ollama", model=MODEL), CallContext())
    assert "keep_alive" not in fake.last_request
    assert fake.last_request["options"] == {"num_predict": 10}


async def test_complete_text_and_usage(backend: OllamaBackend, fake: FakeOllama) -> None:
    fake.reply_text("Hello, world.", prompt_eval_count=42, eval_count=4)
    ctx = CallContext()
    message = await backend.complete(REQUEST, TARGET, ctx)
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["content"] == [{"type": "text", "text": "Hello, world."}]
    assert message["stop_reason"] == "end_turn"
    assert message["usage"] == {"input_tokens": 42, "output_tokens": 4}
    assert (ctx.usage.input_tokens, ctx.usage.output_tokens, ctx.usage.estimated) == (42, 4, False)


async def test_stream_ndjson_to_events(backend: OllamaBackend, fake: FakeOllama) -> None:
    fake.reply_text("Streaming works fine.", prompt_eval_count=30, eval_count=6, chunk_chars=3)
    ctx = CallContext()
    events = await collect(backend, REQUEST, ctx)
    assert fake.last_request["stream"] is True
    types = [e["type"] for e in events]
    assert types[0] == "message_start" and types[1] == "content_block_start"
    assert types[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert types.count("content_block_delta") == 7  # 21 characters in pieces of 3, passed on as they came
    assert text_of(events) == "Streaming works fine."
    assert events[-2]["delta"]["stop_reason"] == "end_turn"
    assert events[-2]["usage"] == {"input_tokens": 30, "output_tokens": 6}
    assert (ctx.usage.input_tokens, ctx.usage.output_tokens, ctx.usage.estimated) == (30, 6, False)


async def test_stream_length_limit(backend: OllamaBackend, fake: FakeOllama) -> None:
    fake.reply_text("cut", done_reason="length")
    events = await collect(backend, REQUEST, CallContext())
    assert events[-2]["delta"]["stop_reason"] == "max_tokens"


async def test_stream_tool_call(backend: OllamaBackend, fake: FakeOllama) -> None:
    fake.reply_tool_calls([{"name": "read_file", "arguments": {"path": "README.md"}}], text="Reading.")
    events = await collect(backend, {**REQUEST, "tools": TOOLS}, CallContext())
    assert fake.last_request["tools"] == [{"type": "function", "function": {
        "name": "read_file", "description": "Read a file", "parameters": TOOLS[0]["input_schema"]}}]
    starts = [e for e in events if e["type"] == "content_block_start"]
    assert [s["content_block"]["type"] for s in starts] == ["text", "tool_use"]
    tool_block = starts[1]["content_block"]
    assert tool_block["name"] == "read_file" and tool_block["id"].startswith("toolu_")
    args = "".join(e["delta"]["partial_json"] for e in events
                   if e["type"] == "content_block_delta" and e["index"] == starts[1]["index"])
    assert json.loads(args) == {"path": "README.md"}
    assert [e["type"] for e in events].count("content_block_stop") == 2
    assert events[-2]["delta"]["stop_reason"] == "tool_use"


async def test_complete_tool_call(backend: OllamaBackend, fake: FakeOllama) -> None:
    fake.reply_tool_calls([{"name": "read_file", "arguments": {"path": "a.py"}}])
    message = await backend.complete({**REQUEST, "tools": TOOLS}, TARGET, CallContext())
    assert message["stop_reason"] == "tool_use"
    assert [(b["type"], b["name"], b["input"]) for b in message["content"]] == [
        ("tool_use", "read_file", {"path": "a.py"})]


async def test_tool_history_and_images_are_translated(backend: OllamaBackend, fake: FakeOllama) -> None:
    request = {**REQUEST, "tools": TOOLS, "messages": [
        {"role": "user", "content": [
            {"type": "text", "text": "Look at this and read a.py"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}}]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hm", "signature": "x"},
            {"type": "text", "text": "Sure."},
            {"type": "tool_use", "id": "toolu_9", "name": "read_file", "input": {"path": "a.py"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_9", "content": "print(1)",
             "cache_control": {"type": "ephemeral"}}]},
    ]}
    fake.reply_text("It prints 1.")
    await backend.complete(request, TARGET, CallContext())
    assert fake.last_request["messages"] == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Look at this and read a.py", "images": ["iVBOR"]},
        {"role": "assistant", "content": "Sure.",
         "tool_calls": [{"function": {"name": "read_file", "arguments": {"path": "a.py"}}}]},
        {"role": "tool", "content": "print(1)", "tool_name": "read_file"},
    ]


def test_tool_choice_none_withholds_tools() -> None:
    body = to_ollama_request({**REQUEST, "tools": TOOLS, "tool_choice": {"type": "none"}}, TARGET, stream=True)
    assert "tools" not in body


async def test_missing_counts_are_estimated_and_flagged(backend: OllamaBackend, fake: FakeOllama) -> None:
    fake.reply_text("abcdefgh", prompt_eval_count=None, eval_count=None)
    ctx = CallContext()
    events = await collect(backend, REQUEST, ctx)
    assert events[-2]["usage"]["output_tokens"] == 2
    assert events[-2]["usage"]["input_tokens"] > 0
    assert ctx.usage.estimated


async def test_server_error_is_unavailable(backend: OllamaBackend, fake: FakeOllama) -> None:
    fake.fail_next(500, times=2)
    with pytest.raises(BackendUnavailable) as info:
        await collect(backend, REQUEST, CallContext())
    assert info.value.status == 500
    with pytest.raises(BackendUnavailable):
        await backend.complete(REQUEST, TARGET, CallContext())


async def test_model_not_pulled_is_unavailable_so_fallback_happens(backend: OllamaBackend) -> None:
    target = TargetConfig(backend="ollama", model="llama3.3:70b")
    with pytest.raises(BackendUnavailable) as info:
        await collect(backend, {**REQUEST, "model": "llama3.3:70b"}, CallContext(), target)
    assert info.value.status == 404 and "not found" in info.value.reason


async def test_other_4xx_goes_to_client(backend: OllamaBackend, fake: FakeOllama) -> None:
    fake.fail_next(400, error="invalid option")
    with pytest.raises(UpstreamStatusError) as info:
        await backend.complete(REQUEST, TARGET, CallContext())
    assert info.value.status == 400


async def test_error_mid_stream_after_first_event(backend: OllamaBackend, fake: FakeOllama) -> None:
    fake.enqueue(Reply(text="partial answer", error_mid_stream=True, error="out of memory"))
    events: list[dict[str, Any]] = []
    with pytest.raises(UpstreamError, match="out of memory"):
        async for event in backend.stream(REQUEST, TARGET, CallContext()):
            events.append(event)
    assert events[0]["type"] == "message_start"  # too late to fall back: the pipeline must end the stream


async def test_absent_ollama_is_unavailable() -> None:
    backend = OllamaBackend("ollama", BackendConfig(type="ollama", base_url=absent_url(), connect_timeout_s=2))
    with pytest.raises(BackendUnavailable, match="connection failed"):
        await collect(backend, REQUEST, CallContext())
    with pytest.raises(BackendUnavailable):
        await backend.complete(REQUEST, TARGET, CallContext())
    ok, detail = await backend.health()
    assert not ok and "connection failed" in detail
    await backend.aclose()


async def test_health_tags_and_show(backend: OllamaBackend, fake: FakeOllama) -> None:
    ok, detail = await backend.health()
    assert ok and detail.startswith("ollama ")
    assert await backend.list_models() == [MODEL]
    show, _ = await backend.request_json("POST", "/api/show", content=b'{"model": "%s"}' % MODEL.encode())
    assert "tools" in show["capabilities"]


async def test_ndjson_lines_reassembles_lines_however_the_chunks_cut_them() -> None:
    from aibox_router.wire.ndjson import ndjson_lines

    long_line = b'{"message": {"content": "' + b"x" * 200_000 + b'"}}'
    stream = b'{"a": 1}\n{"b"' + b': 2}\n' + long_line + b"\n" + b'{"done": true}'  # no final newline

    async def chunks(size: int):
        for i in range(0, len(stream), size):
            yield stream[i:i + size]

    for size in (1, 7, 4096, len(stream)):
        lines = [line async for line in ndjson_lines(chunks(size))]
        assert lines == [b'{"a": 1}', b'{"b": 2}', long_line, b'{"done": true}'], size
