"""OpenAI Chat Completions <-> internal (Anthropic) shape, in both directions.

Inbound: api/openai.py (requests in, responses and SSE chunks out). Outbound: backends/openai.py
(internal requests to an OpenAI-compatible server, its answers and streams back), against a
loopback server (tests/doubles/scripted_upstream.py) that sends exactly the bytes the test chose.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import openai
import pytest
from aiohttp import web

from aibox_router.backends.base import BackendUnavailable
from aibox_router.backends.openai import OpenAIBackend
from aibox_router.config import BackendConfig, TargetConfig
from aibox_router.errors import (
    BudgetExhaustedError,
    InvalidRequestError,
    UpstreamError,
    UpstreamStatusError,
)
from aibox_router.internal import CallContext
from aibox_router.targets import prepare_for_target
from aibox_router.wire import chat_common
from aibox_router.wire import openai_chat as api
from aibox_router.wire.openai_chat import to_openai_request
from tests.doubles.scripted_upstream import Seen, reply, scripted_upstream
from tests.support.anthropic_stream import message_to_events

TARGET = TargetConfig(backend="llama", model="smollm2")
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def parse(body: dict[str, Any]) -> tuple[dict[str, Any], api.OpenAIOptions]:
    return api.parse_request(json.dumps(body).encode())


# --------------------------------------------------------------------------------------------
# parse_request


def test_parse_basic_fields_and_system_messages() -> None:
    request, options = parse({
        "model": "local", "max_completion_tokens": 100, "temperature": 0.2, "top_p": 0.9, "stop": "END",
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
                     {"role": "user", "content": "Hi"}],
    })
    assert request == {"model": "local", "max_tokens": 100, "temperature": 0.2, "top_p": 0.9,
                       "stop_sequences": ["END"], "system": "Be brief.\n\nUse French.",
                       "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]}
    assert options == api.OpenAIOptions(stream=False, include_usage=False)


def test_parse_defaults_max_tokens_and_reads_stream_options() -> None:
    request, options = parse({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True,
                              "stream_options": {"include_usage": True}, "max_tokens": 7})
    assert request["max_tokens"] == 7 and request["stream"] is True
    assert options.include_usage and options.stream
    request, _ = parse({"model": "m", "messages": [{"role": "user", "content": "x"}]})
    assert request["max_tokens"] == api.DEFAULT_MAX_TOKENS
    assert "_openai_include_usage" not in request  # options travel beside the request, never in it


def test_parse_image_parts() -> None:
    request, _ = parse({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.invalid/cat.jpg", "detail": "low"}},
    ]}]})
    assert request["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.invalid/cat.jpg"}},
    ]


def test_parse_tool_round_trip_history() -> None:
    request, _ = parse({
        "model": "m", "tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False,
        "messages": [
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
                {"id": "call_2", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\": \"Rome\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "rain"}]},
            {"role": "user", "content": "Thanks. Which is warmer?"},
        ]})
    assert request["tools"] == [{"name": "get_weather", "description": "Weather for a city",
                                 "input_schema": TOOLS[0]["function"]["parameters"]}]
    assert request["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    messages = request["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Rome"}}]
    # Both results and the follow-up question share one user turn, results first.
    assert messages[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
        {"type": "tool_result", "tool_use_id": "call_2", "content": "rain"},
        {"type": "text", "text": "Thanks. Which is warmer?"}]


@pytest.mark.parametrize(("choice", "expected"), [
    ("auto", {"type": "auto"}), ("none", {"type": "none"}), ("required", {"type": "any"}),
    ({"type": "function", "function": {"name": "get_weather"}}, {"type": "tool", "name": "get_weather"}),
])
def test_parse_tool_choice(choice: Any, expected: dict[str, Any]) -> None:
    request, _ = parse({"model": "m", "tools": TOOLS, "tool_choice": choice,
                        "messages": [{"role": "user", "content": "x"}]})
    assert request["tool_choice"] == expected


@pytest.mark.parametrize(("body", "field"), [
    (b"not json", "JSON"),
    ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": "m", "messages": "hi"}, "messages"),
    ({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "messages[0].content[0]"),
    ({"model": "m", "messages": [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]},
     "messages[0].tool_calls[0].function.arguments"),
    ({"model": "m", "messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": [1]}, "stop"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "code"}]}, "tools[0]"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "tool_choice": "always"}, "tool_choice"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}, "n:"),
    ({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]}, "image_url.url"),
])
def test_parse_invalid_names_field(body: Any, field: str) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(InvalidRequestError) as info:
        api.parse_request(raw)
    assert field in info.value.message
    assert info.value.status == 400


# --------------------------------------------------------------------------------------------
# message_to_response / error_body / models_list


def test_message_to_response_text_tools_and_usage() -> None:
    message = {"id": "msg_abc", "type": "message", "role": "assistant", "model": "x",
               "content": [{"type": "thinking", "thinking": "hmm", "signature": "s"},
                           {"type": "text", "text": "Checking."},
                           {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}],
               "stop_reason": "tool_use",
               "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 100,
                         "cache_creation_input_tokens": 20}}
    out = api.message_to_response(message, "local")
    assert out["id"] == "chatcmpl-abc" and out["object"] == "chat.completion" and out["model"] == "local"
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Checking."
    assert choice["message"]["reasoning_content"] == "hmm"
    call = choice["message"]["tool_calls"][0]
    assert call["id"] == "toolu_1" and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert out["usage"] == {"prompt_tokens": 130, "completion_tokens": 5, "total_tokens": 135,
                            "prompt_tokens_details": {"cached_tokens": 100}}


@pytest.mark.parametrize(("stop", "finish"), [("end_turn", "stop"), ("max_tokens", "length"),
                                              ("tool_use", "tool_calls"), ("stop_sequence", "stop")])
def test_finish_reason_mapping(stop: str, finish: str) -> None:
    message = {"id": "msg_1", "content": [{"type": "text", "text": "x"}], "stop_reason": stop, "usage": {}}
    assert api.message_to_response(message, "m")["choices"][0]["finish_reason"] == finish


def test_response_is_read_by_the_openai_sdk() -> None:
    message = {"id": "msg_1", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}],
               "stop_reason": "tool_use", "usage": {"input_tokens": 3, "output_tokens": 4}}
    completion = openai.types.chat.ChatCompletion.model_validate(api.message_to_response(message, "m"))
    assert completion.choices[0].message.tool_calls[0].function.arguments == "{\"a\": 1}"
    assert completion.usage is not None and completion.usage.total_tokens == 7


def test_error_body_and_models_list() -> None:
    body = json.loads(api.error_body(BudgetExhaustedError("daily budget spent")))
    assert body == {"error": {"message": "daily budget spent", "type": "insufficient_quota", "param": None,
                              "code": "insufficient_quota"}}
    models = json.loads(api.models_list(["local", "claude-sonnet"]))
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["local", "claude-sonnet"]
    assert all(m["object"] == "model" for m in models["data"])


# --------------------------------------------------------------------------------------------
# StreamEncoder


def decode_frames(raw: bytes) -> list[Any]:
    frames = [f for f in raw.decode().split("\n\n") if f]
    assert all(f.startswith("data: ") for f in frames)
    return [f[6:] if f == "data: [DONE]" else json.loads(f[6:]) for f in frames]


def encode(events: list[dict[str, Any]], include_usage: bool) -> list[Any]:
    encoder = api.StreamEncoder("local", include_usage)
    raw = b"".join(encoder.feed(e) for e in events) + encoder.finish()
    return decode_frames(raw)


TOOL_STREAM = [
    {"type": "message_start", "message": {"id": "msg_s", "usage": {"input_tokens": 12, "output_tokens": 1,
                                                                   "cache_read_input_tokens": 8}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "plan"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "sig"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Let me "}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "check."}},
    {"type": "content_block_stop", "index": 1},
    {"type": "content_block_start", "index": 2,
     "content_block": {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {}}},
    {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{\"ci"}},
    {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "ty\": "}},
    {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "\"Paris\"}"}},
    {"type": "content_block_stop", "index": 2},
    {"type": "content_block_start", "index": 3,
     "content_block": {"type": "tool_use", "id": "toolu_b", "name": "get_weather", "input": {}}},
    {"type": "content_block_delta", "index": 3,
     "delta": {"type": "input_json_delta", "partial_json": "{\"city\": \"Rome\"}"}},
    {"type": "content_block_stop", "index": 3},
    {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 30}},
    {"type": "message_stop"},
]


def test_stream_encoder_tool_call_fragments_and_usage() -> None:
    frames = encode(TOOL_STREAM, include_usage=True)
    assert frames[-1] == "[DONE]"
    chunks = frames[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == "chatcmpl-s" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("content", "") for d in deltas) == "Let me check."
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "plan"
    calls = [tc for d in deltas for tc in d.get("tool_calls", [])]
    assert calls[0] == {"index": 0, "id": "toolu_a", "type": "function",
                        "function": {"name": "get_weather", "arguments": ""}}
    args: dict[int, str] = {}
    for tc in calls:
        args[tc["index"]] = args.get(tc["index"], "") + tc["function"]["arguments"]
    assert {i: json.loads(a) for i, a in args.items()} == {0: {"city": "Paris"}, 1: {"city": "Rome"}}
    finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finish) == 1 and finish[0]["choices"][0]["finish_reason"] == "tool_calls"
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 20, "completion_tokens": 30, "total_tokens": 50,
                                   "prompt_tokens_details": {"cached_tokens": 8}}


def test_stream_encoder_without_usage_and_finish_is_idempotent() -> None:
    encoder = api.StreamEncoder("local")
    message = {"id": "msg_1", "content": [{"type": "text", "text": "Hi"}], "stop_reason": "max_tokens",
               "usage": {"input_tokens": 1, "output_tokens": 1}}
    raw = b"".join(encoder.feed(e) for e in message_to_events(message))
    assert encoder.finish() == b""
    frames = decode_frames(raw)
    assert frames[-1] == "[DONE]"
    assert all("usage" not in c for c in frames[:-1])
    assert frames[-2]["choices"][0]["finish_reason"] == "length"


def test_stream_encoder_finish_without_message_stop_still_ends_stream() -> None:
    encoder = api.StreamEncoder("local", include_usage=True)
    encoder.feed(TOOL_STREAM[0])
    frames = decode_frames(encoder.finish())
    assert frames[-1] == "[DONE]" and frames[-2]["choices"] == []
    assert frames[0]["choices"][0]["finish_reason"] == "stop"


def test_stream_is_accumulated_by_the_openai_sdk() -> None:
    """The SDK's own stream accumulator rebuilds the tool calls from our chunks."""
    from openai.lib.streaming.chat._completions import ChatCompletionStreamState

    state = ChatCompletionStreamState()
    for frame in encode(TOOL_STREAM, include_usage=True)[:-1]:
        state.handle_chunk(openai.types.chat.ChatCompletionChunk.model_validate(frame))
    completion = state.get_final_completion()
    calls = completion.choices[0].message.tool_calls
    assert [json.loads(c.function.arguments)["city"] for c in calls] == ["Paris", "Rome"]
    assert completion.choices[0].finish_reason == "tool_calls"
    assert completion.usage is not None and completion.usage.completion_tokens == 30


