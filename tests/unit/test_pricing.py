"""Cost arithmetic against hand-computed cases (USD per million tokens, exact Decimal)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from aibox_router.config import PriceConfig
from aibox_router.config_load import embedded_prices
from aibox_router.internal import Usage
from aibox_router.pricing import UnpricedMode, cost_usd, find_price, usd, worst_case_cost

SONNET = PriceConfig(prefix="claude-sonnet-4", input=3.00, output=15.00, long_context_threshold=200_000,
                     long_input=6.00, long_output=22.50)
HAIKU = PriceConfig(prefix="claude-3-5-haiku", input=0.80, output=4.00)


def test_plain_input_and_output() -> None:
    # 1000 * $3 + 500 * $15 = 3000 + 7500 = 10500 micro-dollars
    assert cost_usd(SONNET, Usage(input_tokens=1000, output_tokens=500)) == Decimal("0.0105")


def test_cache_writes_5m_1h_and_reads_use_default_multipliers() -> None:
    usage = Usage(input_tokens=1000, output_tokens=500, cache_creation_input_tokens=2000,
                  cache_creation_1h_input_tokens=4000, cache_read_input_tokens=10_000)
    # input 1000*3=3000, output 500*15=7500, 5m write 2000*3.75=7500, 1h write 4000*6=24000,
    # read 10000*0.30=3000  -> 45000 / 1e6
    assert cost_usd(SONNET, usage) == Decimal("0.045")


def test_small_rates_stay_exact() -> None:
    # haiku cache read = 0.1 x 0.80 = $0.08 per million; 5m write = 1.25 x 0.80 = $1.00
    assert cost_usd(HAIKU, Usage(cache_read_input_tokens=1_000_000)) == Decimal("0.08")
    assert cost_usd(HAIKU, Usage(cache_creation_input_tokens=3)) == Decimal("0.000003")
    assert cost_usd(HAIKU, Usage(input_tokens=1)) == Decimal("0.0000008")


def test_explicit_cache_prices_win() -> None:
    price = PriceConfig(prefix="m", input=2.0, output=10.0, cache_write_5m=2.2, cache_write_1h=3.0, cache_read=0.5)
    usage = Usage(cache_creation_input_tokens=1_000_000, cache_creation_1h_input_tokens=1_000_000,
                  cache_read_input_tokens=1_000_000)
    assert cost_usd(price, usage) == Decimal("5.7")  # 2.2 + 3.0 + 0.5


def test_long_context_tier_bills_the_whole_request_at_long_rates() -> None:
    # 150k input + 60k cache read = 210k > 200k: input 150000*6 = 900000, read 60000*0.60 = 36000,
    # output 1000*22.50 = 22500 -> 958500 / 1e6
    usage = Usage(input_tokens=150_000, cache_read_input_tokens=60_000, output_tokens=1000)
    assert cost_usd(SONNET, usage) == Decimal("0.9585")
    # cache writes scale too: 5m write at 1.25 x 6 = 7.50, 1h write at 2 x 6 = 12
    usage = Usage(input_tokens=190_000, cache_creation_input_tokens=10_000, cache_creation_1h_input_tokens=1000)
    assert cost_usd(SONNET, usage) == Decimal("1.227")  # 1140000 + 75000 + 12000


def test_long_context_threshold_is_exclusive() -> None:
    usage = Usage(input_tokens=200_000, output_tokens=1000)  # exactly at the threshold: normal rates
    assert cost_usd(SONNET, usage) == Decimal("0.615")  # 600000 + 15000


def test_explicit_cache_prices_scale_with_the_long_tier() -> None:
    price = PriceConfig(prefix="m", input=3.0, output=15.0, cache_read=0.30, long_context_threshold=100,
                        long_input=6.0)
    usage = Usage(input_tokens=1000, cache_read_input_tokens=1000)
    # long input 6 -> ratio 2: read 0.60; output rate stays 15 (no long_output)
    assert cost_usd(price, usage) == Decimal("0.0066")


def test_unpriced_model_costs_nothing() -> None:
    assert cost_usd(None, Usage(input_tokens=10**6, output_tokens=10**6)) == 0


def test_find_price_longest_prefix() -> None:
    prices = [PriceConfig(prefix="claude-opus-4", input=15, output=75),
              PriceConfig(prefix="claude-opus-4-5", input=5, output=25)]
    found = find_price(prices, "claude-opus-4-5-20251101")
    assert found is not None and found.input == 5
    found = find_price(prices, "claude-opus-4-1")
    assert found is not None and found.input == 15
    assert find_price(prices, "qwen2.5:14b") is None


def test_worst_case_cost_prices_every_prompt_token_at_the_1h_write_rate() -> None:
    assert worst_case_cost(SONNET, 100_000, 32_000) == Decimal("1.08")  # 100k x $6 + 32k x $15
    assert worst_case_cost(SONNET, 250_000, 1000) == Decimal("3.0225")  # long tier: 250k x $12 + 1k x 22.50
    assert worst_case_cost(None, 100, 100) == 0
    # Web searches, and the dearest geo a workspace default could apply when the request names none.
    geo = PriceConfig(prefix="m", input=1.0, output=5.0, inference_geo_multipliers={"us": 1.1})
    assert worst_case_cost(geo, 0, 1000, web_searches=2) == Decimal("0.0255")  # 1000 x 5.5 + 2 x $0.01
    assert worst_case_cost(geo, 0, 1000, inference_geo="global") == Decimal("0.005")


def test_worst_case_cost_is_never_below_any_bill_within_its_bounds() -> None:
    import itertools

    for price in embedded_prices():
        for prompt, kind in itertools.product((1000, 150_000, 400_000), ("input", "w5", "w1", "read")):
            usage = Usage(output_tokens=64_000, web_search_requests=3,
                          input_tokens=prompt if kind == "input" else 0,
                          cache_creation_input_tokens=prompt if kind == "w5" else 0,
                          cache_creation_1h_input_tokens=prompt if kind == "w1" else 0,
                          cache_read_input_tokens=prompt if kind == "read" else 0)
            assert cost_usd(price, usage) <= worst_case_cost(price, prompt, 64_000, web_searches=3), price.prefix


def test_modes_without_a_published_price_are_refused_not_guessed() -> None:
    haiku45 = find_price(embedded_prices(), "claude-haiku-4-5-20251001")
    assert haiku45 is not None and haiku45.fast_multiplier is None
    with pytest.raises(UnpricedMode, match="fast_multiplier"):
        worst_case_cost(haiku45, 10, 10, speed="fast")
    with pytest.raises(UnpricedMode, match="inference_geo_multipliers"):
        worst_case_cost(haiku45, 10, 10, inference_geo="eu")
    assert worst_case_cost(haiku45, 10, 10, speed="standard", inference_geo="global") > 0


# Every model ID Anthropic publishes, with the entry that must price it: no model may fall through to a
# shorter prefix (claude-sonnet-4-6 once matched claude-sonnet-4 and got Sonnet 4's long-context tier).
PUBLISHED_MODELS = {
    "claude-fable-5-1": "claude-fable-5-1", "claude-mythos-5-1": "claude-mythos-5-1",
    "claude-fable-5": "claude-fable-5", "claude-mythos-5": "claude-mythos-5",
    "claude-opus-5-5": "claude-opus-5-5", "claude-opus-5": "claude-opus-5",
    "claude-opus-4-8": "claude-opus-4-8", "claude-opus-4-7": "claude-opus-4-7", "claude-opus-4-6": "claude-opus-4-6",
    "claude-opus-4-5-20251101": "claude-opus-4-5", "claude-opus-4-5": "claude-opus-4-5",
    "claude-opus-4-1-20250805": "claude-opus-4-1", "claude-opus-4-1": "claude-opus-4-1",
    "claude-opus-4-20250514": "claude-opus-4-2025", "claude-opus-4-0": "claude-opus-4-0",
    "claude-sonnet-5-5": "claude-sonnet-5-5", "claude-sonnet-5": "claude-sonnet-5",
    "claude-sonnet-4-6": "claude-sonnet-4-6", "claude-sonnet-4-5-20250929": "claude-sonnet-4-5",
    "claude-sonnet-4-5": "claude-sonnet-4-5", "claude-sonnet-4-20250514": "claude-sonnet-4-2025",
    "claude-sonnet-4-0": "claude-sonnet-4-0", "claude-3-7-sonnet-20250219": "claude-3-7-sonnet",
    "claude-haiku-5-5": "claude-haiku-5-5", "claude-haiku-4-5-20251001": "claude-haiku-4-5",
    "claude-haiku-4-5": "claude-haiku-4-5", "claude-3-5-haiku-20241022": "claude-3-5-haiku",
    "claude-3-haiku-20240307": "claude-3-haiku",
}


@pytest.mark.parametrize("model", sorted(PUBLISHED_MODELS))
def test_each_published_model_has_its_own_entry(model: str) -> None:
    found = find_price(embedded_prices(), model)
    assert found is not None and found.prefix == PUBLISHED_MODELS[model]


def test_an_unknown_model_has_no_price_rather_than_a_neighbours() -> None:
    assert find_price(embedded_prices(), "claude-sonnet-4-7") is None
    assert find_price(embedded_prices(), "claude-opus-4-9") is None


def test_long_context_tiers_are_where_anthropic_bills_them() -> None:
    tiers = {p.prefix: p.long_context_threshold for p in embedded_prices() if p.long_context_threshold}
    assert tiers == {"claude-sonnet-4-5": 200_000, "claude-sonnet-4-0": 200_000, "claude-sonnet-4-2025": 200_000,
                     "claude-haiku-5-5": 100_000}


def test_streamed_1h_cache_writes_keep_their_rate() -> None:
    """message_start splits the writes; message_delta repeats only the total (issue 11)."""
    usage = Usage()
    usage.update_from({"input_tokens": 10, "output_tokens": 1, "cache_creation_input_tokens": 20_000,
                       "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 20_000}})
    usage.update_from({"input_tokens": 10, "output_tokens": 700, "cache_creation_input_tokens": 20_000,
                       "cache_read_input_tokens": 0})
    assert (usage.cache_creation_input_tokens, usage.cache_creation_1h_input_tokens) == (0, 20_000)
    # A server-tool iteration writes more: the growth goes to the 1-hour bucket the request used.
    usage.update_from({"cache_creation_input_tokens": 25_000, "server_tool_use": {"web_search_requests": 2}})
    assert (usage.cache_creation_input_tokens, usage.cache_creation_1h_input_tokens) == (0, 25_000)
    assert usage.web_search_requests == 2 and usage.output_tokens == 700
    five = Usage()
    five.update_from({"cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 0}})
    five.update_from({"cache_creation_input_tokens": 150})
    assert (five.cache_creation_input_tokens, five.cache_creation_1h_input_tokens) == (150, 0)


def test_usd_keeps_the_written_amount() -> None:
    assert usd(10.1) == Decimal("10.1")
    assert usd(0.1) + usd(0.2) == Decimal("0.3")
