"""The Anthropic inbound adapter: validation, wire encoding, error rendering, conversions."""

from __future__ import annotations

import json

import pytest

from aibox_router.errors import (
    BudgetExhaustedError,
    InvalidRequestError,
    UpstreamError,
    UpstreamStatusError,
)
from aibox_router.wire import anthropic as adapter
from aibox_router.wire import sse
from tests.support.anthropic_stream import accumulate, accumulate_async, message_to_events


def body(**fields) -> bytes:
    base = {"model": "claude-sonnet-4-5", "max_tokens": 1024, "messages": [{"role": "user", "content": "hi"}]}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


# -- parse_request ----------------------------------------------------------------------------------


def test_parse_request_keeps_every_field_including_unknown_ones():
    raw = {
        "model": "claude-opus-4-1", "max_tokens": 32000, "stream": True,
        "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "list files"}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": {"c": "ls"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "a\nb"}]},
        ],
        "tools": [{"name": "Bash", "input_schema": {"type": "object"}}],
        "thinking": {"type": "enabled", "budget_tokens": 4096},
        "metadata": {"user_id": "u1"},
        "context_management": {"edits": []},  # a field the router does not know
    }
    assert adapter.parse_request(json.dumps(raw).encode()) == raw


def test_parse_request_accepts_string_system_and_adaptive_thinking():
    request = adapter.parse_request(body(system="be brief", thinking={"type": "adaptive"}))
    assert request["system"] == "be brief"
    assert request["thinking"] == {"type": "adaptive"}


@pytest.mark.parametrize(("raw", "field"), [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "expected a JSON object"),
    (body(model=...), "model: Field required"),
    (body(model=7), "model: expected a non-empty string"),
    (body(messages=...), "messages: Field required"),
    (body(messages={"role": "user"}), "messages: expected a list"),
    (body(messages=["hi"]), "messages[0]: expected an object"),
    (body(messages=[{"content": "hi"}]), "messages[0].role"),
    (body(messages=[{"role": "user", "content": 5}]), "messages[0].content"),
    (body(messages=[{"role": "user", "content": [{"text": "x"}]}]), "messages[0].content[0]"),
    (body(max_tokens=...), "max_tokens: Field required"),
    (body(max_tokens="100"), "max_tokens: expected an integer"),
    (body(max_tokens=True), "max_tokens: expected an integer"),
    (body(max_tokens=0), "max_tokens: expected an integer >= 1"),
    (body(stream="yes"), "stream: expected a boolean"),
    (body(system=5), "system: expected a string or a list"),
    (body(system=["text"]), "system[0]"),
    (body(tools={"name": "x"}), "tools: expected a list"),
    (body(metadata="u"), "metadata: expected an object"),
    (body(thinking={"type": "enabled"}), "thinking.budget_tokens"),
    (body(thinking="on"), "thinking: expected an object"),
])
def test_parse_request_names_the_bad_field(raw, field):
    with pytest.raises(InvalidRequestError) as info:
        adapter.parse_request(raw)
    assert field in info.value.message
    assert info.value.status == 400


def test_count_tokens_request_needs_no_max_tokens_but_checks_the_rest():
    request = adapter.parse_count_tokens_request(body(max_tokens=...))
    assert "max_tokens" not in request and request["model"] == "claude-sonnet-4-5"
    with pytest.raises(InvalidRequestError, match="messages"):
        adapter.parse_count_tokens_request(b'{"model": "m"}')


# -- encoding ---------------------------------------------------------------------------------------


