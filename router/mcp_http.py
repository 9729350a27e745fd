"""The MCP tools on the router's own listener: Streamable HTTP at ``/mcp``, with the client keys.

A developer's Claude Code on a laptop registers them with
``claude mcp add --transport http aibox http://HOST:PORT/mcp --header "Authorization: Bearer KEY"``.

* Every HTTP request to ``/mcp`` is authenticated like the API endpoints (``x-api-key`` or
  ``Authorization: Bearer``, against the keys of the config in force *now*): a key removed by a
  reload is refused on its next request, also inside an MCP session opened before the reload.
  Without clients in the config the endpoint is open, as the API endpoints are. A refusal has the
  API's status (401) and message in a JSON-RPC error body, which MCP clients show to their user.
* Tool calls run on the router's live runtime (the one a SIGHUP swaps) and are ledgered, and
  limited to ``clients[].targets``, under the client whose key made the call.
* The transport is the official SDK's, stateless: each POST carries one JSON-RPC message and is
  answered on its own, so the router keeps no per-session state to expire or revoke. GET (a
  standing server-to-client event stream) is answered 405, which the MCP spec provides for servers
  that send no server-initiated messages (these tools send none); it would otherwise hold one of
  ``server.max_concurrent_requests`` per connected developer for as long as their editor is open.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol

from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from .config import RouterConfig
from .errors import MethodNotAllowedError, RouterError
from .mcp_server import build_server

if TYPE_CHECKING:
    from .runtime import Runtime


class Keys(Protocol):
    def identify(self, request: HTTPRequest) -> str: ...


class RouterState(Protocol):
    """What /mcp needs of the server's state (server.RouterApp): the client keys in force and the
    current runtime. A protocol, so that this module does not import the server that mounts it."""

    @property
    def keys(self) -> Keys: ...

    def use_runtime(self) -> contextlib.AbstractAsyncContextManager[Runtime]: ...

log = logging.getLogger("aibox_router.mcp")
# The SDK's transport logs "Terminating session: None" at INFO after every stateless request.
logging.getLogger("mcp.server.streamable_http").setLevel(logging.WARNING)

MCP_PATH = "/mcp"
# The client a request's key belongs to, put in the ASGI scope by McpEndpoint and read by the tools.
CLIENT_SCOPE_KEY = "aibox.client"
_ALLOWED_METHODS = "POST, DELETE"
# JSON-RPC's range for errors an implementation defines; the SDK's clients show an error body's message.
_REFUSED_CODE = -32001


class LiveRuntime:
    """The router's current runtime, held (against a reload closing its backends) for one tool call."""

    def __init__(self, state: RouterState):
        self._state = state

    def use(self) -> contextlib.AbstractAsyncContextManager[Runtime]:
        return self._state.use_runtime()


def client_of(ctx: Any) -> str:
    """The client whose key authenticated the HTTP request that carries this tool call."""
    request = getattr(ctx.request_context, "request", None)
    client = getattr(request, "scope", {}).get(CLIENT_SCOPE_KEY)
    if not isinstance(client, str):  # only McpEndpoint serves these tools over HTTP, and it always sets it
        raise ToolError("this tool call arrived without an authenticated client")
    return client


class McpEndpoint:
    """The ASGI app at ``/mcp``: authenticates, then hands the request to the SDK's transport."""

    def __init__(self, state: RouterState, config: RouterConfig):
        self._state = state
        self._server, _ = build_server(config, LiveRuntime(state), client_of)
        self._max_body_bytes = config.server.max_body_bytes
        self._manager: StreamableHTTPSessionManager | None = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The transport's task group, for one run of the router's lifespan. A session manager runs
        only once, so each run (an app started again, as tests do) gets a new one."""
        # The SDK's own factory builds the manager for its lowlevel server; its Starlette app is
        # not used (the route lives in the router's app, behind this class's checks).
        self._server.streamable_http_app(
            stateless_http=True,
            max_request_body_size=self._max_body_bytes,
            # Keys authenticate every request; a Host allow-list cannot be known here (the box
            # is reached by whatever name or address the LAN gives it).
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )
        manager: StreamableHTTPSessionManager = self._server.session_manager
        async with manager.run():
            self._manager = manager
            try:
                yield
            finally:
                self._manager = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = HTTPRequest(scope)
        if request.method not in ("POST", "DELETE"):
            err = MethodNotAllowedError(
                f"Method {request.method} is not allowed on {MCP_PATH}; allowed: {_ALLOWED_METHODS} "
                "(this server sends no server-initiated messages, so it offers no GET event stream)",
                headers={"allow": _ALLOWED_METHODS})
            await refusal(err)(scope, receive, send)
            return
        try:
            client = self._state.keys.identify(request)
        except RouterError as err:
            log.info("%s %s refused: %s", request.method, MCP_PATH, err.message)
            await refusal(err)(scope, receive, send)
            return
        scope[CLIENT_SCOPE_KEY] = client
        if self._manager is None:  # only between lifespans: the app serves nothing then
            raise RuntimeError("the MCP endpoint is not running")
        await self._manager.handle_request(scope, receive, send)


def refusal(err: RouterError) -> JSONResponse:
    """A refused request, with the API's status and message, in the shape MCP clients read: a JSON-RPC
    error (the SDK answers its own refusals, such as an oversized body, the same way)."""
    error = {"code": _REFUSED_CODE, "message": err.message,
             "data": {"type": err.anthropic_type, "status": err.status}}
    body = {"jsonrpc": "2.0", "id": None, "error": error}
    return JSONResponse(body, status_code=err.status, headers=dict(err.headers))
