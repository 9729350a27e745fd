"""The test doubles' shared server: serves at once on a free loopback port, and lets go of it on stop."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tests.support.loopback_server import LoopbackServer


def app() -> Starlette:
    return Starlette(routes=[Route("/", lambda _: PlainTextResponse("here"))])


def test_serves_on_a_free_loopback_port_until_stopped():
    with LoopbackServer(app(), name="probe") as server:
        url = server.base_url
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
        assert httpx.get(url + "/", timeout=5).text == "here"
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/", timeout=5)


def test_a_taken_port_fails_at_start():
    with LoopbackServer(app()) as first:
        port = int(first.base_url.rsplit(":", 1)[1])
        with pytest.raises(OSError):
            LoopbackServer(app(), port=port).start()
