"""Per-category policy: header, then rules, then nearest centroid, then the default."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cascache._errors import InvalidRequest
from cascache.categories import (
    Categories,
    CategorySettings,
    apply_category,
)
from cascache.policy import Decision
from tests.fakes import KeywordEmbedder

SETTINGS = CategorySettings.model_validate(
    {
        "categories": {
            "medical": {
                "patterns": [r"\bdose\b", r"\bsymptoms?\b"],
                "bypass": True,
                "examples": ["paracetamol tablets child fever", "rash itching skin doctor"],
            },
            "finance": {
                "patterns": [r"\bbalance\b"],
                "threshold": 0.98,
                "ttl_s": 60,
                "delta": 0.01,
                "examples": ["account balance transfer money bank"],
            },
            "general": {},
        },
    }
)


def decision(**changes: object) -> Decision:
    base = dict(lookup=True, store=True, reason=None, ttl_s=3600.0, version="v1", tags=())
    return Decision(**{**base, **changes})  # type: ignore[arg-type]


def test_header_wins_and_unknown_names_are_errors() -> None:
    categories = Categories(SETTINGS)
    found = categories.resolve("what is my balance", {"x-cascache-category": "medical"})
    assert (found.name, found.source, found.bypass) == ("medical", "header", True)
    with pytest.raises(InvalidRequest, match="unknown category 'medicl'"):
        categories.resolve("x", {"x-cascache-category": "medicl"})
    off = Categories(SETTINGS.model_copy(update={"header": False}))
    assert off.resolve("what is my balance", {"x-cascache-category": "medical"}).name == "finance"


def test_rules_match_case_insensitively_in_configuration_order() -> None:
    categories = Categories(SETTINGS)
    assert categories.resolve("What DOSE for my balance?", {}).name == "medical"  # medical is listed first
    finance = categories.resolve("Show my Balance", {})
    assert finance.source == "rule" and finance.threshold(0.97) == 0.98 and finance.ttl_s(7.0) == 60
    general = categories.resolve("hello there", {})
    assert (general.name, general.source, general.threshold(0.97), general.ttl_s(7.0)) == (
        "general",
        "default",
        0.97,
        7.0,
    )


async def test_nearest_centroid_places_unruled_queries_when_close_enough() -> None:
    embedder = KeywordEmbedder()
    # Bag-of-words vectors: the query shares 3 of its 5 words with one of medical's two examples (cos 0.47).
    categories = await Categories.build(
        SETTINGS.model_copy(update={"centroid_min_similarity": 0.4}), embedder
    )
    assert categories.needs_vector
    vector = (await embedder.embed(["child has a fever, paracetamol?"]))[0]
    found = categories.resolve("child has a fever, paracetamol?", {}, vector)
    assert found.name == "medical" and found.source == "centroid" and found.similarity is not None
    far = (await embedder.embed(["completely unrelated words here"]))[0]
    assert categories.resolve("completely unrelated words here", {}, far).name == "general"
    assert not Categories(SETTINGS).needs_vector  # no centroids unless built


def test_apply_category_bypasses_and_sets_ttl_but_respects_the_ttl_header() -> None:
    categories = Categories(SETTINGS)
    medical, finance, general = (categories.resolve(t, {}) for t in ("dose?", "balance?", "hi"))
    bypassed = apply_category(decision(), medical, {})
    assert (bypassed.lookup, bypassed.store, bypassed.reason) == (False, False, "category:medical")
    assert (
        apply_category(decision(lookup=False, store=False, reason="header"), medical, {}).reason == "header"
    )
    assert apply_category(decision(), finance, {}).ttl_s == 60
    assert apply_category(decision(ttl_s=5.0), finance, {"x-cascache-ttl": "5"}).ttl_s == 5.0
    assert apply_category(decision(), general, {}) == decision()


def test_settings_validate_and_always_hold_the_default() -> None:
    assert list(CategorySettings().categories) == ["general"]
    settings = CategorySettings.model_validate({"default": "other", "categories": {"x": {"bypass": True}}})
    assert list(settings.categories) == ["x", "other"]
    for bad in (
        {"categories": {"x": {"patterns": ["("]}}},
        {"categories": {"x": {"threshold": 1.5}}},
        {"categories": {"x": {"delta": 0}}},
        {"categories": {"x": {"colour": "red"}}},
    ):
        with pytest.raises(ValidationError):
            CategorySettings.model_validate(bad)
