"""Malformed streams from local servers: before the first event the pipeline may still fall back
(BackendUnavailable); after it the client gets an error instead of a silently truncated answer."""

from __future__ import annotations

import pytest

from aibox_router.backends.base import BackendUnavailable
from aibox_router.backends.ollama import OllamaBackend
from aibox_router.backends.openai import OpenAIBackend
from aibox_router.config import BackendConfig, TargetConfig
from aibox_router.errors import UpstreamError
from aibox_router.internal import CallContext
from tests.doubles.scripted_upstream import reply, scripted_upstream

REQUEST = {"model": "m", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
GOOD_CHUNK = (b'data: {"id":"c1","object":"chat.completion.chunk","created":0,"model":"m",'
              b'"choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"},"finish_reason":null}]}\n\n')


async def collect_from(backend_class, prefix: str, body: bytes, content_type: str):
    """Stream through *backend_class* from a loopback server that sends exactly *body*, as a broken one would."""
    async with scripted_upstream(lambda request: reply(200, content=body,
                                                       headers={"content-type": content_type})) as upstream:
        backend_type = "openai" if backend_class is OpenAIBackend else "ollama"
        backend = backend_class("b", BackendConfig(type=backend_type, base_url=upstream.url + prefix))
        try:
            target = TargetConfig(backend="b", model="m")
            return [event async for event in backend.stream(REQUEST, target, CallContext())]
        finally:
            await backend.aclose()


@pytest.mark.parametrize("backend_class,prefix,body,ctype", [
    (OpenAIBackend, "/v1", b"data: {not json\n\n", "text/event-stream"),
    (OllamaBackend, "", b"{not json\n", "application/x-ndjson"),
])
async def test_malformed_first_chunk_falls_back(backend_class, prefix, body, ctype):
    with pytest.raises(BackendUnavailable, match="not valid JSON"):
        await collect_from(backend_class, prefix, body, ctype)


async def test_malformed_chunk_after_the_answer_started_is_an_error_not_a_truncation():
    with pytest.raises(UpstreamError, match="malformed chunk"):
        await collect_from(OpenAIBackend, "/v1", GOOD_CHUNK + b"data: {broken\n\n", "text/event-stream")
