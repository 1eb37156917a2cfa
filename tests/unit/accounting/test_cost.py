"""Cost, no-cache cost and saving, worked out by hand for each case."""

from __future__ import annotations

import pytest

from cascache._types import Usage
from cascache.accounting import CostBreakdown, default_price_table, hit_cost
from cascache.accounting import cost as cost_of

TABLE = default_price_table()
SONNET = "claude-sonnet-4-5-20250929"  # $3 in, $15 out, read $0.30, 5m write $3.75, 1h write $6 (per 1M)
# No cache: 10,000 prompt tokens and 500 output tokens = 30,000 + 7,500 = $0.0375.
SONNET_BASELINE = 0.0375

CASES: list[tuple[str, str, Usage, float, float]] = [
    (
        "anthropic first call: 9,000-token prefix written for 5m",
        SONNET,
        Usage(
            input_tokens=10_000,
            output_tokens=500,
            cache_read_tokens=0,
            cache_write_tokens=9_000,
            cache_write_5m_tokens=9_000,
            cache_write_1h_tokens=0,
        ),
        (1_000 * 3 + 9_000 * 3.75 + 500 * 15) / 1e6,  # 0.04425: the write costs more than no cache
        SONNET_BASELINE,
    ),
    (
        "anthropic next call: the prefix read",
        SONNET,
        Usage(input_tokens=10_000, output_tokens=500, cache_read_tokens=9_000, cache_write_tokens=0),
        (1_000 * 3 + 9_000 * 0.3 + 500 * 15) / 1e6,  # 0.0132
        SONNET_BASELINE,
    ),
    (
        "anthropic 1h write: only the 1h half reported",
        SONNET,
        Usage(input_tokens=10_000, output_tokens=500, cache_write_tokens=9_000, cache_write_1h_tokens=9_000),
        (1_000 * 3 + 9_000 * 6 + 500 * 15) / 1e6,
        SONNET_BASELINE,
    ),
    (
        "anthropic total write without a split: priced as 5m",
        SONNET,
        Usage(input_tokens=10_000, output_tokens=500, cache_write_tokens=9_000),
        (1_000 * 3 + 9_000 * 3.75 + 500 * 15) / 1e6,
        SONNET_BASELINE,
    ),
    (
        "anthropic 5m half known, the rest of the total is 1h",
        SONNET,
        Usage(input_tokens=10_000, output_tokens=500, cache_write_tokens=9_000, cache_write_5m_tokens=4_000),
        (1_000 * 3 + 4_000 * 3.75 + 5_000 * 6 + 500 * 15) / 1e6,
        SONNET_BASELINE,
    ),
    (
        "openai gpt-4o: cached input at half price",
        "gpt-4o-2024-08-06",
        Usage(input_tokens=2_048, output_tokens=100, cache_read_tokens=1_024),
        (1_024 * 2.5 + 1_024 * 1.25 + 100 * 10) / 1e6,
        (2_048 * 2.5 + 100 * 10) / 1e6,
    ),
    (
        "deepseek: hits at a tenth",
        "deepseek-chat",
        Usage(input_tokens=10_000, output_tokens=1_000, cache_read_tokens=8_000),
        (2_000 * 0.28 + 8_000 * 0.028 + 1_000 * 0.42) / 1e6,
        (10_000 * 0.28 + 1_000 * 0.42) / 1e6,
    ),
    (
        "unreported cache reads claim no saving",
        "gpt-4o",
        Usage(input_tokens=2_048, output_tokens=100, cache_read_tokens=None),
        (2_048 * 2.5 + 100 * 10) / 1e6,
        (2_048 * 2.5 + 100 * 10) / 1e6,
    ),
    (
        "inconsistent counts never bill negative uncached tokens",
        "gpt-4o",
        Usage(input_tokens=100, output_tokens=0, cache_read_tokens=150),
        150 * 1.25 / 1e6,
        100 * 2.5 / 1e6,
    ),
]


@pytest.mark.parametrize(
    ("model", "usage", "billed", "baseline"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_cost(model: str, usage: Usage, billed: float, baseline: float) -> None:
    result = cost_of(usage, model, TABLE)
    assert result.priced
    assert result.cost_usd == pytest.approx(billed)
    assert result.no_cache_cost_usd == pytest.approx(baseline)
    assert result.saved_usd == pytest.approx(baseline - billed)


def test_a_cache_write_has_a_negative_saving_and_a_read_a_positive_one() -> None:
    write = cost_of(CASES[0][2], SONNET, TABLE)
    read = cost_of(CASES[1][2], SONNET, TABLE)
    assert write.saved_usd == pytest.approx(-0.00675)
    assert read.saved_usd == pytest.approx(0.0243)


def test_tier1_hit_costs_nothing_and_saves_the_whole_original_call() -> None:
    original = CASES[1][2]  # the original call read its prefix from cache; a hit saves the whole call anyway
    hit = hit_cost(original, SONNET, TABLE)
    assert (hit.cost_usd, hit.priced) == (0.0, True)
    assert hit.no_cache_cost_usd == pytest.approx(SONNET_BASELINE)
    assert hit.saved_usd == pytest.approx(SONNET_BASELINE)


@pytest.mark.parametrize("model", ["smollm2-135m-instruct", "gpt-5.4"])
def test_unpriced_models_cost_zero_and_say_so(model: str) -> None:
    usage = Usage(input_tokens=1_000, output_tokens=100, cache_read_tokens=500)
    assert cost_of(usage, model, TABLE) == CostBreakdown(0.0, 0.0, 0.0, priced=False)
    assert hit_cost(usage, model, TABLE) == CostBreakdown(0.0, 0.0, 0.0, priced=False)
