"""Start the all-MiniLM-L6-v2 stand-in (tests/doubles/embedding_standin.py) as a loopback process."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx

from tests.doubles.embedding_standin import free_port


def start(timeout: float = 60) -> tuple[str, subprocess.Popen[bytes]]:
    """Base URL (Ollama style, no /v1) of a freshly started stand-in, and its process."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "tests.doubles.embedding_standin", "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read().decode(errors="replace") if process.stdout else ""
            raise RuntimeError(f"the embedding stand-in exited with {process.returncode}:\n{output}")
        try:
            if httpx.get(f"{url}/api/version", timeout=1).status_code == 200:
                return url, process
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"the embedding stand-in did not answer on {url} within {timeout} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
