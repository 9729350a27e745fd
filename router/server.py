"""The HTTP face of the router: Anthropic and OpenAI endpoints, health, readiness, metrics.

Each endpoint authenticates the client, hands the body to its protocol adapter, runs the
pipeline, and renders the result (or any error) in the caller's own protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from . import pipeline
from .api import anthropic as anthropic_api
from .api import openai as openai_api
from .config import RouterConfig, load_config
from .errors import AuthenticationError, ConfigError, InvalidRequestError, RouterError
from .runtime import Runtime

log = logging.getLogger("aibox_router.server")

# Headers passed on to the Anthropic backend. Client keys (x-api-key, authorization) never are.
_FORWARDED = ("anthropic-version", "anthropic-beta")
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class ClientKeys:
    """Maps a presented key to a client name without keeping a timing side channel on the key."""

    def __init__(self, config: RouterConfig):
        self._by_digest = {hashlib.sha256(c.key.encode()).digest(): c.name for c in config.clients}

    @property
    def open(self) -> bool:
        return not self._by_digest

    def identify(self, request: HTTPRequest) -> str:
        if self.open:
            return "anonymous"
        key = request.headers.get("x-api-key")
        if key is None:
            auth = request.headers.get("authorization", "")
            if auth[:7].lower() == "bearer ":
                key = auth[7:].strip()
        if not key:
            raise AuthenticationError("Missing API key: send a client key as x-api-key or Authorization: Bearer.")
        name = self._by_digest.get(hashlib.sha256(key.encode()).digest())
        if name is None:
            raise AuthenticationError("Invalid API key: this key is not one of the router's client keys.")
        return name


class RouterApp:
    """Holds the live Runtime and swaps it on reload."""

    def __init__(self, config_path: str | None, config: RouterConfig):
        self.config_path = config_path
        self.runtime: Runtime | None = None
        self._initial = config
        self.keys = ClientKeys(config)
        self._reload_lock = asyncio.Lock()

    async def start(self) -> None:
        self.runtime = Runtime.open(self._initial)
        await self.runtime.windows.discover(self.runtime.backends)
        if self.keys.open:
            log.warning("no clients configured: the router accepts requests without a key")

    async def stop(self) -> None:
        if self.runtime is not None:
            await self.runtime.aclose()

    async def reload(self) -> bool:
        """Load the config file again; a bad file is rejected and the old config keeps serving."""
        if self.config_path is None:
            log.warning("reload requested but the router runs on the embedded default config; nothing to do")
            return False
        async with self._reload_lock:
            try:
                config = await asyncio.to_thread(load_config, self.config_path)
            except ConfigError as e:
                log.error("config reload rejected, still serving the previous config: %s", e)
                return False
            old = self.runtime
            assert old is not None
            new = old.successor(config)
            await new.windows.discover(new.backends)
            self.runtime = new
            self.keys = ClientKeys(config)
            await old.retire()
            log.info("config reloaded from %s (daily budget $%.2f, %d rules)", self.config_path,
                     config.budgets.daily_budget, len(config.rules))
            return True

    @contextlib.asynccontextmanager
    async def use_runtime(self) -> AsyncIterator[Runtime]:
        runtime = self.runtime
        assert runtime is not None
        runtime.acquire()
        try:
            yield runtime
        finally:
            await runtime.release()


def _forward_headers(request: HTTPRequest) -> dict[str, str]:
    return {h: request.headers[h] for h in _FORWARDED if h in request.headers}


def _override(request: HTTPRequest, runtime: Runtime) -> str | None:
    return request.headers.get(runtime.config.override_header)


async def _read_body(request: HTTPRequest, runtime: Runtime) -> bytes:
    body = await request.body()
    if len(body) > runtime.config.server.max_body_bytes:
        raise InvalidRequestError(f"Request body of {len(body)} bytes exceeds server.max_body_bytes "
                                  f"({runtime.config.server.max_body_bytes}).")
    return body


def _error_response(err: RouterError, render: Callable[[RouterError], bytes]) -> Response:
    return Response(render(err), status_code=err.status, media_type="application/json", headers=err.headers)


def create_app(config_path: str | None = None, config: RouterConfig | None = None) -> Starlette:
    if config is None:
        from .cli.common import default_config_path

        config = load_config(config_path or default_config_path())
    state = RouterApp(config_path, config)

    async def messages(request: HTTPRequest) -> Response:
        return await _serve(request, "anthropic")

    async def chat_completions(request: HTTPRequest) -> Response:
        return await _serve(request, "openai")

    async def _serve(request: HTTPRequest, protocol: str) -> Response:
        render = anthropic_api.error_body if protocol == "anthropic" else openai_api.error_body
        started = time.perf_counter()
        client = "-"
        async with state.use_runtime() as runtime:
            try:
                client = state.keys.identify(request)
                body = await _read_body(request, runtime)
                if protocol == "anthropic":
                    internal = anthropic_api.parse_request(body)
                    include_usage = False
                else:
                    internal, options = openai_api.parse_request(body)
                    include_usage = options.include_usage
                requested_model = str(internal.get("model") or "")
                kwargs: dict[str, Any] = {"client": client, "protocol": protocol, "body_size": len(body),
                                          "forward_headers": _forward_headers(request),
                                          "override": _override(request, runtime)}
                if internal.get("stream"):
                    outcome = await pipeline.open_stream(runtime, internal, **kwargs)
                else:
                    outcome = await pipeline.complete(runtime, internal, **kwargs)
            except RouterError as err:
                _log_request(request, protocol, client, "-", err.status, started)
                return _error_response(err, render)
            headers = outcome.headers()
            _log_request(request, protocol, client, outcome.target, 200, started)
            if outcome.events is None:
                assert outcome.message is not None
                if protocol == "anthropic":
                    content = anthropic_api.encode_message(outcome.message)
                else:
                    content = msgspec.json.encode(openai_api.message_to_response(outcome.message, requested_model))
                return Response(content, media_type="application/json", headers=headers)
            runtime.acquire()  # the stream outlives this handler; keep its runtime alive until it ends
            encoder = (_anthropic_sse(outcome.events) if protocol == "anthropic"
                       else _openai_sse(outcome.events, requested_model, include_usage))
            return StreamingResponse(_release_after(encoder, runtime), media_type="text/event-stream",
                                     headers={**headers, **_SSE_HEADERS})

    async def count_tokens(request: HTTPRequest) -> Response:
        async with state.use_runtime() as runtime:
            try:
                state.keys.identify(request)
                body = await _read_body(request, runtime)
                internal = anthropic_api.parse_count_tokens_request(body)
                tokens = await _count_tokens(runtime, internal, len(body), _forward_headers(request))
            except RouterError as err:
                return _error_response(err, anthropic_api.error_body)
            return JSONResponse({"input_tokens": tokens})

    async def models(request: HTTPRequest) -> Response:
        runtime = state.runtime
        assert runtime is not None
        try:
            state.keys.identify(request)
        except RouterError as err:
            return _error_response(err, openai_api.error_body)
        names = list(runtime.config.targets) + [t.model for t in runtime.config.targets.values()]
        return Response(openai_api.models_list(list(dict.fromkeys(names))), media_type="application/json")

    async def health(request: HTTPRequest) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(request: HTTPRequest) -> Response:
        runtime = state.runtime
        assert runtime is not None
        names = list(runtime.backends)
        results = await asyncio.gather(*(_probe(runtime.backends[n]) for n in names))
        backends = {n: {"reachable": ok, "detail": detail, "type": runtime.config.backends[n].type}
                    for n, (ok, detail) in zip(names, results, strict=True)}
        any_ok = any(b["reachable"] for b in backends.values())
        return JSONResponse({"status": "ready" if any_ok else "unavailable", "backends": backends,
                             "config": state.config_path or "<embedded default>"},
                            status_code=200 if any_ok else 503)

    async def root(request: HTTPRequest) -> Response:
        return Response(b"aibox-router\n" if request.method == "GET" else b"", media_type="text/plain")

    async def metrics(request: HTTPRequest) -> Response:
        from . import metrics as metrics_mod

        content, content_type = metrics_mod.render()
        return Response(content, media_type=content_type)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await state.start()
        from .gpu import register_metrics

        register_metrics(lambda: state.runtime.gpu if state.runtime is not None else None)
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(state.reload()))
        log.info("aibox-router ready (config: %s)", config_path or "embedded default")
        try:
            yield
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signal.SIGHUP)
            await state.stop()

    routes = [
        Route("/v1/messages", messages, methods=["POST"]),
        Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/", root, methods=["GET", "HEAD"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.router = state
    return app


async def _probe(backend: Any) -> tuple[bool, str]:
    try:
        return await asyncio.wait_for(backend.health(), timeout=5)
    except Exception as e:  # noqa: BLE001 - readiness reports, it does not fail
        return False, f"{type(e).__name__}: {e}"


async def _count_tokens(runtime: Runtime, internal: dict[str, Any], body_size: int,
                        forward_headers: dict[str, str]) -> int:
    """Exact count from a cloud backend when the request would go there, else the router's estimate."""
    from .internal import CallContext

    plan = pipeline.plan_request(runtime, {**internal, "max_tokens": 1}, client="count_tokens",
                                 protocol="anthropic", body_size=body_size)
    target = runtime.config.targets[plan.decision.target]
    backend = runtime.backends[target.backend]
    try:
        exact = await backend.count_tokens({**internal, "model": target.model},
                                           CallContext(forward_headers=forward_headers))
    except Exception as e:  # noqa: BLE001 - counting is advisory; fall back to the estimate
        log.info("count_tokens via %s failed (%s); using the estimate", target.backend, e)
        exact = None
    return exact if exact is not None else plan.features.input_tokens


