"""The Anthropic Messages API backend: the internal shape is its wire shape, so requests pass through.

The router authenticates with its own key, read from the environment variable the config names in
``api_key_env``; a client's key never travels upstream (``_headers`` drops credential headers even
if one slipped into ``forward_headers``). The key is never logged or put into an error message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec

from ..config import TargetConfig
from ..errors import UpstreamStatusError
from ..internal import CallContext, Message, Request, StreamEvent, observe_event
from ..wire.anthropic import api_error_event, error_from_event
from ..wire.sse import aiter_sse
from .base import (
    TRANSPORT_ERRORS,
    Backend,
    BackendUnavailable,
    Response,
    connection_failure,
    credentials_rejected,
    raise_for_stream_status,
    raise_for_upstream,
)

DEFAULT_ANTHROPIC_VERSION = "2023-06-01"

# Never forwarded, whatever the caller put in forward_headers: credentials, and headers aiohttp sets.
_NOT_FORWARDED = frozenset({"x-api-key", "authorization", "host", "content-length", "content-type",
                            "transfer-encoding", "connection", "accept-encoding", "cookie"})

# Messages fields that count_tokens rejects; everything else about the prompt is kept for an exact count.
_NOT_COUNTED = ("max_tokens", "stream", "temperature", "top_p", "top_k", "stop_sequences", "metadata",
                "service_tier", "speed", "inference_geo")

# Upstream error events that mean "try elsewhere" when they arrive before anything reached the client.
_RETRYABLE_ERROR_TYPES = frozenset({"overloaded_error", "api_error", "timeout_error"})

_HEALTH_TIMEOUT_S = 10.0


class AnthropicBackend(Backend):
    def _headers(self, ctx: CallContext | None) -> dict[str, str]:
        headers = {"anthropic-version": DEFAULT_ANTHROPIC_VERSION}
        for name, value in (ctx.forward_headers if ctx else {}).items():
            if name.lower() not in _NOT_FORWARDED:
                headers[name.lower()] = value
        key = self.api_key()
        if key:
            headers["x-api-key"] = key
        return headers

    def _require_key(self) -> None:
        # Without a key every call would be a 401 the client cannot fix; let a fallback answer instead.
        if not self.api_key():
            variable = self.config.api_key_env or "(api_key_env not configured)"
            raise BackendUnavailable(self.name, f"no API key: environment variable {variable} is not set")

    async def _post(self, path: str, body: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        """POST and decode the JSON object answered; failures as BackendUnavailable / UpstreamStatusError."""
        self._require_key()
        try:
            response, content = await self.fetch("POST", path, content=msgspec.json.encode(body),
                                                 headers={**self._headers(ctx), "content-type": "application/json"})
        except TRANSPORT_ERRORS as exc:
            raise connection_failure(self.name, exc) from exc
        ctx.upstream_request_id = response.headers.get("request-id")
        raise_for_upstream(self.name, response, content)
        return self._decode(response, content)

    def _decode(self, response: Response, content: bytes) -> dict[str, Any]:
        try:
            data = msgspec.json.decode(content)
        except msgspec.DecodeError as e:
            raise BackendUnavailable(self.name, f"answered HTTP {response.status} with invalid JSON: {e}") from None
        if not isinstance(data, dict):
            raise BackendUnavailable(self.name, "answered with JSON that is not an object")
        return data

    async def complete(self, request: Request, target: TargetConfig, ctx: CallContext) -> Message:
        body = {k: v for k, v in request.items() if k != "stream"}
        message = await self._post("/v1/messages", body, ctx)
        ctx.usage.update_from(message.get("usage"))
        return message

    async def stream(self, request: Request, target: TargetConfig, ctx: CallContext) -> AsyncIterator[StreamEvent]:
        self._require_key()
        try:
            async with self.open("POST", "/v1/messages", content=msgspec.json.encode({**request, "stream": True}),
                                 headers={**self._headers(ctx), "content-type": "application/json",
                                          "accept": "text/event-stream"}) as response:
                ctx.upstream_request_id = response.headers.get("request-id")
                await raise_for_stream_status(self.name, response)
                # _events turns failures after the first event into error events itself.
                async for event in self._events(response, ctx):
                    yield event
        except TRANSPORT_ERRORS as exc:  # connecting, or reading an error answer's body
            raise connection_failure(self.name, exc) from exc

    async def _events(self, response: Response, ctx: CallContext) -> AsyncIterator[StreamEvent]:
        """Parsed events; failures before the first event raise (fallback), later ones become error events."""
        started = stopped = False
        try:
            async for sse in aiter_sse(response.content.iter_any()):
                event = self._parse_event(sse.event, sse.data)
                if not started and event["type"] == "error":
                    raise self._early_error(event)
                observe_event(ctx.usage, event)
                started = True
                stopped = event["type"] in ("message_stop", "error")
                yield event
                if event["type"] == "error":
                    return
        except TRANSPORT_ERRORS as exc:
            if not started:
                raise connection_failure(self.name, exc) from exc
            yield api_error_event(f"connection to backend {self.name!r} lost mid-stream: {type(exc).__name__}")
            return
        except BackendUnavailable as exc:
            if not started:
                raise
            yield api_error_event(exc.reason)
            return
        if not started:
            raise BackendUnavailable(self.name, "stream ended before any event")
        if not stopped:
            yield api_error_event(f"backend {self.name!r} ended the stream before message_stop")

    def _parse_event(self, name: str, data: str) -> StreamEvent:
        try:
            event = msgspec.json.decode(data)
        except msgspec.DecodeError as e:
            raise BackendUnavailable(self.name, f"invalid JSON in {name!r} stream event: {e}") from None
        if not isinstance(event, dict):
            raise BackendUnavailable(self.name, f"{name!r} stream event is not a JSON object")
        event.setdefault("type", name)
        return event

    def _early_error(self, event: StreamEvent) -> Exception:
        """An error event before anything reached the client: overload falls back, the rest is the client's."""
        error: UpstreamStatusError = error_from_event(event)
        if error.anthropic_type in ("authentication_error", "permission_error"):
            return credentials_rejected(self.name, error.status)
        if error.anthropic_type in _RETRYABLE_ERROR_TYPES or error.status >= 500:
            return BackendUnavailable(self.name, f"stream error {error.anthropic_type}: {error.message}",
                                      error.status)
        return error

    async def count_tokens(self, request: Request, ctx: CallContext) -> int | None:
        body = {k: v for k, v in request.items() if k not in _NOT_COUNTED}
        data = await self._post("/v1/messages/count_tokens", body, ctx)
        tokens = data.get("input_tokens")
        if not isinstance(tokens, int):
            raise BackendUnavailable(self.name, "count_tokens answer has no integer input_tokens")
        return tokens

    async def _get_models(self) -> tuple[Response, bytes]:
        return await self.fetch("GET", "/v1/models", params={"limit": 1000}, headers=self._headers(None),
                                timeout=aiohttp.ClientTimeout(total=_HEALTH_TIMEOUT_S,
                                                              sock_connect=self.config.connect_timeout_s))

    async def health(self) -> tuple[bool, str]:
        """Probe ``GET /v1/models``: free of charge, and it shows whether the key is accepted."""
        try:
            response, _ = await self._get_models()
        except TRANSPORT_ERRORS as exc:
            return False, connection_failure(self.name, exc).reason
        status = response.status
        if status >= 500:
            return False, f"HTTP {status}"
        # Reachable is not enough: without an accepted key every call fails, so the backend is down.
        if not self.api_key():
            return False, f"no API key: environment variable {self.config.api_key_env} is not set"
        if status in (401, 403):
            return False, f"the router's API key was rejected (HTTP {status}); fix {self.config.api_key_env}"
        if status >= 400:
            return True, f"reachable (HTTP {status})"
        return True, "reachable"

    async def list_models(self) -> list[str]:
        try:
            response, content = await self._get_models()
        except TRANSPORT_ERRORS:
            return []
        if response.status != 200:
            return []
        try:
            data = msgspec.json.decode(content)
        except msgspec.DecodeError:
            return []
        models = data.get("data") if isinstance(data, dict) else None
        return [m["id"] for m in models or [] if isinstance(m, dict) and isinstance(m.get("id"), str)]