def test_stream_error_frame() -> None:
    encoder = api.StreamEncoder("local")
    frames = decode_frames(encoder.feed(TOOL_STREAM[0]) + encoder.error(UpstreamError("backend died")))
    assert frames[-1]["error"]["message"] == "backend died"
    assert encoder.finish() == b""


# --------------------------------------------------------------------------------------------
# Outbound request: internal -> Chat Completions


def test_outbound_request_translation() -> None:
    request = {
        "model": "smollm2", "max_tokens": 50_000, "temperature": 0.5, "stop_sequences": ["###"],
        "system": [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}],
        "tools": [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"},
                   "cache_control": {"type": "ephemeral"}},
                  {"type": "web_search_20250305", "name": "web_search"}],
        "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        "messages": [
            {"role": "system", "content": "Also polite."},
            {"role": "user", "content": [
                {"type": "text", "text": "Weather?", "cache_control": {"type": "ephemeral"}},
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAA"}}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "secret", "signature": "sig"},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "-3C"}]},
                {"type": "text", "text": "And tomorrow?"}]},
        ],
    }
    target = TargetConfig(backend="llama", model="smollm2", max_output_tokens=1024)
    body = to_openai_request(prepare_for_target(request, target), target, stream=True)
    assert body["max_tokens"] == 1024
    assert body["stream_options"] == {"include_usage": True}
    assert body["stop"] == ["###"] and body["temperature"] == 0.5
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["parallel_tool_calls"] is False
    assert body["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather", "parameters": {"type": "object"}}}]
    assert body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "system", "content": "Also polite."},
        {"role": "user", "content": [{"type": "text", "text": "Weather?"},
                                     {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAA"}}]},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "toolu_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "-3C"},
        {"role": "user", "content": "And tomorrow?"},
    ]
    assert "cache_control" not in json.dumps(body)


def test_inbound_then_outbound_tool_history_round_trips() -> None:
    """OpenAI client -> internal -> OpenAI server keeps the tool conversation intact."""
    original = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                              "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    request, _ = parse({"model": "m", "messages": original, "tools": TOOLS})
    body = to_openai_request(request, TARGET, stream=False)
    assert body["messages"] == original
    assert body["tools"][0]["function"]["name"] == "get_weather"


# --------------------------------------------------------------------------------------------
# OpenAIBackend against scripted HTTP answers


def sse(*chunks: Any) -> bytes:
    return b"".join(b"data: " + (c if isinstance(c, bytes) else json.dumps(c).encode()) + b"\n\n"
                    for c in chunks)


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "smollm2", "choices": choices, **extra}


