"""What a request costs, the way Anthropic's bill computes it, from the usage and the price table.

Prices are USD per million tokens (``prices`` in the config; the embedded table lives in
``defaults/config.yml``). The bill of one request is

    rate(kind) x tokens(kind) / 1e6, summed over input, output, 5-minute and 1-hour cache writes
    and cache reads, plus web_search_per_1000 / 1000 per web search,

where every token rate is

* the entry's rate, or for cache writes and reads 1.25x / 2x / 0.1x input where the entry sets none;
* in the long-context tier when the prompt (input + cache writes + cache reads) exceeds
  ``long_context_threshold``: input and output at ``long_input`` / ``long_output``, cache rates
  scaled by ``long_input / input``, for every token of the request;
* times the mode multipliers: ``fast_multiplier`` for ``speed: "fast"``, and the entry's
  ``inference_geo_multipliers[geo]`` for data residency (``"global"`` is 1).

Arithmetic is in Decimal so a day of thousands of requests adds up to the cent of the invoice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from .config import PriceConfig
from .internal import Usage

log = logging.getLogger("aibox_router.pricing")

MILLION = Decimal(1_000_000)
THOUSAND = Decimal(1000)
GLOBAL_GEO = "global"


class UnpricedMode(Exception):
    """A request asks for a mode (fast mode, a data-residency geo) the price table has no price for."""


def find_price(prices: Sequence[PriceConfig] | None, model: str) -> PriceConfig | None:
    """The entry with the longest prefix that matches *model* (so ``claude-opus-4-1`` beats ``claude-opus-4``)."""
    best: PriceConfig | None = None
    for price in prices or ():
        if model.startswith(price.prefix) and (best is None or len(price.prefix) > len(best.prefix)):
            best = price
    return best


def _d(value: float) -> Decimal:
    return Decimal(str(value))


def usd(value: float | str | Decimal) -> Decimal:
    """A config amount (a YAML float such as 10.1) as the Decimal the operator wrote, not 10.0999..."""
    return value if isinstance(value, Decimal) else Decimal(str(value))


def mode_multiplier(price: PriceConfig, speed: str | None, inference_geo: str | None) -> Decimal:
    """The factor fast mode and data residency put on every token rate; UnpricedMode if unknown."""
    factor = Decimal(1)
    if speed == "fast":
        if price.fast_multiplier is None:
            raise UnpricedMode(f"fast mode (speed: \"fast\") has no price for models matching {price.prefix!r}; "
                               f"add fast_multiplier to that prices entry, or send the request without speed")
        factor *= _d(price.fast_multiplier)
    if inference_geo and inference_geo != GLOBAL_GEO:
        multiplier = price.inference_geo_multipliers.get(inference_geo)
        if multiplier is None:
            raise UnpricedMode(f"inference_geo {inference_geo!r} has no price for models matching {price.prefix!r}; "
                               f"add it to inference_geo_multipliers of that prices entry")
        factor *= _d(multiplier)
    return factor


def worst_geo_multiplier(price: PriceConfig) -> Decimal:
    """The dearest geo a workspace default could apply to a request that names none."""
    return max([Decimal(1), *(_d(m) for m in price.inference_geo_multipliers.values())])


@dataclass(frozen=True)
class Rates:
    """USD per million tokens of each kind, for one request (tier and modes applied)."""

    input: Decimal
    output: Decimal
    cache_write_5m: Decimal
    cache_write_1h: Decimal
    cache_read: Decimal

    @property
    def dearest_input(self) -> Decimal:
        """The highest rate any prompt token can be billed at (normally the 1-hour cache write)."""
        return max(self.input, self.cache_write_5m, self.cache_write_1h, self.cache_read)


def rates_for(price: PriceConfig, prompt_tokens: int, multiplier: Decimal = Decimal(1)) -> Rates:
    """The token rates of a request whose prompt has *prompt_tokens* tokens."""
    input_rate, output_rate, ratio = _d(price.input), _d(price.output), Decimal(1)
    if price.long_context_threshold is not None and prompt_tokens > price.long_context_threshold:
        if price.long_input is not None:
            ratio = _d(price.long_input) / input_rate if price.input else Decimal(1)
            input_rate = _d(price.long_input)
        if price.long_output is not None:
            output_rate = _d(price.long_output)

    def cache(explicit: float | None, default_factor: str) -> Decimal:
        return _d(explicit) * ratio if explicit is not None else input_rate * Decimal(default_factor)

    return Rates(input=input_rate * multiplier, output=output_rate * multiplier,
                 cache_write_5m=cache(price.cache_write_5m, "1.25") * multiplier,
                 cache_write_1h=cache(price.cache_write_1h, "2") * multiplier,
                 cache_read=cache(price.cache_read, "0.1") * multiplier)


def cost_usd(price: PriceConfig | None, usage: Usage) -> Decimal:
    """What Anthropic bills for *usage* under *price*; a model with no price (a local model) costs 0."""
    if price is None:
        return Decimal(0)
    try:
        multiplier = mode_multiplier(price, usage.speed, usage.inference_geo)
    except UnpricedMode as e:
        # Admission refuses such requests; this is a mode the API applied by itself (say a
        # workspace's default geo). Bill the known part, and say what is missing.
        log.warning("billing at standard rates: %s", e)
        multiplier = Decimal(1)
    r = rates_for(price, usage.prompt_tokens, multiplier)
    tokens = (usage.input_tokens * r.input + usage.output_tokens * r.output
              + usage.cache_creation_input_tokens * r.cache_write_5m
              + usage.cache_creation_1h_input_tokens * r.cache_write_1h
              + usage.cache_read_input_tokens * r.cache_read)
    searches = usage.web_search_requests * _d(price.web_search_per_1000) / THOUSAND
    return tokens / MILLION + searches


def worst_case_cost(price: PriceConfig | None, input_tokens: int, output_tokens: int, *, web_searches: int = 0,
                    speed: str | None = None, inference_geo: str | None = None) -> Decimal:
    """The most a call can be billed when its prompt has at most *input_tokens* tokens and it may
    produce *output_tokens* and run *web_searches* searches.

    Every prompt token is priced at the dearest rate a prompt token can have (the 1-hour cache
    write), in the long-context tier when the bound crosses its threshold, with the mode
    multipliers; a request that names no geo is priced at the dearest geo a workspace default
    could apply. Raises UnpricedMode for a mode the table has no price for.
    """
    if price is None:
        return Decimal(0)
    multiplier = mode_multiplier(price, speed, inference_geo)
    if not inference_geo:
        multiplier *= worst_geo_multiplier(price)
    input_tokens, output_tokens = max(0, input_tokens), max(0, output_tokens)
    r = rates_for(price, input_tokens, multiplier)
    return ((input_tokens * r.dearest_input + output_tokens * r.output) / MILLION
            + max(0, web_searches) * _d(price.web_search_per_1000) / THOUSAND)
