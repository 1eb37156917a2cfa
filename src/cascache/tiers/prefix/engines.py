"""Self-hosted engines: make prefix reuse happen, and keep it inside one tenant.

- llama.cpp server: `cache_prompt: true` asks the slot to reuse the KV cache of
  the longest common prefix with its previous prompt. It defaults to true in
  current servers, but older ones (and forks, e.g. ik_llama.cpp before its
  PR #465) dropped the cache unless it was asked for, so it is always sent.
  llama.cpp has no per-tenant isolation of a slot's cache: tenants that share
  a server can observe each other's prefixes through timing. Route tenants to
  separate slots or servers (Tier 3) where that matters.
- vLLM: `cache_salt` is mixed into the KV block hashes, so requests reuse
  each other's blocks only when prompt *and* salt match, and a salt must be a
  non-empty string (docs.vllm.ai "Automatic Prefix Caching"; the same contract
  in docs.wandb.ai "Prefix caching"; read 2026-11-24). The salt is a hash of
  the scope: one tenant's blocks are never reused for another, and the scope
  itself never leaves the gateway.

A value the caller set is never replaced.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from cascache.keys import digest
from cascache.tiers.prefix.base import Note, ShapeContext

_SALT_KIND = "vllm-cache-salt/v1"


def cache_salt(scope: str) -> str:
    """The vLLM salt for a scope: a stable, irreversible hash."""
    return digest((_SALT_KIND, scope), size=16)


def shape_llamacpp(body: Mapping[str, Any], ctx: ShapeContext) -> tuple[dict[str, Any], list[Note]]:
    shaped = copy.deepcopy(dict(body))
    if "cache_prompt" in shaped:
        return shaped, [
            Note("llamacpp.caller_cache_prompt", f"caller's cache_prompt={shaped['cache_prompt']!r} kept")
        ]
    shaped["cache_prompt"] = True
    return shaped, [Note("llamacpp.cache_prompt", "cache_prompt=true")]


def shape_vllm(body: Mapping[str, Any], ctx: ShapeContext) -> tuple[dict[str, Any], list[Note]]:
    shaped = copy.deepcopy(dict(body))
    if "cache_salt" in shaped:
        return shaped, [Note("vllm.caller_cache_salt", "caller's cache_salt kept")]
    shaped["cache_salt"] = cache_salt(ctx.scope)
    return shaped, [Note("vllm.cache_salt", "per-scope cache_salt")]