@asynccontextmanager
async def backend_answering(answer: Any, api_key_env: str | None = None) -> AsyncIterator[OpenAIBackend]:
    """An OpenAIBackend whose server answers each request with *answer(request)*."""
    async with scripted_upstream(answer) as upstream:
        config = BackendConfig(type="openai", base_url=f"{upstream.url}/v1", api_key_env=api_key_env)
        backend = OpenAIBackend("llama", config)
        try:
            yield backend
        finally:
            await backend.aclose()


async def collect(backend: OpenAIBackend, request: dict[str, Any], ctx: CallContext) -> list[dict[str, Any]]:
    return [e async for e in backend.stream(request, TARGET, ctx)]


REQUEST = {"model": "smollm2", "max_tokens": 100, "messages": [{"role": "user", "content": "Hi there"}]}


async def test_backend_complete_with_tool_call_and_bearer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMA_KEY", "sekret")
    seen: list[Seen] = []

    def handler(req: Seen) -> web.Response:
        seen.append(req)
        return reply(200, json_body={
            "id": "chatcmpl-9", "object": "chat.completion", "model": "smollm2",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_x", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]}}],
            "usage": {"prompt_tokens": 40, "completion_tokens": 9, "total_tokens": 49,
                      "prompt_tokens_details": {"cached_tokens": 30}}})

    ctx = CallContext()
    async with backend_answering(handler, "LLAMA_KEY") as backend:
        message = await backend.complete(REQUEST, TARGET, ctx)
    assert seen[0].path == "/v1/chat/completions"
    assert seen[0].headers["authorization"] == "Bearer sekret"
    assert message["content"] == [{"type": "tool_use", "id": "call_x", "name": "get_weather",
                                   "input": {"city": "Oslo"}}]
    assert message["stop_reason"] == "tool_use"
    assert message["usage"] == {"input_tokens": 10, "output_tokens": 9, "cache_read_input_tokens": 30}
    assert (ctx.usage.input_tokens, ctx.usage.output_tokens, ctx.usage.cache_read_input_tokens) == (10, 9, 30)
    assert not ctx.usage.estimated


