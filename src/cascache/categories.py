"""Per-category policy: which category a request belongs to, and that category's threshold, TTL, bypass.

One global threshold treats "what are your opening hours?" and "what dose of
paracetamol for a child?" alike. Categories let an operator be strict (or
bypass the cache) where a wrong answer is expensive and lenient where it is
cheap. A request's category is decided, first match wins, by:

1. the ``x-cascache-category`` header, when it names a configured category
   (an unknown name is an error: a typo must not silently fall back to a
   lenient default);
2. a rule: the first category, in configuration order, one of whose regular
   expressions matches the compared text (case-insensitive);
3. the nearest centroid: each category with ``examples`` gets the mean of
   their embeddings, computed once at start-up; the query goes to the most
   similar centroid if its cosine is at least ``centroid_min_similarity``;
4. otherwise the default category ("general").

Steps 1-2 are pure and run before any tier; step 3 needs the query's vector,
so it runs after embedding (only when some category has examples). What a
category sets, and nothing else: ``threshold`` (None: ``semantic.threshold``),
``ttl_s`` (None: ``policy.ttl_s``; an ``x-cascache-ttl`` header still wins),
``bypass`` (no Tier 1 lookup or write), ``delta`` (the false-hit bound for
verified mode, passed through to it; None: its global default) and
``consensus_k`` (answer consensus on or off here; None: ``semantic.consensus_k``).

Example (TOML)::

    [categories.categories.finance]
    patterns = ['\\b(balance|transfer|iban|overdraft|interest rate)\\b']
    threshold = 0.98
    ttl_s = 3600

    [categories.categories.medical]
    patterns = ['\\b(dose|dosage|symptoms?|side effects?|prescription)\\b']
    examples = ["How much paracetamol can a child take?", "Is this rash serious?"]
    bypass = true
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cascache._errors import InvalidRequest
from cascache._types import Vector
from cascache.embedders.base import Embedder

if TYPE_CHECKING:  # policy imports config, which imports this module: no runtime import back
    from cascache.policy import Decision

__all__ = [
    "DEFAULT_CATEGORY",
    "HEADER_CATEGORY",
    "Categories",
    "Category",
    "CategoryRule",
    "CategorySettings",
    "apply_category",
]

HEADER_CATEGORY: Final = "x-cascache-category"
DEFAULT_CATEGORY: Final = "general"


class CategoryRule(BaseModel):
    """One category's matching rules and what it changes."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=True)

    patterns: tuple[str, ...] = ()
    """Regular expressions searched (case-insensitively) in the compared text."""
    examples: tuple[str, ...] = ()
    """Example queries whose mean embedding is this category's centroid."""
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    """Similarity a semantic candidate must reach; None: `semantic.threshold`."""
    ttl_s: float | None = Field(default=None, gt=0)
    """Lifetime of entries written in this category; None: `policy.ttl_s`."""
    bypass: bool = False
    """Never answer from, nor write to, Tier 1 (exact and semantic)."""
    delta: float | None = Field(default=None, gt=0.0, lt=1.0)
    """Verified mode's false-hit bound for this category; None: its global default."""
    consensus_k: int | None = Field(default=None, ge=0)
    """Answer consensus in this category (`semantic.consensus_k`; top and floor stay global): 0 turns it
    off here, >= 2 on; None: the global setting. Turn it on only where answers are labels or FAQ texts."""

    @field_validator("consensus_k")
    @classmethod
    def _not_one(cls, k: int | None) -> int | None:
        if k == 1:
            raise ValueError("1 neighbour is no consensus; use 0 (off) or >= 2")
        return k

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, patterns: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None
        return patterns


class CategorySettings(BaseModel):
    """The `[categories]` section."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    default: str = DEFAULT_CATEGORY
    """Category of requests no header, rule or centroid places."""
    header: bool = True
    """Honour the `x-cascache-category` header."""
    centroid_min_similarity: float = Field(default=0.5, ge=-1.0, le=1.0)
    """A query joins the nearest centroid's category only from this cosine on."""
    categories: dict[str, CategoryRule] = Field(default_factory=lambda: {DEFAULT_CATEGORY: CategoryRule()})
    """Name -> rule, in matching order (TOML tables keep their order)."""

    @model_validator(mode="after")
    def _default_exists(self) -> CategorySettings:
        if self.default not in self.categories:
            # The default category needs no rule of its own: add it, taking every global setting.
            self.categories = {**self.categories, self.default: CategoryRule()}
        return self


