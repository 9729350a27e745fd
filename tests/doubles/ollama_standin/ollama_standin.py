#!/usr/bin/python3
# =====================================================================================
#  TEST STAND-IN FOR OLLAMA -- NOT OLLAMA. NEVER INSTALL THIS OUTSIDE TESTS.
#
#  Packaged as bin/ollama by tests/doubles/ollama_standin/build.py so the aibox Ansible
#  roles can be converged on a test host that cannot download the real Ollama release.
#  It serves the subset of Ollama's HTTP API that the roles and aibox-router use, with
#  canned answers; "pulling" a model only writes a small manifest under OLLAMA_MODELS.
#  Python 3 standard library only.
# =====================================================================================
"""Ollama test stand-in: `ollama serve`, `ollama --version`, `ollama list`."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
import urllib.request
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

VERSION = "@VERSION@"
STANDIN = True  # marker for tests: this is not the real Ollama
REPLY = "This is a canned reply from the Ollama test stand-in."


def _host_port() -> tuple[str, int]:
    value = os.environ.get("OLLAMA_HOST", "127.0.0.1:11434")
    value = value.split("://", 1)[-1]
    host, _, port = value.rpartition(":")
    if not host:
        return value or "127.0.0.1", 11434
    return host.strip("[]"), int(port or 11434)


def _models_dir() -> Path:
    default = Path.home() / ".ollama" / "models"
    return Path(os.environ.get("OLLAMA_MODELS") or default)


def _normalise(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def _manifest_path(name: str) -> Path:
    name = _normalise(name)
    repo, tag = name.rsplit(":", 1)
    if "/" not in repo:
        repo = f"library/{repo}"
    return _models_dir() / "manifests" / "registry.ollama.ai" / repo / tag


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


KEEP_ALIVE_S = 300  # Ollama's default keep_alive (5m)


def _expires(loaded_at: float) -> str:
    when = datetime.fromtimestamp(loaded_at + KEEP_ALIVE_S, UTC)
    return when.isoformat().replace("+00:00", "Z")


def _read_models() -> list[dict]:
    root = _models_dir() / "manifests" / "registry.ollama.ai"
    out = []
    if not root.is_dir():
        return out
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        out.append(data)
    return out


def _find(name: str) -> dict | None:
    path = _manifest_path(name)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_model(name: str, **extra: object) -> dict:
    name = _normalise(name)
    digest = hashlib.sha256(name.encode()).hexdigest()
    model = {
        "name": name, "model": name, "modified_at": _now(), "size": 1024, "digest": digest,
        "details": {"format": "gguf", "family": "standin", "parameter_size": "0B",
                    "quantization_level": "Q4_0"},
        "standin": True,
    }
    model.update(extra)
    path = _manifest_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(model))
    tmp.replace(path)
    return model


_loaded: dict[str, float] = {}
_lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    server_version = "ollama-standin"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: object) -> None:  # journald gets one line per request
        sys.stderr.write(f"[standin] {self.address_string()} {fmt % args}\n")

    # -- helpers --------------------------------------------------------------------
    def _body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return {}
        try:
            data = json.loads(raw)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def _json(self, status: int, obj: object) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, records: list[dict], delay: float = 0.0) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for rec in records:
            line = (json.dumps(rec) + "\n").encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.flush()
            if delay:
                time.sleep(delay)
        self.wfile.write(b"0\r\n\r\n")

    def _model_arg(self, body: dict) -> str:
        return str(body.get("model") or body.get("name") or "")

    # -- routes ---------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        if self.path in ("/", ""):
            data = b"Ollama is running"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        elif self.path == "/api/version":
            self._json(200, {"version": VERSION})
        elif self.path == "/api/tags":
            self._json(200, {"models": _read_models()})
        elif self.path == "/api/ps":
            # Like Ollama on a box without a GPU: every loaded model sits in RAM (size_vram 0).
            with _lock:
                loaded = dict(_loaded)
            models = [{"name": m["name"], "model": m["model"], "size": m.get("size", 0), "digest": m["digest"],
                       "details": m["details"], "expires_at": _expires(loaded[m["name"]]), "size_vram": 0,
                       "context_length": 4096}
                      for m in _read_models() if m["name"] in loaded]
            self._json(200, {"models": models})
        else:
            self._json(404, {"error": "not found"})

    def do_DELETE(self) -> None:
        if self.path != "/api/delete":
            return self._json(404, {"error": "not found"})
        name = self._model_arg(self._body())
        path = _manifest_path(name) if name else None
        if not path or not path.is_file():
            return self._json(404, {"error": f"model '{name}' not found"})
        path.unlink()
        with _lock:
            _loaded.pop(_normalise(name), None)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        body = self._body()
        route = {
            "/api/pull": self._pull, "/api/create": self._create, "/api/show": self._show,
            "/api/chat": self._chat, "/api/generate": self._generate,
        }.get(self.path)
        if route is None:
            return self._json(404, {"error": "not found"})
        route(body)

    def _pull(self, body: dict) -> None:
        name = self._model_arg(body)
        if not name:
            return self._json(400, {"error": "model is required"})
        digest = "sha256:" + hashlib.sha256(name.encode()).hexdigest()
        records = [{"status": "pulling manifest"}]
        for done in (0, 512, 1024):
            records.append({"status": f"pulling {digest[7:19]}", "digest": digest,
                            "total": 1024, "completed": done})
        records += [{"status": "verifying sha256 digest"}, {"status": "writing manifest"}]
        _write_model(name)
        records.append({"status": "success"})
        if body.get("stream", True) is False:
            return self._json(200, {"status": "success"})
        self._stream(records, delay=0.01)

    def _create(self, body: dict) -> None:
        name = self._model_arg(body)
        base = body.get("from")
        if not name:
            return self._json(400, {"error": "model is required"})
        if base and _find(base) is None:
            return self._json(404, {"error": f"base model '{base}' not found, pull it first"})
        _write_model(name, base=base, parameters=body.get("parameters") or {},
                     system=body.get("system"))
        records = [{"status": "using existing layer"}, {"status": "writing manifest"},
                   {"status": "success"}]
        if body.get("stream", True) is False:
            return self._json(200, {"status": "success"})
        self._stream(records)

    def _show(self, body: dict) -> None:
        name = self._model_arg(body)
        model = _find(name) if name else None
        if model is None:
            return self._json(404, {"error": f"model '{name}' not found"})
        params = model.get("parameters") or {}
        self._json(200, {
            "modelfile": f"# stand-in\nFROM {model.get('base') or name}\n",
            "parameters": "\n".join(f"{k} {v}" for k, v in params.items()),
            "template": "{{ .Prompt }}", "details": model["details"],
            "model_info": {"general.architecture": "standin", "standin.context_length": 32768},
            "capabilities": ["completion", "tools"], "modified_at": model["modified_at"],
        })

    def _usage(self, body: dict, key: str) -> tuple[int, int]:
        text = json.dumps(body.get(key, ""))
        return max(1, len(text) // 4), len(REPLY.split())

    def _chat(self, body: dict) -> None:
        self._answer(body, chat=True)

    def _generate(self, body: dict) -> None:
        self._answer(body, chat=False)

    def _answer(self, body: dict, chat: bool) -> None:
        name = self._model_arg(body)
        if not name or _find(name) is None:
            return self._json(404, {"error": f"model '{name}' not found, try pulling it first"})
        started = time.monotonic()
        with _lock:
            _loaded[_normalise(name)] = time.time()
        if (not chat and not body.get("prompt")) or (chat and not body.get("messages")):
            # Ollama answers an empty prompt (or message list) by only loading the model.
            load_ns = int((time.monotonic() - started) * 1e9)
            rec = {"model": name, "created_at": _now(), "done": True, "done_reason": "load",
                   "total_duration": load_ns, "load_duration": load_ns}
            rec.update({"message": {"role": "assistant", "content": ""}} if chat else {"response": ""})
            return self._json(200, rec)
        prompt_tokens, out_tokens = self._usage(body, "messages" if chat else "prompt")
        final = {"model": name, "created_at": _now(), "done": True, "done_reason": "stop",
                 "total_duration": 1_000_000, "load_duration": 1000,
                 "prompt_eval_count": prompt_tokens, "prompt_eval_duration": 1000,
                 "eval_count": out_tokens, "eval_duration": 1000}

        def piece(text: str) -> dict:
            rec = {"model": name, "created_at": _now(), "done": False}
            if chat:
                rec["message"] = {"role": "assistant", "content": text}
            else:
                rec["response"] = text
            return rec

        if body.get("stream", True) is False:
            out = dict(final)
            out.update({k: v for k, v in piece(REPLY).items() if k in ("message", "response")})
            return self._json(200, out)
        words = REPLY.split(" ")
        records = [piece(w if i == 0 else " " + w) for i, w in enumerate(words)]
        last = dict(final)
        last.update({k: v for k, v in piece("").items() if k in ("message", "response")})
        self._stream(records + [last])


def serve() -> int:
    host, port = _host_port()
    _models_dir().mkdir(parents=True, exist_ok=True)
    httpd = ThreadingHTTPServer((host, port), Handler)
    httpd.daemon_threads = True
    sys.stderr.write(f"[standin] Ollama TEST STAND-IN {VERSION} listening on {host}:{port}, "
                     f"models in {_models_dir()}\n")
    sys.stderr.flush()
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


def list_models() -> int:
    host, port = _host_port()
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    with urllib.request.urlopen(f"http://{host}:{port}/api/tags", timeout=10) as resp:
        models = json.load(resp)["models"]
    print(f"{'NAME':40} {'ID':14} SIZE")
    for m in models:
        print(f"{m['name']:40} {m['digest'][:12]:14} {m['size']} B")
    return 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print("Ollama TEST STAND-IN. Usage: ollama serve | ollama list | ollama --version")
        return 0
    if argv[0] in ("-v", "--version", "version"):
        print(f"ollama version is {VERSION}")
        return 0
    if argv[0] == "serve":
        return serve()
    if argv[0] in ("list", "ls"):
        return list_models()
    print(f"ollama stand-in: command {argv[0]!r} is not implemented", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