async def _release_after(chunks: AsyncIterator[bytes], runtime: Runtime) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            yield chunk
    finally:
        await runtime.release()


async def _anthropic_sse(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    try:
        async for event in events:
            yield anthropic_api.encode_event(event)
    except RouterError as err:  # failure after the stream started: an SSE error event, as Anthropic does
        yield anthropic_api.error_event(err)
    except Exception as err:
        log.exception("stream failed")
        yield anthropic_api.error_event(RouterError(f"stream failed: {type(err).__name__}"))
    finally:
        await _close(events)


async def _openai_sse(events: AsyncIterator[dict[str, Any]], model: str,
                      include_usage: bool) -> AsyncIterator[bytes]:
    encoder = openai_api.StreamEncoder(model=model, include_usage=include_usage)
    try:
        async for event in events:
            chunk = encoder.feed(event)
            if chunk:
                yield chunk
        tail = encoder.finish()
        if tail:
            yield tail
    except RouterError as err:
        yield b"data: " + openai_api.error_body(err) + b"\n\n"
    except Exception as err:
        log.exception("stream failed")
        yield b"data: " + openai_api.error_body(RouterError(f"stream failed: {type(err).__name__}")) + b"\n\n"
    finally:
        await _close(events)


async def _close(events: AsyncIterator[Any]) -> None:
    closer = getattr(events, "aclose", None)
    if closer is not None:
        await closer()


def _log_request(request: HTTPRequest, protocol: str, client: str, target: str, status: int,
                 started: float) -> None:
    if log.isEnabledFor(logging.INFO):
        log.info("%s %s %s client=%s target=%s status=%d %.1fms", request.method, request.url.path, protocol,
                 client, target, status, (time.perf_counter() - started) * 1000)
