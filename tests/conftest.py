"""Fixtures shared by the tests: a network guard, the real local model server, the Anthropic double."""

from __future__ import annotations

import ipaddress
import os
import socket

import pytest

from tests.doubles.fake_anthropic import FakeAnthropic
from tests.support import local_model

# Tests talk only to loopback and to the project's own test hosts (10.231.0.0/16, see scripts/testhost).
# Anything else (the aibox at 192.168.10.88, the Anthropic API, download sites) must never be
# contacted: this guard turns such an attempt inside the test process into an immediate failure.
_ALLOWED_NETS = [ipaddress.ip_network(n) for n in ("127.0.0.0/8", "::1/128", "10.231.0.0/16")]
_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo


def _allowed(host: object) -> bool:
    if host in ("localhost", "localhost.localdomain", "", None):
        return True
    try:
        address = ipaddress.ip_address(str(host).split("%")[0])
    except ValueError:
        return False
    return any(address in net for net in _ALLOWED_NETS)


def _checked(address: object) -> None:
    if isinstance(address, tuple) and not _allowed(address[0]):
        raise ConnectionRefusedError(f"test network guard: connecting to {address[0]} is not allowed in tests")


def _guarded_connect(self: socket.socket, address: object) -> None:
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _checked(address)
    return _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: object) -> int:
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _checked(address)
    return _real_connect_ex(self, address)


def _guarded_getaddrinfo(host, *args, **kwargs):  # type: ignore[no-untyped-def]
    if isinstance(host, bytes):
        host = host.decode()
    if not _allowed(host):
        raise socket.gaierror(socket.EAI_NONAME, f"test network guard: looking up {host!r} is not allowed in tests")
    return _real_getaddrinfo(host, *args, **kwargs)


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]
socket.getaddrinfo = _guarded_getaddrinfo


@pytest.fixture(scope="session")
def llama_url():
    """Base URL (ending in /v1) of a real llama.cpp server running SmolLM2-135M on loopback."""
    if os.environ.get(local_model.SKIP_ENV) == "1":
        pytest.skip(f"{local_model.SKIP_ENV}=1: the real local model is skipped on purpose")
    try:
        url, process = local_model.start_llama_server()
    except local_model.LocalModelMissing as e:
        pytest.fail(str(e))
    yield url
    local_model.stop_llama_server(process)


@pytest.fixture(scope="session")
def fake_anthropic_server():
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture
def fake_anthropic(fake_anthropic_server):
    fake_anthropic_server.reset()
    return fake_anthropic_server


@pytest.fixture(scope="session")
def minilm_url():
    """Base URL of the all-MiniLM-L6-v2 stand-in for the box's embedding model, on loopback."""
    from tests.support import embedding_server

    url, process = embedding_server.start()
    yield url
    embedding_server.stop(process)
