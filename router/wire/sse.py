"""A minimal, incremental Server-Sent Events decoder and encoder (WHATWG HTML, "server-sent events").

Why not a library: SSE libraries come bound to the way they fetch (httpx-sse to httpx, aiohttp's
SSE clients to their own reconnecting EventSource); the router only needs a decoder over a
response it already holds, and the format is a few lines of state. The decoder accepts any chunking
of the byte stream, so a line or a UTF-8 character split across network reads is reassembled
before it is interpreted.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass

# A line ends at CRLF, LF or a lone CR (the spec allows all three).
_LINE_END = re.compile(r"\r\n|\n|\r")


@dataclass(frozen=True)
class ServerSentEvent:
    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Feed text chunks in; get complete events out."""

    def __init__(self) -> None:
        self._buffer = ""
        self._event = ""
        self._data: list[str] = []
        self._last_id: str | None = None
        self._retry: int | None = None
        self._started = False

    def feed(self, chunk: str) -> list[ServerSentEvent]:
        if not self._started and chunk:
            self._started = True
            chunk = chunk.removeprefix("\ufeff")  # a leading BOM is not part of the first field
        self._buffer += chunk
        events: list[ServerSentEvent] = []
        while True:
            match = _LINE_END.search(self._buffer)
            # A CR at the very end may be the first half of a CRLF still in flight: wait for more.
            if match is None or (match.group() == "\r" and match.end() == len(self._buffer)):
                break
            line = self._buffer[: match.start()]
            self._buffer = self._buffer[match.end():]
            event = self._process_line(line)
            if event is not None:
                events.append(event)
        return events

    def flush(self) -> list[ServerSentEvent]:
        """End of stream: a final lone CR still ends its line; an event without its blank line is dropped,
        as the spec says (a truncated event may be missing data lines)."""
        events: list[ServerSentEvent] = []
        if self._buffer.endswith("\r"):
            line, self._buffer = self._buffer[:-1], ""
            event = self._process_line(line)
            if event is not None:
                events.append(event)
        self._buffer = ""
        self._event, self._data = "", []
        return events

    def _process_line(self, line: str) -> ServerSentEvent | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment, e.g. a keep-alive
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._last_id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
        # Any other field name is ignored, as the spec requires.
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        event_type, data = self._event, self._data
        self._event, self._data = "", []
        if not data:
            return None  # a block with no data lines dispatches nothing
        return ServerSentEvent(event=event_type or "message", data="\n".join(data),
                               id=self._last_id, retry=self._retry)


async def aiter_sse(chunks: AsyncIterable[bytes]) -> AsyncIterator[ServerSentEvent]:
    """Decode a byte stream (e.g. ``aiohttp.ClientResponse.content.iter_any()``) into events as they complete."""
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    decoder = SSEDecoder()
    async for chunk in chunks:
        for event in decoder.feed(utf8.decode(chunk)):
            yield event
    for event in decoder.feed(utf8.decode(b"", final=True)) + decoder.flush():
        yield event


def encode(data: str, event: str | None = None) -> bytes:
    """One event on the wire; data with newlines becomes several ``data:`` lines."""
    lines = [f"event: {event}"] if event else []
    lines.extend(f"data: {line}" for line in _LINE_END.split(data))
    return ("\n".join(lines) + "\n\n").encode("utf-8")
