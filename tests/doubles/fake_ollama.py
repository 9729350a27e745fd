"""A test double of Ollama's HTTP API.

It stands in for the Ollama binary, which cannot be installed here. It follows Ollama's
documented API (docs/api.md in the Ollama repository):

* ``POST /api/chat``: streams NDJSON by default (``"stream": false`` for one JSON object); every
  object has ``model``, ``created_at``, ``message`` and ``done``; content arrives as
  ``message.content`` pieces, tool calls whole in one object (``message.tool_calls`` with
  ``function.arguments`` as an object); the final object has ``done: true``, ``done_reason``
  (``stop``/``length``), durations in nanoseconds, ``prompt_eval_count`` and ``eval_count``;
* an unknown model is ``404 {"error": "model \\"x\\" not found, try pulling it first"}``;
* ``GET /api/version``, ``GET /api/tags``, ``GET /api/ps``, ``POST /api/show``;
* the context window is ``options.num_ctx`` (``DEFAULT_NUM_CTX`` when a request sets none, as
  Ollama's ``OLLAMA_CONTEXT_LENGTH`` default). A prompt longer than that is truncated, not refused:
  Ollama keeps the tail that fits and answers anyway, so ``prompt_eval_count`` never exceeds
  ``num_ctx``. The prompt counted is the rendered one: every message plus the tool definitions.
  Each request's verdict is kept in ``truncated`` so tests can prove none was cut.

Tests script replies (``reply_text`` / ``reply_tool_calls`` / ``enqueue``), read what was sent
(``requests``), make it fail (``fail_next``), or get a URL where nothing listens
(``absent_url``). Run it on its own with ``python -m tests.doubles.fake_ollama --port P``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Self

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support.loopback_server import LoopbackServer

VERSION = "0.12.6"
DEFAULT_NUM_CTX = 4096  # Ollama's default context length when a request does not set num_ctx


@dataclass
class Reply:
    """One scripted answer to /api/chat."""

    text: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # [{"name": ..., "arguments": {...}}]
    done_reason: str = "stop"
    prompt_eval_count: int | None = -1  # -1: count from the prompt; None: leave the field out
    eval_count: int | None = -1
    chunk_chars: int = 4  # stream the text in pieces this long
    status: int = 200  # non-200: answer {"error": error} with this status instead
    error: str = "internal error"
    error_mid_stream: bool = False  # stream the text, then an {"error": ...} line instead of done


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _count_tokens(text: str) -> int:
    return max(1, len(text) // 4)


def prompt_tokens(body: dict[str, Any]) -> int:
    """Tokens of the prompt Ollama would render: messages with role markers, and the tools."""
    rendered = "".join(f"<|{m.get('role')}|>{m.get('content', '')}" for m in body.get("messages") or [])
    if body.get("tools"):
        rendered += json.dumps(body["tools"])
    return _count_tokens(rendered)


class FakeOllama:
    """The fake server; use as a context manager (``with FakeOllama() as fake: fake.url``)."""

    def __init__(self, models: list[str] | None = None, *, host: str = "127.0.0.1", port: int = 0):
        self.models = list(models or ["qwen2.5-coder:7b"])
        self.requests: list[dict[str, Any]] = []  # bodies of /api/chat requests, in order
        self.truncated: list[bool] = []  # per /api/chat request: did its prompt exceed num_ctx?
        self.loaded: dict[str, dict[str, Any]] = {}  # model -> what /api/ps shows
        self._replies: deque[Reply] = deque()
        self.app = Starlette(routes=[
            Route("/api/chat", self._chat, methods=["POST"]),
            Route("/api/version", self._version, methods=["GET"]),
            Route("/api/tags", self._tags, methods=["GET"]),
            Route("/api/ps", self._ps, methods=["GET"]),
            Route("/api/show", self._show, methods=["POST"]),
            Route("/", lambda _: Response("Ollama is running"), methods=["GET", "HEAD"]),
        ])
        self._serving = LoopbackServer(self.app, host=host, port=port, name="fake-ollama")

    # --- scripting ------------------------------------------------------------------------

    def enqueue(self, reply: Reply) -> None:
        self._replies.append(reply)

    def reply_text(self, text: str, **kwargs: Any) -> None:
        self.enqueue(Reply(text=text, **kwargs))

    def reply_tool_calls(self, calls: list[dict[str, Any]], text: str = "", **kwargs: Any) -> None:
        self.enqueue(Reply(text=text, tool_calls=calls, **kwargs))

    def fail_next(self, status: int = 500, error: str = "internal error", times: int = 1) -> None:
        for _ in range(times):
            self.enqueue(Reply(status=status, error=error))

    @property
    def last_request(self) -> dict[str, Any]:
        return self.requests[-1]

    # --- lifecycle --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self._serving.base_url

    def start(self) -> FakeOllama:
        self._serving.start()
        return self

    def stop(self) -> None:
        self._serving.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- endpoints --------------------------------------------------------------------------

    async def _chat(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return JSONResponse({"error": "invalid character in JSON body"}, status_code=400)
        self.requests.append(body)
        model = body.get("model", "")
        if model not in self.models:
            return JSONResponse({"error": f'model "{model}" not found, try pulling it first'}, status_code=404)
        if not isinstance(body.get("messages"), list):
            return JSONResponse({"error": "messages must be a list"}, status_code=400)
        reply = self._replies.popleft() if self._replies else Reply(text=self._default_text(body))
        if reply.status != 200:
            return JSONResponse({"error": reply.error}, status_code=reply.status)
        self._mark_loaded(model, body)
        final = self._final(model, body, reply)
        if body.get("stream", True) is False:
            message: dict[str, Any] = {"role": "assistant", "content": reply.text}
            if reply.tool_calls:
                message["tool_calls"] = self._tool_calls(reply)
            return JSONResponse({**final, "message": message})
        return StreamingResponse(self._stream(model, reply, final), media_type="application/x-ndjson")

    async def _stream(self, model: str, reply: Reply, final: dict[str, Any]) -> AsyncIterator[bytes]:
        def line(obj: dict[str, Any]) -> bytes:
            return (json.dumps(obj) + "\n").encode()

        for i in range(0, len(reply.text), max(1, reply.chunk_chars)):
            piece = reply.text[i:i + reply.chunk_chars]
            yield line({"model": model, "created_at": _now(),
                        "message": {"role": "assistant", "content": piece}, "done": False})
            await asyncio.sleep(0)
        if reply.error_mid_stream:
            yield line({"error": reply.error})
            return
        if reply.tool_calls:
            yield line({"model": model, "created_at": _now(),
                        "message": {"role": "assistant", "content": "", "tool_calls": self._tool_calls(reply)},
                        "done": False})
        yield line({**final, "created_at": _now(), "message": {"role": "assistant", "content": ""}})

    @staticmethod
    def _tool_calls(reply: Reply) -> list[dict[str, Any]]:
        return [{"function": {"name": c["name"], "arguments": c.get("arguments", {})}} for c in reply.tool_calls]

    @staticmethod
    def _default_text(body: dict[str, Any]) -> str:
        last = next((m.get("content", "") for m in reversed(body["messages"]) if m.get("role") == "user"), "")
        return f"You said: {last}"

    def _final(self, model: str, body: dict[str, Any], reply: Reply) -> dict[str, Any]:
        num_ctx = (body.get("options") or {}).get("num_ctx") or DEFAULT_NUM_CTX
        prompt = prompt_tokens(body)
        self.truncated.append(prompt > num_ctx)
        output_text = reply.text + json.dumps(reply.tool_calls) if reply.tool_calls else reply.text
        final: dict[str, Any] = {"model": model, "created_at": _now(), "done": True,
                                 "done_reason": reply.done_reason, "total_duration": 5_000_000,
                                 "load_duration": 1_000_000, "prompt_eval_duration": 1_000_000,
                                 "eval_duration": 3_000_000}
        if reply.prompt_eval_count is not None:
            # Truncated to the window, as Ollama does: it evaluates only the part it kept.
            final["prompt_eval_count"] = (reply.prompt_eval_count if reply.prompt_eval_count >= 0
                                          else min(prompt, num_ctx))
        if reply.eval_count is not None:
            final["eval_count"] = reply.eval_count if reply.eval_count >= 0 else _count_tokens(output_text)
        return final

    def _mark_loaded(self, model: str, body: dict[str, Any]) -> None:
        num_ctx = (body.get("options") or {}).get("num_ctx") or DEFAULT_NUM_CTX
        self.loaded[model] = {
            "name": model, "model": model, "size": 5_000_000_000, "size_vram": 5_000_000_000,
            "digest": "0" * 64, "context_length": num_ctx,
            "details": {"family": "qwen2", "parameter_size": "7.6B", "quantization_level": "Q4_K_M"},
            "expires_at": (datetime.now(UTC) + timedelta(minutes=5)).isoformat().replace("+00:00", "Z"),
        }

    async def _version(self, request: Request) -> Response:
        return JSONResponse({"version": VERSION})

    async def _tags(self, request: Request) -> Response:
        return JSONResponse({"models": [
            {"name": m, "model": m, "modified_at": _now(), "size": 5_000_000_000, "digest": "0" * 64,
             "details": {"format": "gguf", "family": "qwen2", "parameter_size": "7.6B",
                         "quantization_level": "Q4_K_M"}} for m in self.models]})

    async def _ps(self, request: Request) -> Response:
        return JSONResponse({"models": list(self.loaded.values())})

    async def _show(self, request: Request) -> Response:
        body = json.loads(await request.body() or b"{}")
        model = body.get("model") or body.get("name") or ""
        if model not in self.models:
            return JSONResponse({"error": f"model '{model}' not found"}, status_code=404)
        return JSONResponse({
            "modelfile": f"FROM {model}\n", "parameters": "stop \"<|im_end|>\"", "template": "{{ .Prompt }}",
            "details": {"format": "gguf", "family": "qwen2", "parameter_size": "7.6B",
                        "quantization_level": "Q4_K_M"},
            "model_info": {"general.architecture": "qwen2", "qwen2.context_length": 32768},
            "capabilities": ["completion", "tools"],
        })


def absent_url() -> str:
    """A loopback URL where nothing listens (an Ollama that is not running)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the fake Ollama API in the foreground.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument("--model", action="append", dest="models",
                        help="a model it has (repeatable; default qwen2.5-coder:7b)")
    args = parser.parse_args()
    fake = FakeOllama(args.models)
    uvicorn.run(fake.app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