async def test_backend_stream_tool_fragments_and_trailing_usage() -> None:
    """Usage in a chunk *after* the finish_reason chunk still reaches message_delta."""
    body = sse(
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Looking"}),
        chunk({"content": " up."}),
        chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                               "function": {"name": "get_weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": ": \"Oslo\"}"}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "call_2", "type": "function",
                               "function": {"name": "get_time", "arguments": "{}"}}]}),
        chunk({}, "tool_calls"),
        chunk(None, usage={"prompt_tokens": 21, "completion_tokens": 13, "total_tokens": 34}),
        b"[DONE]",
    )
    sent: list[dict[str, Any]] = []

    def handler(req: Seen) -> web.Response:
        sent.append(req.json())
        return reply(200, content=body, headers={"content-type": "text/event-stream"})

    ctx = CallContext()
    async with backend_answering(handler) as backend:
        events = await collect(backend, REQUEST, ctx)
    assert sent[0]["stream"] is True and sent[0]["stream_options"] == {"include_usage": True}
    types = [e["type"] for e in events]
    assert types[0] == "message_start" and types[-2:] == ["message_delta", "message_stop"]
    starts = [e["content_block"] for e in events if e["type"] == "content_block_start"]
    assert [b["type"] for b in starts] == ["text", "tool_use", "tool_use"]
    assert starts[1] == {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {}}
    fragments = [e["delta"]["partial_json"] for e in events
                 if e["type"] == "content_block_delta" and e["index"] == 1]
    assert fragments == ["{\"city\"", ": \"Oslo\"}"]  # passed on as they arrived
    assert types.count("content_block_start") == types.count("content_block_stop") == 3
    delta = events[-2]
    assert delta["delta"]["stop_reason"] == "tool_use"
    assert delta["usage"] == {"input_tokens": 21, "output_tokens": 13}
    assert (ctx.usage.input_tokens, ctx.usage.output_tokens, ctx.usage.estimated) == (21, 13, False)


