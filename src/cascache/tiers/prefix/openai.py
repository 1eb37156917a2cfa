"""OpenAI: a `prompt_cache_key` so requests sharing a prefix reach the same cache, and retention.

OpenAI caches prompts of 1,024 tokens or more automatically; it routes each
request to a machine by a hash of the prompt's first tokens (typically 256)
combined with `prompt_cache_key`, and a machine holds the prefixes it has
processed (developers.openai.com/api/docs/guides/prompt-caching, read
2026-11-24). The key should therefore be the same for every request that
shares a long prefix, and different where prefixes differ.

The key derived here is a digest of the scope (tenant), the model, the tools
and the *head* of the prompt: the leading system/developer messages, or the
first message when there are none. Deliberately not the whole history before
the newest user turn: that grows with every turn, so each turn of a
conversation would get a new key and could be routed to a machine that never
saw the earlier turns; with the head, every turn of a conversation and every
conversation of an application meet on the same machine (OpenAI spreads a
key that gets too much traffic over more machines by itself).

A caller's own `prompt_cache_key` or `prompt_cache_retention` is never replaced.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from cascache.keys import digest
from cascache.tiers.prefix.base import Note, ShapeContext

_KEY_KIND = "openai-cache-key/v1"
_HEAD_ROLES = frozenset({"system", "developer"})


def prompt_head(messages: Sequence[Any]) -> list[Any]:
    """The leading system/developer messages; the first message when there are none."""
    head: list[Any] = []
    for message in messages:
        if isinstance(message, Mapping) and message.get("role") in _HEAD_ROLES:
            head.append(message)
        else:
            break
    return head or list(messages[:1])


def prompt_cache_key(body: Mapping[str, Any], scope: str) -> str:
    """`cc1-` and 24 hex digits: stable for the scope, model, tools and prompt head; safe to send (a hash)."""
    messages = body.get("messages")
    head = prompt_head(messages) if isinstance(messages, list) else []
    return "cc1-" + digest((_KEY_KIND, scope, body.get("model"), body.get("tools"), head), size=12)


def shape_openai(body: Mapping[str, Any], ctx: ShapeContext) -> tuple[dict[str, Any], list[Note]]:
    """A copy of `body` with a derived `prompt_cache_key` and the configured
    retention, each unless the caller set it."""
    shaped = copy.deepcopy(dict(body))
    notes: list[Note] = []
    if "prompt_cache_key" in shaped:
        notes.append(Note("openai.caller_cache_key", "caller's prompt_cache_key kept"))
    else:
        shaped["prompt_cache_key"] = prompt_cache_key(shaped, ctx.scope)
        notes.append(Note("openai.cache_key", shaped["prompt_cache_key"]))
    retention = ctx.settings.openai_retention
    if retention is not None and "prompt_cache_retention" not in shaped:
        shaped["prompt_cache_retention"] = retention
        notes.append(Note("openai.retention", retention))
    return shaped, notes
