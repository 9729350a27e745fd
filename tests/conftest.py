"""Fixtures shared by the live tests: the real local model server and the Anthropic API double."""

from __future__ import annotations

import os

import pytest

from tests.doubles.fake_anthropic import FakeAnthropic
from tests.support import local_model


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
