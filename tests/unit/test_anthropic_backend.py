"""AnthropicBackend against the fake Anthropic API on a loopback port (no other host is contacted)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Iterator

import anthropic
import httpx
import pytest

from aibox_router.backends import create_backend
from aibox_router.backends.anthropic import AnthropicBackend
from aibox_router.backends.base import BackendCredentialsRejected, BackendUnavailable
from aibox_router.config import BackendConfig, TargetConfig
from aibox_router.errors import UpstreamStatusError
from aibox_router.internal import CallContext
from tests.doubles.fake_anthropic import MODELS, FakeAnthropic, Reply
from tests.support.anthropic_stream import accumulate

KEY_ENV = "AIBOX_TEST_ANTHROPIC_KEY"
ROUTER_KEY = "sk-ant-router-key-for-tests"
CLIENT_KEY = "client-key-that-must-not-travel"
TARGET = TargetConfig(backend="claude", model="claude-sonnet-4-5-20250929")


def request(**fields) -> dict:
    return {"model": TARGET.model, "max_tokens": 256, "messages": [{"role": "user", "content": "hello"}], **fields}


@pytest.fixture(scope="module")
def server() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeAnthropic) -> FakeAnthropic:
    server.reset()
    return server


@pytest.fixture(autouse=True)
def router_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, ROUTER_KEY)


def make_backend(base_url: str, **overrides) -> AnthropicBackend:
    config = BackendConfig(**{"type": "anthropic", "base_url": base_url, "api_key_env": KEY_ENV,
                              "connect_timeout_s": 2.0, "read_timeout_s": 10.0, **overrides})
    backend = create_backend("claude", config)
    assert isinstance(backend, AnthropicBackend)
    return backend


@pytest.fixture
async def backend(fake: FakeAnthropic) -> AsyncIterator[AnthropicBackend]:
    backend = make_backend(fake.url)
    yield backend
    await backend.aclose()


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def collect(backend: AnthropicBackend, req: dict, ctx: CallContext) -> list[dict]:
    return [event async for event in backend.stream(req, TARGET, ctx)]


# -- complete ---------------------------------------------------------------------------------------


async def test_complete_returns_the_message_and_tracks_usage(fake, backend):
    fake.replies.append(Reply.text("Hi there", input_tokens=40, output_tokens=3,
                                   cache_creation_input_tokens=7, cache_read_input_tokens=300))
    ctx = CallContext()
    req = request(stream=True, metadata={"user_id": "u"}, unknown_future_field={"x": 1})
    message = await backend.complete(req, TARGET, ctx)

    assert message["content"] == [{"type": "text", "text": "Hi there"}]
    assert message["model"] == TARGET.model and message["stop_reason"] == "end_turn"
    assert (ctx.usage.input_tokens, ctx.usage.output_tokens) == (40, 3)
    assert (ctx.usage.cache_creation_input_tokens, ctx.usage.cache_read_input_tokens) == (7, 300)
    assert ctx.upstream_request_id.startswith("req_fake")
    [sent] = fake.requests
    assert sent.path == "/v1/messages"
    # Passed through untouched, except that complete() asks for a non-streaming answer.
    assert sent.body == {k: v for k, v in req.items() if k != "stream"}


async def test_router_key_and_forward_headers_are_sent_never_client_credentials(fake, backend):
    ctx = CallContext(forward_headers={"anthropic-version": "2023-06-01",
                                       "anthropic-beta": "interleaved-thinking-2025-05-14,context-1m-2025-08-07",
                                       "x-api-key": CLIENT_KEY, "Authorization": f"Bearer {CLIENT_KEY}"})
    await backend.complete(request(), TARGET, ctx)
    await collect(backend, request(), ctx)
    for sent in fake.requests:
        assert sent.headers["x-api-key"] == ROUTER_KEY
        assert sent.headers["anthropic-beta"] == "interleaved-thinking-2025-05-14,context-1m-2025-08-07"
        assert sent.headers["anthropic-version"] == "2023-06-01"
        assert "authorization" not in sent.headers
        assert CLIENT_KEY not in json.dumps(sent.headers)


async def test_anthropic_version_defaults_when_the_client_sent_none(fake, backend):
    await backend.complete(request(), TARGET, CallContext())
    assert fake.requests[0].headers["anthropic-version"] == "2023-06-01"
    assert "anthropic-beta" not in fake.requests[0].headers


async def test_missing_key_is_unavailable_without_calling_upstream(fake, backend, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(BackendUnavailable, match=KEY_ENV):
        await backend.complete(request(), TARGET, CallContext())
    with pytest.raises(BackendUnavailable, match=KEY_ENV):
        await collect(backend, request(), CallContext())
    assert fake.requests == []


# -- stream -----------------------------------------------------------------------------------------


async def test_stream_yields_the_real_event_sequence(fake, backend):
    fake.replies.append(Reply.text("Hello, streaming world"))
    ctx = CallContext()
    events = await collect(backend, request(), ctx)

    types = [e["type"] for e in events]
    assert types[:3] == ["message_start", "content_block_start", "ping"]
    assert types[-2:] == ["message_delta", "message_stop"]
    assert types.count("content_block_delta") > 1  # the text arrived in pieces
    assert fake.requests[0].body["stream"] is True
    message = accumulate(events)
    assert message["content"] == [{"type": "text", "text": "Hello, streaming world"}]
    assert ctx.upstream_request_id.startswith("req_fake")


async def test_stream_tool_use_fragments_reassemble(fake, backend):
    tool_input = {"command": "grep -rn \"TODO\" src/ | head -50", "timeout": 120000,
                  "description": "Find TODOs ü"}
    fake.replies.append(Reply.tool_use("Bash", tool_input, text="Let me search."))
    events = await collect(backend, request(tools=[{"name": "Bash", "input_schema": {"type": "object"}}]),
                           CallContext())

    fragments = [e["delta"]["partial_json"] for e in events
                 if e["type"] == "content_block_delta" and e["delta"]["type"] == "input_json_delta"]
    assert len(fragments) > 3
    assert json.loads("".join(fragments)) == tool_input
    message = accumulate(events)
    assert message["stop_reason"] == "tool_use"
    assert message["content"][1] == {"type": "tool_use", "id": "toolu_01FakeToolUse", "name": "Bash",
                                     "input": tool_input}


async def test_stream_thinking_and_signature(fake, backend):
    fake.replies.append(Reply.thinking("The user greets me; answer briefly.", "Hi!", signature="sig123"))
    message = accumulate(await collect(backend, request(thinking={"type": "enabled", "budget_tokens": 2048}),
                                       CallContext()))
    assert message["content"] == [
        {"type": "thinking", "thinking": "The user greets me; answer briefly.", "signature": "sig123"},
        {"type": "text", "text": "Hi!"}]


async def test_stream_tracks_usage_including_cache_tokens(fake, backend):
    fake.replies.append(Reply.text("ok", input_tokens=12, output_tokens=250,
                                   cache_creation_input_tokens=1500, cache_read_input_tokens=30000))
    ctx = CallContext()
    await collect(backend, request(), ctx)
    assert ctx.usage.as_anthropic() == {"input_tokens": 12, "output_tokens": 250,
                                        "cache_creation_input_tokens": 1500, "cache_read_input_tokens": 30000}


async def test_mid_stream_error_event_is_yielded(fake, backend):
    fake.replies.append(Reply.text("partial answer", stream_error="overloaded_error"))
    ctx = CallContext()
    events = await collect(backend, request(), ctx)
    assert [e["type"] for e in events] == ["message_start", "content_block_start", "ping", "content_block_delta",
                                           "error"]
    assert events[-1] == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    assert ctx.usage.input_tokens == 25  # what was already spent is still accounted for


async def test_error_event_before_anything_was_sent_raises(fake, backend):
    """Nothing reached the client yet: overload may fall back, a request error is the client's."""
    fake.replies.append(Reply.text("x", stream_error="overloaded_error", stream_error_after_events=0))
    with pytest.raises(BackendUnavailable, match="overloaded_error"):
        await collect(backend, request(), CallContext())
    fake.replies.append(Reply.text("x", stream_error="invalid_request_error", stream_error_after_events=0))
    with pytest.raises(UpstreamStatusError) as info:
        await collect(backend, request(), CallContext())
    assert info.value.status == 400 and info.value.anthropic_type == "invalid_request_error"


