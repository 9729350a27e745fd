"""What every backend provides, and the failures that make the router try a fallback.

A backend is transport plus error mapping: what its protocol's bodies look like is the business of
its wire module (wire/anthropic.py, wire/openai_chat.py, wire/ollama.py); ``relay_stream`` is the
one loop that reads a streamed answer through a wire module's decoder and translator.

Upstream calls go through aiohttp, not httpx (which the CLI and the alert webhooks use): the
gateway makes one upstream call per request, and aiohttp's client spends about 0.1 ms less CPU on
it than httpx's request and response models over the same aiohttp connection pool: a seventh of
the router's whole budget for a small request (benchmarks/router_overhead.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

import aiohttp
import msgspec
from yarl import URL

from ..config import BackendConfig, TargetConfig
from ..errors import UpstreamError, UpstreamStatusError
from ..internal import CallContext, Message, Request, StreamEvent, observe_event
from ..wire import UpstreamStreamTranslator, encode_json

JSON_HEADERS = {"content-type": "application/json"}

# What a failed upstream exchange raises: refused, reset, closed early, or a timeout.
TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)

Response = aiohttp.ClientResponse


class BackendUnavailable(Exception):
    """Connection refused, timeout or a 5xx: the next target in the fallback chain should try.

    Raised only before the first byte of a response reaches the client; after that the client
    has seen part of an answer and falling back would splice two answers together.
    """

    def __init__(self, backend: str, reason: str, status: int | None = None):
        super().__init__(f"backend {backend!r} unavailable: {reason}")
        self.backend = backend
        self.reason = reason
        self.status = status


class BackendCredentialsRejected(BackendUnavailable):
    """The upstream answered 401/403: it refused the *router's* credentials (its ``api_key_env``).

    Client keys never travel upstream, so this is never the client's fault: the backend is down
    until an operator fixes the key, the pipeline falls back, and the operator is alerted.
    """


class Backend(ABC):
    """One upstream server. ``complete`` and ``stream`` take the internal request with ``model``
    already set to the target's model, and speak the internal shape (see internal.py)."""

    def __init__(self, name: str, config: BackendConfig):
        self.name = name
        self.config = config
        self.base_url = config.base_url.rstrip("/")
        # connect: waiting for a pooled connection, sock_connect: the TCP connect itself,
        # sock_read: the longest silence while an answer streams (a local model's first token).
        self.timeout = aiohttp.ClientTimeout(total=None, connect=config.read_timeout_s,
                                             sock_connect=config.connect_timeout_s,
                                             sock_read=config.read_timeout_s)
        self._session: aiohttp.ClientSession | None = None
        # Parsed once per path; paths are the adapters' constants, so this stays a handful of entries.
        self._urls: dict[str, URL] = {}

    @property
    def session(self) -> aiohttp.ClientSession:
        # Made on first use, inside the running event loop that will use it.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                # Many parallel Claude Code sessions share one router; don't queue behind a tiny pool.
                connector=aiohttp.TCPConnector(limit=256, limit_per_host=0),
                # A proxy from the environment must not capture loopback backends.
                trust_env=False)
        return self._session

    def _url(self, path: str) -> URL:
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = URL(self.base_url + path)
        return url

    @contextlib.asynccontextmanager
    async def open(self, method: str, path: str, *, content: bytes | None = None,
                   headers: dict[str, str] | None = None, params: dict[str, Any] | None = None,
                   timeout: aiohttp.ClientTimeout | None = None) -> AsyncIterator[Response]:
        """Send one request; the response's body is read inside the block (streamed or whole) and
        its connection goes back to the pool on exit. Failures raise one of TRANSPORT_ERRORS."""
        async with self.session.request(method, self._url(path), data=content, headers=headers, params=params,
                                        timeout=timeout or self.timeout, allow_redirects=False) as response:
            yield response

    async def fetch(self, method: str, path: str, **kwargs: Any) -> tuple[Response, bytes]:
        """``open`` and read the whole answer."""
        async with self.open(method, path, **kwargs) as response:
            return response, await response.read()

    def api_key(self) -> str | None:
        return os.environ.get(self.config.api_key_env) if self.config.api_key_env else None

    @abstractmethod
    async def complete(self, request: Request, target: TargetConfig, ctx: CallContext) -> Message:
        """Send a non-streaming request; return an Anthropic ``message`` object."""

    @abstractmethod
    def stream(self, request: Request, target: TargetConfig, ctx: CallContext) -> AsyncIterator[StreamEvent]:
        """Send a streaming request; yield Anthropic stream events.

        Must raise BackendUnavailable (not yield) if the upstream cannot be reached or answers 5xx,
        so the caller can fall back before anything reached the client.
        """

    async def relay_stream(self, path: str, body: dict[str, Any], headers: dict[str, str], ctx: CallContext,
                           decode: Callable[[AsyncIterable[bytes]], AsyncIterator[dict[str, Any] | None]],
                           translator: UpstreamStreamTranslator) -> AsyncIterator[StreamEvent]:
        """POST *body* and yield the streamed answer as internal events: the wire module's *decode*
        splits the body into chunks (None for an end marker), its *translator* turns them into events.

        Before the first event every failure raises BackendUnavailable (the pipeline falls back);
        after it, UpstreamError: the client has seen part of an answer. A stream that ends before
        the answer is complete is an error, not a shorter answer.
        """
        started = done = False
        try:
            async with self.open("POST", path, content=encode_json(body), headers=headers) as response:
                await self.check_stream_response(response, ctx)
                async for chunk in decode(response.content.iter_any()):
                    if chunk is None:  # the protocol's end marker
                        done = True
                        break
                    if chunk.get("error"):
                        raise self.error_in_stream(chunk["error"], started)
                    # message_start waits for the first chunk: an error before it can still fall back.
                    events = ([] if started else translator.start(chunk)) + translator.feed(chunk)
                    started = True
                    for event in events:
                        observe_event(ctx.usage, event)
                        yield event
                    if translator.finished:
                        done = True
                        break
        except (*TRANSPORT_ERRORS, msgspec.DecodeError) as e:
            raise stream_failure(self.name, e, started) from e
        if not started:
            raise BackendUnavailable(self.name, f"stream ended without any {translator.unit}")
        if not done and not translator.complete:
            # Neither an end marker nor a complete answer: the server died mid-answer.
            raise UpstreamError(f"backend {self.name!r} ended the stream before {translator.cut_short}")
        for event in translator.end():
            observe_event(ctx.usage, event)
            yield event

    async def check_stream_response(self, response: Response, ctx: CallContext) -> None:
        """Judge a streamed answer's status before its body is read (see raise_for_stream_status)."""
        await raise_for_stream_status(self.name, response)

    def error_in_stream(self, error: Any, started: bool) -> Exception:
        """The exception for an error object the upstream sent inside its stream."""
        return UpstreamError(f"backend {self.name!r} reported an error in the stream: {error}")

    async def request_json(self, method: str, path: str, *,
                           check: Callable[[Response, bytes], None] | None = None,
                           **kwargs: Any) -> tuple[Any, Response]:
        """Send one request and decode its JSON answer. Transport failures and answers that are not
        JSON raise BackendUnavailable (fall back); *check* (default: raise_for_upstream) judges the status."""
        try:
            response, body = await self.fetch(method, path, **kwargs)
            if check is None:
                raise_for_upstream(self.name, response, body)
            else:
                check(response, body)
            return msgspec.json.decode(body), response
        except TRANSPORT_ERRORS as e:
            raise connection_failure(self.name, e) from e
        except ValueError as e:
            raise BackendUnavailable(self.name, f"{method} {path} did not answer JSON: {e}") from e

    async def count_tokens(self, request: Request, ctx: CallContext) -> int | None:
        """Exact input token count from the upstream, or None when it has no such endpoint."""
        return None

    @abstractmethod
    async def health(self) -> tuple[bool, str]:
        """(reachable, detail) for the readiness endpoint; must not spend money."""

    async def list_models(self) -> list[str]:
        return []

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def raise_for_upstream(backend: str, response: Response, body: bytes) -> None:
    """5xx -> BackendUnavailable (fall back); 401/403 -> BackendCredentialsRejected (the router's key:
    fall back and alert); other 4xx -> UpstreamStatusError (the client's problem).

    *body* is the answer's body (for a streamed answer see ``raise_for_stream_status``).
    """
    if response.status < 400:
        return
    if response.status >= 500:
        raise BackendUnavailable(backend, f"HTTP {response.status}", response.status)
    if response.status in (401, 403):
        raise credentials_rejected(backend, response.status)
    text = body.decode("utf-8", "replace")[:2000]
    headers = {k.lower(): v for k, v in response.headers.items() if k.lower() in ("retry-after", "x-should-retry")}
    raise UpstreamStatusError(response.status, f"backend {backend!r} answered HTTP "
                              f"{response.status}: {text}", body=body, headers=headers)


