"""Prices per model, and the one rule that finds a model's price by its name. Pure: no IO.

A model name is matched against the table's keys by *prefix at a name
boundary*: the key must be the whole name, or be followed by one of
`-`, `@`, `:`, `[`. So `claude-sonnet-4` prices `claude-sonnet-4-5-20250929`
and `gpt-4o` prices `gpt-4o-2024-08-06`, but `gpt-5` never prices `gpt-5.4`
(a different model with a different price): an unknown model is reported as
unpriced instead of being priced wrongly. The longest matching key wins, so
`gpt-4o-mini` beats `gpt-4o`.

Before matching, names are normalised: lower case; routing prefixes dropped
(`anthropic/claude-...` from OpenRouter/LiteLLM, `us.anthropic.claude-...` and
`anthropic.claude-...` from Bedrock); and for Claude names a dot between
version digits becomes a dash (`claude-sonnet-4.5` -> `claude-sonnet-4-5`),
because gateways spell the same model both ways.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

_BOUNDARY = frozenset("-@:[")
_BEDROCK_PREFIX = re.compile(r"^(?:[a-z]{2,4}\.)?anthropic\.")
_CLAUDE_VERSION_DOT = re.compile(r"(?<=\d)\.(?=\d)")


def normalize_model(model: str) -> str:
    """The form of a model name that table keys are written in (see the module docstring)."""
    name = model.strip().lower().rsplit("/", 1)[-1]
    name = _BEDROCK_PREFIX.sub("", name)
    if name.startswith("claude"):
        name = _CLAUDE_VERSION_DOT.sub("-", name)
    return name


def match_model(model: str, keys: Iterable[str]) -> str | None:
    """The longest key that names `model` or a family it belongs to, else None."""
    name = normalize_model(model)
    best: str | None = None
    for key in keys:
        names_it = name == key or (name.startswith(key) and name[len(key)] in _BOUNDARY)
        if names_it and (best is None or len(key) > len(best)):
            best = key
    return best


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD per one million tokens of each kind."""

    input: float
    """Uncached prompt tokens."""
    output: float
    cache_read: float
    """Prompt tokens served from the provider's prefix cache."""
    cache_write_5m: float
    """Prompt tokens written to the cache with the default (5-minute) TTL; for
    providers with a single write price (OpenAI GPT-5.6+) that price; for
    providers with no write surcharge (OpenAI before GPT-5.6, DeepSeek) equal to `input`."""
    cache_write_1h: float
    """Prompt tokens written with Anthropic's 1-hour TTL."""
    source: str = field(default="", compare=False)
    """Where the figures were read, and when (not used in any arithmetic)."""

    @classmethod
    def anthropic(
        cls,
        input: float,
        output: float,
        *,
        read: float = 0.1,
        write_5m: float = 1.25,
        write_1h: float = 2.0,
        source: str = "",
    ) -> ModelPrice:
        """Anthropic prices from the base input price and the cache multipliers
        (reads 0.1x, 5-minute writes 1.25x, 1-hour writes 2x unless told otherwise)."""
        return cls(input, output, input * read, input * write_5m, input * write_1h, source)

    @classmethod
    def cached_input(cls, input: float, output: float, cached: float, *, source: str = "") -> ModelPrice:
        """A provider that discounts cache reads and charges nothing extra for writes (OpenAI, DeepSeek)."""
        return cls(input, output, cached, input, input, source)


#: Self-hosted and unknown models: no money changes hands for tokens.
FREE = ModelPrice(0.0, 0.0, 0.0, 0.0, 0.0, "free: self-hosted or unpriced")

_ABSOLUTE = ("input", "output", "cache_read", "cache_write_5m", "cache_write_1h")
_MULTIPLIERS = {
    "cache_read_multiplier": "cache_read",
    "cache_write_5m_multiplier": "cache_write_5m",
    "cache_write_1h_multiplier": "cache_write_1h",
}


def price_from_config(name: str, data: Mapping[str, Any]) -> ModelPrice:
    """One configured price: `input` and `output` are required; cache prices are
    given absolutely (`cache_read`...) or as multipliers of `input`
    (`cache_read_multiplier`...). A cache price given neither way defaults to
    `input` (no discount, no surcharge): an unknown discount is never claimed
    as a saving."""
    unknown = set(data) - set(_ABSOLUTE) - set(_MULTIPLIERS) - {"source"}
    if unknown:
        raise ValueError(f"pricing.{name}: unknown keys {sorted(unknown)}")
    for required in ("input", "output"):
        if required not in data:
            raise ValueError(f"pricing.{name}: '{required}' is required")
    values: dict[str, float] = {}
    for key in _ABSOLUTE:
        if key in data:
            values[key] = _non_negative(name, key, data[key])
    for key, target in _MULTIPLIERS.items():
        if key in data and target not in values:
            values[target] = values["input"] * _non_negative(name, key, data[key])
    for target in _MULTIPLIERS.values():
        values.setdefault(target, values["input"])
    return ModelPrice(**values, source=str(data.get("source", "config")))


def _non_negative(name: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"pricing.{name}.{key}: must be a non-negative number, got {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class PriceTable:
    """Prices by model-name prefix (see `match_model`)."""

    prices: Mapping[str, ModelPrice]

    def lookup(self, model: str) -> ModelPrice | None:
        key = match_model(model, self.prices)
        return None if key is None else self.prices[key]

    def merged(self, overrides: Mapping[str, ModelPrice | Mapping[str, Any]]) -> PriceTable:
        """This table with `overrides` added or replacing entries (keys are normalised like model names)."""
        prices = dict(self.prices)
        for name, value in overrides.items():
            price = value if isinstance(value, ModelPrice) else price_from_config(name, value)
            prices[normalize_model(name)] = price
        return PriceTable(prices)

    @classmethod
    def empty(cls) -> PriceTable:
        """For self-hosted upstreams: every model is free unless configured."""
        return cls({})
