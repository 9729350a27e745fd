"""Malformed streams from local servers: before the first event the pipeline may still fall back
(BackendUnavailable); after it the client gets an error instead of a silently truncated answer."""

from __future__ import annotations

import httpx
import pytest

from aibox_router.backends.base import BackendUnavailable
from aibox_router.backends.ollama import OllamaBackend
from aibox_router.backends.openai import OpenAIBackend
from aibox_router.config import BackendConfig, TargetConfig
from aibox_router.errors import UpstreamError
from aibox_router.internal import CallContext

REQUEST = {"model": "m", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
GOOD_CHUNK = (b'data: {"id":"c1","object":"chat.completion.chunk","created":0,"model":"m",'
              b'"choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"},"finish_reason":null}]}\n\n')


def with_body(backend, body: bytes, content_type: str):
    # httpx's MockTransport answers in-process with exactly these bytes, as a broken server would.
    backend.transport = httpx.MockTransport(
        lambda request: httpx.Response(200, content=body, headers={"content-type": content_type}))
    return backend


async def collect(backend):
    target = TargetConfig(backend=backend.name, model="m")
    return [event async for event in backend.stream(REQUEST, target, CallContext())]


@pytest.mark.parametrize("make,body,ctype", [
    (lambda: OpenAIBackend("llama", BackendConfig(type="openai", base_url="http://llama/v1")),
     b"data: {not json\n\n", "text/event-stream"),
    (lambda: OllamaBackend("ollama", BackendConfig(type="ollama", base_url="http://ollama")),
     b"{not json\n", "application/x-ndjson"),
])
async def test_malformed_first_chunk_falls_back(make, body, ctype):
    with pytest.raises(BackendUnavailable, match="not valid JSON"):
        await collect(with_body(make(), body, ctype))


async def test_malformed_chunk_after_the_answer_started_is_an_error_not_a_truncation():
    backend = with_body(OpenAIBackend("llama", BackendConfig(type="openai", base_url="http://llama/v1")),
                        GOOD_CHUNK + b"data: {broken\n\n", "text/event-stream")
    with pytest.raises(UpstreamError, match="malformed chunk"):
        await collect(backend)
