"""Backend for OpenAI-compatible servers (llama.cpp, vLLM, LM Studio, ...): internal <-> Chat Completions.

``base_url`` includes the API prefix (``http://127.0.0.1:8080/v1``). The helpers at the top
(system text, tool name lookup, token estimates, argument parsing) are shared with the Ollama
backend, whose message format is a close cousin of this one.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from .. import sse
from ..config import TargetConfig
from ..errors import UpstreamError, UpstreamStatusError
from ..internal import CallContext, Message, Request, StreamEvent, observe_event, text_of
from .base import (
    JSON_HEADERS,
    TRANSPORT_ERRORS,
    Backend,
    BackendUnavailable,
    Response,
    encode_json,
    raise_for_stream_status,
    stream_failure,
)

CHARS_PER_TOKEN = 4  # rough, but the usual rule of thumb for English text and code

# OpenAI finish_reason -> Anthropic stop_reason.
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


# --------------------------------------------------------------------------------------------
# Helpers shared with backends/ollama.py


def new_tool_id() -> str:
    return f"toolu_{uuid.uuid4().hex[:24]}"


def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex[:24]}"


def system_texts(request: Request) -> list[str]:
    """The top-level system prompt plus any ``role: system`` messages (kept in order)."""
    texts = [text_of(request.get("system"))]
    texts += [text_of(m.get("content")) for m in request.get("messages") or [] if m.get("role") == "system"]
    return [t for t in texts if t]


def tool_names_by_id(request: Request) -> dict[str, str]:
    """tool_use id -> tool name, for APIs whose tool results name the tool rather than the call."""
    names = {}
    for message in request.get("messages") or []:
        if isinstance(message.get("content"), list):
            for block in message["content"]:
                if isinstance(block, dict) and block.get("type") == "tool_use":
                    names[block.get("id")] = block.get("name")
    return names


def tool_result_text(block: dict[str, Any]) -> str:
    """A tool_result's content as text; images in it cannot go to a text-only tool message."""
    content = block.get("content")
    if isinstance(content, list):
        parts = [b.get("text", "") if b.get("type") == "text" else f"[{b.get('type')} omitted]"
                 for b in content if isinstance(b, dict)]
        text = "\n".join(parts)
    else:
        text = content if isinstance(content, str) else ""
    return f"Error: {text}" if block.get("is_error") else text


def function_tools(request: Request) -> list[dict[str, Any]]:
    """Client tools as OpenAI/Ollama function tools; server tools (no input_schema) cannot run locally."""
    return [{"type": "function", "function": {"name": t["name"], "description": t.get("description", ""),
                                              "parameters": t["input_schema"]}}
            for t in request.get("tools") or [] if isinstance(t, dict) and t.get("input_schema")]


def max_tokens_for(request: Request, target: TargetConfig) -> int | None:
    value = request.get("max_tokens")
    if target.max_output_tokens is not None:
        return min(value, target.max_output_tokens) if value else target.max_output_tokens
    return value


def parse_arguments(raw: Any) -> dict[str, Any]:
    """Tool-call arguments as a dict.

    Small local models sometimes emit malformed JSON. The raw text is kept under a key the tool's
    schema will not know, so the client's input validation rejects the call visibly and the model
    sees its mistake, instead of the tool running with empty input.
    """
    if isinstance(raw, dict):
        return raw
    if raw is None or raw == "":
        return {}
    try:
        parsed = json.loads(raw)
    except (TypeError, json.JSONDecodeError):
        parsed = None
    return parsed if isinstance(parsed, dict) else {"invalid_json_arguments": str(raw)}


