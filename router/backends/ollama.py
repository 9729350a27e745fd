"""Backend for Ollama's native API (``/api/chat``): transport and error mapping.

The bodies and the NDJSON stream are translated by wire/ollama.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from ..config import TargetConfig
from ..errors import UpstreamError, UpstreamStatusError
from ..internal import CallContext, Message, Request, StreamEvent
from ..wire import encode_json
from ..wire.ollama import StreamTranslator, aiter_objects, from_ollama_response, to_ollama_request
from .base import (
    JSON_HEADERS,
    Backend,
    BackendUnavailable,
    Response,
    raise_for_upstream,
)


def _ollama_error(backend: str, status: int | None, message: str, started: bool) -> Exception:
    """An ``{"error": ...}`` from Ollama.

    "Model not found" is treated as unavailability, not as the client's error: the client asked
    for a router target, not an Ollama model, so it cannot fix this; the operator has not pulled
    the model (yet). Falling back to the next target gives the client an answer meanwhile.
    """
    text = f"backend {backend!r}: {message}"
    if started:
        return UpstreamError(text)
    if status is None or status >= 500 or (status == 404 and "not found" in message):
        return BackendUnavailable(backend, message, status)
    return UpstreamStatusError(status, text)



class OllamaBackend(Backend):
    def _check(self, response: Response, body: bytes) -> None:
        if response.status == 404:
            try:
                message = json.loads(body).get("error") or "not found"
            except (ValueError, AttributeError):
                message = body.decode("utf-8", "replace")[:500] or "not found"
            raise _ollama_error(self.name, 404, str(message), started=False)
        raise_for_upstream(self.name, response, body)

    async def complete(self, request: Request, target: TargetConfig, ctx: CallContext) -> Message:
        body = to_ollama_request(request, target, stream=False)
        data, _ = await self.request_json("POST", "/api/chat", content=encode_json(body), headers=JSON_HEADERS,
                                          check=self._check)
        if data.get("error"):
            raise _ollama_error(self.name, None, str(data["error"]), started=False)
        return from_ollama_response(data, request, ctx)

    async def stream(self, request: Request, target: TargetConfig, ctx: CallContext) -> AsyncIterator[StreamEvent]:
        body = to_ollama_request(request, target, stream=True)
        async for event in self.relay_stream("/api/chat", body, JSON_HEADERS, ctx, aiter_objects,
                                             StreamTranslator(request, ctx)):
            yield event

    async def check_stream_response(self, response: Response, ctx: CallContext) -> None:
        if response.status >= 400:
            self._check(response, await response.read())

    def error_in_stream(self, error: Any, started: bool) -> Exception:
        return _ollama_error(self.name, None, str(error), started)

    async def _get(self, path: str) -> Any:
        data, _ = await self.request_json("GET", path)
        return data

    async def health(self) -> tuple[bool, str]:
        try:
            data = await self._get("/api/version")
        except (BackendUnavailable, UpstreamStatusError) as e:
            return False, str(e)
        return True, f"ollama {data.get('version', '?')}"

    async def list_models(self) -> list[str]:
        data = await self._get("/api/tags")
        return [m["name"] for m in data.get("models") or [] if isinstance(m, dict) and "name" in m]

    async def loaded_models(self) -> list[dict[str, Any]]:
        """Models in memory now (``/api/ps``): name, size, size_vram, context_length, expires_at."""
        data = await self._get("/api/ps")
        return [m for m in data.get("models") or [] if isinstance(m, dict)]
