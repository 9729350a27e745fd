"""OpenAI Chat Completions inbound adapter: ``/v1/chat/completions`` <-> the internal shape.

The internal shape is the Anthropic Messages shape (see ``internal.py``), so this module is a
translator in both directions:

* ``parse_request`` turns a ``chat.completions`` request body into an internal request plus the
  few OpenAI-only options that do not belong in it (``stream_options.include_usage``);
* ``message_to_response`` turns a complete internal message into a ``chat.completion`` object;
* ``StreamEncoder`` turns internal stream events into ``chat.completion.chunk`` SSE frames;
* ``error_body`` and ``models_list`` render the remaining response bodies.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import msgspec

from ..errors import InvalidRequestError, RouterError
from ..internal import Message, Request, StreamEvent, Usage
from . import checks
from .checks import fail, is_bool, is_string, kind, optional

DEFAULT_MAX_TOKENS = 4096

# Anthropic stop_reason -> OpenAI finish_reason.
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "pause_turn": "stop",
    "refusal": "content_filter",
}

_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


@dataclass(frozen=True)
class OpenAIOptions:
    """What an OpenAI request asks of the response that has no place in the internal request."""

    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage: send a final usage chunk


# --------------------------------------------------------------------------------------------
# Request: OpenAI -> internal


def parse_request(body: bytes) -> tuple[Request, OpenAIOptions]:
    """Decode and translate a Chat Completions request; InvalidRequestError names the bad field."""
    try:
        data = _decoder.decode(body)
    except msgspec.DecodeError as e:
        raise InvalidRequestError(f"request body is not valid JSON: {e}") from None
    except RecursionError:
        raise InvalidRequestError("request body: JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise fail("request body", "a JSON object", data)
    if "functions" in data or "function_call" in data:
        raise InvalidRequestError("functions: legacy function calling is not supported; use `tools`")
    n = data.get("n")
    if n is not None and (not checks.is_int(n) or n != 1):
        raise InvalidRequestError(f"n: only 1 choice is supported, found {n if checks.is_int(n) else kind(n)}")

    model = checks.model_name(data.get("model"))
    optional(data, "user", "", is_string, "a string")
    optional(data, "parallel_tool_calls", "", is_bool, "a boolean")
    system, messages = _translate_messages(_expect_list(data.get("messages"), "messages"))
    if not messages:
        raise InvalidRequestError("messages: expected at least one user or assistant message")

    request: Request = {"model": model, "messages": messages, "max_tokens": _max_tokens(data)}
    if system:
        request["system"] = system
    _copy_sampling(data, request)
    tools = _translate_tools(data.get("tools"))
    if tools:
        request["tools"] = tools
    tool_choice = _translate_tool_choice(data.get("tool_choice"), data.get("parallel_tool_calls"))
    if tool_choice is not None:
        request["tool_choice"] = tool_choice

    stream = data.get("stream")
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise fail("stream", "a boolean", stream)
    if stream:
        request["stream"] = True
    stream_options = data.get("stream_options")
    if stream_options is None:
        stream_options = {}
    if not isinstance(stream_options, dict):
        raise fail("stream_options", "an object", stream_options)
    optional(stream_options, "include_usage", "stream_options", is_bool, "a boolean")
    return request, OpenAIOptions(stream=stream, include_usage=bool(stream_options.get("include_usage")))


def _expect_list(value: Any, field: str, expected: str = "an array") -> list[Any]:
    if not isinstance(value, list):
        raise fail(field, expected, value)
    return value


def _max_tokens(data: dict[str, Any]) -> int:
    # max_completion_tokens replaced max_tokens in the OpenAI API; prefer it when both are given.
    chosen = None
    for field in ("max_completion_tokens", "max_tokens"):
        value = data.get(field)
        if value is None:
            continue
        if not checks.is_int(value) or value < 1:
            raise InvalidRequestError(f"{field}: expected a positive integer, found {kind(value)}"
                                      + (f" {value}" if checks.is_int(value) else ""))
        chosen = chosen or value
    return chosen or DEFAULT_MAX_TOKENS


def _copy_sampling(data: dict[str, Any], request: Request) -> None:
    # Values are passed on unclamped: OpenAI allows temperature up to 2, which local backends
    # accept too; only the Anthropic backend would refuse more than 1.
    for field in ("temperature", "top_p"):
        value = data.get(field)
        if value is None:
            continue
        if not checks.is_number(value):
            raise fail(field, "a number", value)
        request[field] = value
    stop = data.get("stop")
    if stop is None:
        return
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise InvalidRequestError("stop: expected a string or an array of strings")
    if stop:
        request["stop_sequences"] = stop


def _translate_messages(raw: list[Any]) -> tuple[str, list[Message]]:
    """Split off system/developer text; build alternating user/assistant turns."""
    system_parts: list[str] = []
    turns: list[Message] = []
    for i, msg in enumerate(raw):
        field = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise fail(field, "an object", msg)
        optional(msg, "name", field, is_string, "a string")
        role = msg.get("role")
        if role in ("system", "developer"):
            # Anthropic has one top-level system prompt; a system message in mid-conversation is
            # rare and is still an instruction, so it joins the system prompt.
            system_parts.append(_text_only(msg.get("content"), f"{field}.content"))
            continue
        if role == "user":
            blocks = _user_blocks(msg.get("content"), f"{field}.content")
        elif role == "assistant":
            blocks = _assistant_blocks(msg, field)
        elif role == "tool":
            blocks = [_tool_result_block(msg, field)]
            role = "user"
        else:
            raise InvalidRequestError(f"{field}.role: expected system, developer, user, assistant or tool, "
                                      "found " + (repr(role[:40]) if isinstance(role, str) else kind(role)))
        _append_turn(turns, role, blocks)
    return "\n\n".join(p for p in system_parts if p), turns


def _append_turn(turns: list[Message], role: str, blocks: list[dict[str, Any]]) -> None:
    # Consecutive same-role messages (several tool results, or tool results followed by a user
    # message) become one turn: Anthropic wants all results for one assistant turn in the next
    # user turn, and results must come before any other content there, which appending keeps.
    if not blocks:
        return
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": blocks})


def _text_only(content: Any, field: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = _expect_list(content, field, "a string or an array of text parts")
    texts = []
    for j, part in enumerate(parts):
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise InvalidRequestError(f"{field}[{j}]: expected a text part")
        texts.append(part["text"])
    return "\n".join(texts)


def _user_blocks(content: Any, field: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for j, part in enumerate(_expect_list(content, field, "a string or an array of content parts")):
        pfield = f"{field}[{j}]"
        ptype = part.get("type") if isinstance(part, dict) else None
        if ptype == "text" and isinstance(part.get("text"), str):
            if part["text"]:
                blocks.append({"type": "text", "text": part["text"]})
        elif ptype == "image_url":
            blocks.append(_image_block(part.get("image_url"), f"{pfield}.image_url"))
        else:
            raise InvalidRequestError(f"{pfield}: expected a text part (with a string 'text') or an "
                                      "image_url part")
    return blocks


def _image_block(image: Any, field: str) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else image
    if isinstance(image, dict):
        optional(image, "detail", field, is_string, "a string")
    if not isinstance(url, str) or not url:
        raise InvalidRequestError(f"{field}.url: expected a data: or http(s): URL")
    if url.startswith("data:"):
        header, sep, data = url.partition(",")
        media_type, _, encoding = header[5:].partition(";")
        if not sep or encoding != "base64" or not media_type.startswith("image/"):
            raise InvalidRequestError(f"{field}.url: expected data:image/<type>;base64,<data>")
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise InvalidRequestError(f"{field}.url: expected a data: or http(s): URL")


def _assistant_blocks(msg: dict[str, Any], field: str) -> list[dict[str, Any]]:
    content = msg.get("content")
    text = content if isinstance(content, str) else _assistant_parts_text(content, f"{field}.content")
    blocks: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    calls = msg.get("tool_calls")
    if calls is None:
        calls = []
    for j, call in enumerate(_expect_list(calls, f"{field}.tool_calls")):
        blocks.append(_tool_use_block(call, f"{field}.tool_calls[{j}]"))
    return blocks


def _assistant_parts_text(content: Any, field: str) -> str:
    if content is None:
        return ""
    texts = []
    for j, part in enumerate(_expect_list(content, field, "a string or an array of text parts")):
        ptype = part.get("type") if isinstance(part, dict) else None
        if ptype == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif ptype == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
        else:
            raise InvalidRequestError(f"{field}[{j}]: expected a text or refusal part")
    return "".join(texts)


def _tool_use_block(call: Any, field: str) -> dict[str, Any]:
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        raise InvalidRequestError(f"{field}.function: expected an object")
    call_id, fn = call.get("id"), call["function"]
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequestError(f"{field}.id: expected a non-empty string")
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequestError(f"{field}.function.name: expected a non-empty string")
    raw = fn.get("arguments")
    if raw is None or raw == "":
        raw = "{}"
    if not isinstance(raw, str | dict):
        raise fail(f"{field}.function.arguments", "a JSON object encoded as a string", raw)
    try:
        arguments = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError:
        arguments = None
    except RecursionError:
        raise InvalidRequestError(f"{field}.function.arguments: JSON nested too deeply") from None
    if not isinstance(arguments, dict):
        raise InvalidRequestError(f"{field}.function.arguments: expected a JSON object encoded as a string")
    checks.shallow_json(arguments, f"{field}.function.arguments")
    return {"type": "tool_use", "id": call_id, "name": name, "input": arguments}


def _tool_result_block(msg: dict[str, Any], field: str) -> dict[str, Any]:
    call_id = msg.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequestError(f"{field}.tool_call_id: expected a non-empty string")
    return {"type": "tool_result", "tool_use_id": call_id,
            "content": _text_only(msg.get("content"), f"{field}.content")}


def _translate_tools(tools: Any) -> list[dict[str, Any]]:
    if tools is None:
        return []
    out = []
    for i, tool in enumerate(_expect_list(tools, "tools")):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(fn, dict):
            raise InvalidRequestError(f"tools[{i}]: expected {{\"type\": \"function\", \"function\": {{...}}}}")
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequestError(f"tools[{i}].function.name: expected a non-empty string")
        schema = fn.get("parameters")
        if schema is None or schema == {}:
            schema = {"type": "object", "properties": {}}
        if not isinstance(schema, dict):
            raise fail(f"tools[{i}].function.parameters", "a JSON schema object", schema)
        checks.shallow_json(schema, f"tools[{i}].function.parameters")
        optional(fn, "description", f"tools[{i}].function", is_string, "a string")
        converted: dict[str, Any] = {"name": name, "input_schema": schema}
        if fn.get("description"):
            converted["description"] = fn["description"]
        out.append(converted)
    return out


def _translate_tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    if choice is None:
        result = None
    elif choice == "auto":
        result = {"type": "auto"}
    elif choice == "none":
        return {"type": "none"}
    elif choice == "required":
        result = {"type": "any"}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict) \
            and isinstance(choice["function"].get("name"), str):
        result = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise InvalidRequestError("tool_choice: expected \"auto\", \"none\", \"required\" or "
                                  "{\"type\": \"function\", \"function\": {\"name\": ...}}")
    if parallel is False:
        # Anthropic puts this switch on tool_choice; auto is OpenAI's default choice.
        result = {**(result or {"type": "auto"}), "disable_parallel_tool_use": True}
    return result


# --------------------------------------------------------------------------------------------
# Response: internal -> OpenAI


def _completion_id(message_id: Any) -> str:
    suffix = str(message_id).removeprefix("msg_") if message_id else uuid.uuid4().hex
    return f"chatcmpl-{suffix}"


def usage_to_openai(usage: dict[str, Any] | Usage | None) -> dict[str, Any]:
    """Anthropic usage -> OpenAI usage; OpenAI's prompt_tokens includes cached tokens."""
    u = Usage()
    if isinstance(usage, Usage):
        u = usage
    else:
        u.update_from(usage)
    cached = u.cache_read_input_tokens
    prompt = u.input_tokens + u.cache_creation_input_tokens + u.cache_creation_1h_input_tokens + cached
    return {"prompt_tokens": prompt, "completion_tokens": u.output_tokens,
            "total_tokens": prompt + u.output_tokens,
            "prompt_tokens_details": {"cached_tokens": cached}}


