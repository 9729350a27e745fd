"""Backend for Ollama's native API (``/api/chat``): internal <-> Ollama messages, NDJSON streaming.

Why the native API rather than Ollama's OpenAI-compatible one: only the native API takes
``options.num_ctx`` and ``keep_alive`` per request. Without them Ollama loads models with a small
default context (Claude Code's prompts alone are larger) and unloads them after five minutes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any

import msgspec

from ..config import TargetConfig
from ..errors import UpstreamError, UpstreamStatusError
from ..internal import CallContext, Message, Request, StreamEvent, observe_event
from .base import (
    JSON_HEADERS,
    TRANSPORT_ERRORS,
    Backend,
    BackendUnavailable,
    Response,
    encode_json,
    raise_for_upstream,
    stream_failure,
)
from .openai import (
    chat_messages,
    estimate_prompt_tokens,
    finish_usage,
    function_tools,
    max_tokens_for,
    message_skeleton,
    new_message_id,
    new_tool_id,
    output_schema,
    parse_arguments,
    tool_names_by_id,
    tool_result_text,
)

# --------------------------------------------------------------------------------------------
# Request: internal -> Ollama


def to_ollama_messages(request: Request) -> list[dict[str, Any]]:
    names = tool_names_by_id(request)
    return chat_messages(request, _assistant_message, lambda blocks: _user_messages(blocks, names))


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
            result = {"role": "tool", "content": tool_result_text(b)}
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
                texts.append("[image omitted: this backend accepts only inline images]")
    if texts or images:
        msg: dict[str, Any] = {"role": "user", "content": "\n".join(texts)}
        if images:
            msg["images"] = images
        out.append(msg)
    return out


def to_ollama_request(request: Request, target: TargetConfig, stream: bool) -> dict[str, Any]:
    options: dict[str, Any] = {"num_ctx": target.num_ctx, "num_predict": max_tokens_for(request, target),
                               "temperature": request.get("temperature"), "top_p": request.get("top_p"),
                               "top_k": request.get("top_k"), "stop": request.get("stop_sequences") or None}
    body: dict[str, Any] = {"model": request.get("model") or target.model,
                            "messages": to_ollama_messages(request), "stream": stream,
                            "options": {k: v for k, v in options.items() if v is not None}}
    # Ollama has no tool_choice: "none" is honoured by not offering the tools; "any"/"tool"
    # cannot be enforced and degrade to "auto".
    tools = function_tools(request)
    if tools and (request.get("tool_choice") or {}).get("type") != "none":
        body["tools"] = tools
    schema = output_schema(request)
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
    prompt, output = final.get("prompt_eval_count"), final.get("eval_count")
    return (prompt if isinstance(prompt, int) else None, output if isinstance(output, int) else None)


def _tool_use(call: dict[str, Any]) -> dict[str, Any]:
    fn = call.get("function") or {}
    return {"type": "tool_use", "id": call.get("id") or new_tool_id(), "name": fn.get("name", ""),
            "input": parse_arguments(fn.get("arguments"))}


def from_ollama_response(data: dict[str, Any], request: Request, ctx: CallContext) -> Message:
    msg = data.get("message") or {}
    content: list[dict[str, Any]] = []
    if msg.get("content"):
        content.append({"type": "text", "text": msg["content"]})
    calls = msg.get("tool_calls") or []
    content += [_tool_use(c) for c in calls]
    out_chars = len(msg.get("content") or "") + sum(len(encode_json(b["input"])) for b in content
                                                    if b["type"] == "tool_use")
    usage = finish_usage(ctx, request, *_counts(data), out_chars)
    message = message_skeleton(new_message_id(), str(request.get("model") or data.get("model") or ""), 0)
    message.update(content=content, stop_reason=_stop_reason(data, bool(calls)), usage=usage)
    ctx.usage.update_from(usage)
    return message


@dataclass
class _StreamTranslator:
    """Ollama NDJSON objects in, Anthropic stream events out."""

    request: Request
    ctx: CallContext
    next_block: int = 0
    text_block: int | None = None  # the open text block, if any
    tool_calls: int = 0
    out_chars: int = 0

    def start(self, chunk: dict[str, Any]) -> list[StreamEvent]:
        model = str(self.request.get("model") or chunk.get("model") or "")
        self.ctx.usage.estimated = True  # until the final object brings the real counts
        return [{"type": "message_start",
                 "message": message_skeleton(new_message_id(), model, estimate_prompt_tokens(self.request))}]

    def feed(self, chunk: dict[str, Any]) -> list[StreamEvent]:
        msg = chunk.get("message") or {}
        events: list[StreamEvent] = []
        if msg.get("content"):
            events += self._text(msg["content"])
        for call in msg.get("tool_calls") or []:
            events += self._tool_call(call)
        if chunk.get("done"):
            events += self._end(chunk)
        return events

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
        usage = finish_usage(self.ctx, self.request, prompt, output, self.out_chars)
        stop_reason = _stop_reason(final, self.tool_calls > 0)
        return self._close_text() + [
            {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None},
             "usage": usage},
            {"type": "message_stop"}]


def _ollama_error(backend: str, status: int | None, message: str, started: bool) -> Exception:
    """An ``{"error": ...}`` from Ollama.

    "Model not found" is treated as unavailability, not as the client's error: the client asked
    for a router target, not an Ollama model, so it cannot fix this; the operator has not pulled
    the model (yet). Falling back to the next target gives the client an answer meanwhile.
    """
    text = f"backend {backend!r}: {message}"
    if started:
        return UpstreamError(text)
    if status is None or status >= 500 or (status == 404 and "not found" in message):
        return BackendUnavailable(backend, message, status)
    return UpstreamStatusError(status, text)


async def ndjson_lines(chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """The lines of a newline-delimited JSON stream, however the chunks cut them. No length limit:
    one object can carry a whole tool call's arguments (a file the model writes, say)."""
    pending = bytearray()
    async for chunk in chunks:
        pending += chunk
        if b"\n" in chunk:  # split only when a line ended: a long line arrives in many chunks
            *lines, rest = pending.split(b"\n")
            pending = bytearray(rest)
            for line in lines:
                yield bytes(line)
    if pending:
        yield bytes(pending)


