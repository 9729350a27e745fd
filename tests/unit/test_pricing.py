"""Cost arithmetic against hand-computed cases (USD per million tokens, exact Decimal)."""

from __future__ import annotations

from decimal import Decimal

from aibox_router.config import PriceConfig
from aibox_router.internal import Usage
from aibox_router.pricing import cost_usd, find_price, usd, worst_case_cost

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


def test_worst_case_cost() -> None:
    assert worst_case_cost(SONNET, 100_000, 32_000) == Decimal("0.78")  # 0.30 + 0.48
    assert worst_case_cost(SONNET, 250_000, 1000) == Decimal("1.5225")  # long tier: 1.50 + 0.0225
    assert worst_case_cost(None, 100, 100) == 0


def test_usd_keeps_the_written_amount() -> None:
    assert usd(10.1) == Decimal("10.1")
    assert usd(0.1) + usd(0.2) == Decimal("0.3")
