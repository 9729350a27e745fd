"""A test double of the Anthropic Messages API.

It stands in for the real Anthropic Messages API, which tests cannot reach: a Starlette app served by
uvicorn on a loopback port in a background thread. It speaks the real wire format: the same JSON
objects, the same SSE framing and event order (message_start with cache usage, content blocks for
text, tool_use with input_json_delta fragments and thinking with a signature, ping, message_delta with
stop_reason and the cumulative usage the real API repeats there: input, output, cache write total (not
its 5-minute / 1-hour split, which only message_start carries), cache read and server tool use;
message_stop), the same error bodies, and 401 without a key (sent as
``x-api-key``, or as ``Authorization: Bearer`` the way recent official SDKs send it).

Knobs: queue ``Reply`` objects in ``replies`` (otherwise ``default_reply`` answers), force an HTTP
status with ``force_status``, slow every answer with ``delay_s``. ``bill_worst_case`` makes every answer
report the most a request could be billed: each byte of its prompt (system, messages, tools) as a
1-hour cache write, ``max_tokens`` output tokens, and ``max_uses`` web searches per web search tool.
Every request is recorded in ``requests`` (path, headers, parsed body).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Self

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support.loopback_server import LoopbackServer

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
                529: "overloaded_error"}

MODELS = ["claude-sonnet-4-5-20250929", "claude-haiku-4-5-20251001", "claude-opus-4-1-20250805"]


@dataclass
class Reply:
    """One scripted answer: the content blocks of the final message, its usage, and failure modes."""

    content: list[dict[str, Any]] = field(default_factory=lambda: [{"type": "text", "text": "Hello!"}])
    stop_reason: str = "end_turn"
    input_tokens: int = 25
    output_tokens: int = 12
    cache_creation_input_tokens: int = 0  # 5-minute cache writes
    cache_creation_1h_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    web_search_requests: int = 0
    status: int = 200  # anything else answers with that status and an Anthropic error body
    error_message: str = "scripted error"
    stream_error: str | None = None  # an error type sent as an `error` event, which ends the stream
    stream_error_after_events: int = 4  # events sent before that error (4: message_start, one delta)
    cut_after_events: int | None = None  # end the stream (no message_stop) after this many events

    @classmethod
    def text(cls, text: str, **kw: Any) -> Reply:
        return cls(content=[{"type": "text", "text": text}], **kw)

    @classmethod
    def tool_use(cls, name: str, tool_input: dict[str, Any], text: str | None = None, **kw: Any) -> Reply:
        blocks = [{"type": "text", "text": text}] if text else []
        blocks.append({"type": "tool_use", "id": "toolu_01FakeToolUse", "name": name, "input": tool_input})
        return cls(content=blocks, stop_reason="tool_use", **kw)

    @classmethod
    def thinking(cls, thinking: str, text: str, signature: str = "EqQBCkYIARgCIkD", **kw: Any) -> Reply:
        return cls(content=[{"type": "thinking", "thinking": thinking, "signature": signature},
                            {"type": "text", "text": text}], **kw)

    @classmethod
    def error(cls, status: int, message: str = "scripted error") -> Reply:
        return cls(status=status, error_message=message)


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


def error_json(status: int, message: str, request_id: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": _ERROR_TYPES.get(status, "api_error"), "message": message},
            "request_id": request_id}


def _chunks(text: str, size: int) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


def _sse(event: dict[str, Any]) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


class FakeAnthropic:
    """``with FakeAnthropic() as fake: ... fake.url ...``"""

    def __init__(self, api_key: str | None = None):
        self.expected_key = api_key  # None: any non-empty x-api-key is accepted
        self.replies: list[Reply] = []
        self.default_reply = Reply()
        self.force_status: int | None = None
        self.delay_s = 0.0
        self.bill_worst_case = False
        self.count_tokens_result: int | None = None  # None: a rough count of the request text
        self.requests: list[Recorded] = []
        self._ids = itertools.count(1)
        self.url = ""
        self.app = Starlette(routes=[
            Route("/v1/messages", self._messages, methods=["POST"]),
            Route("/v1/messages/count_tokens", self._count_tokens, methods=["POST"]),
            Route("/v1/models", self._models, methods=["GET"]),
        ])
        self._serving = LoopbackServer(self.app, name="fake-anthropic", loop="asyncio", http="h11")

    def reset(self) -> None:
        """Forget requests and knobs, so one server can serve a whole test module."""
        self.replies.clear()
        self.default_reply = Reply()
        self.force_status = None
        self.delay_s = 0.0
        self.bill_worst_case = False
        self.count_tokens_result = None
        self.requests.clear()

    # -- serving ---------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.url = self._serving.start(timeout=5).base_url
        return self

    def __exit__(self, *exc: object) -> None:
        self._serving.stop()

    # -- endpoints -------------------------------------------------------------------------------

    async def _record(self, request: Request) -> Recorded:
        raw = await request.body()
        body = json.loads(raw) if raw else None
        rec = Recorded(request.method, request.url.path, {k.lower(): v for k, v in request.headers.items()}, body)
        self.requests.append(rec)
        return rec

    def _refusal(self, rec: Recorded, request_id: str) -> Response | None:
        """The failures every endpoint shares: missing/wrong key, forced status."""
        # The API takes the key as x-api-key; newer official SDKs send it as a bearer token instead.
        bearer = rec.headers.get("authorization", "")
        key = rec.headers.get("x-api-key") or (bearer[7:] if bearer.lower().startswith("bearer ") else None)
        if not key or (self.expected_key is not None and key != self.expected_key):
            return JSONResponse(error_json(401, "invalid x-api-key", request_id), 401,
                                headers={"request-id": request_id})
        if self.force_status is not None:
            return self._error(self.force_status, "forced status", request_id)
        return None

    def _error(self, status: int, message: str, request_id: str) -> Response:
        headers = {"request-id": request_id}
        if status == 429:
            headers["retry-after"] = "7"
        return JSONResponse(error_json(status, message, request_id), status, headers=headers)

    async def _messages(self, request: Request) -> Response:
        rec = await self._record(request)
        request_id = f"req_fake{next(self._ids):06d}"
        # Everything about the answer is decided on arrival: a request still sleeping in delay_s
        # after its client gave up must not take a reply queued later for another test.
        refusal = self._refusal(rec, request_id)
        reply = self.replies.pop(0) if refusal is None and self.replies else self.default_reply
        if self.bill_worst_case:
            reply = worst_case_reply(reply, rec.body)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if refusal is not None:
            return refusal
        if reply.status != 200:
            return self._error(reply.status, reply.error_message, request_id)
        message = self._message(reply, rec.body)
        if not rec.body.get("stream"):
            return JSONResponse(message, headers={"request-id": request_id})
        return StreamingResponse(self._stream(reply, message), media_type="text/event-stream",
                                 headers={"request-id": request_id, "cache-control": "no-cache"})

    async def _count_tokens(self, request: Request) -> Response:
        rec = await self._record(request)
        request_id = f"req_fake{next(self._ids):06d}"
        refusal = self._refusal(rec, request_id)
        if refusal is not None:
            return refusal
        if "max_tokens" in rec.body:
            # The real endpoint rejects fields that only the Messages endpoint takes.
            return self._error(400, "max_tokens: Extra inputs are not permitted", request_id)
        tokens = self.count_tokens_result
        if tokens is None:
            text = json.dumps([rec.body.get("system"), rec.body.get("messages"), rec.body.get("tools")])
            tokens = max(1, len(text) // 4)
        return JSONResponse({"input_tokens": tokens}, headers={"request-id": request_id})

    async def _models(self, request: Request) -> Response:
        rec = await self._record(request)
        refusal = self._refusal(rec, f"req_fake{next(self._ids):06d}")
        if refusal is not None:
            return refusal
        data = [{"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
                for m in MODELS]
        return JSONResponse({"data": data, "has_more": False, "first_id": MODELS[0], "last_id": MODELS[-1]})

    # -- message and stream ----------------------------------------------------------------------

    def _usage(self, reply: Reply, body: dict[str, Any], output_tokens: int, searches: int) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "input_tokens": reply.input_tokens,
            "cache_creation_input_tokens": reply.cache_creation_input_tokens + reply.cache_creation_1h_input_tokens,
            "cache_read_input_tokens": reply.cache_read_input_tokens,
            "cache_creation": {"ephemeral_5m_input_tokens": reply.cache_creation_input_tokens,
                               "ephemeral_1h_input_tokens": reply.cache_creation_1h_input_tokens},
            "output_tokens": output_tokens, "server_tool_use": {"web_search_requests": searches},
            "service_tier": "standard"}
        # Like the real API, the usage says which speed and geo the request ran at.
        for key in ("speed", "inference_geo"):
            if isinstance(body.get(key), str):
                usage[key] = body[key]
        return usage

    def _message(self, reply: Reply, body: dict[str, Any]) -> dict[str, Any]:
        return {"id": f"msg_01Fake{next(self._ids):08d}", "type": "message", "role": "assistant",
                "model": body.get("model", "claude-unknown"), "content": reply.content,
                "stop_reason": reply.stop_reason, "stop_sequence": None,
                "usage": self._usage(reply, body, reply.output_tokens, reply.web_search_requests)}

    def _events(self, reply: Reply, message: dict[str, Any]) -> list[dict[str, Any]]:
        final = message["usage"]
        start = {**message, "content": [], "stop_reason": None, "stop_sequence": None,
                 "usage": {**final, "output_tokens": 1, "server_tool_use": {"web_search_requests": 0}}}
        events: list[dict[str, Any]] = [{"type": "message_start", "message": start}]
        for index, block in enumerate(reply.content):
            events.extend(_block_events(index, block))
            if index == 0:
                events.insert(2, {"type": "ping"})  # the real API pings right after the first block starts
        # The real message_delta repeats the cumulative counts, but not the cache_creation split.
        delta_usage = {key: final[key] for key in ("input_tokens", "cache_creation_input_tokens",
                                                   "cache_read_input_tokens", "output_tokens", "server_tool_use")}
        events.append({"type": "message_delta", "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
                       "usage": delta_usage})
        events.append({"type": "message_stop"})
        return events

    async def _stream(self, reply: Reply, message: dict[str, Any]) -> AsyncIterator[bytes]:
        events = self._events(reply, message)
        if reply.stream_error:
            message = "Overloaded" if reply.stream_error == "overloaded_error" else "scripted stream error"
            events = [*events[: reply.stream_error_after_events],
                      {"type": "error", "error": {"type": reply.stream_error, "message": message}}]
        if reply.cut_after_events is not None:
            events = events[: reply.cut_after_events]
        for event in events:
            yield _sse(event)
            await asyncio.sleep(0)  # separate writes, so clients see the stream arrive in pieces


def worst_case_reply(reply: Reply, body: dict[str, Any]) -> Reply:
    """*reply* billed at the most the request allows (see the module docstring)."""
    # Compact UTF-8 JSON: a token is at least one byte of the text it stands for.
    prompt = len(json.dumps([body.get("system"), body.get("messages"), body.get("tools")],
                            separators=(",", ":"), ensure_ascii=False).encode())
    searches = sum(int(tool.get("max_uses") or 0) for tool in body.get("tools") or []
                   if isinstance(tool, dict) and str(tool.get("type", "")).startswith("web_search"))
    return dataclasses.replace(reply, input_tokens=0, cache_creation_input_tokens=0,
                               cache_creation_1h_input_tokens=prompt, cache_read_input_tokens=0,
                               output_tokens=int(body.get("max_tokens") or 0), web_search_requests=searches)


def _block_events(index: int, block: dict[str, Any]) -> list[dict[str, Any]]:
    btype = block["type"]
    if btype == "text":
        start = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": part} for part in _chunks(block["text"], 5)]
    elif btype == "tool_use":
        start = {**block, "input": {}}
        # Like the real API: an empty first fragment, then the JSON in pieces that split tokens.
        deltas = [{"type": "input_json_delta", "partial_json": part}
                  for part in ["", *_chunks(json.dumps(block["input"]), 7)]]
    elif btype == "thinking":
        start = {"type": "thinking", "thinking": "", "signature": ""}
        deltas = [{"type": "thinking_delta", "thinking": part} for part in _chunks(block["thinking"], 8)]
        deltas.append({"type": "signature_delta", "signature": block["signature"]})
    else:
        raise ValueError(f"the fake cannot stream {btype!r} blocks")
    return [{"type": "content_block_start", "index": index, "content_block": start},
            *({"type": "content_block_delta", "index": index, "delta": d} for d in deltas),
            {"type": "content_block_stop", "index": index}]