def estimate_tokens(text_chars: int) -> int:
    return max(1, -(-text_chars // CHARS_PER_TOKEN)) if text_chars else 0


def estimate_prompt_tokens(request: Request) -> int:
    """What the prompt costs in tokens, guessed from its text when the server does not say."""
    chars = sum(len(t) for t in system_texts(request))
    for message in request.get("messages") or []:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
            continue
        for block in content or []:
            if block.get("type") == "text":
                chars += len(block.get("text", ""))
            elif block.get("type") == "tool_use":
                chars += len(encode_json(block.get("input") or {})) + len(block.get("name", ""))
            elif block.get("type") == "tool_result":
                chars += len(tool_result_text(block))
    chars += len(encode_json(request.get("tools"))) if request.get("tools") else 0
    return estimate_tokens(chars)


Blocks = list[dict[str, Any]]


def chat_messages(request: Request, assistant_message: Callable[[Blocks], dict[str, Any]],
                  user_messages: Callable[[Blocks], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The conversation as chat messages: the system texts first, then each turn; a turn made
    of content blocks is built by the wire format's own *assistant_message* / *user_messages*."""
    out: list[dict[str, Any]] = [{"role": "system", "content": t} for t in system_texts(request)]
    for message in request.get("messages") or []:
        role, content = message.get("role"), message.get("content")
        if role == "system":
            continue  # already in front, with the top-level system prompt
        if isinstance(content, str):
            out.append({"role": role, "content": content})
        elif role == "assistant":
            out.append(assistant_message(content or []))
        else:
            out.extend(user_messages(content or []))
    return out


def message_skeleton(message_id: str, model: str, input_tokens: int) -> Message:
    return {"id": message_id, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": 0}}


def finish_usage(ctx: CallContext, request: Request, input_tokens: int | None, output_tokens: int | None,
                 output_chars: int) -> dict[str, int]:
    """The final usage, estimated (and flagged so) for whatever the server did not report."""
    if input_tokens is None or output_tokens is None:
        ctx.usage.estimated = True
    if input_tokens is None:
        input_tokens = estimate_prompt_tokens(request)
    if output_tokens is None:
        output_tokens = estimate_tokens(output_chars)
    return {"input_tokens": input_tokens, "output_tokens": output_tokens}


# --------------------------------------------------------------------------------------------
# Request: internal -> Chat Completions


def to_openai_messages(request: Request) -> list[dict[str, Any]]:
    return chat_messages(request, _assistant_message, _user_messages)


def _assistant_message(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    # Thinking blocks are dropped: their signatures mean nothing to another server.
    text = "".join(b.get("text", "") for b in blocks if b.get("type") == "text")
    calls = [{"id": b["id"], "type": "function",
              "function": {"name": b["name"], "arguments": json.dumps(b.get("input") or {})}}
             for b in blocks if b.get("type") == "tool_use"]
    # "" rather than null beside tool_calls: OpenAI accepts both, llama-cpp-python's server only "".
    msg: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        msg["tool_calls"] = calls
    return msg


def _user_messages(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Tool results become role "tool" messages, which must directly follow the assistant's
    # tool_calls; the rest of the turn follows them as one user message.
    out: list[dict[str, Any]] = [{"role": "tool", "tool_call_id": b.get("tool_use_id"),
                                  "content": tool_result_text(b)}
                                 for b in blocks if b.get("type") == "tool_result"]
    parts: list[dict[str, Any]] = []
    for b in blocks:
        if b.get("type") == "text":
            parts.append({"type": "text", "text": b.get("text", "")})
        elif b.get("type") == "image":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(b.get("source") or {})}})
    if parts and all(p["type"] == "text" for p in parts):
        # Plain strings work with every server's chat template; content arrays do not everywhere.
        out.append({"role": "user", "content": "\n".join(p["text"] for p in parts)})
    elif parts:
        out.append({"role": "user", "content": parts})
    return out


def _image_url(source: dict[str, Any]) -> str:
    if source.get("type") == "base64":
        return f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    return str(source.get("url", ""))


def _tool_choice(choice: dict[str, Any] | None) -> Any:
    if not choice:
        return None
    ctype = choice.get("type")
    if ctype == "any":
        return "required"
    if ctype == "tool":
        return {"type": "function", "function": {"name": choice.get("name")}}
    return ctype if ctype in ("auto", "none") else None


URL_IMAGE_NOTE = "[image omitted: this backend accepts only inline images]"


def output_schema(request: Request) -> dict[str, Any] | None:
    """The JSON schema the answer must follow: Anthropic's structured outputs field
    ``output_format: {"type": "json_schema", "schema": ...}``, or None."""
    output_format = request.get("output_format")
    if not isinstance(output_format, dict) or output_format.get("type") != "json_schema":
        return None
    schema = output_format.get("schema")
    return schema if isinstance(schema, dict) else None


def without_image_urls(request: Request) -> Request:
    """*request* with each image given by URL replaced by a note (the request itself if it has none).

    A server that fetches image URLs would fetch whatever a client names, inside the LAN too; only
    inline (base64) images go to it unless its backend sets ``allow_image_urls``.
    """
    messages = request.get("messages") or []
    if not any(isinstance(m.get("content"), list) and any(_is_url_image(b) for b in m["content"])
               for m in messages):
        return request
    cleaned = [{**m, "content": [{"type": "text", "text": URL_IMAGE_NOTE} if _is_url_image(b) else b
                                 for b in m["content"]]} if isinstance(m.get("content"), list) else m
               for m in messages]
    return {**request, "messages": cleaned}


def _is_url_image(block: Any) -> bool:
    return (isinstance(block, dict) and block.get("type") == "image"
            and (block.get("source") or {}).get("type") != "base64")


def to_openai_request(request: Request, target: TargetConfig, stream: bool,
                      allow_image_urls: bool = False) -> dict[str, Any]:
    if not allow_image_urls:
        request = without_image_urls(request)
    body: dict[str, Any] = {"model": request.get("model") or target.model,
                            "messages": to_openai_messages(request), "stream": stream}
    max_tokens = max_tokens_for(request, target)
    if max_tokens:
        body["max_tokens"] = max_tokens
    for key in ("temperature", "top_p"):
        if request.get(key) is not None:
            body[key] = request[key]
    if request.get("stop_sequences"):
        body["stop"] = request["stop_sequences"]
    schema = output_schema(request)
    if schema is not None:
        # OpenAI's structured outputs shape; llama.cpp's server and vLLM turn the schema into a grammar.
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    tools = function_tools(request)
    if tools:
        body["tools"] = tools
        choice = request.get("tool_choice") or {}
        if _tool_choice(choice) is not None:
            body["tool_choice"] = _tool_choice(choice)
        if choice.get("disable_parallel_tool_use"):
            body["parallel_tool_calls"] = False
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


# --------------------------------------------------------------------------------------------
# Response: Chat Completions -> internal


def _usage_from_openai(usage: dict[str, Any] | None) -> tuple[int | None, int | None, int]:
    """(input, output, cache_read); OpenAI's prompt_tokens includes the cached part."""
    if not usage:
        return None, None, 0
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return (prompt - cached if isinstance(prompt, int) else None,
            completion if isinstance(completion, int) else None, cached)


def from_openai_response(data: dict[str, Any], request: Request, ctx: CallContext) -> Message:
    choice = (data.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if msg.get("content"):
        content.append({"type": "text", "text": msg["content"]})
    out_chars = len(msg.get("content") or "")
    for call in msg.get("tool_calls") or []:
        fn = call.get("function") or {}
        out_chars += len(fn.get("arguments") or "")
        content.append({"type": "tool_use", "id": call.get("id") or new_tool_id(), "name": fn.get("name", ""),
                        "input": parse_arguments(fn.get("arguments"))})
    stop_reason = STOP_REASONS.get(choice.get("finish_reason") or "stop", "end_turn")
    if msg.get("tool_calls"):
        stop_reason = "tool_use"  # some servers say "stop" even when the turn ends in tool calls
    input_tokens, output_tokens, cached = _usage_from_openai(data.get("usage"))
    usage = finish_usage(ctx, request, input_tokens, output_tokens, out_chars)
    if cached:
        usage["cache_read_input_tokens"] = cached
    message = message_skeleton(f"msg_{data['id']}" if data.get("id") else new_message_id(),
                               str(request.get("model") or data.get("model") or ""), 0)
    message.update(content=content, stop_reason=stop_reason, usage=usage)
    ctx.usage.update_from(usage)
    return message


@dataclass
class _ToolCallState:
    id: str | None = None
    name: str | None = None
    pending_args: str = ""
    block: int | None = None  # Anthropic content block index once started


@dataclass
class _StreamTranslator:
    """Chat Completions chunks in, Anthropic stream events out (see OpenAIBackend.stream)."""

    request: Request
    ctx: CallContext
    next_block: int = 0
    open_block: int | None = None
    text_block: int | None = None
    tools: dict[int, _ToolCallState] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    out_chars: int = 0

    def start(self, chunk: dict[str, Any]) -> list[StreamEvent]:
        message_id = f"msg_{chunk['id']}" if chunk.get("id") else new_message_id()
        model = str(self.request.get("model") or chunk.get("model") or "")
        # The real counts come at the end, if at all; until then the estimate stands (and is
        # flagged), so a stream cut short is still accounted for.
        self.ctx.usage.estimated = True
        return [{"type": "message_start",
                 "message": message_skeleton(message_id, model, estimate_prompt_tokens(self.request))}]

    def feed(self, chunk: dict[str, Any]) -> list[StreamEvent]:
        if chunk.get("usage"):
            # May arrive in a trailing chunk after the one with finish_reason: keep it for the end.
            self.usage = chunk["usage"]
        events: list[StreamEvent] = []
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                events += self._text(delta["content"])
            for call in delta.get("tool_calls") or []:
                events += self._tool_call(call)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return events

    def end(self) -> list[StreamEvent]:
        events = self._close_open()
        for state in self.tools.values():  # a call whose name never came: still report it
            if state.block is None:
                state.name = state.name or ""
                events += self._start_tool(state) + self._close_open()
        stop_reason = STOP_REASONS.get(self.finish_reason or "stop", "end_turn")
        if self.tools:
            stop_reason = "tool_use"
        input_tokens, output_tokens, cached = _usage_from_openai(self.usage)
        if input_tokens is not None and output_tokens is not None:
            self.ctx.usage.estimated = False
        usage: dict[str, Any] = finish_usage(self.ctx, self.request, input_tokens, output_tokens, self.out_chars)
        if cached:
            usage["cache_read_input_tokens"] = cached
        return events + [{"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                          "usage": usage}, {"type": "message_stop"}]

    def _close_open(self) -> list[StreamEvent]:
        if self.open_block is None:
            return []
        index, self.open_block = self.open_block, None
        return [{"type": "content_block_stop", "index": index}]

    def _new_block(self) -> tuple[int, list[StreamEvent]]:
        events = self._close_open()
        index, self.next_block = self.next_block, self.next_block + 1
        self.open_block = index
        return index, events

    def _text(self, text: str) -> list[StreamEvent]:
        self.out_chars += len(text)
        events: list[StreamEvent] = []
        if self.text_block is None or self.open_block != self.text_block:
            self.text_block, events = self._new_block()
            events.append({"type": "content_block_start", "index": self.text_block,
                           "content_block": {"type": "text", "text": ""}})
        return events + [{"type": "content_block_delta", "index": self.text_block,
                          "delta": {"type": "text_delta", "text": text}}]

    def _tool_call(self, call: dict[str, Any]) -> list[StreamEvent]:
        state = self.tools.setdefault(int(call.get("index") or 0), _ToolCallState())
        fn = call.get("function") or {}
        state.id = state.id or call.get("id")
        state.name = state.name or fn.get("name")
        fragment = fn.get("arguments") or ""
        if isinstance(fragment, dict):  # a few servers send the arguments as an object
            fragment = json.dumps(fragment)
        self.out_chars += len(fragment)
        state.pending_args += fragment
        events: list[StreamEvent] = []
        if state.block is None and state.name:
            events += self._start_tool(state)
        elif state.block is not None and state.pending_args:
            # Servers stream one call after another; should fragments interleave, the delta still
            # names its block, which is how clients accumulate them.
            events.append(self._args_delta(state))
        return events

    def _start_tool(self, state: _ToolCallState) -> list[StreamEvent]:
        state.block, events = self._new_block()
        events.append({"type": "content_block_start", "index": state.block,
                       "content_block": {"type": "tool_use", "id": state.id or new_tool_id(),
                                         "name": state.name, "input": {}}})
        if state.pending_args:
            events.append(self._args_delta(state))
        return events

    def _args_delta(self, state: _ToolCallState) -> StreamEvent:
        fragment, state.pending_args = state.pending_args, ""
        return {"type": "content_block_delta", "index": state.block,
                "delta": {"type": "input_json_delta", "partial_json": fragment}}


async def _sse_data(response: Response) -> AsyncIterator[str]:
    """The data of each server-sent event, parsed by the router's one SSE decoder."""
    async for event in sse.aiter_sse(response.content.iter_any()):
        yield event.data


def _stream_error(backend: str, error: Any, started: bool) -> Exception:
    """An error object sent inside the stream (llama.cpp does this, e.g. for an over-long prompt)."""
    message = error.get("message") if isinstance(error, dict) else str(error)
    code = error.get("code") if isinstance(error, dict) else None
    status = code if isinstance(code, int) and 400 <= code < 600 else 500
    text = f"backend {backend!r} reported an error in the stream: {message}"
    if status < 500:
        return UpstreamStatusError(status, text)
    return UpstreamError(text) if started else BackendUnavailable(backend, text, status)


class OpenAIBackend(Backend):
    def _headers(self) -> dict[str, str]:
        key = self.api_key()
        return {**JSON_HEADERS, "authorization": f"Bearer {key}"} if key else JSON_HEADERS

    async def complete(self, request: Request, target: TargetConfig, ctx: CallContext) -> Message:
        body = to_openai_request(request, target, stream=False, allow_image_urls=self.config.allow_image_urls)
        try:
            data, response = await self.request_json("POST", "/chat/completions", content=encode_json(body),
                                                     headers=self._headers())
        except (UpstreamStatusError, BackendUnavailable) as e:
            # llama-cpp-python's server refuses OpenAI's json_schema response_format (HTTP 500) and
            # takes the schema as {"type": "json_object", "schema": ...}: ask once more that way when
            # the server answered (not a transport failure) a request that carried a schema.
            schema = output_schema(request)
            if schema is None or (isinstance(e, BackendUnavailable) and e.status is None):
                raise
            body["response_format"] = {"type": "json_object", "schema": schema}
            data, response = await self.request_json("POST", "/chat/completions", content=encode_json(body),
                                                      headers=self._headers())
        ctx.upstream_request_id = response.headers.get("x-request-id")
        if isinstance(data, dict) and data.get("error"):
            raise _stream_error(self.name, data["error"], started=False)
        return from_openai_response(data, request, ctx)

    async def stream(self, request: Request, target: TargetConfig, ctx: CallContext) -> AsyncIterator[StreamEvent]:
        body = to_openai_request(request, target, stream=True, allow_image_urls=self.config.allow_image_urls)
        translator = _StreamTranslator(request, ctx)
        started = done = False
        try:
            async with self.open("POST", "/chat/completions", content=encode_json(body),
                                 headers=self._headers()) as response:
                await raise_for_stream_status(self.name, response)
                ctx.upstream_request_id = response.headers.get("x-request-id")
                async for data in _sse_data(response):
                    if data.strip() == "[DONE]":
                        done = True
                        break
                    chunk = msgspec.json.decode(data)
                    if chunk.get("error"):
                        raise _stream_error(self.name, chunk["error"], started)
                    # message_start waits for the first chunk: an error before it can still fall back.
                    events = ([] if started else translator.start(chunk)) + translator.feed(chunk)
                    started = True
                    for event in events:
                        observe_event(ctx.usage, event)
                        yield event
        except (*TRANSPORT_ERRORS, msgspec.DecodeError) as e:
            raise stream_failure(self.name, e, started) from e
        if not started:
            raise BackendUnavailable(self.name, "stream ended without any chunk")
        if not done and translator.finish_reason is None:
            # Neither [DONE] nor a finish_reason: the server died mid-answer; don't pretend it ended.
            raise UpstreamError(f"backend {self.name!r} ended the stream before the answer was complete")
        for event in translator.end():
            observe_event(ctx.usage, event)
            yield event

    async def health(self) -> tuple[bool, str]:
        try:
            models = await self.list_models()
        except (BackendUnavailable, UpstreamStatusError) as e:
            return False, str(e)
        return True, f"{len(models)} model(s)"

    async def list_models(self) -> list[str]:
        data, _ = await self.request_json("GET", "/models", headers=self._headers())
        return [m["id"] for m in data.get("data") or [] if isinstance(m, dict) and "id" in m]

