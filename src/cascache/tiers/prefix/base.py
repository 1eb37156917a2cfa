"""The records every request shaper shares: settings, the per-request context, notes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from cascache.tiers.prefix.tokens import TextTokens, approx_text_tokens
from cascache.tiers.prefix.ttl import ReuseTracker

OpenAIRetention = Literal["in_memory", "24h"]


@dataclass(frozen=True, slots=True)
class PrefixSettings:
    """Tier 2 switches; `config.py` mirrors these as `[prefix]`."""

    enabled: bool = True
    """Shape requests at all. Shaping never changes an answer, so it is on by default."""
    canonical_tools: bool = True
    """Rewrite tool definitions with a stable key order (see `canonical.py`)."""
    sort_schema_properties: bool = False
    """Also sort the property names inside `properties`. Off: the model sees
    properties in the caller's order, and OpenAI structured outputs emit keys
    in schema order, so sorting them could change the order of an answer's keys."""
    lint: bool = True
    """Report volatile content in the cacheable prefix (never rewrites it)."""
    anthropic_breakpoints: bool = True
    """Place `cache_control` breakpoints when the caller placed none."""
    anthropic_auto: bool = False
    """Use Anthropic's top-level automatic caching instead of block breakpoints."""
    one_hour_ttl: bool = True
    """Allow the 1-hour TTL where the observed reuse interval pays for it (see `ttl.py`)."""
    openai_retention: OpenAIRetention | None = None
    """`prompt_cache_retention` to send to OpenAI when the caller sent none; None sends nothing."""
    min_tokens: Mapping[str, int] = field(default_factory=dict)
    """Overrides of the minimum cacheable prompt length per model prefix (see `limits.py`)."""


@dataclass(frozen=True, slots=True)
class ShapeContext:
    """Everything a shaper may use besides the body."""

    scope: str
    """The tenant (and user) the request runs for: keys, salts and reuse
    statistics are per scope, never shared between scopes."""
    settings: PrefixSettings
    tracker: ReuseTracker | None = None
    """Reuse observations for the 1-hour TTL decision; None: always 5 minutes."""
    now: float = 0.0
    """Unix time of the request (the tracker's clock)."""
    count_tokens: TextTokens = approx_text_tokens


@dataclass(frozen=True, slots=True)
class Note:
    """One thing a shaper did or declined to do; `code` is stable (a metric label), `detail` is for people."""

    code: str
    detail: str
