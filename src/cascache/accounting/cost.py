"""What a request cost, what it would have cost with no cache, and the difference. Pure: no IO.

For one upstream call with usage U on a model priced P (USD per 1M tokens):

    uncached  = U.input - cache_read - write_5m - write_1h      (never below 0)
    cost      = uncached*P.input + cache_read*P.cache_read
              + write_5m*P.cache_write_5m + write_1h*P.cache_write_1h + U.output*P.output
    no_cache  = U.input*P.input + U.output*P.output
    saved     = no_cache - cost

`saved` is Tier 2's effect: the discount on cached input minus the surcharge
on cache writes, so a call that only writes the cache has a negative saving
(Anthropic 5m writes cost 1.25x). An unreported cache count (None) is taken
as 0: no saving is ever claimed that the provider did not report.

A Tier 1 hit makes no upstream call: it costs 0 and saves what the original
call would cost today with no cache (`hit_cost`).

When the write total is reported without the 5m/1h split, all of it is priced
as 5-minute writes: that is Anthropic's default TTL, and for providers with a
single write price `cache_write_5m` holds that price.
"""

from __future__ import annotations

from dataclasses import dataclass

from cascache._types import Usage
from cascache.accounting.pricing import FREE, ModelPrice, PriceTable

_PER_TOKEN = 1e-6


@dataclass(frozen=True, slots=True)
class CostBreakdown:
    """Money for one request, in USD."""

    cost_usd: float
    """What was (or will be) billed for this request."""
    no_cache_cost_usd: float
    """What the same tokens would cost with no cache of any tier."""
    saved_usd: float
    """`no_cache_cost_usd - cost_usd`; negative when cache writes cost more than reads saved."""
    priced: bool
    """False when the model is not in the price table: all three figures are then 0
    (self-hosted models are free unless configured; an unknown hosted model shows up here)."""


def _write_split(usage: Usage) -> tuple[int, int]:
    """(5-minute, 1-hour) cache-write tokens, filling a missing half from the total."""
    total = usage.cache_write_tokens
    five, hour = usage.cache_write_5m_tokens, usage.cache_write_1h_tokens
    if five is None and hour is None:
        return total or 0, 0
    if hour is None:
        assert five is not None
        return five, max(0, (total or five) - five)
    if five is None:
        return max(0, (total or hour) - hour), hour
    return five, hour


def _price(model: str, table: PriceTable) -> tuple[ModelPrice, bool]:
    price = table.lookup(model)
    return (FREE, False) if price is None else (price, True)


def _no_cache(usage: Usage, price: ModelPrice) -> float:
    return (usage.input_tokens * price.input + usage.output_tokens * price.output) * _PER_TOKEN


def cost(usage: Usage, model: str, table: PriceTable) -> CostBreakdown:
    """The cost of one upstream call (Tier 2's saving included)."""
    price, priced = _price(model, table)
    read = usage.cache_read_tokens or 0
    five, hour = _write_split(usage)
    uncached = max(0, usage.input_tokens - read - five - hour)
    billed = (
        uncached * price.input
        + read * price.cache_read
        + five * price.cache_write_5m
        + hour * price.cache_write_1h
        + usage.output_tokens * price.output
    ) * _PER_TOKEN
    baseline = _no_cache(usage, price)
    return CostBreakdown(
        cost_usd=billed, no_cache_cost_usd=baseline, saved_usd=baseline - billed, priced=priced
    )


def hit_cost(usage: Usage, model: str, table: PriceTable) -> CostBreakdown:
    """A Tier 1 hit replaying an answer whose original call had `usage`: nothing is billed."""
    price, priced = _price(model, table)
    baseline = _no_cache(usage, price)
    return CostBreakdown(cost_usd=0.0, no_cache_cost_usd=baseline, saved_usd=baseline, priced=priced)
