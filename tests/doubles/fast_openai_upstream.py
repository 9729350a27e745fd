"""A deliberately minimal, fast OpenAI-compatible upstream for the router overhead benchmark.

Stands in for a local model server (llama.cpp, vLLM, Ollama's /v1) whose own latency would
otherwise drown the router's. It answers every ``POST .../chat/completions`` at once with a canned
completion, as JSON or as an SSE stream (with a trailing usage chunk, as OpenAI sends it), over
HTTP/1.1 keep-alive. Raw asyncio, no framework, so its cost is as small as possible.

Run: ``python -m tests.doubles.fast_openai_upstream --port P``
"""

from __future__ import annotations

import argparse
import asyncio
import json

_COMPLETION = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "bench",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the fast upstream."},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
}).encode()


def _chunk(delta: dict, finish: str | None = None) -> bytes:
    body = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": "bench",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


_STREAM = b"".join([
    _chunk({"role": "assistant", "content": ""}),
    _chunk({"content": "Hello "}), _chunk({"content": "from the "}), _chunk({"content": "fast upstream."}),
    _chunk({}, "stop"),
    b"data: " + json.dumps({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0,
                            "model": "bench", "choices": [],
                            "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}}).encode()
    + b"\n\n",
    b"data: [DONE]\n\n",
])
_MODELS = json.dumps({"object": "list", "data": [{"id": "bench", "object": "model"}]}).encode()


def _response(status: str, body: bytes, content_type: str) -> bytes:
    return (f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n"
            "connection: keep-alive\r\n\r\n").encode() + body


class _Upstream(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buffer[:head_end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            total = head_end + 4 + length
            if len(self.buffer) < total:
                return
            body = self.buffer[head_end + 4:total]
            self.buffer = self.buffer[total:]
            self._answer(head.split(" ", 2), body)

    def _answer(self, request_line: list[str], body: bytes) -> None:
        method, path = request_line[0], request_line[1]
        if method == "GET" and path.endswith("/models"):
            self.transport.write(_response("200 OK", _MODELS, "application/json"))
        elif method == "POST" and path.endswith("/chat/completions"):
            streaming = b'"stream":true' in body.replace(b" ", b"")
            if streaming:
                self.transport.write(_response("200 OK", _STREAM, "text/event-stream"))
            else:
                self.transport.write(_response("200 OK", _COMPLETION, "application/json"))
        else:
            self.transport.write(_response("404 Not Found", b"{}", "application/json"))


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(_Upstream, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve(parser.parse_args().port))
