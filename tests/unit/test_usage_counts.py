"""Upstream token counts that are not counts (negative, bool, float, string) are not taken.

A negative count from an upstream would lower the recorded spend below what the call cost, and a
string in a field the router does arithmetic on would turn a served answer into a 500. The cloud's
usage goes through ``Usage.update_from``; the local backends' through their wire decoders.
"""

from __future__ import annotations

import pytest

from aibox_router.config import PriceConfig
from aibox_router.internal import CallContext, Usage, token_count
from aibox_router.pricing import cost_usd
from aibox_router.wire.ollama import from_ollama_response
from aibox_router.wire.openai_chat import from_openai_response

PRICE = PriceConfig(prefix="test-cloud", input=1.0, output=5.0)


@pytest.mark.parametrize("value", [-1, -1_000_000, True, False, 1.5, "12", None, [3]])
def test_what_is_not_a_count_is_refused(value: object) -> None:
    assert token_count(value) is None


@pytest.mark.parametrize("value", [0, 1, 2_000_000])
def test_counts_are_taken(value: int) -> None:
    assert token_count(value) == value


def test_a_negative_cloud_count_cannot_lower_the_bill() -> None:
    usage = Usage()
    usage.update_from({"input_tokens": 1000, "output_tokens": 1})  # message_start
    usage.update_from({"output_tokens": 500})  # message_delta
    honest = cost_usd(PRICE, usage)
    usage.update_from({"input_tokens": -1000, "output_tokens": -500,
                       "cache_creation_input_tokens": -10, "cache_read_input_tokens": -5,
                       "cache_creation": {"ephemeral_5m_input_tokens": -3, "ephemeral_1h_input_tokens": True},
                       "server_tool_use": {"web_search_requests": -2}})
    assert (usage.input_tokens, usage.output_tokens, usage.web_search_requests) == (1000, 500, 0)
    assert usage.cache_creation_input_tokens == usage.cache_creation_1h_input_tokens == 0
    assert usage.cache_read_input_tokens == 0
    assert cost_usd(PRICE, usage) == honest > 0


def test_local_decoders_take_no_negative_or_textual_counts() -> None:
    request = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    ctx = CallContext()
    ollama = from_ollama_response({"model": "m", "message": {"role": "assistant", "content": "ok"}, "done": True,
                                   "prompt_eval_count": -7, "eval_count": "3"}, request, ctx)
    assert ollama["usage"]["input_tokens"] >= 0 and ollama["usage"]["output_tokens"] >= 0
    ctx = CallContext()
    openai = from_openai_response({"choices": [{"message": {"role": "assistant", "content": "ok"},
                                                "finish_reason": "stop"}],
                                   "usage": {"prompt_tokens": 5, "completion_tokens": -4,
                                             "prompt_tokens_details": {"cached_tokens": "lots"}}}, request, ctx)
    assert openai["usage"]["input_tokens"] == 5
    assert openai["usage"]["output_tokens"] >= 0
    assert openai["usage"].get("cache_read_input_tokens", 0) == 0
