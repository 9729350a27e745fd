"""The wire protocols the router speaks: one module per external protocol.

* ``anthropic``: the Anthropic Messages API (inbound, and the cloud backend; it *is* the internal shape);
* ``openai_chat``: OpenAI Chat Completions (inbound ``/v1/chat/completions``, and OpenAI-compatible
  backends such as llama.cpp and vLLM);
* ``ollama``: Ollama's native ``/api/chat``.

Each holds both translation directions, its mapping tables, its usage rules, its stream translator
and its decoder. Framings shared by several protocols sit beside them (``sse``, ``ndjson``), as do
the request field checks (``checks``) and the chat-message helpers OpenAI and Ollama share
(``chat_common``). Nothing here opens a connection: ``api/`` serves, ``backends/`` sends.
"""

from __future__ import annotations

from typing import Any, Protocol

import msgspec

from ..internal import StreamEvent


def encode_json(value: object) -> bytes:
    """msgspec's encoder: several times faster than json.dumps on Claude Code's 100 KB requests."""
    return msgspec.json.encode(value)


class UpstreamStreamTranslator(Protocol):
    """Turns a backend's streamed chunks into internal stream events (see ``Backend.relay_stream``).

    ``start`` gives the events that open the message (called with the first chunk, before ``feed``);
    ``feed`` those for one chunk; ``end`` those that close it once the stream is over.
    """

    unit: str  # what one chunk is called, for error messages ("chunk", "object")
    cut_short: str  # what a stream that ended early ended before ("its final object")

    @property
    def finished(self) -> bool:
        """The upstream said its last word in a chunk (the stream ends here)."""

    @property
    def complete(self) -> bool:
        """The answer is whole, even if the stream then breaks off."""

    def start(self, chunk: dict[str, Any]) -> list[StreamEvent]: ...

    def feed(self, chunk: dict[str, Any]) -> list[StreamEvent]: ...

    def end(self) -> list[StreamEvent]: ...
