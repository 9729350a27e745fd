"""Test helpers for Anthropic stream events: rebuild a message from its events, and the reverse.

Not test doubles: they stand in for nothing. They play the client's part (the Anthropic SDKs
accumulate a stream the same way), so tests can compare a stream with the message it spells out.
The router itself never needs either direction: it relays events and encodes messages as they come.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, Iterable
from typing import Any

from aibox_router.errors import UpstreamError
from aibox_router.internal import Message, StreamEvent
from aibox_router.wire.anthropic import error_from_event


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


def message_to_events(message: Message) -> list[StreamEvent]:
    """Turn a complete message into the stream events that would have produced it."""
    start = {k: v for k, v in message.items() if k != "content"}
    start["content"] = []
    start["stop_reason"] = None
    start["stop_sequence"] = None
    usage = dict(message.get("usage") or {})
    start["usage"] = {**usage, "output_tokens": min(usage.get("output_tokens", 0), 1)}
    events: list[StreamEvent] = [{"type": "message_start", "message": start}]
    for index, block in enumerate(message.get("content") or []):
        btype = block.get("type")
        if btype == "text":
            events.append({"type": "content_block_start", "index": index,
                           "content_block": {"type": "text", "text": ""}})
            events.append({"type": "content_block_delta", "index": index,
                           "delta": {"type": "text_delta", "text": block.get("text", "")}})
        elif btype == "tool_use":
            events.append({"type": "content_block_start", "index": index,
                           "content_block": {**block, "input": {}}})
            events.append({"type": "content_block_delta", "index": index,
                           "delta": {"type": "input_json_delta",
                                     "partial_json": json.dumps(block.get("input") or {})}})
        elif btype == "thinking":
            events.append({"type": "content_block_start", "index": index,
                           "content_block": {"type": "thinking", "thinking": ""}})
            events.append({"type": "content_block_delta", "index": index,
                           "delta": {"type": "thinking_delta", "thinking": block.get("thinking", "")}})
            if block.get("signature"):
                events.append({"type": "content_block_delta", "index": index,
                               "delta": {"type": "signature_delta", "signature": block["signature"]}})
        else:
            events.append({"type": "content_block_start", "index": index, "content_block": block})
        events.append({"type": "content_block_stop", "index": index})
    events.append({"type": "message_delta",
                   "delta": {"stop_reason": message.get("stop_reason"),
                             "stop_sequence": message.get("stop_sequence")},
                   "usage": {"output_tokens": usage.get("output_tokens", 0)}})
    events.append({"type": "message_stop"})
    return events
