"""Every usage vector Anthropic bills, end to end: the Anthropic double answers with the usage (the way
the real API reports it, streamed and not), the Anthropic backend reads it, and the router prices it
from the embedded price table. Each expected bill is worked out by hand from the published rates, to
the micro-dollar, independently of router/pricing.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest

from aibox_router.backends import create_backend
from aibox_router.backends.anthropic import AnthropicBackend
from aibox_router.config import BackendConfig, TargetConfig
from aibox_router.config_load import embedded_prices
from aibox_router.internal import CallContext
from aibox_router.pricing import cost_usd, find_price
from tests.doubles.fake_anthropic import FakeAnthropic, Reply

KEY_ENV = "AIBOX_TEST_BILL_KEY"


@dataclass
class Vector:
    name: str
    model: str
    reply: dict[str, int]
    expected_usd: str  # worked out by hand in the comment next to it
    request: dict[str, Any] = field(default_factory=dict)


VECTORS = [
    # Sonnet 4.6: $3 in, $15 out.  12 345 x 3 = 37 035 micro-dollars
    Vector("input", "claude-sonnet-4-6", {"input_tokens": 12_345, "output_tokens": 0}, "0.037035"),
    # 2 000 x 15 = 30 000; plus 1 input token x 3
    Vector("output", "claude-sonnet-4-6", {"input_tokens": 1, "output_tokens": 2000}, "0.030003"),
    # Opus 4.6: $5 in, 5-minute write 1.25 x 5 = 6.25: 10 000 x 6.25 = 62 500
    Vector("5m cache writes", "claude-opus-4-6", {"input_tokens": 0, "output_tokens": 0,
                                                  "cache_creation_input_tokens": 10_000}, "0.0625"),
    # 1-hour write 2 x 5 = 10: 20 000 x 10 = 200 000
    Vector("1h cache writes", "claude-opus-4-6", {"input_tokens": 0, "output_tokens": 0,
                                                  "cache_creation_1h_input_tokens": 20_000}, "0.2"),
    # cache read 0.1 x 5 = 0.5: 100 000 x 0.5 = 50 000
    Vector("cache reads", "claude-opus-4-6", {"input_tokens": 0, "output_tokens": 0,
                                              "cache_read_input_tokens": 100_000}, "0.05"),
    # 1000 x 5 + 500 x 25 + 2000 x 6.25 + 20 000 x 10 + 30 000 x 0.5
    # = 5 000 + 12 500 + 12 500 + 200 000 + 15 000 = 245 000 (the streamed 1-hour writes of issue 11)
    Vector("all kinds", "claude-opus-4-6", {"input_tokens": 1000, "output_tokens": 500,
                                            "cache_creation_input_tokens": 2000,
                                            "cache_creation_1h_input_tokens": 20_000,
                                            "cache_read_input_tokens": 30_000}, "0.245"),
    # Sonnet 4.5 over 200K prompt tokens (150 000 + 60 000): every token at $6 / $22.50, reads 0.6:
    # 900 000 + 36 000 + 22 500 = 958 500
    Vector("long-context tier", "claude-sonnet-4-5-20250929",
           {"input_tokens": 150_000, "cache_read_input_tokens": 60_000, "output_tokens": 1000}, "0.9585"),
    # Long tier with writes: 190 000 x 6 + 10 000 x 7.5 + 1 000 x 12 = 1 140 000 + 75 000 + 12 000
    Vector("long-context tier, cache writes", "claude-sonnet-4-5-20250929",
           {"input_tokens": 190_000, "output_tokens": 0, "cache_creation_input_tokens": 10_000,
            "cache_creation_1h_input_tokens": 1000}, "1.227"),
    # Exactly 200 000: still the normal tier. 600 000 + 1 000 x 15
    Vector("at the long-context threshold", "claude-sonnet-4-5-20250929",
           {"input_tokens": 200_000, "output_tokens": 1000}, "0.615"),
    # Sonnet 4.6 has no long-context tier: 300 000 x 3 (the shared claude-sonnet-4 prefix billed 6)
    Vector("no tier on Sonnet 4.6", "claude-sonnet-4-6", {"input_tokens": 300_000, "output_tokens": 0}, "0.9"),
    # Haiku 5.5 over 100K: every token at 5x: 100 001 x 0.5 + 100 x 2.5 = 50 000.5 + 250
    Vector("Haiku 5.5 prompt tier", "claude-haiku-5-5", {"input_tokens": 100_001, "output_tokens": 100},
           "0.0502505"),
    # Sonnet 5.5: explicit cache read $0.20: 1 000 000 x 0.2
    Vector("explicit cache read price", "claude-sonnet-5-5",
           {"input_tokens": 0, "output_tokens": 0, "cache_read_input_tokens": 1_000_000}, "0.2"),
    # 3 web searches at $10 / 1000 = 0.03, + 1000 x 3 + 100 x 15 = 4 500 micro-dollars
    Vector("server tool use: web search", "claude-sonnet-4-6",
           {"input_tokens": 1000, "output_tokens": 100, "web_search_requests": 3}, "0.0345"),
    # Fast mode on Opus 4.6, 6x: 1000 x 30 + 1000 x 150 = 180 000
    Vector("fast mode", "claude-opus-4-6", {"input_tokens": 1000, "output_tokens": 1000}, "0.18",
           request={"speed": "fast"}),
    # US-only inference, 1.1x: 1000 x 5.5 + 1000 x 27.5 + 1000 x 11 (1-hour write) = 44 000
    Vector("inference_geo us", "claude-opus-4-6",
           {"input_tokens": 1000, "output_tokens": 1000, "cache_creation_1h_input_tokens": 1000}, "0.044",
           request={"inference_geo": "us"}),
    # Both stack: 1000 x 5 x 6 x 1.1 = 33 000
    Vector("fast mode and geo stacked", "claude-opus-4-6", {"input_tokens": 1000, "output_tokens": 0}, "0.033",
           request={"speed": "fast", "inference_geo": "us"}),
]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture
async def backend(server: FakeAnthropic, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[AnthropicBackend]:
    server.reset()
    monkeypatch.setenv(KEY_ENV, "sk-ant-bill-test")
    backend = create_backend("cloud", BackendConfig(type="anthropic", base_url=server.url, api_key_env=KEY_ENV))
    assert isinstance(backend, AnthropicBackend)
    yield backend
    await backend.aclose()


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("vector", VECTORS, ids=[v.name for v in VECTORS])
async def test_the_bill_matches_anthropic_to_the_micro_dollar(server: FakeAnthropic, backend: AnthropicBackend,
                                                              vector: Vector, stream: bool) -> None:
    server.replies.append(Reply.text("answer", **vector.reply))
    body = {"model": vector.model, "max_tokens": 4096, "messages": [{"role": "user", "content": "hi"}],
            **vector.request}
    ctx = CallContext()
    target = TargetConfig(backend="cloud", model=vector.model)
    if stream:
        events = [e async for e in backend.stream(body, target, ctx)]
        delta = next(e for e in events if e["type"] == "message_delta")
        # The double sends what the real API sends: the cumulative totals, not the cache split.
        assert "cache_creation" not in delta["usage"]
        assert "cache_creation_input_tokens" in delta["usage"]
    else:
        await backend.complete(body, target, ctx)
    price = find_price(embedded_prices(), vector.model)
    assert price is not None
    cost = cost_usd(price, ctx.usage)
    assert abs(cost - Decimal(vector.expected_usd)) < Decimal("0.000001"), (vector.name, cost)
    assert cost == Decimal(vector.expected_usd)
