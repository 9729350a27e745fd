"""The router's inbound endpoints: one adapter object per protocol, which server.py holds.

An endpoint adapter is thin: it names its protocol, reads a body with the protocol's wire module,
and writes messages, streams and errors back in that protocol. What the protocol looks like is the
wire module's business (wire/anthropic.py, wire/openai_chat.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import RouterError
from ..internal import Message, Request, StreamEvent


@dataclass(frozen=True)
class Inbound:
    """One parsed request: the internal request and what the answer must honour besides it."""

    request: Request
    model: str  # the model name the client asked for, echoed in OpenAI answers
    include_usage: bool = False  # OpenAI's stream_options.include_usage: a final usage chunk

    @property
    def stream(self) -> bool:
        return bool(self.request.get("stream"))


class Endpoint(Protocol):
    """What server.py needs of an inbound protocol."""

    protocol: str  # "anthropic" or "openai": the ledger's and the log's name for it

    def parse(self, body: bytes) -> Inbound:
        """Decode and check a request body; InvalidRequestError names the bad field."""

    def error_body(self, err: RouterError) -> bytes:
        """An error in the protocol's shape."""

    def message_body(self, message: Message, inbound: Inbound) -> bytes:
        """A complete answer."""

    def stream_body(self, events: AsyncIterator[StreamEvent], inbound: Inbound) -> AsyncIterator[bytes]:
        """A streamed answer; a failure after the stream started travels inside it. Closes *events*."""


async def close_events(events: AsyncIterator[Any]) -> None:
    closer = getattr(events, "aclose", None)
    if closer is not None:
        await closer()
