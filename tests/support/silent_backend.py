"""A TCP listener that accepts connections and never answers: it stands in for a hung model
server (one whose port is open but whose process is stuck), which a real llama.cpp or Ollama
cannot be made to be on demand."""

from __future__ import annotations

import socket
from typing import Self


class SilentBackend:
    """``with SilentBackend() as hung: hung.url`` is an ``http://127.0.0.1:PORT/v1`` that never replies."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)  # the kernel completes handshakes; nobody ever reads or writes
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/v1"

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