def test_encode_event_uses_anthropic_framing_exactly():
    wire = adapter.encode_event({"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "a\nb"}})
    assert wire == (b'event: content_block_delta\n'
                    b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a\\nb"}}'
                    b'\n\n')
    assert adapter.encode_event({"type": "ping"}) == b'event: ping\ndata: {"type":"ping"}\n\n'


def test_encode_message_is_json():
    message = {"id": "msg_1", "type": "message", "content": [{"type": "text", "text": "ü"}]}
    assert json.loads(adapter.encode_message(message)) == message


def _sample_message() -> dict:
    return {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
        "content": [
            {"type": "thinking", "thinking": "Let me think.", "signature": "sig=="},
            {"type": "text", "text": "I'll run it."},
            {"type": "tool_use", "id": "toolu_1", "name": "Bash",
             "input": {"command": "ls -la", "nested": {"a": [1, 2, "x\"y"]}}},
        ],
        "stop_reason": "tool_use", "stop_sequence": None,
        "usage": {"input_tokens": 100, "output_tokens": 42, "cache_creation_input_tokens": 10,
                  "cache_read_input_tokens": 80},
    }


@pytest.mark.parametrize("chunk_size", [1, 3, 64, 100000])
@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_sse_round_trip_through_the_decoder(chunk_size, newline):
    events = message_to_events(_sample_message())
    events.insert(1, {"type": "ping"})
    wire = b"".join(adapter.encode_event(e) for e in events).decode().replace("\n", newline).encode()
    decoder = sse.SSEDecoder()
    decoded = []
    for i in range(0, len(wire), chunk_size):
        decoded.extend(decoder.feed(wire[i:i + chunk_size].decode()))
    decoded.extend(decoder.flush())
    assert [e.event for e in decoded] == [e["type"] for e in events]
    assert [json.loads(e.data) for e in decoded] == events


def test_sse_decoder_handles_comments_multiline_data_ids_and_unterminated_events():
    decoder = sse.SSEDecoder()
    out = decoder.feed("\ufeff: keep-alive\nevent: a\ndata: one\ndata:two\nid: 7\nretry: 50\nbogus: x\n\n")
    out += decoder.feed("data: no event name\n\n\n\nevent: lost\n\ndata: truncated")
    out += decoder.flush()
    assert out == [sse.ServerSentEvent("a", "one\ntwo", "7", 50),
                   sse.ServerSentEvent("message", "no event name", "7", 50)]


def test_sse_encode_splits_multiline_data():
    assert sse.encode("x\ny", event="e") == b"event: e\ndata: x\ndata: y\n\n"
    assert sse.SSEDecoder().feed(sse.encode("x\ny").decode()) == [sse.ServerSentEvent("message", "x\ny")]


async def test_aiter_sse_reassembles_utf8_split_across_chunks():
    wire = adapter.encode_event({"type": "content_block_delta", "delta": {"type": "text_delta", "text": "é日本"}})

    async def chunks():
        for i in range(len(wire)):
            yield wire[i:i + 1]

    events = [e async for e in sse.aiter_sse(chunks())]
    assert json.loads(events[0].data)["delta"]["text"] == "é日本"


# -- errors -----------------------------------------------------------------------------------------


def test_error_body_uses_the_error_type():
    err = InvalidRequestError("max_tokens: Field required")
    assert json.loads(adapter.error_body(err)) == {
        "type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"}}
    budget = json.loads(adapter.error_body(BudgetExhaustedError("daily budget spent")))
    assert budget["error"]["type"] == "invalid_request_error"


def test_error_body_passes_an_upstream_anthropic_error_through():
    upstream = {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"},
                "request_id": "req_1"}
    err = UpstreamStatusError(429, "backend said 429", body=json.dumps(upstream).encode())
    assert json.loads(adapter.error_body(err)) == upstream
    not_anthropic = UpstreamStatusError(404, "backend said 404", body=b'{"detail": "no such model"}')
    assert json.loads(adapter.error_body(not_anthropic)) == {
        "type": "error", "error": {"type": "not_found_error", "message": "backend said 404"}}


def test_error_event_is_an_sse_error_event():
    wire = adapter.error_event(UpstreamError("backend died"))
    [event] = sse.SSEDecoder().feed(wire.decode())
    assert event.event == "error"
    assert json.loads(event.data) == {"type": "error", "error": {"type": "api_error", "message": "backend died"}}


# -- system messages --------------------------------------------------------------------------------


# -- accumulate -------------------------------------------------------------------------------------


def test_accumulate_rebuilds_the_message_from_its_events():
    message = _sample_message()
    assert accumulate(message_to_events(message)) == message


def test_accumulate_joins_fragments_and_merges_usage():
    events = [
        {"type": "message_start", "message": {"id": "msg_2", "type": "message", "role": "assistant", "model": "m",
                                              "content": [], "stop_reason": None, "stop_sequence": None,
                                              "usage": {"input_tokens": 50, "cache_read_input_tokens": 40,
                                                        "cache_creation_input_tokens": 5, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t", "name": "Read",
                                                                      "input": {}}},
        {"type": "ping"},
        *({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": p}}
          for p in ["", '{"file_', 'path": "/tm', 'p/x"', ', "limit": 1', "0}"]),
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
         "usage": {"output_tokens": 33}},
        {"type": "message_stop"},
    ]
    message = accumulate(iter(events))
    assert message["content"] == [{"type": "tool_use", "id": "t", "name": "Read",
                                   "input": {"file_path": "/tmp/x", "limit": 10}}]
    assert message["stop_reason"] == "tool_use"
    assert message["usage"] == {"input_tokens": 50, "cache_read_input_tokens": 40,
                                "cache_creation_input_tokens": 5, "output_tokens": 33}


def test_accumulate_tool_use_without_input_gets_an_empty_object():
    events = message_to_events({"id": "m", "type": "message", "role": "assistant", "model": "m",
                                "content": [{"type": "tool_use", "id": "t", "name": "Now", "input": {}}],
                                "stop_reason": "tool_use", "usage": {"input_tokens": 1, "output_tokens": 1}})
    events[2]["delta"]["partial_json"] = ""
    assert accumulate(events)["content"][0]["input"] == {}


def test_accumulate_raises_the_upstream_error_event():
    events = message_to_events(_sample_message())[:3]
    events.append({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    with pytest.raises(UpstreamStatusError) as info:
        accumulate(events)
    assert info.value.status == 529 and info.value.anthropic_type == "overloaded_error"
    assert json.loads(adapter.error_body(info.value))["error"] == {"type": "overloaded_error",
                                                                   "message": "Overloaded"}


@pytest.mark.parametrize(("events", "match"), [
    ([], "ended before message_start"),
    ([{"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}],
     "before message_start"),
    (message_to_events(_sample_message())[:-1], "ended before message_stop"),
])
def test_accumulate_rejects_incomplete_streams(events, match):
    with pytest.raises(UpstreamError, match=match):
        accumulate(events)


def test_accumulate_rejects_broken_tool_json():
    events = message_to_events(_sample_message())
    for event in events:
        if event.get("delta", {}).get("type") == "input_json_delta":
            event["delta"]["partial_json"] = '{"command": '
    with pytest.raises(UpstreamError, match="invalid JSON"):
        accumulate(events)


async def test_accumulate_async_matches_accumulate():
    async def events():
        for event in message_to_events(_sample_message()):
            yield event

    assert await accumulate_async(events()) == _sample_message()
