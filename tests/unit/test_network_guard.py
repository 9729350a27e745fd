"""The guard in tests/conftest.py: tests cannot reach anything but loopback and their own test hosts."""

from __future__ import annotations

import socket

import httpx
import pytest


def test_direct_connections_to_the_outside_are_refused():
    with pytest.raises(OSError, match="test network guard"):
        socket.create_connection(("192.168.10.88", 8088), timeout=1)


def test_name_lookups_of_outside_hosts_are_refused():
    with pytest.raises(OSError, match="test network guard"):
        socket.getaddrinfo("api.anthropic.com", 443)


async def test_async_clients_are_refused_too():
    with pytest.raises(httpx.ConnectError) as info:
        async with httpx.AsyncClient() as client:
            await client.get("http://192.168.10.88:8088/health", timeout=2)
    causes = []
    exc: BaseException | None = info.value
    while exc is not None:
        causes.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    assert any("test network guard" in c for c in causes), causes


def test_loopback_is_allowed():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        socket.create_connection(server.getsockname(), timeout=1).close()