class OllamaBackend(Backend):
    def _check(self, response: Response, body: bytes) -> None:
        if response.status == 404:
            try:
                message = json.loads(body).get("error") or "not found"
            except (ValueError, AttributeError):
                message = body.decode("utf-8", "replace")[:500] or "not found"
            raise _ollama_error(self.name, 404, str(message), started=False)
        raise_for_upstream(self.name, response, body)

    async def complete(self, request: Request, target: TargetConfig, ctx: CallContext) -> Message:
        body = to_ollama_request(request, target, stream=False)
        data, _ = await self.request_json("POST", "/api/chat", content=encode_json(body), headers=JSON_HEADERS,
                                          check=self._check)
        if data.get("error"):
            raise _ollama_error(self.name, None, str(data["error"]), started=False)
        return from_ollama_response(data, request, ctx)

    async def stream(self, request: Request, target: TargetConfig, ctx: CallContext) -> AsyncIterator[StreamEvent]:
        body = to_ollama_request(request, target, stream=True)
        translator = _StreamTranslator(request, ctx)
        started = done = False
        try:
            async with self.open("POST", "/api/chat", content=encode_json(body), headers=JSON_HEADERS) as response:
                if response.status >= 400:
                    self._check(response, await response.read())
                async for line in ndjson_lines(response.content.iter_any()):
                    if not line.strip():
                        continue
                    chunk = msgspec.json.decode(line)
                    if chunk.get("error"):
                        raise _ollama_error(self.name, None, str(chunk["error"]), started)
                    # message_start waits for the first object: an error before it can still fall back.
                    events = ([] if started else translator.start(chunk)) + translator.feed(chunk)
                    started, done = True, bool(chunk.get("done"))
                    for event in events:
                        observe_event(ctx.usage, event)
                        yield event
                    if done:
                        break
        except (*TRANSPORT_ERRORS, msgspec.DecodeError) as e:
            raise stream_failure(self.name, e, started) from e
        if not started:
            raise BackendUnavailable(self.name, "stream ended without any object")
        if not done:
            raise UpstreamError(f"backend {self.name!r} ended the stream before its final object")

    async def _get(self, path: str) -> Any:
        data, _ = await self.request_json("GET", path)
        return data

    async def health(self) -> tuple[bool, str]:
        try:
            data = await self._get("/api/version")
        except (BackendUnavailable, UpstreamStatusError) as e:
            return False, str(e)
        return True, f"ollama {data.get('version', '?')}"

    async def list_models(self) -> list[str]:
        data = await self._get("/api/tags")
        return [m["name"] for m in data.get("models") or [] if isinstance(m, dict) and "name" in m]

    async def loaded_models(self) -> list[dict[str, Any]]:
        """Models in memory now (``/api/ps``): name, size, size_vram, context_length, expires_at."""
        data = await self._get("/api/ps")
        return [m for m in data.get("models") or [] if isinstance(m, dict)]
