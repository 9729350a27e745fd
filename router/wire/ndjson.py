"""Newline-delimited JSON (NDJSON) framing, as Ollama streams its answers; the sibling of sse.py."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator


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
