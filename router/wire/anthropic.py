"""The Anthropic Messages protocol: everything the router knows about its wire format.

The internal shape *is* the Anthropic shape (see internal.py), so inbound this module only validates
what the router itself relies on; it encodes messages and stream events for the wire, renders
errors in both directions (an error for the client, an upstream's error event back into an
exception).
The backend (backends/anthropic.py) passes requests through and uses this module for its errors.

Validation covers every field the router reads (routing, accounting, translation to local
backends), type by type, so a wrong one is a 400 naming its path (``messages[2].content[0].text``)
and never a 500 from a translator; free-form JSON it translates (tool inputs and schemas) may not
nest deeper than ``checks.MAX_JSON_DEPTH``. Fields and block types it does not know are left for the
upstream to judge, so a new API feature passes through without a router release.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec

from ..errors import InvalidRequestError, RouterError, UpstreamStatusError
from ..internal import Message, Request, StreamEvent
from . import sse
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


def _objects(value: Any, field: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The items of a list that must hold objects, each with its path (``messages[2]``)."""
    if not isinstance(value, list):
        raise fail(field, "a list", value)
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise fail(f"{field}[{i}]", "an object", item)
        yield f"{field}[{i}]", item


def _check_messages(request: dict[str, Any]) -> None:
    if "messages" not in request:
        raise InvalidRequestError("messages: Field required")
    for field, message in _objects(request["messages"], "messages"):
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
    for field, tool in _objects(tools, "tools"):
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


# ---------------------------------------------------------------------------------------------------
# Responses and errors


def encode_message(message: Message) -> bytes:
    return _ENCODER.encode(message)


def encode_event(event: StreamEvent) -> bytes:
    """One stream event in Anthropic's framing: ``event: <type>\\ndata: <json>\\n\\n``."""
    return sse.encode(_ENCODER.encode(event).decode("utf-8"), event=event["type"])


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
    error: dict[str, Any] = event["error"] if isinstance(event.get("error"), dict) else {}
    etype = str(error.get("type") or "api_error")
    message = str(error.get("message") or "upstream stream error")
    status = _STATUS_OF_ERROR_TYPE.get(etype, 500)
    body = _ENCODER.encode({"type": "error", "error": {**error, "type": etype, "message": message}})
    return UpstreamStatusError(status, message, body=body)


def api_error_event(message: str) -> StreamEvent:
    """An ``api_error`` stream event: how a failure after the stream started reaches the client."""
    return {"type": "error", "error": {"type": "api_error", "message": message}}
