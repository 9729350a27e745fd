"""Exact cost of a request from the usage a backend reported and the configured price table.

Prices are USD per million tokens. Cache writes default to 1.25x (5-minute) and 2x (1-hour) the
input price and cache reads to 0.1x, as Anthropic bills them. Arithmetic is in Decimal so a day
of thousands of requests adds up to the cent the provider's invoice shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from .config import PriceConfig
from .internal import Usage

MILLION = Decimal(1_000_000)


def find_price(prices: Sequence[PriceConfig], model: str) -> PriceConfig | None:
    """The entry with the longest prefix that matches *model* (so ``claude-opus-4-1`` beats ``claude-opus-4``)."""
    best: PriceConfig | None = None
    for price in prices:
        if model.startswith(price.prefix) and (best is None or len(price.prefix) > len(best.prefix)):
            best = price
    return best


def _d(value: float) -> Decimal:
    return Decimal(str(value))


def cost_usd(price: PriceConfig | None, usage: Usage) -> Decimal:
    """Cost of *usage* under *price*; a model with no price (a local model) costs 0."""
    if price is None:
        return Decimal(0)
    input_rate, output_rate = _d(price.input), _d(price.output)
    total_input = (usage.input_tokens + usage.cache_creation_input_tokens
                   + usage.cache_creation_1h_input_tokens + usage.cache_read_input_tokens)
    if price.long_context_threshold is not None and total_input > price.long_context_threshold:
        # Long-context tier: every token of the request is billed at the long rates.
        ratio = _d(price.long_input) / input_rate if price.long_input is not None and price.input else Decimal(1)
        input_rate = _d(price.long_input) if price.long_input is not None else input_rate
        output_rate = _d(price.long_output) if price.long_output is not None else output_rate
    else:
        ratio = Decimal(1)
    write_5m = _d(price.cache_write_5m) * ratio if price.cache_write_5m is not None else input_rate * Decimal("1.25")
    write_1h = _d(price.cache_write_1h) * ratio if price.cache_write_1h is not None else input_rate * 2
    read = _d(price.cache_read) * ratio if price.cache_read is not None else input_rate * Decimal("0.1")
    total = (usage.input_tokens * input_rate + usage.output_tokens * output_rate
             + usage.cache_creation_input_tokens * write_5m + usage.cache_creation_1h_input_tokens * write_1h
             + usage.cache_read_input_tokens * read)
    return total / MILLION


def usd(value: float | str | Decimal) -> Decimal:
    """A config amount (a YAML float such as 10.1) as the Decimal the operator wrote, not 10.0999..."""
    return value if isinstance(value, Decimal) else Decimal(str(value))


def worst_case_cost(price: PriceConfig | None, input_tokens: int, output_tokens: int) -> Decimal:
    """What a call may cost at most, held against the budget while it runs.

    The input is priced as plain input (with the long-context tier when it applies) and the
    output as if all *output_tokens* are produced. Cache writes cost more than plain input, so a
    call that writes a large cache can still exceed this; the emergency cutoff is the margin.
    """
    return cost_usd(price, Usage(input_tokens=max(0, input_tokens), output_tokens=max(0, output_tokens)))
