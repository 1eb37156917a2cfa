"""Model names find their price by prefix at a name boundary; config can add and replace prices."""

from __future__ import annotations

from typing import Any

import pytest

from cascache.accounting import (
    DEFAULT_PRICES,
    ModelPrice,
    PriceTable,
    default_price_table,
    match_model,
    normalize_model,
    price_from_config,
)


@pytest.mark.parametrize(
    ("model", "normalized"),
    [
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5-20250929"),
        ("Claude-Sonnet-4-5", "claude-sonnet-4-5"),
        ("anthropic/claude-sonnet-4.5", "claude-sonnet-4-5"),
        ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5-20250929-v1:0"),
        ("anthropic.claude-3-haiku-20240307-v1:0", "claude-3-haiku-20240307-v1:0"),
        ("openai/gpt-4.1-mini", "gpt-4.1-mini"),  # dots stay in non-Claude names
        ("gpt-5.1", "gpt-5.1"),
    ],
)
def test_normalize_model(model: str, normalized: str) -> None:
    assert normalize_model(model) == normalized


KEYS = (
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-5",
    "claude-sonnet-4",
    "claude-opus-4",
    "claude-opus-4-5",
    "o3",
    "o3-mini",
)


@pytest.mark.parametrize(
    ("model", "key"),
    [
        ("gpt-4o", "gpt-4o"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),  # the longest key wins
        ("gpt-5-2025-08-07", "gpt-5"),
        ("gpt-5.4", None),  # a different model: unpriced, never priced as gpt-5
        ("gpt-4o1", None),  # no boundary after the key
        ("claude-sonnet-4-6", "claude-sonnet-4"),
        ("claude-sonnet-4-5@20250929", "claude-sonnet-4"),
        ("claude-opus-4-5-20251101", "claude-opus-4-5"),
        ("claude-opus-4-1-20250805", "claude-opus-4"),
        ("o3-mini-high", "o3-mini"),
        ("o3", "o3"),
        ("smollm2-135m-instruct", None),
        ("", None),
    ],
)
def test_match_model(model: str, key: str | None) -> None:
    assert match_model(model, KEYS) == key


@pytest.mark.parametrize(
    ("model", "input_price", "cache_read"),
    [
        ("claude-sonnet-4-5-20250929", 3.0, 0.3),
        ("claude-sonnet-4-6", 3.0, 0.3),
        ("claude-opus-4-1-20250805", 15.0, 1.5),
        ("claude-opus-4-20250514", 15.0, 1.5),
        ("claude-opus-4-6", 5.0, 0.5),
        ("claude-haiku-4-5-20251001", 1.0, 0.1),
        ("claude-sonnet-5-5", 2.0, 0.1),
        ("gpt-4o-2024-11-20", 2.5, 1.25),  # 0.5x
        ("gpt-4o-mini", 0.15, 0.075),
        ("gpt-4.1-2025-04-14", 2.0, 0.5),  # 0.25x
        ("gpt-4.1-nano", 0.10, 0.025),
        ("gpt-5", 1.25, 0.125),  # 0.1x
        ("gpt-5-mini-2025-08-07", 0.25, 0.025),
        ("gpt-5-nano", 0.05, 0.005),
        ("o4-mini", 1.10, 0.275),
        ("deepseek-chat", 0.28, 0.028),
    ],
)
def test_default_table_prices_real_model_ids(model: str, input_price: float, cache_read: float) -> None:
    price = default_price_table().lookup(model)
    assert price is not None
    assert price.input == pytest.approx(input_price)
    assert price.cache_read == pytest.approx(cache_read)


def test_anthropic_write_multipliers_are_1_25x_and_2x() -> None:
    price = default_price_table().lookup("claude-sonnet-4-5")
    assert price is not None
    assert (price.cache_write_5m, price.cache_write_1h) == pytest.approx((3.75, 6.0))


def test_openai_and_deepseek_writes_cost_the_input_price() -> None:
    for model in ("gpt-4o", "gpt-5", "deepseek-chat"):
        price = default_price_table().lookup(model)
        assert price is not None
        assert price.cache_write_5m == price.input == price.cache_write_1h


def test_every_default_entry_names_its_source_and_date() -> None:
    for key, price in DEFAULT_PRICES.items():
        assert "2026" in price.source, key
        assert key == normalize_model(key), key  # keys are written in normalised form


def test_unknown_and_self_hosted_models_are_unpriced() -> None:
    assert default_price_table().lookup("smollm2-135m-instruct") is None
    assert PriceTable.empty().lookup("gpt-4o") is None


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"input": 1, "output": 2}, ModelPrice(1.0, 2.0, 1.0, 1.0, 1.0)),
        ({"input": 2, "output": 8, "cache_read": 0.5}, ModelPrice(2.0, 8.0, 0.5, 2.0, 2.0)),
        (
            {
                "input": 4,
                "output": 8,
                "cache_read_multiplier": 0.1,
                "cache_write_5m_multiplier": 1.25,
                "cache_write_1h_multiplier": 2,
            },
            ModelPrice(4.0, 8.0, 0.4, 5.0, 8.0),
        ),
        (
            {"input": 4, "output": 8, "cache_read": 1, "cache_read_multiplier": 0.1},
            ModelPrice(4.0, 8.0, 1.0, 4.0, 4.0),
        ),
    ],
)
def test_price_from_config(data: dict[str, Any], expected: ModelPrice) -> None:
    assert price_from_config("m", data) == expected


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"input": 1}, "'output' is required"),
        ({"input": 1, "output": 2, "cache_reads": 0.1}, "unknown keys ['cache_reads']"),
        ({"input": -1, "output": 2}, "non-negative"),
        ({"input": True, "output": 2}, "non-negative"),
        ({"input": "1", "output": 2}, "non-negative"),
    ],
)
def test_price_from_config_rejects_bad_entries(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        price_from_config("m", data)


def test_merged_overrides_add_and_replace_without_touching_the_original() -> None:
    base = default_price_table()
    merged = base.merged({"gpt-4o": {"input": 1, "output": 1}, "Local-Llama": {"input": 0.1, "output": 0.2}})
    assert merged.lookup("gpt-4o-2024-08-06") == ModelPrice(1.0, 1.0, 1.0, 1.0, 1.0)
    assert merged.lookup("local-llama-3b") == ModelPrice(0.1, 0.2, 0.1, 0.1, 0.1)
    original = base.lookup("gpt-4o")
    assert original is not None and original.input == 2.5
    assert base.lookup("local-llama-3b") is None
