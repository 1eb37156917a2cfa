"""The records that cross every seam of cascache.

Key types have their own names so that a namespace can never be passed where a
fingerprint is expected. Records are plain dataclasses: cheap to build, easy to
compare in tests, and free of any IO.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NewType

import numpy as np
import numpy.typing as npt

#: Stable hash of every input that changes the answer (exact tier key).
Fingerprint = NewType("Fingerprint", str)
#: Stable hash of every input that changes the answer except the text compared
#: semantically. Two requests can only match semantically inside one namespace.
Namespace = NewType("Namespace", str)
#: Who may see an entry: a hash of the tenant's API key, plus the user when the
#: request is personalised. No lookup ever crosses scopes.
Scope = NewType("Scope", str)

Vector = npt.NDArray[np.float32]


class Served(enum.StrEnum):
    """Which tier answered a request; the value is the `x-cascache` header."""

    HIT_EXACT = "hit-exact"
    HIT_SEMANTIC = "hit-semantic"
    MISS = "miss"
    BYPASS = "bypass"
    COALESCED = "coalesced"


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A chat request with the provider's syntax taken away.

    `messages` and `params` hold only what changes the answer, in canonical
    (JSON-ready) form; `body` keeps the caller's original request so that the
    upstream receives exactly what was sent.
    """

    provider: str
    """API shape the request arrived in ("openai", "anthropic")."""
    model: str
    messages: tuple[Mapping[str, Any], ...]
    """Every message, system included, in order, as canonical JSON-ready dicts."""
    params: Mapping[str, Any]
    """Answer-changing parameters (tools, temperature, max tokens, stop, seed, n...)."""
    semantic_text: str | None
    """Text compared semantically: the last user message when it is plain text."""
    stream: bool
    include_usage: bool
    """Streaming only: the caller asked for a final usage chunk."""
    user: str | None
    """The end user named in the body (`user`), if any."""
    body: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one upstream call; `None` means the provider did not say."""

    input_tokens: int = 0
    """All prompt tokens, cached ones included."""
    output_tokens: int = 0
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    """All tokens written to the provider's prefix cache (5m and 1h together)."""
    cache_write_5m_tokens: int | None = None
    """Of `cache_write_tokens`, those written with the 5-minute TTL (Anthropic
    `cache_creation.ephemeral_5m_input_tokens`); None when the provider gave no split.
    Kept apart because the two TTLs are priced differently (1.25x and 2x input)."""
    cache_write_1h_tokens: int | None = None
    """Of `cache_write_tokens`, those written with the 1-hour TTL (`ephemeral_1h_input_tokens`)."""

    def to_dict(self) -> dict[str, int | None]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "cache_write_5m_tokens": self.cache_write_5m_tokens,
            "cache_write_1h_tokens": self.cache_write_1h_tokens,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Usage:
        return cls(
            input_tokens=int(data.get("input_tokens") or 0),
            output_tokens=int(data.get("output_tokens") or 0),
            cache_read_tokens=data.get("cache_read_tokens"),
            cache_write_tokens=data.get("cache_write_tokens"),
            cache_write_5m_tokens=data.get("cache_write_5m_tokens"),
            cache_write_1h_tokens=data.get("cache_write_1h_tokens"),
        )


@dataclass(slots=True)
class CacheEntry:
    """One cached answer, with everything needed to replay and to purge it."""

    id: str
    """Random hex id, stable for the entry's life (admin API, headers)."""
    fingerprint: Fingerprint
    namespace: Namespace
    scope: Scope
    version: str
    """Namespace version the entry was written under (also inside both keys)."""
    provider: str
    model: str
    query: str | None
    """The semantically compared text, or None for exact-only entries."""
    vector: Vector | None
    """L2-normalised embedding of `query`, or None for exact-only entries."""
    response: Mapping[str, Any]
    """The complete answer in the provider's own non-streaming JSON shape."""
    usage: Usage
    created_at: float
    expires_at: float | None
    """Unix time after which the entry is never served; None: no expiry."""
    tags: tuple[str, ...] = ()
    """Source tags (document ids) so a changed source purges exactly its answers."""
    hits: int = 0
    last_hit_at: float | None = None
    verify_stats: Mapping[str, Any] | None = None
    """Verified mode's record of this entry (`tiers.verify.EntryStats.to_json()`): its most recent
    judged candidates as [similarity, correct] pairs. None: never judged."""

    def is_expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


@dataclass(frozen=True, slots=True)
class PurgeSelector:
    """Names what to purge; exactly one field is set."""

    id: str | None = None
    namespace: Namespace | None = None
    version: str | None = None
    scope: Scope | None = None
    tag: str | None = None
    all: bool = False

    def __post_init__(self) -> None:
        chosen = [
            name
            for name in ("id", "namespace", "version", "scope", "tag")
            if getattr(self, name) is not None
        ] + (["all"] if self.all else [])
        if len(chosen) != 1:
            raise ValueError(f"a purge names exactly one selector, got {chosen or 'none'}")


@dataclass(frozen=True, slots=True)
class StoreStats:
    entries: int
    namespaces: int
    evictions: int
    expired_swept: int
    extra: Mapping[str, Any] = field(default_factory=dict)