@dataclass(frozen=True, slots=True)
class Category:
    """The category a request was placed in, and how."""

    name: str
    rule: CategoryRule
    source: Literal["header", "rule", "centroid", "default"]
    similarity: float | None = None
    """Cosine to the centroid (source "centroid" only)."""

    @property
    def bypass(self) -> bool:
        return self.rule.bypass

    def threshold(self, default: float) -> float:
        return default if self.rule.threshold is None else self.rule.threshold

    def ttl_s(self, default: float | None) -> float | None:
        return default if self.rule.ttl_s is None else self.rule.ttl_s


class Categories:
    """Places requests in categories (see the module docstring). Build with `await Categories.build(...)`."""

    def __init__(self, settings: CategorySettings, centroids: Mapping[str, Vector] | None = None) -> None:
        self.settings = settings
        self._rules = [
            (name, rule, re.compile("|".join(f"(?:{p})" for p in rule.patterns), re.IGNORECASE))
            for name, rule in settings.categories.items()
            if rule.patterns
        ]
        names = [name for name in settings.categories if centroids and name in centroids]
        self._centroid_names = names
        self._centroids = (
            np.stack([_unit(np.asarray(centroids[n], dtype=np.float32)) for n in names])
            if centroids and names
            else None
        )

    @classmethod
    async def build(cls, settings: CategorySettings, embedder: Embedder) -> Categories:
        """Embed every category's examples once (start-up IO) and keep their normalised means."""
        centroids: dict[str, Vector] = {}
        for name, rule in settings.categories.items():
            if rule.examples:
                vectors = np.asarray(await embedder.embed(list(rule.examples)), dtype=np.float32)
                centroids[name] = _unit(vectors.mean(axis=0))
        return cls(settings, centroids)

    @property
    def needs_vector(self) -> bool:
        """True when some category is matched by centroid, so `resolve` wants the query's vector."""
        return self._centroids is not None

    def default(self) -> Category:
        name = self.settings.default
        return Category(name, self.settings.categories[name], "default")

    def by_header_or_rule(self, text: str | None, headers: Mapping[str, str]) -> Category | None:
        """The category named by the header or matched by a rule; None: not decided yet. Pure.

        Raises InvalidRequest when the header names no configured category.
        """
        if self.settings.header:
            named = headers.get(HEADER_CATEGORY, "").strip()
            if named:
                rule = self.settings.categories.get(named)
                if rule is None:
                    known = ", ".join(self.settings.categories)
                    raise InvalidRequest(
                        f"{HEADER_CATEGORY}: unknown category {named!r}; configured: {known}"
                    )
                return Category(named, rule, "header")
        if text is not None:
            for name, rule, pattern in self._rules:
                if pattern.search(text):
                    return Category(name, rule, "rule")
        return None

    def by_centroid(self, vector: Vector | None) -> Category:
        """The nearest centroid's category when close enough, else the default."""
        if self._centroids is None or vector is None:
            return self.default()
        similarities = self._centroids @ _unit(np.asarray(vector, dtype=np.float32).reshape(-1))
        best = int(np.argmax(similarities))
        if float(similarities[best]) < self.settings.centroid_min_similarity:
            return self.default()
        name = self._centroid_names[best]
        return Category(name, self.settings.categories[name], "centroid", float(similarities[best]))

    def resolve(self, text: str | None, headers: Mapping[str, str], vector: Vector | None = None) -> Category:
        """Header, then rules, then the nearest centroid (when `vector` is given), then the default."""
        found = self.by_header_or_rule(text, headers)
        if found is not None:
            return found
        return self.by_centroid(vector)


def _unit(vector: Vector) -> Vector:
    norm = float(np.linalg.norm(vector))
    return (vector / norm).astype(np.float32) if norm > 0 else vector.astype(np.float32)


def apply_category(decision: Decision, category: Category, headers: Mapping[str, str]) -> Decision:
    """`decision` with the category's bypass and TTL applied. Pure.

    A bypass category turns lookup and write-back off (reason "category:<name>").
    The category's TTL replaces the policy default, but never a TTL the client
    set with `x-cascache-ttl` (the header is the more specific instruction).
    A decision that already bypasses keeps its own reason.
    """
    if category.bypass and decision.lookup:
        return dataclasses.replace(decision, lookup=False, store=False, reason=f"category:{category.name}")
    if category.rule.ttl_s is not None and "x-cascache-ttl" not in headers:
        return dataclasses.replace(decision, ttl_s=category.rule.ttl_s)
    return decision
