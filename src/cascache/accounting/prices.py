"""Default prices (USD per 1M tokens), each with where and when it was read.

All figures were read on 2026-11-24 from stored copies of the pages named
below (the live pages could not be reached from here). Prices change: every
entry can be replaced from config (`PriceTable.merged`), and a model missing
here is reported as unpriced rather than guessed.

Keys are model-name prefixes (see `pricing.match_model`): `claude-sonnet-4`
covers Sonnet 4, 4.5 and 4.6 and their dated snapshots; a newer version that
is priced differently needs its own, longer key.
"""

from __future__ import annotations

from types import MappingProxyType

from cascache.accounting.pricing import ModelPrice, PriceTable

_READ = "read 2026-11-24"
_CLAUDE = f"platform.claude.com/docs/en/about-claude/pricing, model pricing table ({_READ})"
_CLAUDE_ZH = f"platform.claude.com/docs/zh-CN/about-claude/pricing, model pricing table ({_READ})"
_SONNET_5 = f"platform.claude.com/docs/zh-CN/models/sonnet-5-5/overview, pricing ({_READ})"
_OPENAI = f"platform.openai.com/docs/pricing as mirrored by the openai_responses package pricing.ex ({_READ})"
_OPENAI_MODEL = "developers.openai.com/api/docs/models/{} ({})"
_DEEPSEEK = (
    "DeepSeek-V3.2 prices 'updated Dec 9, 2025' per api-docs.deepseek.com, as recorded in "
    f"RooCodeInc/Roo-Code packages/types/src/providers/deepseek.ts ({_READ}); the stored copy of "
    "api-docs.deepseek.com/quick_start/pricing-details-usd still shows the older V3 prices "
    "(0.27 miss / 0.07 hit / 1.10 output)"
)

DEFAULT_PRICES = MappingProxyType(
    {
        # --- Anthropic: cache reads 0.1x, 5-minute writes 1.25x, 1-hour writes 2x the input price,
        # except where a row says otherwise.
        "claude-opus-5": ModelPrice.anthropic(5.0, 25.0, source=_CLAUDE),
        "claude-opus-4-8": ModelPrice.anthropic(5.0, 25.0, source=_CLAUDE),
        "claude-opus-4-7": ModelPrice.anthropic(5.0, 25.0, source=_CLAUDE),
        "claude-opus-4-6": ModelPrice.anthropic(5.0, 25.0, source=_CLAUDE),
        "claude-opus-4-5": ModelPrice.anthropic(5.0, 25.0, source=_CLAUDE),
        "claude-opus-4-1": ModelPrice.anthropic(15.0, 75.0, source=_CLAUDE),
        "claude-opus-4": ModelPrice.anthropic(15.0, 75.0, source=_CLAUDE),
        "claude-sonnet-4": ModelPrice.anthropic(3.0, 15.0, source=_CLAUDE_ZH),
        "claude-3-7-sonnet": ModelPrice.anthropic(3.0, 15.0, source=_CLAUDE_ZH),
        "claude-sonnet-5": ModelPrice.anthropic(2.0, 10.0, source=_SONNET_5),
        # Sonnet 5.5: the official page read shows reads at $0.20 (0.1x); two independent
        # trackers (kurofune/claudit v1.9.2, TheKrush/PromptFuel v1.0.23) report a cut to
        # $0.10 (0.05x) effective 2026-10-07. The later figure is used.
        "claude-sonnet-5-5": ModelPrice.anthropic(
            2.0, 10.0, read=0.05, source=f"{_SONNET_5}; read cut per trackers"
        ),
        "claude-haiku-4-5": ModelPrice.anthropic(1.0, 5.0, source=_CLAUDE_ZH),
        "claude-3-5-haiku": ModelPrice.anthropic(0.8, 4.0, source=_CLAUDE_ZH),
        "claude-3-haiku": ModelPrice(0.25, 1.25, 0.03, 0.30, 0.50, source=_CLAUDE_ZH),
        "claude-fable-5": ModelPrice.anthropic(10.0, 50.0, source=_CLAUDE),
        "claude-fable-5-1": ModelPrice.anthropic(10.0, 50.0, read=0.025, source=_CLAUDE),
        # --- OpenAI: no write surcharge before the GPT-5.6 family; cached input is 0.5x
        # (GPT-4o, o1, o3-mini), 0.25x (GPT-4.1, o3, o4-mini) or 0.1x (GPT-5) of input.
        "gpt-4o": ModelPrice.cached_input(2.50, 10.00, 1.25, source=_OPENAI),
        "gpt-4o-mini": ModelPrice.cached_input(0.15, 0.60, 0.075, source=_OPENAI),
        "gpt-4.1": ModelPrice.cached_input(2.00, 8.00, 0.50, source=_OPENAI),
        "gpt-4.1-mini": ModelPrice.cached_input(0.40, 1.60, 0.10, source=_OPENAI),
        "gpt-4.1-nano": ModelPrice.cached_input(0.10, 0.40, 0.025, source=_OPENAI),
        "gpt-5": ModelPrice.cached_input(1.25, 10.00, 0.125, source=_OPENAI_MODEL.format("gpt-5", _READ)),
        "gpt-5.1": ModelPrice.cached_input(1.25, 10.00, 0.125, source=_OPENAI_MODEL.format("gpt-5.1", _READ)),
        "gpt-5-mini": ModelPrice.cached_input(
            0.25, 2.00, 0.025, source=_OPENAI_MODEL.format("gpt-5-mini", _READ)
        ),
        "gpt-5-nano": ModelPrice.cached_input(
            0.05, 0.40, 0.005, source=_OPENAI_MODEL.format("gpt-5-nano", _READ)
        ),
        "o1": ModelPrice.cached_input(15.00, 60.00, 7.50, source=_OPENAI),
        "o3": ModelPrice.cached_input(2.00, 8.00, 0.50, source=_OPENAI),
        "o3-mini": ModelPrice.cached_input(1.10, 4.40, 0.55, source=_OPENAI),
        "o4-mini": ModelPrice.cached_input(1.10, 4.40, 0.275, source=_OPENAI),
        # --- DeepSeek: cache hits discounted, misses at the input price, no write charge.
        "deepseek-chat": ModelPrice.cached_input(0.28, 0.42, 0.028, source=_DEEPSEEK),
        "deepseek-reasoner": ModelPrice.cached_input(0.28, 0.42, 0.028, source=_DEEPSEEK),
    }
)


def default_price_table() -> PriceTable:
    """The built-in table; config overrides go through `PriceTable.merged`."""
    return PriceTable(DEFAULT_PRICES)
