"""The Anthropic Messages inbound adapter.

The internal shape *is* the Anthropic shape (see internal.py), so this module only validates what
the router itself relies on, encodes messages and stream events for the wire, renders errors, and
offers two conversions other modules need: ``role: "system"`` messages into ``system`` blocks, and a
stream of events back into one message.

Validation covers every field the router reads (routing, accounting, translation to local
backends), type by type, so a wrong one is a 400 naming its path (``messages[2].content[0].text``)
and never a 500 from a translator; free-form JSON it translates (tool inputs and schemas) may not
nest deeper than ``checks.MAX_JSON_DEPTH``. Fields and block types it does not know are left for the
upstream to judge, so a new API feature passes through without a router release.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, Iterable
from typing import Any

import msgspec

from .. import sse
from ..errors import InvalidRequestError, RouterError, UpstreamError, UpstreamStatusError
from ..internal import Message, Request, StreamEvent
from .checks import (
    fail,
    is_bool,
    is_int,
    is_number,
    is_object,
    is_string,
    kind,
    model_name,
    optional,
    shallow_json,
    string,
)

_ENCODER = msgspec.json.Encoder()

# HTTP status of each Anthropic error type, for errors that arrive inside a stream.
_STATUS_OF_ERROR_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


# ---------------------------------------------------------------------------------------------------
# Requests


def parse_request(body: bytes) -> Request:
    """Decode and check a ``POST /v1/messages`` body."""
    request = _decode_object(body)
    _check_common(request)
    max_tokens = request.get("max_tokens")
    if "max_tokens" not in request:
        raise InvalidRequestError("max_tokens: Field required")
    if not is_int(max_tokens) or max_tokens < 1:
        raise InvalidRequestError(f"max_tokens: expected an integer >= 1, found {kind(max_tokens)}"
                                  + (f" {max_tokens}" if is_int(max_tokens) else ""))
    optional(request, "stream", "", is_bool, "a boolean")
    return request


def parse_count_tokens_request(body: bytes) -> Request:
    """Decode and check a ``POST /v1/messages/count_tokens`` body (no ``max_tokens``)."""
    request = _decode_object(body)
    _check_common(request)
    return request


def _decode_object(body: bytes) -> dict[str, Any]:
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError as e:
        raise InvalidRequestError(f"request body is not valid JSON: {e}") from None
    except RecursionError:
        raise InvalidRequestError("request body: JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise InvalidRequestError(f"request body: expected a JSON object, found {kind(data)}")
    return data


def _check_common(request: dict[str, Any]) -> None:
    if "model" not in request:
        raise InvalidRequestError("model: Field required")
    model_name(request["model"])
    _check_messages(request)
    _check_system(request)
    _check_tools(request)
    _check_tool_choice(request)
    optional(request, "metadata", "", is_object, "an object")
    if isinstance(request.get("metadata"), dict):
        optional(request["metadata"], "user_id", "metadata", is_string, "a string")
    _check_thinking(request)
    for key in ("temperature", "top_p"):
        optional(request, key, "", is_number, "a number")
    optional(request, "top_k", "", is_int, "an integer")
    stops = request.get("stop_sequences")
    if stops is not None and not (isinstance(stops, list) and all(isinstance(s, str) for s in stops)):
        raise fail("stop_sequences", "a list of strings", stops)


_ROLES = ("user", "assistant", "system")


def _check_messages(request: dict[str, Any]) -> None:
    if "messages" not in request:
        raise InvalidRequestError("messages: Field required")
    messages = request["messages"]
    if not isinstance(messages, list):
        raise fail("messages", "a list", messages)
    for i, message in enumerate(messages):
        field = f"messages[{i}]"
        if not isinstance(message, dict):
            raise fail(field, "an object", message)
        role = message.get("role")
        if role not in _ROLES:
            raise InvalidRequestError(f"{field}.role: expected 'user', 'assistant' or 'system', found "
                                      + (repr(role[:40]) if isinstance(role, str) else kind(role)))
        content = message.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise fail(f"{field}.content", "a string or a list of content blocks", content)
        for j, block in enumerate(content):
            _check_block(block, f"{field}.content[{j}]")


def _check_block(block: Any, field: str, *, nested: bool = False) -> None:
    """One content block: the fields of the types the router reads; other types pass through."""
    if not isinstance(block, dict):
        raise fail(field, "a content block (an object with a string 'type')", block)
    btype = block.get("type")
    if not isinstance(btype, str):
        raise fail(f"{field}.type", "a string", btype)
    optional(block, "cache_control", field, is_object, "an object")
    if btype == "text":
        string(block, "text", field, required=True)
    elif btype == "image" or btype == "document":
        _check_source(block, field)
    elif nested and btype in ("tool_use", "tool_result", "thinking", "redacted_thinking"):
        raise InvalidRequestError(f"{field}.type: {btype!r} blocks cannot be inside a tool_result")
    elif btype in ("tool_use", "server_tool_use"):
        string(block, "id", field, required=True, non_empty=True)
        string(block, "name", field, required=True, non_empty=True)
        if not isinstance(block.get("input"), dict):
            raise fail(f"{field}.input", "an object", block.get("input"))
        shallow_json(block["input"], f"{field}.input")
    elif btype == "tool_result":
        string(block, "tool_use_id", field, required=True, non_empty=True)
        optional(block, "is_error", field, is_bool, "a boolean")
        content = block.get("content")
        if isinstance(content, list):
            for k, inner in enumerate(content):
                _check_block(inner, f"{field}.content[{k}]", nested=True)
        elif content is not None and not isinstance(content, str):
            raise fail(f"{field}.content", "a string or a list of content blocks", content)
    elif btype == "thinking":
        string(block, "thinking", field, required=True)
        string(block, "signature", field)
    elif btype == "redacted_thinking":
        string(block, "data", field, required=True)


def _check_source(block: dict[str, Any], field: str) -> None:
    source = block.get("source")
    if not isinstance(source, dict) or not isinstance(source.get("type"), str):
        raise fail(f"{field}.source", "an object with a string 'type'", source)
    if source["type"] == "base64":
        string(source, "media_type", f"{field}.source", required=True, non_empty=True)
        string(source, "data", f"{field}.source", required=True)
    elif source["type"] == "url":
        string(source, "url", f"{field}.source", required=True, non_empty=True)


def _check_system(request: dict[str, Any]) -> None:
    system = request.get("system")
    if system is None or isinstance(system, str):
        return
    if not isinstance(system, list):
        raise fail("system", "a string or a list of text blocks", system)
    for i, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise fail(f"system[{i}]", "a text block ({\"type\": \"text\", \"text\": ...})", block)
        string(block, "text", f"system[{i}]", required=True)
        optional(block, "cache_control", f"system[{i}]", is_object, "an object")


def _check_tools(request: dict[str, Any]) -> None:
    tools = request.get("tools")
    if tools is None:
        return
    if not isinstance(tools, list):
        raise fail("tools", "a list", tools)
    for i, tool in enumerate(tools):
        field = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise fail(field, "an object", tool)
        string(tool, "name", field, required=True, non_empty=True)
        string(tool, "type", field)
        string(tool, "description", field)
        schema = tool.get("input_schema")
        if schema is None and tool.get("type") in (None, "custom"):
            raise InvalidRequestError(f"{field}.input_schema: Field required (a JSON schema object)")
        if schema is not None:
            if not isinstance(schema, dict):
                raise fail(f"{field}.input_schema", "a JSON schema object", schema)
            shallow_json(schema, f"{field}.input_schema")


def _check_tool_choice(request: dict[str, Any]) -> None:
    choice = request.get("tool_choice")
    if choice is None:
        return
    if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
        raise fail("tool_choice", 'an object with type "auto", "any", "tool" or "none"', choice)
    if choice["type"] == "tool":
        string(choice, "name", "tool_choice", required=True, non_empty=True)
    optional(choice, "disable_parallel_tool_use", "tool_choice", is_bool, "a boolean")


def _check_thinking(request: dict[str, Any]) -> None:
    thinking = request.get("thinking")
    if thinking is None:
        return
    if not isinstance(thinking, dict) or not isinstance(thinking.get("type"), str):
        raise InvalidRequestError("thinking: expected an object with a string 'type' "
                                  "(enabled, disabled or adaptive)")
    if thinking["type"] == "enabled" and not is_int(thinking.get("budget_tokens")):
        raise InvalidRequestError("thinking.budget_tokens: expected an integer when thinking.type is 'enabled', "
                                  f"found {kind(thinking.get('budget_tokens'))}")


def system_messages_to_system(request: Request) -> Request:
    """Move ``role: "system"`` messages into top-level ``system`` text blocks, in order.

    Claude Code sends such messages (a beta) inside ``messages``; backends other than Anthropic's
    reject them. Text and ``cache_control`` are kept; non-text blocks are dropped because ``system``
    accepts only text. The input is not modified; without system messages it is returned as is.
    """
    messages = request.get("messages") or []
    if not any(m.get("role") == "system" for m in messages):
        return request
    blocks = _as_text_blocks(request.get("system"))
    kept: list[dict[str, Any]] = []
    for message in messages:
        if message.get("role") == "system":
            blocks.extend(_as_text_blocks(message.get("content")))
        else:
            kept.append(message)
    converted = {**request, "messages": kept}
    converted["system"] = blocks
    return converted


def _as_text_blocks(content: Any) -> list[dict[str, Any]]:
    if content is None or content == "":
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [dict(block) for block in content if isinstance(block, dict) and block.get("type") == "text"]


# ---------------------------------------------------------------------------------------------------
# Responses and errors


def encode_message(message: Message) -> bytes:
    return _ENCODER.encode(message)


def encode_event(event: StreamEvent) -> bytes:
    """One stream event in Anthropic's framing: ``event: <type>\\ndata: <json>\\n\\n``."""
    return sse.encode(_ENCODER.encode(event).decode("utf-8"), event=event["type"])


