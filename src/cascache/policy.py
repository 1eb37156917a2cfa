"""Is a request cacheable, for how long, under which version? Pure: no IO.

Policy decides *before* any tier runs, so that personalised, time-sensitive
or explicitly uncached requests bypass Tier 1 by rule, not by luck.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from cascache._errors import InvalidRequest
from cascache._types import ChatRequest
from cascache.config import PolicySettings

HEADER_BYPASS = "x-cascache-bypass"
HEADER_TTL = "x-cascache-ttl"
HEADER_VERSION = "x-cascache-version"
HEADER_USER = "x-cascache-user"
HEADER_TAGS = "x-cascache-tags"

_MAX_VERSION_LENGTH = 128
_MAX_TAGS = 64


@dataclass(frozen=True, slots=True)
class Decision:
    lookup: bool
    """Look the request up in Tier 1."""
    store: bool
    """Write a successful answer back to Tier 1."""
    reason: str | None
    """Why lookup or store is off (for logs and metrics)."""
    ttl_s: float | None
    version: str
    tags: tuple[str, ...]

    @property
    def bypass(self) -> bool:
        return not self.lookup


@lru_cache(maxsize=32)
def _compile(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)


def _cache_control(headers: Mapping[str, str]) -> set[str]:
    value = headers.get("cache-control", "")
    return {part.strip().lower() for part in value.split(",") if part.strip()}


def _ttl(headers: Mapping[str, str], settings: PolicySettings) -> float | None:
    raw = headers.get(HEADER_TTL)
    if raw is None:
        return settings.ttl_s
    try:
        ttl = float(raw)
    except ValueError:
        raise InvalidRequest(f"{HEADER_TTL} must be a number of seconds, got {raw!r}") from None
    if not 0 < ttl <= settings.max_ttl_s:
        raise InvalidRequest(f"{HEADER_TTL} must be in (0, {settings.max_ttl_s:g}] seconds, got {raw!r}")
    return ttl


def _version(headers: Mapping[str, str], settings: PolicySettings) -> str:
    version = headers.get(HEADER_VERSION, settings.version).strip()
    if not version or len(version) > _MAX_VERSION_LENGTH:
        raise InvalidRequest(f"{HEADER_VERSION} must be 1 to {_MAX_VERSION_LENGTH} characters")
    return version


def _tags(headers: Mapping[str, str]) -> tuple[str, ...]:
    raw = headers.get(HEADER_TAGS, "")
    tags = tuple(sorted({t.strip() for t in raw.split(",") if t.strip()}))
    if len(tags) > _MAX_TAGS:
        raise InvalidRequest(f"{HEADER_TAGS} takes at most {_MAX_TAGS} tags")
    return tags


def _is_time_sensitive(request: ChatRequest, settings: PolicySettings) -> bool:
    pattern = _compile(tuple(settings.time_sensitive_patterns))
    if pattern is None or request.semantic_text is None:
        return False
    return pattern.search(request.semantic_text) is not None


def _bypass_reason(request: ChatRequest, headers: Mapping[str, str], settings: PolicySettings) -> str | None:
    if headers.get(HEADER_BYPASS, "").strip().lower() in {"1", "true", "yes"}:
        return "header"
    n = request.params.get("n")
    if isinstance(n, int) and n > 1:
        return "n>1"
    temperature = request.params.get("temperature")
    if not settings.cache_temperature_above_zero and isinstance(temperature, int | float) and temperature > 0:
        return "temperature"
    if _is_time_sensitive(request, settings):
        return "time-sensitive"
    return None


def decide(request: ChatRequest, headers: Mapping[str, str], settings: PolicySettings) -> Decision:
    """The cache decision for one request; `headers` keys are lower-case.

    Raises InvalidRequest for malformed cascache headers rather than guessing.
    """
    ttl = _ttl(headers, settings)
    version = _version(headers, settings)
    tags = _tags(headers)
    reason = _bypass_reason(request, headers, settings)
    if reason is not None:
        return Decision(lookup=False, store=False, reason=reason, ttl_s=ttl, version=version, tags=tags)
    directives = _cache_control(headers)
    lookup = "no-cache" not in directives
    store = "no-store" not in directives
    why = None if lookup and store else ",".join(sorted(directives & {"no-cache", "no-store"}))
    return Decision(lookup=lookup, store=store, reason=why, ttl_s=ttl, version=version, tags=tags)
