"""What every backend adapter provides, and the failures that make the router try a fallback."""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import httpx
import msgspec
from httpx_aiohttp import AiohttpTransport

from ..config import BackendConfig, TargetConfig
from ..errors import UpstreamError, UpstreamStatusError
from ..internal import CallContext, Message, Request, StreamEvent

JSON_HEADERS = {"content-type": "application/json"}


def encode_json(value: object) -> bytes:
    """msgspec's encoder: several times faster than json.dumps on Claude Code's 100 KB requests."""
    return msgspec.json.encode(value)


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


class Backend(ABC):
    """One upstream server. ``complete`` and ``stream`` take the internal request with ``model``
    already set to the target's model, and speak the internal shape (see internal.py)."""

    def __init__(self, name: str, config: BackendConfig):
        self.name = name
        self.config = config
        self.base_url = config.base_url.rstrip("/")
        self.timeout = httpx.Timeout(config.read_timeout_s, connect=config.connect_timeout_s)
        # Many parallel Claude Code sessions share one router; don't queue behind a tiny pool.
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
        # aiohttp's C-accelerated HTTP/1.1 under httpx's request/response models: a fraction of
        # httpcore's CPU per call. trust_env=False: a proxy from the environment must not capture
        # loopback backends. Tests swap in httpx.MockTransport here.
        self.transport: httpx.AsyncBaseTransport = AiohttpTransport(limits=limits, trust_env=False)
        # Parsed once per path: httpx's URL parser costs more CPU than the rest of building a request.
        self._urls: dict[str, httpx.URL] = {}

    async def send(self, method: str, path: str, *, content: bytes | None = None,
                   headers: dict[str, str] | None = None, params: dict[str, Any] | None = None,
                   timeout: httpx.Timeout | None = None) -> httpx.Response:
        """Send one request and return the response with its body still unread (read or close it).

        Straight to the transport, not through httpx.AsyncClient: the client's per-call layers
        (auth flow, redirects, cookies, event hooks) cost about 0.15 ms of CPU per call, a fifth of
        the router's whole budget for a small request, and an API call needs none of them.
        Transport failures raise httpx.HTTPError, as through a client.
        """
        url = self._urls.get(path)
        if url is None:  # paths are the adapters' constants, so this stays a handful of entries
            url = self._urls[path] = httpx.URL(self.base_url + path)
        request = httpx.Request(method, url, content=content, headers=headers, params=params,
                                extensions={"timeout": (timeout or self.timeout).as_dict()})
        return await self.transport.handle_async_request(request)

    @contextlib.asynccontextmanager
    async def open(self, method: str, path: str, **kwargs: Any) -> AsyncIterator[httpx.Response]:
        """``send`` for a streamed answer: the response is closed (its connection released) on exit."""
        response = await self.send(method, path, **kwargs)
        try:
            yield response
        finally:
            await response.aclose()

    async def fetch(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """``send`` and read the whole answer."""
        async with self.open(method, path, **kwargs) as response:
            await response.aread()
        return response

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

    async def request_json(self, method: str, path: str, *,
                           check: Callable[[httpx.Response], Awaitable[None]] | None = None,
                           **kwargs: Any) -> tuple[Any, httpx.Response]:
        """Send one request and decode its JSON answer. Transport failures and answers that are not
        JSON raise BackendUnavailable (fall back); *check* (default: raise_for_upstream) judges the status."""
        try:
            response = await self.fetch(method, path, **kwargs)
            if check is None:
                await raise_for_upstream(self.name, response)
            else:
                await check(response)
            return msgspec.json.decode(response.content), response
        except httpx.HTTPError as e:
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
        await self.transport.aclose()


async def raise_for_upstream(backend: str, response: httpx.Response) -> None:
    """5xx -> BackendUnavailable (fall back); 4xx -> UpstreamStatusError (the client's problem)."""
    if response.status_code < 400:
        return
    body = await response.aread()
    if response.status_code >= 500:
        raise BackendUnavailable(backend, f"HTTP {response.status_code}", response.status_code)
    text = body.decode("utf-8", "replace")[:2000]
    headers = {k: v for k, v in response.headers.items() if k.lower() in ("retry-after", "x-should-retry")}
    raise UpstreamStatusError(response.status_code, f"backend {backend!r} answered HTTP "
                              f"{response.status_code}: {text}", body=body, headers=headers)


def stream_failure(backend: str, exc: Exception, started: bool) -> Exception:
    """A transport or decode error while reading a stream. Before the first event the pipeline can
    still fall back (BackendUnavailable); after it the client has seen part of an answer."""
    if isinstance(exc, httpx.HTTPError):
        if not started:
            return connection_failure(backend, exc)
        return UpstreamError(f"backend {backend!r} failed mid-stream: {type(exc).__name__}: {exc}")
    if not started:
        return BackendUnavailable(backend, f"stream is not valid JSON: {exc}")
    return UpstreamError(f"backend {backend!r} sent a malformed chunk: {exc}")


def connection_failure(backend: str, exc: httpx.HTTPError) -> BackendUnavailable:
    # httpx-aiohttp maps a refused connection (aiohttp.ClientConnectorError) to httpx.ConnectTimeout;
    # look at the cause so operators read "connection failed", not a misleading "timeout".
    refused = isinstance(exc.__cause__, aiohttp.ClientConnectorError) and not isinstance(
        exc.__cause__, aiohttp.ServerTimeoutError)
    kind = "timeout" if isinstance(exc, httpx.TimeoutException) and not refused else "connection failed"
    return BackendUnavailable(backend, f"{kind}: {type(exc).__name__}: {exc}")
