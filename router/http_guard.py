"""Limits on what a client can make the server hold: header size and time, body time, open requests.

Two layers, because uvicorn stops short of what a LAN-facing server needs:

* ``guarded_protocol`` subclasses uvicorn's httptools protocol. uvicorn has no limit on the size
  of a request's head and no timeout for receiving it (a connection that sends nothing, or one
  header byte a second, is kept forever; its keep-alive timer runs only between requests). The
  subclass answers 431 when the head grows past ``server.max_header_bytes`` and 408 when it is not
  complete ``server.header_timeout_s`` after the connection opened or the request's first byte.
* ``RequestGuard`` is ASGI middleware: it caps requests served at once
  (``server.max_concurrent_requests``, 503 in the caller's protocol shape), gives every request an
  id (``x-aibox-request-id``, also in the log), and closes the connection after any answer sent
  before the request body was read to its end, so a client cannot keep a socket by dripping a
  body the router already refused. The body itself is read, with its size and time limits, by the
  endpoints (``server.read_body``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .errors import OverloadedError, RouterError

log = logging.getLogger("aibox_router.http")

Render = Callable[[RouterError], bytes]

REQUEST_ID_KEY = "aibox.request_id"


@dataclass(frozen=True)
class HeadLimits:
    max_header_bytes: int
    header_timeout_s: float


def raw_error_response(status: int, reason: str, body: bytes) -> bytes:
    """A complete HTTP/1.1 answer that closes the connection, for errors before the app runs."""
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode("ascii") + body


def guarded_protocol(limits: HeadLimits, render_for_path: Callable[[str], Render]) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with a head size limit and a head timeout (see module doc)."""

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None
        _head_bytes = 0  # bytes received while the head is incomplete (catches a head never finished)
        _head_size = 0  # the parsed head's size (catches a whole oversize head in one read)
        _in_head = True
        _refused = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._start_head()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            if self._in_head:
                self._head_bytes += len(data)
            super().data_received(data)
            # Still in the head after all bytes so far: every one of them is head.
            if self._in_head and self._head_bytes > limits.max_header_bytes and not self.transport.is_closing():
                self._refuse(431, "Request Header Fields Too Large",
                             f"The request's headers exceed the router's limit of {limits.max_header_bytes} "
                             "bytes (server.max_header_bytes).")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_size = 0
            if self._head_timer is None:
                self._start_head()

        def on_url(self, url: bytes) -> None:
            self._head_size += len(url)
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._head_size += len(name) + len(value) + 4
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._cancel_head_timer()
            if self._head_size > limits.max_header_bytes:
                self._refuse(431, "Request Header Fields Too Large",
                             f"The request's headers exceed the router's limit of {limits.max_header_bytes} "
                             "bytes (server.max_header_bytes).")
                return
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            if not self._refused:
                super().on_body(body)

        def on_message_complete(self) -> None:
            if self._refused:
                return
            super().on_message_complete()
            self._in_head, self._head_bytes = True, 0  # the next request on this connection

        def _start_head(self) -> None:
            self._in_head = True
            self._cancel_head_timer()
            self._head_timer = self.loop.call_later(limits.header_timeout_s, self._head_timed_out)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self._in_head and not self.transport.is_closing():
                if self._head_bytes == 0 and self.cycle is not None:
                    self.transport.close()  # idle between requests: uvicorn's keep-alive case
                    return
                self._refuse(408, "Request Timeout", "The request's headers did not arrive within "
                                                     f"{limits.header_timeout_s:g} s (server.header_timeout_s).")

        def _refuse(self, status: int, reason: str, message: str) -> None:
            self._refused = True
            self._cancel_head_timer()
            peer = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
            log.warning("%s from %s: %s", status, peer, message)
            error = RouterError(message)
            error.status = status
            error.anthropic_type = error.openai_type = "request_too_large" if status == 431 else "timeout_error"
            path = self.url.decode("latin-1").split("?", 1)[0] if isinstance(getattr(self, "url", None), bytes) else ""
            self.transport.write(raw_error_response(status, reason, render_for_path(path)(error)))
            self.transport.close()

    return GuardedHttpToolsProtocol


class RequestGuard:
    """ASGI middleware: concurrency cap, request ids, connection close after an unread body."""

    def __init__(self, app: Any, max_concurrent: Callable[[], int], render_for_path: Callable[[str], Render]):
        self.app = app
        self._max_concurrent = max_concurrent
        self._render_for_path = render_for_path
        self.active = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = "req_" + secrets.token_hex(12)
        scope[REQUEST_ID_KEY] = request_id
        id_header = (b"x-aibox-request-id", request_id.encode("ascii"))
        if self.active >= self._max_concurrent():
            await self._overloaded(scope, send, id_header)
            return
        body_pending = _has_body(scope)

        async def receive_body() -> Any:
            nonlocal body_pending
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_pending = False
            return message

        async def send_marked(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                headers.append(id_header)
                if body_pending and not any(name.lower() == b"connection" for name, _ in headers):
                    # Answered before the body was read (refused, or not a route): the rest of
                    # the body must not keep the connection, nor be parsed as a next request.
                    headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            await send(message)

        self.active += 1
        try:
            await self.app(scope, receive_body if body_pending else receive, send_marked)
        finally:
            self.active -= 1

    async def _overloaded(self, scope: dict[str, Any], send: Any, id_header: tuple[bytes, bytes]) -> None:
        err = OverloadedError(f"The router is serving its limit of {self._max_concurrent()} requests "
                              "(server.max_concurrent_requests); retry shortly.")
        log.warning("503 %s %r: over server.max_concurrent_requests", scope.get("method"),
                    str(scope.get("path", ""))[:200])
        body = self._render_for_path(scope.get("path", ""))(err)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"retry-after", b"1"), id_header]
        if _has_body(scope):
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": err.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _has_body(scope: dict[str, Any]) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return value.strip() not in (b"0", b"")
        if name == b"transfer-encoding":
            return True
    return False