def ping_event() -> bytes:
    return encode_event({"type": "ping"})


def error_dict(err: RouterError) -> dict[str, Any]:
    """The Anthropic error object; an upstream's own Anthropic-shaped error is passed on unchanged."""
    upstream = _upstream_error_object(err)
    if upstream is not None:
        return upstream
    return {"type": "error", "error": {"type": err.anthropic_type, "message": err.message}}


def error_body(err: RouterError) -> bytes:
    return _ENCODER.encode(error_dict(err))


def error_event(err: RouterError) -> bytes:
    """An error after the stream started: the status line is gone, so it travels as an event."""
    return encode_event(error_dict(err))


def _upstream_error_object(err: RouterError) -> dict[str, Any] | None:
    if not isinstance(err, UpstreamStatusError) or not err.body:
        return None
    try:
        data = msgspec.json.decode(err.body)
    except msgspec.DecodeError:
        return None
    if (isinstance(data, dict) and data.get("type") == "error" and isinstance(data.get("error"), dict)
            and isinstance(data["error"].get("type"), str)):
        return data
    return None


def error_from_event(event: StreamEvent) -> UpstreamStatusError:
    """Turn an upstream ``error`` stream event into an exception carrying that same error body."""
    error = event.get("error") if isinstance(event.get("error"), dict) else {}
    etype = str(error.get("type") or "api_error")
    message = str(error.get("message") or "upstream stream error")
    status = _STATUS_OF_ERROR_TYPE.get(etype, 500)
    body = _ENCODER.encode({"type": "error", "error": {**error, "type": etype, "message": message}})
    return UpstreamStatusError(status, message, body=body)


