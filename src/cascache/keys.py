"""Canonical JSON, fingerprints, namespaces and scopes. Pure: no IO.

Every key is the hash of a *structured tuple* serialised as canonical JSON
(sorted keys, no whitespace), never of concatenated strings, so that two
different requests cannot produce the same key by shifting text between
fields. The first element of each tuple names the key kind and its version;
bumping it invalidates every key of that kind at once.

What changes the answer, and so is in the keys:
- provider (API shape) and model;
- every message, system and developer messages included, in order;
- every body parameter except the ones listed in the provider adapter as not
  changing the answer (`stream`, `stream_options`, `user`, `metadata`...);
  unknown parameters are *in* the key: a new field never causes a wrong hit;
- the scope (tenant, and user when personalised) and the namespace version.

The semantic namespace holds the same inputs minus the text that is compared
semantically (the last user message). The exact fingerprint additionally
holds that text. Both include the scope, and the namespace also includes the
embedder's name so vectors of different models never meet.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from cascache._types import ChatRequest, Fingerprint, Namespace, Scope

_EXACT_KEY_KIND = "exact/v1"
_SEMANTIC_KEY_KIND = "semantic/v1"
_ANONYMOUS_TENANT = "anonymous"


def canonical_json(value: Any) -> bytes:
    """Serialise `value` so equal values always give equal bytes."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)


def digest(parts: tuple[Any, ...], size: int = 16) -> str:
    """Hex blake2b of a structured tuple.

    blake2b rather than a faster non-cryptographic hash: keys separate tenants,
    so a crafted collision would be a cross-tenant leak.
    """
    return hashlib.blake2b(canonical_json(parts), digest_size=size).hexdigest()


def tenant_id(api_key: str | None) -> str:
    """A stable, irreversible id for the caller's API key (the key itself is never stored)."""
    if not api_key:
        return _ANONYMOUS_TENANT
    return digest(("tenant", api_key), size=8)


def make_scope(api_key: str | None, user: str | None) -> Scope:
    """Tenant, plus the end user when the request names one."""
    tenant = tenant_id(api_key)
    if user:
        return Scope(f"tenant:{tenant}/user:{digest(('user', tenant, user), size=8)}")
    return Scope(f"tenant:{tenant}")


@dataclass(frozen=True, slots=True)
class RequestKeys:
    fingerprint: Fingerprint
    namespace: Namespace | None
    """None when the request has no semantically comparable text."""
    scope: Scope
    version: str


def request_keys(request: ChatRequest, scope: Scope, version: str, embedder_name: str) -> RequestKeys:
    """The exact fingerprint and the semantic namespace of a request."""
    messages = list(request.messages)
    fingerprint = Fingerprint(
        digest((_EXACT_KEY_KIND, request.provider, request.model, messages, request.params, scope, version))
    )
    namespace: Namespace | None = None
    if request.semantic_text is not None and messages:
        # The compared message keeps every field but its text in the namespace
        # (role, name...), so only the text itself is left to similarity.
        last = {k: v for k, v in messages[-1].items() if k != "content"}
        namespace = Namespace(
            digest(
                (
                    _SEMANTIC_KEY_KIND,
                    request.provider,
                    request.model,
                    messages[:-1],
                    last,
                    request.params,
                    scope,
                    version,
                    embedder_name,
                )
            )
        )
    return RequestKeys(fingerprint=fingerprint, namespace=namespace, scope=scope, version=version)
