"""``POST /v1/messages`` (and count_tokens): the Anthropic Messages endpoint, over wire/anthropic.py."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from ..errors import RouterError
from ..internal import Message, Request, StreamEvent
from ..wire import anthropic as wire
from . import Inbound, close_events

log = logging.getLogger(__name__)


class AnthropicEndpoint:
    protocol = "anthropic"

    def parse(self, body: bytes) -> Inbound:
        request = wire.parse_request(body)
        return Inbound(request, model=str(request.get("model") or ""))

    def parse_count_tokens(self, body: bytes) -> Request:
        return wire.parse_count_tokens_request(body)

    def error_body(self, err: RouterError) -> bytes:
        return wire.error_body(err)

    def message_body(self, message: Message, inbound: Inbound) -> bytes:
        return wire.encode_message(message)

    async def stream_body(self, events: AsyncIterator[StreamEvent], inbound: Inbound) -> AsyncIterator[bytes]:
        try:
            async for event in events:
                yield wire.encode_event(event)
        except RouterError as err:  # failure after the stream started: an SSE error event, as Anthropic does
            yield wire.error_event(err)
        except Exception as err:
            log.exception("stream failed")
            yield wire.error_event(RouterError(f"stream failed: {type(err).__name__}"))
        finally:
            await close_events(events)
