"""The HTTP face of the router: Anthropic and OpenAI endpoints, MCP tools, health, readiness, metrics.

Each endpoint authenticates the client, hands the body to its protocol adapter, runs the
pipeline, and renders the result (or any error) in the caller's own protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from . import metrics as metrics_mod
from . import pipeline
from .api import Endpoint
from .api.anthropic import AnthropicEndpoint
from .api.openai import OpenAIChatEndpoint
from .backend_health import register_metrics as register_backend_metrics
from .config import RouterConfig, ServerConfig
from .config_load import default_config_path, load_config
from .errors import (
    AuthenticationError,
    ConfigError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    RequestTimeoutError,
    RequestTooLargeError,
    RouterError,
)
from .gpu import register_metrics as register_gpu_metrics
from .http_guard import REQUEST_ID_KEY, RequestGuard
from .internal import CallContext
from .mcp_http import MCP_PATH, McpEndpoint
from .runtime import Runtime
from .whoami import WHOAMI_PATH, describe

log = logging.getLogger("aibox_router.server")

# Headers passed on to the Anthropic backend. Client keys (x-api-key, authorization) never are.
_FORWARDED = ("anthropic-version", "anthropic-beta")
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}

# One adapter object per inbound protocol.
ANTHROPIC = AnthropicEndpoint()
OPENAI = OpenAIChatEndpoint()


class ClientKeys:
    """Maps a presented key to a client name without keeping a timing side channel on the key."""

    def __init__(self, config: RouterConfig):
        self._by_digest = {hashlib.sha256(c.key.encode()).digest(): c.name for c in config.clients}

    @property
    def open(self) -> bool:
        return not self._by_digest

    def revoked_by(self, new: ClientKeys) -> ClientKeys:
        """The keys to accept while a reload to *new* is still being prepared: a key *new* drops
        (or gives to another client) is refused from now on; one it adds waits for the swap, when
        the new config's per-client settings serve it too."""
        if self.open or new.open:  # the new config names the only clients (or opens up: that waits)
            return new if self.open else self
        kept = ClientKeys.__new__(ClientKeys)
        kept._by_digest = {d: n for d, n in self._by_digest.items() if new._by_digest.get(d) == n}
        return kept

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


class ProbeAccess:
    """Who may read /ready and /metrics: listed addresses, the metrics token, or a client key."""

    def __init__(self, config: RouterConfig):
        server = config.server
        self._networks = [ipaddress.ip_network(n, strict=False) for n in server.open_probes_to]
        self._token = server.metrics_token.encode() if server.metrics_token else None

    def check(self, request: HTTPRequest, keys: ClientKeys) -> None:
        host = request.client.host if request.client else None
        if host is not None and self._networks:
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                address = None
            if address is not None and any(address in net for net in self._networks):
                return
        auth = request.headers.get("authorization", "")
        if self._token is not None and auth[:7].lower() == "bearer " and \
                hmac.compare_digest(auth[7:].strip().encode(), self._token):
            return
        keys.identify(request)


class RouterApp:
    """Holds the live Runtime and swaps it on reload."""

    def __init__(self, config_path: str | None, config: RouterConfig):
        self.config_path = config_path
        self.runtime: Runtime | None = None
        self._initial = config
        self.keys = ClientKeys(config)
        self.probes = ProbeAccess(config)
        self._reload_lock = asyncio.Lock()
        self._ready: tuple[float, Runtime, dict[str, bool]] | None = None
        self._ready_lock = asyncio.Lock()

    @property
    def server_config(self) -> ServerConfig:
        return self.runtime.config.server if self.runtime is not None else self._initial.server

    async def readiness(self) -> tuple[dict[str, Any], int]:
        """Each backend's reachability, probed at most once per ``server.ready_cache_s``.

        The answer names backends and says reachable or not, nothing more: the probe's detail
        (addresses, exception text) goes to the log, where only the operator reads it. A backend
        whose upstream rejected the router's own key on a real call is down whatever its probe says.
        """
        runtime = self.runtime
        assert runtime is not None
        async with self._ready_lock:  # concurrent callers share one probe
            cached = self._ready
            if cached is not None and cached[1] is runtime and \
                    time.monotonic() - cached[0] < runtime.config.server.ready_cache_s:
                probed = cached[2]
            else:
                names = list(runtime.backends)
                results = await asyncio.gather(*(_probe(runtime.backends[n]) for n in names))
                for name, (ok, detail) in zip(names, results, strict=True):
                    if not ok:
                        log.warning("readiness: backend %s is unreachable: %s", name, detail)
                probed = {n: ok for n, (ok, _) in zip(names, results, strict=True)}
                self._ready = (time.monotonic(), runtime, probed)
        backends = {}
        for name, ok in probed.items():
            down = runtime.backend_health.down(name)
            if ok and down is not None and down.credentials:
                log.warning("readiness: backend %s is down: %s", name, down.reason)
                ok = False
            backends[name] = {"reachable": ok}
        any_ok = any(b["reachable"] for b in backends.values())
        answer = {"status": "ready" if any_ok else "unavailable", "backends": backends}
        return answer, 200 if any_ok else 503

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
            # Revoked keys are refused at once: preparing the new runtime (asking backends for their
            # context windows) may take seconds.
            self.keys = self.keys.revoked_by(ClientKeys(config))
            old = self.runtime
            assert old is not None
            new = old.successor(config)
            await new.windows.discover(new.backends)
            self.runtime = new
            self.keys = ClientKeys(config)
            self.probes = ProbeAccess(config)
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


