"""Anthropic's minimum cacheable prompt length per model.

A breakpoint whose prefix (tools + system + messages up to and including the
marked block) is shorter than the model's minimum is silently not cached: the
request succeeds, nothing is written or read. Placing one is harmless but
wasted, so breakpoints below the minimum are not placed.

Sources (read 2026-11-24, stored copies):
- platform.claude.com prompt-caching docs, as quoted in anthropics/anthropic-sdk-python
  issue #1194: 4096 for Opus 4.6 and 4.5; 1024 for Sonnet 4.6, Sonnet 4.5, Opus 4.1,
  Opus 4, Sonnet 4, Sonnet 3.7; 4096 for Haiku 4.5; 2048 for Haiku 3.5 and Haiku 3.
- docs.litellm.ai/docs/completion/prompt_caching (updated 2026-10-07) and
  dev.to "Claude's prompt cache fails silently below 1,024 tokens" (2026): 512 for
  Opus 5, Fable 5, Mythos 5; 1024 for Sonnet 5 and Opus 4.8; 2048 for Opus 4.7.
Conflict: docs.orq.ai lists Sonnet 4.6 at 2048, and issue #1194 reports caching
only from ~2048 on Sonnet 4.6 in practice. The official 1024 is kept: erring
low costs nothing (a breakpoint that is not cached is not billed as a write).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from cascache.accounting.pricing import match_model, normalize_model

#: For a Claude model this table does not know (a newer family): the most common minimum.
DEFAULT_MIN_TOKENS = 1024

ANTHROPIC_MIN_TOKENS: Mapping[str, int] = MappingProxyType(
    {
        "claude-opus-5": 512,
        "claude-fable-5": 512,
        "claude-mythos-5": 512,
        "claude-sonnet-5": 1024,
        "claude-opus-4-8": 1024,
        "claude-opus-4-7": 2048,
        "claude-opus-4-6": 4096,
        "claude-opus-4-5": 4096,
        "claude-opus-4-1": 1024,
        "claude-opus-4": 1024,
        "claude-sonnet-4": 1024,
        "claude-3-7-sonnet": 1024,
        "claude-3-5-sonnet": 1024,
        "claude-3-opus": 1024,
        "claude-haiku-4-5": 4096,
        "claude-3-5-haiku": 2048,
        "claude-3-haiku": 2048,
    }
)


def min_cacheable_tokens(model: str, overrides: Mapping[str, int] | None = None) -> int:
    """The minimum for `model`. `overrides` replace or extend the table; as in the
    price table, the longest key naming the model wins; no key: the default."""
    table: dict[str, int] = dict(ANTHROPIC_MIN_TOKENS)
    table.update({normalize_model(name): tokens for name, tokens in (overrides or {}).items()})
    key = match_model(model, table)
    return DEFAULT_MIN_TOKENS if key is None else table[key]
