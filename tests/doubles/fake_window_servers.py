"""Test doubles of the two servers that say their context window: llama.cpp's ``llama-server`` and vLLM.

Neither can run here: llama-server is a separate C++ build (the local model tests use
llama-cpp-python's server, which does not report its window), and vLLM needs a GPU. These
stand-ins answer only the metadata endpoints the router reads at start-up, in the servers' own
shapes:

* llama-server ``GET /props``: ``default_generation_settings.n_ctx`` is the context of one slot
  (``--ctx-size`` divided among ``--parallel`` slots), beside ``total_slots``, ``model_path`` and
  ``chat_template``; ``GET /v1/models`` lists the model with ``meta.n_ctx_train`` (the trained
  context, not the loaded one);
* vLLM ``GET /v1/models``: each model with ``max_model_len`` (``--max-model-len``); vLLM has no
  ``/props`` (404, FastAPI's ``{"detail": "Not Found"}``).
"""

from __future__ import annotations

from typing import Any, Literal, Self

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support.loopback_server import LoopbackServer


class FakeWindowServer:
    """``with FakeWindowServer("llama.cpp", n_ctx=4096) as s: s.url`` (base URL ending in /v1)."""

    def __init__(self, kind: Literal["llama.cpp", "vllm"], *, model: str = "local-model", n_ctx: int = 4096,
                 slots: int = 1, n_ctx_train: int = 131072):
        self.kind, self.model, self.n_ctx, self.slots, self.n_ctx_train = kind, model, n_ctx, slots, n_ctx_train
        self.paths: list[str] = []  # what was asked, in order
        self.app = Starlette(routes=[Route("/props", self._props, methods=["GET"]),
                                     Route("/v1/models", self._models, methods=["GET"])])
        self._serving = LoopbackServer(self.app, name=f"fake-{kind}")

    async def _props(self, request: Request) -> Response:
        self.paths.append("/props")
        if self.kind != "llama.cpp":
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        return JSONResponse({
            "default_generation_settings": {"id": 0, "id_task": -1, "n_ctx": self.n_ctx // self.slots,
                                            "speculative": False, "is_processing": False,
                                            "params": {"n_predict": -1, "temperature": 0.8}},
            "total_slots": self.slots, "model_path": f"/models/{self.model}.gguf",
            "chat_template": "{% for message in messages %}...{% endfor %}", "build_info": "b6000-0000000",
        })

    async def _models(self, request: Request) -> Response:
        self.paths.append("/v1/models")
        entry: dict[str, Any]
        if self.kind == "llama.cpp":
            entry = {"id": self.model, "object": "model", "created": 1735689600, "owned_by": "llamacpp",
                     "meta": {"vocab_type": 2, "n_vocab": 151936, "n_ctx_train": self.n_ctx_train,
                              "n_embd": 3584, "n_params": 7615616512, "size": 4677120000}}
        else:
            entry = {"id": self.model, "object": "model", "created": 1735689600, "owned_by": "vllm",
                     "root": self.model, "parent": None, "max_model_len": self.n_ctx,
                     "permission": [{"id": "modelperm-0", "object": "model_permission", "allow_sampling": True}]}
        return JSONResponse({"object": "list", "data": [entry]})

    @property
    def url(self) -> str:
        return self._serving.base_url + "/v1"

    def __enter__(self) -> Self:
        self._serving.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._serving.stop()