async def test_backend_stream_without_usage_estimates_and_flags() -> None:
    body = sse(chunk({"role": "assistant"}), chunk({"content": "Hello there, friend!"}), chunk({}, "length"),
               b"[DONE]")
    ctx = CallContext()
    async with backend_answering(lambda req: reply(200, content=body)) as backend:
        events = await collect(backend, REQUEST, ctx)
    delta = events[-2]
    assert delta["delta"]["stop_reason"] == "max_tokens"
    assert delta["usage"]["output_tokens"] == 5  # 20 characters / 4
    assert delta["usage"]["input_tokens"] == chat_common.estimate_prompt_tokens(REQUEST) > 0
    assert ctx.usage.estimated
    assert ctx.usage.output_tokens == 5


async def test_backend_stream_error_before_first_chunk_falls_back() -> None:
    body = sse({"error": {"message": "model crashed", "code": 500}})
    async with backend_answering(lambda req: reply(200, content=body)) as backend:
        with pytest.raises(BackendUnavailable):
            await collect(backend, REQUEST, CallContext())
    body = sse({"error": {"message": "prompt too long", "code": 400, "type": "exceed_context_size_error"}})
    async with backend_answering(lambda req: reply(200, content=body)) as backend:
        with pytest.raises(UpstreamStatusError) as info:
            await collect(backend, REQUEST, CallContext())
    assert info.value.status == 400


async def test_backend_stream_cut_off_mid_answer_is_an_error() -> None:
    body = sse(chunk({"role": "assistant"}), chunk({"content": "Half an ans"}))
    ctx = CallContext()
    events: list[dict[str, Any]] = []
    async with backend_answering(lambda req: reply(200, content=body)) as backend:
        with pytest.raises(UpstreamError):
            async for event in backend.stream(REQUEST, TARGET, ctx):
                events.append(event)
    assert events[0]["type"] == "message_start"
    assert ctx.usage.estimated and ctx.usage.input_tokens > 0  # the estimate stands for accounting


@pytest.mark.parametrize("status", [500, 503])
async def test_backend_5xx_is_unavailable(status: int) -> None:
    async with backend_answering(lambda req: reply(status, json_body={"error": "boom"})) as backend:
        with pytest.raises(BackendUnavailable):
            await backend.complete(REQUEST, TARGET, CallContext())
        with pytest.raises(BackendUnavailable):
            await collect(backend, REQUEST, CallContext())


async def test_backend_4xx_goes_to_client() -> None:
    async with backend_answering(lambda req: reply(400, json_body={"error": {"message": "bad"}})) as backend:
        with pytest.raises(UpstreamStatusError) as info:
            await backend.complete(REQUEST, TARGET, CallContext())
    assert info.value.status == 400


async def test_backend_connection_refused_is_unavailable_and_health_false() -> None:
    from tests.doubles.fake_ollama import absent_url

    config = BackendConfig(type="openai", base_url=f"{absent_url()}/v1", connect_timeout_s=2)
    backend = OpenAIBackend("llama", config)
    with pytest.raises(BackendUnavailable) as info:
        await collect(backend, REQUEST, CallContext())
    assert "connection failed" in info.value.reason
    ok, detail = await backend.health()
    assert not ok and "connection failed" in detail
    await backend.aclose()


async def test_backend_models_and_health() -> None:
    def handler(req: Seen) -> web.Response:
        assert req.path == "/v1/models"
        return reply(200, json_body={"object": "list", "data": [{"id": "smollm2"}, {"id": "qwen"}]})

    async with backend_answering(handler) as backend:
        assert await backend.list_models() == ["smollm2", "qwen"]
        assert await backend.health() == (True, "2 model(s)")


def test_malformed_tool_arguments_are_kept_visible() -> None:
    assert chat_common.parse_arguments("{\"a\": 1}") == {"a": 1}
    assert chat_common.parse_arguments("") == {}
    assert chat_common.parse_arguments("{broken") == {"invalid_json_arguments": "{broken"}


def test_chunks_are_valid_json_for_msgspec() -> None:
    # The encoder's output decodes with the same decoder the router uses for request bodies.
    encoder = api.StreamEncoder("m")
    raw = encoder.feed(TOOL_STREAM[0])
    assert msgspec.json.decode(raw[len(b"data: "):].strip())["object"] == "chat.completion.chunk"