def message_to_response(message: Message, model: str) -> dict[str, Any]:
    """A complete internal message -> a ``chat.completion`` object."""
    texts, reasoning, tool_calls = [], [], []
    for block in message.get("content") or []:
        btype = block.get("type")
        if btype == "text":
            texts.append(block.get("text", ""))
        elif btype == "thinking":
            reasoning.append(block.get("thinking", ""))
        elif btype == "tool_use":
            tool_calls.append({"id": block["id"], "type": "function",
                               "function": {"name": block["name"],
                                            "arguments": json.dumps(block.get("input") or {})}})
    out_message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None,
                                   "refusal": None}
    if reasoning:
        out_message["reasoning_content"] = "".join(reasoning)
    if tool_calls:
        out_message["tool_calls"] = tool_calls
    return {
        "id": _completion_id(message.get("id")),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": out_message, "logprobs": None,
                     "finish_reason": FINISH_REASONS.get(message.get("stop_reason") or "", "stop")}],
        "usage": usage_to_openai(message.get("usage")),
    }


class StreamEncoder:
    """Internal stream events in, ``chat.completion.chunk`` SSE frames out.

    ``feed`` returns the bytes to send for one event (often none); the stream ends with the
    finish_reason chunk, then the usage chunk if asked for, then ``data: [DONE]``. Call
    ``finish`` when the event stream ends, so a stream that lost its ``message_stop`` is still
    terminated properly (it returns nothing if ``message_stop`` was already fed).
    """

    def __init__(self, model: str, include_usage: bool = False, *, completion_id: str | None = None,
                 created: int | None = None):
        self.model = model
        self.include_usage = include_usage
        self.id = completion_id
        self.created = created if created is not None else int(time.time())
        self.usage = Usage()
        self._tool_index: dict[int, int] = {}  # Anthropic content block index -> OpenAI tool_call index
        self._started = False
        self._finish_sent = False
        self._done = False

    def feed(self, event: StreamEvent) -> bytes:
        etype = event.get("type")
        if etype == "message_start":
            message = event.get("message") or {}
            self.id = self.id or _completion_id(message.get("id"))
            self.usage.update_from(message.get("usage"))
            return self._start()
        out = self._start()
        if etype == "content_block_start":
            out += self._block_start(event)
        elif etype == "content_block_delta":
            out += self._block_delta(event)
        elif etype == "message_delta":
            self.usage.update_from(event.get("usage"))
            stop_reason = (event.get("delta") or {}).get("stop_reason")
            out += self._finish(FINISH_REASONS.get(stop_reason or "", "stop"))
        elif etype == "message_stop":
            out += self.finish()
        return out

    def finish(self) -> bytes:
        if self._done:
            return b""
        out = self._start() + self._finish("stop")
        if self.include_usage:
            out += self._frame({**self._envelope([]), "usage": usage_to_openai(self.usage)})
        self._done = True
        return out + b"data: [DONE]\n\n"

    def error(self, err: RouterError) -> bytes:
        """A mid-stream failure, as OpenAI sends it: an error object in a data frame, then the end."""
        self._done = True
        return b"data: " + error_body(err) + b"\n\n"

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        self.id = self.id or _completion_id(None)
        return self._chunk({"role": "assistant", "content": ""})

    def _block_start(self, event: StreamEvent) -> bytes:
        block = event.get("content_block") or {}
        if block.get("type") != "tool_use":
            return b""
        tool_index = len(self._tool_index)
        self._tool_index[event.get("index", 0)] = tool_index
        # Real streams start with input {}; a producer that sends the input here gets it passed on.
        arguments = json.dumps(block["input"]) if block.get("input") else ""
        return self._chunk({"tool_calls": [{"index": tool_index, "id": block.get("id"), "type": "function",
                                            "function": {"name": block.get("name"), "arguments": arguments}}]})

    def _block_delta(self, event: StreamEvent) -> bytes:
        delta = event.get("delta") or {}
        dtype = delta.get("type")
        if dtype == "text_delta" and delta.get("text"):
            return self._chunk({"content": delta["text"]})
        if dtype == "thinking_delta" and delta.get("thinking"):
            # The de-facto field for reasoning text in OpenAI-style streams; clients that do not
            # know it ignore it.
            return self._chunk({"reasoning_content": delta["thinking"]})
        if dtype == "input_json_delta" and delta.get("partial_json"):
            tool_index = self._tool_index.get(event.get("index", 0))
            if tool_index is not None:
                return self._chunk({"tool_calls": [{"index": tool_index,
                                                    "function": {"arguments": delta["partial_json"]}}]})
        return b""

    def _finish(self, finish_reason: str) -> bytes:
        if self._finish_sent:
            return b""
        self._finish_sent = True
        return self._chunk({}, finish_reason)

    def _envelope(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "system_fingerprint": None, "choices": choices}

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        chunk = self._envelope([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}])
        if self.include_usage:
            chunk["usage"] = None  # as OpenAI does: every chunk but the last carries usage: null
        return self._frame(chunk)

    @staticmethod
    def _frame(obj: dict[str, Any]) -> bytes:
        return b"data: " + _encoder.encode(obj) + b"\n\n"


# --------------------------------------------------------------------------------------------
# Other bodies


def error_body(err: RouterError) -> bytes:
    code = getattr(err, "openai_code", err.openai_type)  # e.g. context_length_exceeded
    return _encoder.encode({"error": {"message": getattr(err, "openai_message", err.message),
                                      "type": err.openai_type, "param": "messages" if code != err.openai_type
                                      else None, "code": code}})


def models_list(names: list[str]) -> bytes:
    """GET /v1/models: the names a client may put in ``model`` (targets and aliases)."""
    return _encoder.encode({"object": "list", "data": [
        {"id": name, "object": "model", "created": 0, "owned_by": "aibox"} for name in names]})
