"""The real local model for live tests: llama-cpp-python's OpenAI-compatible server with SmolLM2-135M.

``scripts/ensure-local-model`` installs both under ``${AIBOX_CACHE:-/var/cache/aibox}/llama/``;
this module finds them and runs the server on a loopback port. Typical session fixture::

    @pytest.fixture(scope="session")
    def llama_server():
        url, process = start_llama_server()
        yield url
        stop_llama_server(process)
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
ENSURE_HINT = "run scripts/ensure-local-model first (CI runs it before the live tests)"
SKIP_ENV = "AIBOX_SKIP_LOCAL_MODEL"


class LocalModelMissing(RuntimeError):
    """The venv or the model file is not there; the message says how to provision them."""


def cache_dir() -> Path:
    return Path(os.environ.get("AIBOX_CACHE") or "/var/cache/aibox") / "llama"


def venv_python() -> Path:
    return cache_dir() / "venv" / "bin" / "python"


def model_path() -> Path:
    return cache_dir() / MODEL_FILE


def check_installed() -> None:
    for path, what in ((venv_python(), "llama-cpp-python venv"), (model_path(), "SmolLM2 model")):
        if not path.exists():
            raise LocalModelMissing(f"{what} not found at {path}; {ENSURE_HINT}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_llama_server(port: int | None = None, alias: str = "smollm2", timeout_s: float = 120.0,
                       n_ctx: int = 8192) -> tuple[str, subprocess.Popen[bytes]]:
    """Start the server with an *n_ctx*-token context; return (base URL including /v1, process) once
    ``/v1/models`` answers."""
    check_installed()
    port = port or free_port()
    # Output goes to a file, not a pipe: a pipe nobody reads would fill up and stall the server.
    log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(
        [str(venv_python()), "-m", "llama_cpp.server", "--model", str(model_path()),
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx), "--model_alias", alias],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "NO_PROXY": "127.0.0.1,localhost"},
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_ready(url, process, timeout_s, Path(log.name))
    except BaseException:
        stop_llama_server(process)
        raise
    return url, process


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"llama server exited with {process.returncode}; log {log}:\n{_tail(log)}")
        try:
            if httpx.get(f"{url}/models", timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"llama server did not answer {url}/models within {timeout_s:.0f}s; "
                       f"log {log}:\n{_tail(log)}")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_llama_server(process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
