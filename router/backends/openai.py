"""Backend for OpenAI-compatible servers (llama.cpp, vLLM, LM Studio, ...): transport and error mapping.

``base_url`` includes the API prefix (``http://127.0.0.1:8080/v1``). The bodies are translated by
wire/openai_chat.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from ..config import TargetConfig
from ..errors import UpstreamError, UpstreamStatusError
from ..internal import CallContext, Message, Request, StreamEvent
from ..wire import encode_json
from ..wire.chat_common import output_schema
from ..wire.openai_chat import StreamTranslator, aiter_chunks, from_openai_response, to_openai_request
from .base import (
    JSON_HEADERS,
    Backend,
    BackendUnavailable,
    Response,
    raise_for_stream_status,
)


def error_from_object(backend: str, error: Any, started: bool) -> Exception:
    """The exception for an error object in an answer or inside a stream (llama.cpp sends one, e.g.
    for an over-long prompt): 4xx codes are the client's, the rest falls back before the first event."""
    message = error.get("message") if isinstance(error, dict) else str(error)
    code = error.get("code") if isinstance(error, dict) else None
    status = code if isinstance(code, int) and 400 <= code < 600 else 500
    text = f"backend {backend!r} reported an error in the stream: {message}"
    if status < 500:
        return UpstreamStatusError(status, text)
    return UpstreamError(text) if started else BackendUnavailable(backend, text, status)


class OpenAIBackend(Backend):
    def _headers(self) -> dict[str, str]:
        key = self.api_key()
        return {**JSON_HEADERS, "authorization": f"Bearer {key}"} if key else JSON_HEADERS

    async def complete(self, request: Request, target: TargetConfig, ctx: CallContext) -> Message:
        body = to_openai_request(request, target, stream=False, allow_image_urls=self.config.allow_image_urls)
        try:
            data, response = await self.request_json("POST", "/chat/completions", content=encode_json(body),
                                                     headers=self._headers())
        except (UpstreamStatusError, BackendUnavailable) as e:
            # llama-cpp-python's server refuses OpenAI's json_schema response_format (HTTP 500) and
            # takes the schema as {"type": "json_object", "schema": ...}: ask once more that way when
            # the server answered (not a transport failure) a request that carried a schema.
            schema = output_schema(request)
            if schema is None or (isinstance(e, BackendUnavailable) and e.status is None):
                raise
            body["response_format"] = {"type": "json_object", "schema": schema}
            data, response = await self.request_json("POST", "/chat/completions", content=encode_json(body),
                                                     headers=self._headers())
        ctx.upstream_request_id = response.headers.get("x-request-id")
        if isinstance(data, dict) and data.get("error"):
            raise error_from_object(self.name, data["error"], started=False)
        return from_openai_response(data, request, ctx)

    async def stream(self, request: Request, target: TargetConfig, ctx: CallContext) -> AsyncIterator[StreamEvent]:
        body = to_openai_request(request, target, stream=True, allow_image_urls=self.config.allow_image_urls)
        async for event in self.relay_stream("/chat/completions", body, self._headers(), ctx, aiter_chunks,
                                             StreamTranslator(request, ctx)):
            yield event

    async def check_stream_response(self, response: Response, ctx: CallContext) -> None:
        await raise_for_stream_status(self.name, response)
        ctx.upstream_request_id = response.headers.get("x-request-id")

    def error_in_stream(self, error: Any, started: bool) -> Exception:
        return error_from_object(self.name, error, started)

    async def health(self) -> tuple[bool, str]:
        try:
            models = await self.list_models()
        except (BackendUnavailable, UpstreamStatusError) as e:
            return False, str(e)
        return True, f"{len(models)} model(s)"

    async def list_models(self) -> list[str]:
        data, _ = await self.request_json("GET", "/models", headers=self._headers())
        return [m["id"] for m in data.get("data") or [] if isinstance(m, dict) and "id" in m]