async def read_body(request: HTTPRequest, server: ServerConfig) -> bytes:
    """The request body, refused with 413 past ``server.max_body_bytes`` (announced or counted
    while a chunked body arrives) and with 408 when it takes longer than ``server.body_timeout_s``."""
    limit = server.max_body_bytes
    announced = request.headers.get("content-length")
    if announced is not None:
        if not announced.strip().isdigit():
            raise InvalidRequestError("content-length: expected a number of bytes")
        if int(announced) > limit:
            raise RequestTooLargeError(f"Request body of {int(announced)} bytes exceeds the router's limit of "
                                       f"{limit} bytes (server.max_body_bytes).")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(server.body_timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise RequestTooLargeError(f"Request body exceeds the router's limit of {limit} bytes "
                                               "(server.max_body_bytes).")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeoutError(f"The request body did not arrive within {server.body_timeout_s:g} s "
                                  "(server.body_timeout_s).") from None
    return b"".join(chunks)


def _error_response(err: RouterError, render: Callable[[RouterError], bytes]) -> Response:
    headers = dict(err.headers)
    if err.status in (408, 413):
        headers["connection"] = "close"
    return Response(render(err), status_code=err.status, media_type="application/json", headers=headers)


def endpoint_for_path(path: str) -> Endpoint:
    """The protocol a path belongs to (OpenAI's, else Anthropic's)."""
    if path.startswith("/v1/chat/") or path == "/v1/models":
        return OPENAI
    return ANTHROPIC


def render_for_path(path: str) -> Callable[[RouterError], bytes]:
    """The error renderer of the protocol a path belongs to."""
    return endpoint_for_path(path).error_body


def _request_id(request: HTTPRequest) -> str:
    return str(request.scope.get(REQUEST_ID_KEY) or "-")


def _unexpected(request: HTTPRequest, exc: BaseException, where: str) -> RouterError:
    """An error the router did not foresee: logged in full with the request id, answered as a 500."""
    request_id = _request_id(request)
    log.error("unexpected error %s (request id %s)", where, request_id, exc_info=exc)
    return RouterError(f"The router failed unexpectedly (request id {request_id}); the operator finds "
                       "the details in the router's log.")


def as_router_error(request: HTTPRequest, exc: Exception) -> tuple[RouterError | None, str]:
    """The one mapping from an exception raised while serving a request to the error the client
    gets (None: the client left, nobody to answer) and the reason its unfinished answer is closed."""
    if isinstance(exc, RouterError):
        return exc, exc.message
    if isinstance(exc, ClientDisconnect):
        return None, "the client went away"
    if isinstance(exc, RecursionError):
        return InvalidRequestError("request body: JSON nested too deeply"), "request nested too deeply"
    return _unexpected(request, exc, f"serving {request.url.path}"), f"router error {type(exc).__name__}"


class _StreamedOutcome(StreamingResponse):
    """A streamed answer that settles its call and runs *on_end* however the sending ends: also
    when the stream was never iterated (the client left first, or sending the head failed)."""

    def __init__(self, content: AsyncIterator[bytes], outcome: pipeline.Outcome,
                 on_end: Callable[[], Awaitable[None]], headers: dict[str, str]):
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self.outcome = outcome
        self.on_end = on_end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self.outcome.close("the client went away before the stream ended")
            finally:
                await self.on_end()


def create_app(config_path: str | None = None, config: RouterConfig | None = None) -> Starlette:
    if config is None:
        config = load_config(config_path or default_config_path())
    state = RouterApp(config_path, config)

    mcp_endpoint = McpEndpoint(state, config)

    async def messages(request: HTTPRequest) -> Response:
        return await _serve(request, ANTHROPIC)

    async def chat_completions(request: HTTPRequest) -> Response:
        return await _serve(request, OPENAI)

    async def _serve(request: HTTPRequest, endpoint: Endpoint) -> Response:
        started = time.perf_counter()
        protocol = endpoint.protocol
        client = "-"
        outcome: pipeline.Outcome | None = None
        async with state.use_runtime() as runtime:
            try:
                client = state.keys.identify(request)
                body = await read_body(request, runtime.config.server)
                inbound = endpoint.parse(body)
                kwargs: dict[str, Any] = {"client": client, "protocol": protocol, "body_size": len(body),
                                          "forward_headers": _forward_headers(request),
                                          "override": _override(request, runtime)}
                if inbound.stream:
                    outcome = await pipeline.open_stream(runtime, inbound.request, **kwargs)
                else:
                    outcome = await pipeline.complete(runtime, inbound.request, **kwargs)
                # Rendered inside the guard: a failure here still closes and settles the outcome.
                headers = outcome.headers()
                if outcome.events is None:
                    assert outcome.message is not None
                    response = Response(endpoint.message_body(outcome.message, inbound),
                                        media_type="application/json", headers=headers)
                    _log_request(request, protocol, client, outcome.target, 200, started,
                                 reason="; ".join(outcome.notes), rule=outcome.decision.rule)
                    return response
                streamed = outcome

                async def stream_ended() -> None:
                    status, http_status = streamed.result
                    _log_request(request, protocol, client, streamed.target, http_status, started,
                                 outcome=status, reason="; ".join(streamed.notes), rule=streamed.decision.rule)
                    await runtime.release()

                runtime.acquire()  # the stream outlives this handler; keep its runtime alive until it ends
                try:
                    return _StreamedOutcome(endpoint.stream_body(outcome.events, inbound), outcome, stream_ended,
                                            {**headers, **_SSE_HEADERS})
                except BaseException:
                    await runtime.release()
                    raise
            except Exception as exc:  # noqa: BLE001 - every failure is answered in the protocol's shape
                err, why = as_router_error(request, exc)
                await _give_up(outcome, why)
                # A request that never got that far (body unreadable, too deep) has no target yet.
                early = isinstance(exc, ClientDisconnect | RecursionError)
                target = outcome.target if outcome is not None and not early else "-"
                if err is None:
                    _log_request(request, protocol, client, target, 499, started)
                    return Response(status_code=400)  # nobody is listening; uvicorn drops it
                _log_request(request, protocol, client, target, err.status, started,
                             reason=err.message if isinstance(exc, RouterError) else "")
                return _error_response(err, endpoint.error_body)

    async def count_tokens(request: HTTPRequest) -> Response:
        async with state.use_runtime() as runtime:
            try:
                client = state.keys.identify(request)
                body = await read_body(request, runtime.config.server)
                internal = ANTHROPIC.parse_count_tokens(body)
                tokens = await _count_tokens(runtime, internal, len(body), _forward_headers(request), client)
            except (RouterError, RecursionError) as exc:
                err, _ = as_router_error(request, exc)
                assert err is not None
                return _error_response(err, ANTHROPIC.error_body)
            return JSONResponse({"input_tokens": tokens})

    async def models(request: HTTPRequest) -> Response:
        runtime = state.runtime
        assert runtime is not None
        try:
            client = state.keys.identify(request)
        except RouterError as err:
            return _error_response(err, OPENAI.error_body)
        allowed = runtime.config.client_targets(client)
        targets = {n: t for n, t in runtime.config.targets.items() if allowed is None or n in allowed}
        names = list(targets) + [t.model for t in targets.values()]
        return Response(OPENAI.models_body(list(dict.fromkeys(names))), media_type="application/json")

    async def whoami(request: HTTPRequest) -> Response:
        try:
            client = state.keys.identify(request)
        except RouterError as err:
            return _error_response(err, ANTHROPIC.error_body)
        assert state.runtime is not None
        return JSONResponse(describe(state.runtime.config, client, MCP_PATH))

    async def health(request: HTTPRequest) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(request: HTTPRequest) -> Response:
        try:
            state.probes.check(request, state.keys)
        except RouterError as err:
            return _error_response(err, ANTHROPIC.error_body)
        answer, status = await state.readiness()
        return JSONResponse(answer, status_code=status)

    async def root(request: HTTPRequest) -> Response:
        return Response(b"aibox-router\n" if request.method == "GET" else b"", media_type="text/plain")

    async def metrics(request: HTTPRequest) -> Response:
        try:
            state.probes.check(request, state.keys)
        except RouterError as err:
            return _error_response(err, ANTHROPIC.error_body)
        content, content_type = metrics_mod.render()
        return Response(content, media_type=content_type)

    async def http_error(request: HTTPRequest, exc: Exception) -> Response:
        """404 and 405 (and any other HTTPException) in the protocol shape of the path asked for."""
        assert isinstance(exc, HTTPException)
        err: RouterError
        if exc.status_code == 404:
            err = NotFoundError(f"No such endpoint: {request.method} {request.url.path[:200]}")
        elif exc.status_code == 405:
            allow = (exc.headers or {}).get("Allow", "")
            err = MethodNotAllowedError(f"Method {request.method} is not allowed on {request.url.path}; "
                                        f"allowed: {allow}", headers={"allow": allow} if allow else None)
        else:
            err = RouterError(str(exc.detail))
            err.status = exc.status_code
        return _error_response(err, render_for_path(request.url.path))

    async def server_error(request: HTTPRequest, exc: Exception) -> Response:
        """The last resort: an exception no endpoint caught, as a 500 in the protocol's shape."""
        # repr: the path is the client's text (percent-decoded, so it may hold a line break).
        err = _unexpected(request, exc, f"in {request.method} {request.url.path[:200]!r}")
        response = _error_response(err, render_for_path(request.url.path))
        # This answer bypasses RequestGuard (the last-resort handler sits outside all middleware).
        response.headers["x-aibox-request-id"] = _request_id(request)
        return response

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await state.start()
        register_gpu_metrics(lambda: state.runtime.gpu if state.runtime is not None else None)
        register_backend_metrics(lambda: None if state.runtime is None
                                 else (list(state.runtime.backends), state.runtime.backend_health))
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(state.reload()))
        log.info("aibox-router ready (config: %s)", config_path or "embedded default")
        try:
            async with mcp_endpoint.running():
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
        Route(MCP_PATH, mcp_endpoint),  # the MCP tools over Streamable HTTP (router/mcp_http.py)
        Route(WHOAMI_PATH, whoami, methods=["GET"]),  # what the presented key may use (router/whoami.py)
    ]
    guard = Middleware(RequestGuard, max_concurrent=lambda: state.server_config.max_concurrent_requests,
                       render_for_path=render_for_path)
    app = Starlette(routes=routes, lifespan=lifespan, middleware=[guard],
                    exception_handlers={HTTPException: http_error, Exception: server_error})
    app.state.router = state
    return app


