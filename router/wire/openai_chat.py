"""The OpenAI Chat Completions protocol, both as the router's inbound API and as a backend's.

The internal shape is the Anthropic Messages shape (see ``internal.py``), so this module is a
translator in both directions, on both sides:

Client side (``/v1/chat/completions``, api/openai.py):

* ``parse_request`` turns a ``chat.completions`` request body into an internal request plus the
  few OpenAI-only options that do not belong in it (``stream_options.include_usage``);
* ``message_to_response`` turns a complete internal message into a ``chat.completion`` object;
* ``StreamEncoder`` turns internal stream events into ``chat.completion.chunk`` SSE frames;
* ``error_body`` and ``models_list`` render the remaining response bodies.

Backend side (llama.cpp, vLLM, LM Studio, ...; backends/openai.py does the transport):

* ``to_openai_request`` turns an internal request into a Chat Completions body;
* ``from_openai_response`` turns a ``chat.completion`` answer into an internal message;
* ``aiter_chunks`` decodes the streamed answer and ``StreamTranslator`` turns its chunks into
  internal stream events.

The mapping tables (finish_reason <-> stop_reason) and the usage rules (OpenAI's prompt_tokens
includes cached tokens, Anthropic's input_tokens does not) are here once for both sides.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any

import msgspec

from ..config import TargetConfig
from ..errors import InvalidRequestError, RouterError
from ..internal import CallContext, Message, Request, StreamEvent, Usage, token_count
from . import checks, sse
from .chat_common import (
    URL_IMAGE_NOTE,
    chat_messages,
    estimate_prompt_tokens,
    finish_usage,
    function_tools,
    message_skeleton,
    new_message_id,
    new_tool_id,
    output_schema,
    parse_arguments,
    tool_result_text,
)
from .checks import fail, is_bool, is_string, kind, optional

DEFAULT_MAX_TOKENS = 4096

# Anthropic stop_reason -> OpenAI finish_reason (client side).
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "pause_turn": "stop",
    "refusal": "content_filter",
}

# OpenAI finish_reason -> Anthropic stop_reason (backend side).
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


@dataclass(frozen=True)
class OpenAIOptions:
    """What an OpenAI request asks of the response that has no place in the internal request."""

    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage: send a final usage chunk


# --------------------------------------------------------------------------------------------
# Request (client side): OpenAI -> internal


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
    result: dict[str, Any] | None
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
# Response (client side): internal -> OpenAI


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
# Other bodies (client side)


def error_body(err: RouterError) -> bytes:
    code = getattr(err, "openai_code", err.openai_type)  # e.g. context_length_exceeded
    return _encoder.encode({"error": {"message": getattr(err, "openai_message", err.message),
                                      "type": err.openai_type, "param": "messages" if code != err.openai_type
                                      else None, "code": code}})


def models_list(names: list[str]) -> bytes:
    """GET /v1/models: the names a client may put in ``model`` (targets and aliases)."""
    return _encoder.encode({"object": "list", "data": [
        {"id": name, "object": "model", "created": 0, "owned_by": "aibox"} for name in names]})


# --------------------------------------------------------------------------------------------
# Request (backend side): internal -> Chat Completions


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
    max_tokens = request.get("max_tokens")  # the pipeline has capped it to the target's max_output_tokens
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
# Response (backend side): Chat Completions -> internal


def _usage_from_openai(usage: dict[str, Any] | None) -> tuple[int | None, int | None, int]:
    """(input, output, cache_read); OpenAI's prompt_tokens includes the cached part."""
    if not usage:
        return None, None, 0
    details = usage.get("prompt_tokens_details")
    cached = (token_count(details.get("cached_tokens")) if isinstance(details, dict) else None) or 0
    prompt = token_count(usage.get("prompt_tokens"))
    return (max(0, prompt - cached) if prompt is not None else None, token_count(usage.get("completion_tokens")),
            min(cached, prompt) if prompt is not None else cached)


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
class StreamTranslator:
    """Chat Completions chunks in, Anthropic stream events out (driven by Backend.relay_stream).

    The answer is complete once a chunk carried a finish_reason; usage may come in a chunk after
    it, so only the ``[DONE]`` marker (or the stream's end) closes the stream.
    """

    unit = "chunk"  # what the upstream streams, for error messages
    cut_short = "the answer was complete"
    finished = False  # no chunk ends the stream; the [DONE] marker does

    request: Request
    ctx: CallContext
    next_block: int = 0
    open_block: int | None = None
    text_block: int | None = None
    tools: dict[int, _ToolCallState] = dataclasses.field(default_factory=dict)
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

    @property
    def complete(self) -> bool:
        return self.finish_reason is not None

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


async def aiter_chunks(body: AsyncIterable[bytes]) -> AsyncIterator[dict[str, Any] | None]:
    """A streamed answer's chunks, decoded; None for the ``[DONE]`` marker that ends it."""
    async for event in sse.aiter_sse(body):
        if event.data.strip() == "[DONE]":
            yield None
        else:
            yield msgspec.json.decode(event.data)
