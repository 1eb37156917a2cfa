"""Minimum cacheable prompt length per Claude model (sources in limits.py)."""

from __future__ import annotations

import pytest

from cascache.tiers.prefix.limits import DEFAULT_MIN_TOKENS, min_cacheable_tokens


@pytest.mark.parametrize(
    ("model", "minimum"),
    [
        ("claude-sonnet-4-5-20250929", 1024),
        ("claude-sonnet-4-6", 1024),
        ("claude-sonnet-4-20250514", 1024),
        ("claude-opus-4-1-20250805", 1024),
        ("claude-opus-4-20250514", 1024),
        ("claude-opus-4-5-20251101", 4096),
        ("claude-opus-4-6", 4096),
        ("claude-opus-4-7", 2048),
        ("claude-opus-4-8", 1024),
        ("claude-opus-5", 512),
        ("claude-haiku-4-5-20251001", 4096),
        ("claude-3-5-haiku-20241022", 2048),
        ("claude-3-haiku-20240307", 2048),
        ("claude-3-7-sonnet-20250219", 1024),
        ("anthropic/claude-haiku-4.5", 4096),
        ("us.anthropic.claude-opus-4-6-v1:0", 4096),
        ("claude-next-gen", DEFAULT_MIN_TOKENS),
    ],
)
def test_min_cacheable_tokens(model: str, minimum: int) -> None:
    assert min_cacheable_tokens(model) == minimum


def test_overrides_replace_entries_and_more_specific_ones_win() -> None:
    overrides = {"claude-sonnet-4-6": 2048, "claude-haiku-4-5": 1024}
    assert min_cacheable_tokens("claude-sonnet-4-6", overrides) == 2048
    assert min_cacheable_tokens("claude-sonnet-4-5", overrides) == 1024
    assert min_cacheable_tokens("claude-haiku-4-5-20251001", overrides) == 1024