async def _give_up(outcome: pipeline.Outcome | None, reason: str) -> None:
    """An answer that will not reach the client: close its stream and settle its call."""
    if outcome is not None:
        try:
            await outcome.close(reason)
        except Exception:  # the error response must still go out
            log.exception("closing an undelivered answer from %s", outcome.target)


async def _probe(backend: Any) -> tuple[bool, str]:
    try:
        return await asyncio.wait_for(backend.health(), timeout=5)
    except Exception as e:  # noqa: BLE001 - readiness reports, it does not fail
        return False, f"{type(e).__name__}: {e}"


async def _count_tokens(runtime: Runtime, internal: dict[str, Any], body_size: int,
                        forward_headers: dict[str, str], client: str) -> int:
    """Exact count from a cloud backend when the request would go there, else the router's estimate."""
    plan = pipeline.plan_request(runtime, {**internal, "max_tokens": 1}, client=client,
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


def _log_request(request: HTTPRequest, protocol: str, client: str, target: str, status: int,
                 started: float, outcome: str | None = None, reason: str = "", rule: str = "-") -> None:
    """One line per request with its real result; a stream's line is written when the stream ends,
    with the status the ledger records (502 for an upstream failure mid-stream, 499 for a client
    that left), not the 200 its head carried. *reason* says why it was refused, failed, downgraded
    or fell back."""
    if log.isEnabledFor(logging.INFO):
        log.info("%s %s %s id=%s client=%s rule=%s target=%s status=%d%s %.1fms%s", request.method,
                 request.url.path, protocol, _request_id(request), client, rule, target, status,
                 f" stream={outcome}" if outcome is not None else "", (time.perf_counter() - started) * 1000,
                 f" reason={reason[:500]!r}" if reason else "")
