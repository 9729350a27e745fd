"""The bounds a cloud call's reservation is made of (cost/bounds.py), and the estimate for calls that end
without their final usage (pipeline.estimate_unreported_usage)."""

from __future__ import annotations

import msgspec

from aibox_router.cost.bounds import (
    DEFAULT_WEB_SEARCH_USES,
    IMAGE_TOKENS,
    PROMPT_OVERHEAD_TOKENS,
    limit_request,
    needs_exact_count,
    output_token_bound,
    prompt_token_bound,
    web_search_bound,
)
from aibox_router.internal import Usage
from aibox_router.pipeline import estimate_unreported_usage

TEXT = {"model": "m", "max_tokens": 64_000, "messages": [{"role": "user", "content": "héllo wörld"}]}


def test_the_prompt_bound_is_the_forwarded_bytes_plus_the_api_overhead_and_images() -> None:
    assert prompt_token_bound(TEXT) == len(msgspec.json.encode(TEXT)) + PROMPT_OVERHEAD_TOKENS
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    with_images = {**TEXT, "messages": [{"role": "user", "content": [image, {"type": "tool_result", "tool_use_id": "t",
                                                                             "content": [image]}]}]}
    assert prompt_token_bound(with_images) == (len(msgspec.json.encode(with_images)) + PROMPT_OVERHEAD_TOKENS
                                               + 2 * IMAGE_TOKENS)
    assert prompt_token_bound(TEXT, exact=1000) == 1000 + PROMPT_OVERHEAD_TOKENS


def test_media_whose_tokens_are_not_in_the_bytes_need_an_exact_count() -> None:
    def user(*blocks):
        return {**TEXT, "messages": [{"role": "user", "content": list(blocks)}]}

    assert not needs_exact_count(TEXT)
    assert not needs_exact_count(user({"type": "image", "source": {"type": "base64", "data": "x"}}))
    assert not needs_exact_count(user({"type": "document", "source": {"type": "text", "data": "plain"}}))
    assert needs_exact_count(user({"type": "document", "source": {"type": "base64", "data": "JVBERi0="}}))
    assert needs_exact_count(user({"type": "image", "source": {"type": "url", "url": "https://example.org/a.png"}}))
    assert needs_exact_count(user({"type": "image", "source": {"type": "file", "file_id": "file_1"}}))


def test_max_tokens_is_lowered_to_the_cap_and_web_searches_get_a_limit() -> None:
    body, clamped = limit_request(TEXT, 32_000)
    assert body["max_tokens"] == 32_000 and clamped == 64_000 and TEXT["max_tokens"] == 64_000
    assert output_token_bound(body, 32_000) == 32_000
    assert limit_request(TEXT, 128_000) == (TEXT, None)
    tools = [{"type": "web_search_20250305", "name": "web_search"},
             {"type": "web_search_20250305", "name": "web_search", "max_uses": 2},
             {"name": "Read", "input_schema": {"type": "object"}}]
    body, _ = limit_request({**TEXT, "tools": tools}, 128_000)
    assert [t.get("max_uses") for t in body["tools"]] == [DEFAULT_WEB_SEARCH_USES, 2, None]
    assert web_search_bound(body) == DEFAULT_WEB_SEARCH_USES + 2


def test_an_unfinished_call_is_estimated_from_what_was_sent_and_flagged() -> None:
    usage = Usage(input_tokens=500, output_tokens=1)
    estimate_unreported_usage(usage, TEXT, output_bytes=3001, thinking_seen=False)
    assert (usage.input_tokens, usage.output_tokens, usage.estimated) == (500, 1001, True)
    # Thinking under way: its budget, since summarised or hidden thinking is billed but never seen.
    thinking = {**TEXT, "thinking": {"type": "enabled", "budget_tokens": 10_000}}
    usage = Usage(input_tokens=500, output_tokens=1)
    estimate_unreported_usage(usage, thinking, output_bytes=30, thinking_seen=True)
    assert usage.output_tokens == 10_000 and usage.estimated
    adaptive = {**TEXT, "thinking": {"type": "adaptive"}}
    usage = Usage(input_tokens=500, output_tokens=1)
    estimate_unreported_usage(usage, adaptive, output_bytes=30, thinking_seen=True)
    assert usage.output_tokens == 64_000
    # A non-streaming call abandoned before any usage came back: its prompt bytes at 3 per token.
    usage = Usage()
    estimate_unreported_usage(usage, TEXT, output_bytes=0, thinking_seen=False)
    assert usage.input_tokens == -(-len(msgspec.json.encode(TEXT)) // 3) and usage.estimated
    # A complete usage is left alone.
    usage = Usage(input_tokens=10, output_tokens=5000)
    estimate_unreported_usage(usage, TEXT, output_bytes=300, thinking_seen=False)
    assert (usage.output_tokens, usage.estimated) == (5000, False)