async def test_stream_cut_short_ends_with_an_error_event(fake, backend):
    fake.replies.append(Reply.text("this answer never finishes", cut_after_events=4))
    events = await collect(backend, request(), CallContext())
    assert len(events) == 5
    assert events[-1]["type"] == "error"
    assert "before message_stop" in events[-1]["error"]["message"]


# -- failures ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 529, 503])
async def test_5xx_is_unavailable_so_the_pipeline_can_fall_back(fake, backend, status):
    fake.force_status = status
    with pytest.raises(BackendUnavailable) as info:
        await backend.complete(request(), TARGET, CallContext())
    assert info.value.status == status
    with pytest.raises(BackendUnavailable):
        await collect(backend, request(), CallContext())


@pytest.mark.parametrize("status", [401, 403])
async def test_a_rejected_router_key_is_unavailable_never_the_clients_error(fake, backend, status):
    """The client's key never travels upstream, so 401/403 is the router's own key: fall back, never pass it on."""
    fake.replies.extend([Reply.error(status, "invalid x-api-key")] * 2)
    for call in (backend.complete(request(), TARGET, CallContext()), collect(backend, request(), CallContext())):
        with pytest.raises(BackendCredentialsRejected) as info:
            await call
        assert info.value.status == status and "router's own API key" in info.value.reason