# ---------------------------------------------------------------------------------------------------
# Stream -> message


class Accumulator:
    """Builds the final message from stream events, the way the Anthropic SDKs do."""

    def __init__(self) -> None:
        self._message: dict[str, Any] | None = None
        self._blocks: dict[int, dict[str, Any]] = {}
        self._partial_json: dict[int, list[str]] = {}
        self.done = False

    def add(self, event: StreamEvent) -> None:
        etype = event.get("type")
        if etype == "message_start":
            self._message = dict(event["message"])
            self._message["usage"] = dict(self._message.get("usage") or {})
        elif etype == "error":
            raise error_from_event(event)
        elif etype in ("ping", None):
            return
        elif etype == "message_stop":
            self._require_start(etype)
            self.done = True
        elif etype == "content_block_start":
            self._require_start(etype)
            self._blocks[event["index"]] = dict(event["content_block"])
        elif etype == "content_block_delta":
            self._apply_delta(event["index"], event["delta"])
        elif etype == "content_block_stop":
            self._finish_block(event["index"])
        elif etype == "message_delta":
            message = self._require_start(etype)
            message.update({k: v for k, v in (event.get("delta") or {}).items()})
            usage = event.get("usage") or {}
            message["usage"].update({k: v for k, v in usage.items() if v is not None})
        # Unknown event types are skipped, as the API reference asks of clients.

    def _require_start(self, etype: str) -> dict[str, Any]:
        if self._message is None:
            raise UpstreamError(f"upstream stream sent {etype} before message_start")
        return self._message

    def _block(self, index: int) -> dict[str, Any]:
        block = self._blocks.get(index)
        if block is None:
            raise UpstreamError(f"upstream stream sent a delta for unknown content block {index}")
        return block

    def _apply_delta(self, index: int, delta: dict[str, Any]) -> None:
        block = self._block(index)
        dtype = delta.get("type")
        if dtype == "text_delta":
            block["text"] = block.get("text", "") + delta.get("text", "")
        elif dtype == "input_json_delta":
            # Fragments are not valid JSON on their own; parse once the block is complete.
            self._partial_json.setdefault(index, []).append(delta.get("partial_json", ""))
        elif dtype == "thinking_delta":
            block["thinking"] = block.get("thinking", "") + delta.get("thinking", "")
        elif dtype == "signature_delta":
            block["signature"] = delta.get("signature", "")
        elif dtype == "citations_delta":
            block.setdefault("citations", []).append(delta.get("citation"))

    def _finish_block(self, index: int) -> None:
        block = self._block(index)
        fragments = self._partial_json.pop(index, None)
        if fragments is None:
            return
        text = "".join(fragments)
        try:
            block["input"] = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError as e:
            raise UpstreamError(f"upstream sent invalid JSON for the input of content block {index}: {e}") from None

    def message(self) -> Message:
        """The finished message; a stream cut short is an error, not a shorter answer."""
        if self._message is None:
            raise UpstreamError("upstream stream ended before message_start")
        message = self._message
        if not self.done:
            raise UpstreamError("upstream stream ended before message_stop")
        for index in list(self._partial_json):
            self._finish_block(index)
        return {**message, "content": [self._blocks[i] for i in sorted(self._blocks)]}


def accumulate(events: Iterable[StreamEvent]) -> Message:
    """Build a complete message from stream events; an ``error`` event raises UpstreamStatusError."""
    acc = Accumulator()
    for event in events:
        acc.add(event)
    return acc.message()


async def accumulate_async(events: AsyncIterable[StreamEvent]) -> Message:
    """``accumulate`` for a backend's async event stream."""
    acc = Accumulator()
    async for event in events:
        acc.add(event)
    return acc.message()
