"""A loopback HTTP server whose answers the test scripts, byte for byte.

Stands in for an OpenAI-compatible or Ollama server misbehaving in one exact way (a malformed
chunk, a stream cut off mid-answer, an error object inside the stream, a 5xx): the real servers
cannot be made to do that on demand. It is a real aiohttp server on 127.0.0.1, so the backend
under test goes through its real HTTP client, connection pool and error handling.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Seen:
    """A request as the server received it."""

    method: str
    path: str
    url: str
    headers: dict[str, str]
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)


def reply(status: int = 200, *, json_body: Any = None, content: bytes = b"",
          headers: dict[str, str] | None = None) -> web.Response:
    """An answer: a JSON document, or exactly *content*."""
    if json_body is not None:
        return web.json_response(json_body, status=status, headers=headers)
    return web.Response(status=status, body=content, headers=headers)


@dataclass
class ScriptedUpstream:
    url: str
    seen: list[Seen] = field(default_factory=list)


@asynccontextmanager
async def scripted_upstream(answer: Callable[[Seen], web.StreamResponse]) -> AsyncIterator[ScriptedUpstream]:
    """Serve *answer* on a free loopback port for the duration of the block."""
    server: ScriptedUpstream | None = None

    async def handle(request: web.Request) -> web.StreamResponse:
        assert server is not None
        seen = Seen(request.method, request.path, str(request.url), {k.lower(): v for k, v in request.headers.items()},
                    await request.read())
        server.seen.append(seen)
        return answer(seen)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = ScriptedUpstream(url=f"http://127.0.0.1:{runner.addresses[0][1]}")
    try:
        yield server
    finally:
        await runner.cleanup()
