"""``POST /v1/chat/completions`` and ``GET /v1/models``: the OpenAI endpoints, over wire/openai_chat.py."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import msgspec

from ..errors import RouterError
from ..internal import Message, StreamEvent
from ..wire import openai_chat as wire
from . import Inbound, close_events

log = logging.getLogger(__name__)


class OpenAIChatEndpoint:
    protocol = "openai"

    def parse(self, body: bytes) -> Inbound:
        request, options = wire.parse_request(body)
        return Inbound(request, model=str(request.get("model") or ""), include_usage=options.include_usage)

    def error_body(self, err: RouterError) -> bytes:
        return wire.error_body(err)

    def message_body(self, message: Message, inbound: Inbound) -> bytes:
        return msgspec.json.encode(wire.message_to_response(message, inbound.model))

    async def stream_body(self, events: AsyncIterator[StreamEvent], inbound: Inbound) -> AsyncIterator[bytes]:
        encoder = wire.StreamEncoder(model=inbound.model, include_usage=inbound.include_usage)
        try:
            async for event in events:
                chunk = encoder.feed(event)
                if chunk:
                    yield chunk
            tail = encoder.finish()
            if tail:
                yield tail
        except RouterError as err:
            yield b"data: " + wire.error_body(err) + b"\n\n"
        except Exception as err:
            log.exception("stream failed")
            yield b"data: " + wire.error_body(RouterError(f"stream failed: {type(err).__name__}")) + b"\n\n"
        finally:
            await close_events(events)

    def models_body(self, names: list[str]) -> bytes:
        return wire.models_list(names)