@pytest.mark.parametrize(("status", "etype"), [(400, "invalid_request_error"), (429, "rate_limit_error")])
async def test_4xx_goes_to_the_client_with_the_upstream_body(fake, backend, status, etype):
    fake.replies.extend([Reply.error(status, "prompt is too long"), Reply.error(status, "prompt is too long")])
    for call in (backend.complete(request(), TARGET, CallContext()), collect(backend, request(), CallContext())):
        with pytest.raises(UpstreamStatusError) as info:
            await call
        assert info.value.status == status and info.value.anthropic_type == etype
        assert json.loads(info.value.body)["error"] == {"type": etype, "message": "prompt is too long"}
    if status == 429:
        assert info.value.headers == {"retry-after": "7"}


async def test_connection_refused_is_unavailable():
    backend = make_backend(f"http://127.0.0.1:{unused_port()}")
    try:
        with pytest.raises(BackendUnavailable, match="connection failed"):
            await backend.complete(request(), TARGET, CallContext())
        with pytest.raises(BackendUnavailable, match="connection failed"):
            await collect(backend, request(), CallContext())
        reachable, detail = await backend.health()
        assert not reachable and "connection failed" in detail
    finally:
        await backend.aclose()


async def test_read_timeout_is_unavailable(fake):
    fake.delay_s = 0.6
    backend = make_backend(fake.url, read_timeout_s=0.2)
    try:
        with pytest.raises(BackendUnavailable, match="timeout"):
            await collect(backend, request(), CallContext())
    finally:
        await backend.aclose()
    # The fake still answers the abandoned request after its delay; let it do so now, or it would
    # take a reply scripted by a later test.
    await asyncio.sleep(0.6)


# -- count_tokens, health, models -------------------------------------------------------------------


async def test_count_tokens_forwards_the_prompt_only(fake, backend):
    fake.count_tokens_result = 1234
    req = request(system="be brief", stream=True, temperature=0.2)
    assert await backend.count_tokens(req, CallContext()) == 1234
    sent = fake.requests[0]
    assert sent.path == "/v1/messages/count_tokens" and sent.headers["x-api-key"] == ROUTER_KEY
    assert sent.body == {"model": TARGET.model, "system": "be brief", "messages": req["messages"]}


async def test_health_is_free_and_reports_a_rejected_key_as_down(fake, backend):
    assert await backend.health() == (True, "reachable")
    fake.expected_key = "a-different-key"
    try:
        reachable, detail = await backend.health()
    finally:
        fake.expected_key = None
    assert not reachable and "rejected" in detail  # every call would fail: the backend is down
    assert {(r.method, r.path) for r in fake.requests} == {("GET", "/v1/models")}  # nothing billable
    fake.force_status = 500
    assert await backend.health() == (False, "HTTP 500")


async def test_list_models(fake, backend):
    assert await backend.list_models() == MODELS


# -- the fake itself --------------------------------------------------------------------------------


def test_the_fake_speaks_what_the_official_sdk_parses(fake):
    """The fake's wire format is checked by the official SDK, so the tests above test against reality."""
    fake.replies.extend([Reply.tool_use("Read", {"file_path": "/etc/hosts"}, text="Reading.",
                                        cache_read_input_tokens=99)] * 2)
    client = anthropic.Anthropic(api_key=ROUTER_KEY, base_url=fake.url, max_retries=0)
    ask = {"model": "claude-fake-model", "max_tokens": 100, "messages": [{"role": "user", "content": "read hosts"}]}
    with client.messages.stream(**ask) as stream:
        streamed = stream.get_final_message()
    plain = client.messages.create(**ask)
    for message in (streamed, plain):
        assert [b.type for b in message.content] == ["text", "tool_use"]
        assert message.content[1].input == {"file_path": "/etc/hosts"}
        assert message.stop_reason == "tool_use"
        assert message.usage.cache_read_input_tokens == 99 and message.usage.output_tokens == 12

    fake.expected_key = ROUTER_KEY
    try:
        wrong_key = anthropic.Anthropic(api_key="sk-wrong", base_url=fake.url, max_retries=0)
        with pytest.raises(anthropic.AuthenticationError):
            wrong_key.messages.create(**ask)
    finally:
        fake.expected_key = None
    no_key = httpx.post(f"{fake.url}/v1/messages", json=ask, trust_env=False)
    assert no_key.status_code == 401 and no_key.json()["error"]["type"] == "authentication_error"