async def raise_for_stream_status(backend: str, response: Response) -> None:
    """raise_for_upstream for a streamed answer: its body is read only when the status says it failed."""
    if response.status >= 400:
        raise_for_upstream(backend, response, await response.read())


def credentials_rejected(backend: str, status: int) -> BackendCredentialsRejected:
    # The upstream's body is not quoted: it may echo part of the key.
    return BackendCredentialsRejected(
        backend, f"HTTP {status}: the upstream rejected the router's own API key for backend {backend!r} "
                 "(revoked or wrong; see its api_key_env)", status)


def stream_failure(backend: str, exc: Exception, started: bool) -> Exception:
    """A transport or decode error while reading a stream. Before the first event the pipeline can
    still fall back (BackendUnavailable); after it the client has seen part of an answer."""
    if isinstance(exc, TRANSPORT_ERRORS):
        if not started:
            return connection_failure(backend, exc)
        return UpstreamError(f"backend {backend!r} failed mid-stream: {type(exc).__name__}: {exc}")
    if not started:
        return BackendUnavailable(backend, f"stream is not valid JSON: {exc}")
    return UpstreamError(f"backend {backend!r} sent a malformed chunk: {exc}")


def connection_failure(backend: str, exc: BaseException) -> BackendUnavailable:
    kind = "timeout" if isinstance(exc, asyncio.TimeoutError) else "connection failed"
    return BackendUnavailable(backend, f"{kind}: {type(exc).__name__}: {exc}")
