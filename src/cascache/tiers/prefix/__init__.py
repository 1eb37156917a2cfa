"""Tier 2: shape a request so the provider's (or engine's) prefix cache can serve it.

Shaping never changes what the model is asked, only how the provider caches
it, so it is on by default. Everything here is pure except the optional
`ReuseTracker` (in-memory reuse statistics for the 1-hour TTL choice): the
input body is never mutated, and a new body comes back with notes saying what
was done and a lint report of volatile content in the cacheable prefix.

`shape` runs, in order:
1. canonical tool JSON (`canonical.py`), for every provider;
2. the provider's own shaper, chosen from `SHAPERS` by provider kind:
   - "anthropic": `cache_control` breakpoints and TTLs (`anthropic.py`)
   - "openai": `prompt_cache_key`, `prompt_cache_retention` (`openai.py`)
   - "openai_compatible": nothing more (unknown fields may be rejected there)
   - "llamacpp": `cache_prompt`; "vllm": per-scope `cache_salt` (`engines.py`)
3. the prefix lint (`lint.py`), on the shaped body.

A new provider kind is one shaper function and one line in `SHAPERS`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from cascache.tiers.prefix.anthropic import shape_anthropic
from cascache.tiers.prefix.base import Note, OpenAIRetention, PrefixSettings, ShapeContext
from cascache.tiers.prefix.canonical import canonical_tools
from cascache.tiers.prefix.engines import shape_llamacpp, shape_vllm
from cascache.tiers.prefix.lint import LintFinding, LintReport, layout_of, lint_prefix
from cascache.tiers.prefix.openai import shape_openai
from cascache.tiers.prefix.tokens import TextTokens, approx_text_tokens
from cascache.tiers.prefix.ttl import ReuseTracker

Shaper = Callable[[Mapping[str, Any], ShapeContext], tuple[dict[str, Any], list[Note]]]


def _unchanged(body: Mapping[str, Any], ctx: ShapeContext) -> tuple[dict[str, Any], list[Note]]:
    return copy.deepcopy(dict(body)), []


SHAPERS: Mapping[str, Shaper] = MappingProxyType(
    {
        "anthropic": shape_anthropic,
        "openai": shape_openai,
        "openai_compatible": _unchanged,
        "llamacpp": shape_llamacpp,
        "vllm": shape_vllm,
    }
)


@dataclass(frozen=True, slots=True)
class ShapedRequest:
    body: dict[str, Any]
    """The body to send upstream."""
    notes: tuple[Note, ...]
    """What shaping did or declined to do, in order."""
    lint: LintReport | None
    """Volatile content in the cacheable prefix; None when the lint is off."""


def shape(
    provider: str,
    body: Mapping[str, Any],
    *,
    scope: str,
    settings: PrefixSettings | None = None,
    tracker: ReuseTracker | None = None,
    now: float = 0.0,
    count_tokens: TextTokens = approx_text_tokens,
) -> ShapedRequest:
    """Shape `body` (the provider's own JSON) for the prefix cache of `provider`."""
    settings = settings if settings is not None else PrefixSettings()
    try:
        shaper = SHAPERS[provider]
    except KeyError:
        raise ValueError(f"unknown provider kind {provider!r}; known: {sorted(SHAPERS)}") from None
    shaped: dict[str, Any] = copy.deepcopy(dict(body))
    notes: list[Note] = []
    if settings.enabled:
        tools = shaped.get("tools")
        if settings.canonical_tools and isinstance(tools, list) and tools:
            canonical = canonical_tools(tools, sort_properties=settings.sort_schema_properties)
            if _key_orders(canonical) != _key_orders(tools):
                notes.append(
                    Note("tools.canonical", f"key order made canonical in {len(tools)} tool definitions")
                )
            shaped["tools"] = canonical
        ctx = ShapeContext(
            scope=scope, settings=settings, tracker=tracker, now=now, count_tokens=count_tokens
        )
        shaped, provider_notes = shaper(shaped, ctx)
        notes.extend(provider_notes)
    report = lint_prefix(shaped, layout_of(provider), count_tokens) if settings.lint else None
    return ShapedRequest(body=shaped, notes=tuple(notes), lint=report)


def _key_orders(value: Any) -> Any:
    """The key order at every depth (equal dicts with different orders compare equal in Python)."""
    if isinstance(value, Mapping):
        return [(key, _key_orders(item)) for key, item in value.items()]
    if isinstance(value, list):
        return [_key_orders(item) for item in value]
    return None


__all__ = [
    "SHAPERS",
    "LintFinding",
    "LintReport",
    "Note",
    "OpenAIRetention",
    "PrefixSettings",
    "ReuseTracker",
    "ShapeContext",
    "ShapedRequest",
    "Shaper",
    "shape",
]
