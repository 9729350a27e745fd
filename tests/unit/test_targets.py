"""The one place a target's max_output_tokens caps what a backend is asked to produce."""

from __future__ import annotations

import pytest

from aibox_router.config import TargetConfig
from aibox_router.targets import capped_max_tokens, prepare_for_target
from aibox_router.wire.ollama import to_ollama_request
from aibox_router.wire.openai_chat import to_openai_request


@pytest.mark.parametrize(("asked", "cap", "sent"), [
    (8000, 2048, 2048),  # lowered to the cap
    (100, 2048, 100),  # below the cap: as asked
    (None, 2048, 2048),  # nothing asked: the cap
    (100, None, 100),  # no cap: as asked
    (None, None, None),  # neither: the backend's own default
    (True, 2048, 2048),  # not a number of tokens: as if nothing was asked
])
def test_capped_max_tokens(asked: object, cap: int | None, sent: int | None) -> None:
    assert capped_max_tokens(asked, cap) == sent


def test_prepare_for_target_sets_the_model_and_the_cap_and_leaves_the_request_alone() -> None:
    request = {"model": "claude-sonnet-4-5", "max_tokens": 8000, "messages": []}
    target = TargetConfig(backend="llama", model="smollm2", max_output_tokens=512)
    prepared = prepare_for_target(request, target)
    assert prepared == {"model": "smollm2", "max_tokens": 512, "messages": []}
    assert request["max_tokens"] == 8000 and request["model"] == "claude-sonnet-4-5"


def test_wire_modules_send_max_tokens_as_they_get_it() -> None:
    """The translators do not cap again: what the pipeline prepared is what goes on the wire."""
    target = TargetConfig(backend="llama", model="smollm2", max_output_tokens=512)
    request = {"model": "smollm2", "max_tokens": 8000, "messages": [{"role": "user", "content": "hi"}]}
    assert to_openai_request(request, target, stream=False)["max_tokens"] == 8000
    assert to_ollama_request(request, target, stream=False)["options"]["num_predict"] == 8000
