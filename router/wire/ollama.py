"""Ollama's native chat protocol (``/api/chat``): internal <-> Ollama messages, NDJSON streaming.

Why the native API rather than Ollama's OpenAI-compatible one: only the native API takes
``options.num_ctx`` and ``keep_alive`` per request. Without them Ollama loads models with a small
default context (Claude Code's prompts alone are larger) and unloads them after five minutes.

``to_ollama_request`` and ``from_ollama_response`` translate a whole exchange; ``aiter_objects``
decodes a streamed answer and ``StreamTranslator`` turns its objects into internal stream events.
Transport and error mapping live in backends/ollama.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any

import msgspec

from ..config import TargetConfig
from ..internal import CallContext, Message, Request, StreamEvent, token_count
from . import chat_common as chat
from . import encode_json
from .ndjson import ndjson_lines

# --------------------------------------------------------------------------------------------
# Request: internal -> Ollama


def to_ollama_messages(request: Request) -> list[dict[str, Any]]:
    names = chat.tool_names_by_id(request)
    return chat.chat_messages(request, _assistant_message, lambda blocks: _user_messages(blocks, names))


def _assistant_message(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    # Thinking blocks are dropped: their signatures mean nothing to Ollama.
    msg: dict[str, Any] = {"role": "assistant",
                           "content": "".join(b.get("text", "") for b in blocks if b.get("type") == "text")}
    calls = [{"function": {"name": b["name"], "arguments": b.get("input") or {}}}
             for b in blocks if b.get("type") == "tool_use"]
    if calls:
        msg["tool_calls"] = calls
    return msg


def _user_messages(blocks: list[dict[str, Any]], names: dict[str, str]) -> list[dict[str, Any]]:
    # Tool results first, as role "tool" messages right after the assistant's calls. Ollama
    # matches a result to its call by tool name (``tool_name``), not by id.
    out: list[dict[str, Any]] = []
    for b in blocks:
        if b.get("type") == "tool_result":
            result = {"role": "tool", "content": chat.tool_result_text(b)}
            if names.get(b.get("tool_use_id", "")):
                result["tool_name"] = names[b["tool_use_id"]]
            out.append(result)
    texts, images = [], []
    for b in blocks:
        if b.get("type") == "text":
            texts.append(b.get("text", ""))
        elif b.get("type") == "image":
            source = b.get("source") or {}
            if source.get("type") == "base64":
                images.append(source.get("data", ""))  # Ollama wants bare base64, no data: prefix
            else:
                texts.append(chat.URL_IMAGE_NOTE)
    if texts or images:
        msg: dict[str, Any] = {"role": "user", "content": "\n".join(texts)}
        if images:
            msg["images"] = images
        out.append(msg)
    return out


def to_ollama_request(request: Request, target: TargetConfig, stream: bool) -> dict[str, Any]:
    # max_tokens: the pipeline has capped it to the target's max_output_tokens.
    options: dict[str, Any] = {"num_ctx": target.num_ctx, "num_predict": request.get("max_tokens"),
                               "temperature": request.get("temperature"), "top_p": request.get("top_p"),
                               "top_k": request.get("top_k"), "stop": request.get("stop_sequences") or None}
    body: dict[str, Any] = {"model": request.get("model") or target.model,
                            "messages": to_ollama_messages(request), "stream": stream,
                            "options": {k: v for k, v in options.items() if v is not None}}
    # Ollama has no tool_choice: "none" is honoured by not offering the tools; "any"/"tool"
    # cannot be enforced and degrade to "auto".
    tools = chat.function_tools(request)
    if tools and (request.get("tool_choice") or {}).get("type") != "none":
        body["tools"] = tools
    schema = chat.output_schema(request)
    if schema is not None:
        body["format"] = schema  # Ollama's structured outputs: the schema itself, not OpenAI's wrapper
    if target.keep_alive is not None:
        body["keep_alive"] = target.keep_alive
    return body


# --------------------------------------------------------------------------------------------
# Response: Ollama -> internal


def _stop_reason(final: dict[str, Any], has_tool_calls: bool) -> str:
    if has_tool_calls:
        return "tool_use"
    return "max_tokens" if final.get("done_reason") == "length" else "end_turn"


def _counts(final: dict[str, Any]) -> tuple[int | None, int | None]:
    # Ollama leaves prompt_eval_count out when the whole prompt came from its cache.
    return token_count(final.get("prompt_eval_count")), token_count(final.get("eval_count"))


def _tool_use(call: dict[str, Any]) -> dict[str, Any]:
    fn = call.get("function") or {}
    return {"type": "tool_use", "id": call.get("id") or chat.new_tool_id(), "name": fn.get("name", ""),
            "input": chat.parse_arguments(fn.get("arguments"))}


def from_ollama_response(data: dict[str, Any], request: Request, ctx: CallContext) -> Message:
    msg = data.get("message") or {}
    content: list[dict[str, Any]] = []
    if msg.get("content"):
        content.append({"type": "text", "text": msg["content"]})
    calls = msg.get("tool_calls") or []
    content += [_tool_use(c) for c in calls]
    out_chars = len(msg.get("content") or "") + sum(len(encode_json(b["input"])) for b in content
                                                    if b["type"] == "tool_use")
    usage = chat.finish_usage(ctx, request, *_counts(data), out_chars)
    message = chat.message_skeleton(chat.new_message_id(), str(request.get("model") or data.get("model") or ""), 0)
    message.update(content=content, stop_reason=_stop_reason(data, bool(calls)), usage=usage)
    ctx.usage.update_from(usage)
    return message


@dataclass
class StreamTranslator:
    """Ollama NDJSON objects in, Anthropic stream events out (driven by Backend.relay_stream).

    The final object (``done: true``) completes the answer and ends the stream.
    """

    unit = "object"  # what the upstream streams, for error messages
    cut_short = "its final object"

    request: Request
    ctx: CallContext
    finished: bool = False  # the final object arrived
    next_block: int = 0
    text_block: int | None = None  # the open text block, if any
    tool_calls: int = 0
    out_chars: int = 0

    def start(self, chunk: dict[str, Any]) -> list[StreamEvent]:
        model = str(self.request.get("model") or chunk.get("model") or "")
        self.ctx.usage.estimated = True  # until the final object brings the real counts
        input_tokens = chat.estimate_prompt_tokens(self.request)
        return [{"type": "message_start", "message": chat.message_skeleton(chat.new_message_id(), model, input_tokens)}]

    def feed(self, chunk: dict[str, Any]) -> list[StreamEvent]:
        msg = chunk.get("message") or {}
        events: list[StreamEvent] = []
        if msg.get("content"):
            events += self._text(msg["content"])
        for call in msg.get("tool_calls") or []:
            events += self._tool_call(call)
        if chunk.get("done"):
            self.finished = True
            events += self._end(chunk)
        return events

    @property
    def complete(self) -> bool:
        return self.finished

    def end(self) -> list[StreamEvent]:
        """Nothing to add: the final object already closed the message."""
        return []

    def _close_text(self) -> list[StreamEvent]:
        if self.text_block is None:
            return []
        index, self.text_block = self.text_block, None
        return [{"type": "content_block_stop", "index": index}]

    def _text(self, text: str) -> list[StreamEvent]:
        self.out_chars += len(text)
        events: list[StreamEvent] = []
        if self.text_block is None:
            self.text_block, self.next_block = self.next_block, self.next_block + 1
            events.append({"type": "content_block_start", "index": self.text_block,
                           "content_block": {"type": "text", "text": ""}})
        return events + [{"type": "content_block_delta", "index": self.text_block,
                          "delta": {"type": "text_delta", "text": text}}]

    def _tool_call(self, call: dict[str, Any]) -> list[StreamEvent]:
        # Ollama sends each tool call whole, so one block carries it in a single delta.
        block = _tool_use(call)
        arguments = json.dumps(block.pop("input"))
        self.out_chars += len(arguments)
        self.tool_calls += 1
        index, self.next_block = self.next_block, self.next_block + 1
        return self._close_text() + [
            {"type": "content_block_start", "index": index, "content_block": {**block, "input": {}}},
            {"type": "content_block_delta", "index": index,
             "delta": {"type": "input_json_delta", "partial_json": arguments}},
            {"type": "content_block_stop", "index": index}]

    def _end(self, final: dict[str, Any]) -> list[StreamEvent]:
        prompt, output = _counts(final)
        if prompt is not None and output is not None:
            self.ctx.usage.estimated = False
        usage = chat.finish_usage(self.ctx, self.request, prompt, output, self.out_chars)
        stop_reason = _stop_reason(final, self.tool_calls > 0)
        return self._close_text() + [
            {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None},
             "usage": usage},
            {"type": "message_stop"}]


async def aiter_objects(body: AsyncIterable[bytes]) -> AsyncIterator[dict[str, Any] | None]:
    """A streamed answer's objects, decoded (blank lines skipped). Ollama has no end marker: the
    object with ``done: true`` is the last."""
    async for line in ndjson_lines(body):
        if line.strip():
            yield msgspec.json.decode(line)
