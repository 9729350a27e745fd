"""An ASGI app (the test doubles' Starlette apps) served by uvicorn on a loopback port in a daemon thread.

    with LoopbackServer(app, name="fake-ollama") as server:
        server.base_url                     # http://127.0.0.1:<free port>

The socket is bound before the thread starts, so the port is known (and taken) at once; ``start`` returns
when uvicorn is serving, and fails if it is not within ``timeout`` seconds or its thread died.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Self

import uvicorn


class LoopbackServer:
    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 0, name: str = "loopback-server",
                 **uvicorn_options: Any):
        self.app, self.host, self.port, self.name = app, host, port, name
        self.uvicorn_options = {"log_level": "warning", "lifespan": "off", **uvicorn_options}
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def base_url(self) -> str:
        assert self._socket is not None, f"{self.name} is not started"
        host, port = self._socket.getsockname()[:2]
        return f"http://{host}:{port}"

    def start(self, timeout: float = 10) -> Self:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # A fixed port can be bound again at once after a restart (no wait for TIME_WAIT).
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((self.host, self.port))
        self._server = uvicorn.Server(uvicorn.Config(self.app, **self.uvicorn_options))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name=self.name, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                self.stop()
                raise RuntimeError(f"{self.name} did not start within {timeout} s")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._socket is not None:
            self._socket.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
