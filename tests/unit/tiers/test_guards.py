"""Guards veto candidates whose answer-determining tokens differ, and let true rewordings through."""

from __future__ import annotations

import numpy as np
import pytest

from cascache._types import CacheEntry, Namespace, Scope, Usage
from cascache.metrics import Metrics
from cascache.stores.memory import MemoryStore
from cascache.tiers.guards import (
    ALL_GUARDS,
    GUARDS,
    GuardSet,
    accept,
    choose,
    features,
    validate_guard_names,
    veto,
)
from cascache.tiers.semantic import SemanticTier
from tests.fakes import KeywordEmbedder

NS = Namespace("ns")
SCOPE = Scope("tenant:a")


@pytest.mark.parametrize(
    ("guard", "query", "candidate"),
    [
        ("negation", "Cancel my subscription", "Don't cancel my subscription"),
        ("negation", "Why did my card work?", "Why did my card not work?"),
        ("negation", "why doesnt my card work", "why does my card work"),
        ("negation", "Is ibuprofen safe with alcohol?", "Is ibuprofen unsafe with alcohol?"),
        ("negation", "What's the price for members?", "What's the price for non-members?"),
        ("number", "Is a 2-bedroom flat available?", "Is a 3-bedroom flat available?"),
        ("number", "What's 15% of 200?", "What's 50% of 200?"),
        ("number", "A table for two please", "A table for twelve please"),
        ("number", "Rewire a one-bedroom flat", "Rewire a four-bed flat"),
        ("number", "What is the 2.5 rate?", "What is the 2.25 rate?"),
        ("date", "Are you open on Saturday?", "Are you open on Sunday?"),
        ("date", "Can I come at 3pm?", "Can I come at 4pm?"),
        ("date", "Who won the World Cup in 2014?", "Who won the World Cup in 2018?"),
        ("date", "Is the flat free in March?", "Is the flat free in April?"),
        ("date", "What did I spend last week?", "What did I spend next week?"),
        ("currency", "Transfer £50 to savings", "Transfer $50 to savings"),
        ("currency", "Send 20 EUR to Tom", "Send 20 USD to Tom"),
        ("identifier", "Track order 48213", "Track order 48231"),
        ("identifier", "Where is parcel AB-1234?", "Where is parcel AB-1243?"),
        ("identifier", "Email jo@example.com the invoice", "Email al@example.com the invoice"),
        ("opposites", "How do I increase the font size?", "How do I decrease the font size?"),
        ("opposites", "How do I turn on dark mode?", "How do I turn off dark mode?"),
        ("entity", "How do I export my data from Salesforce?", "How do I export my data from HubSpot?"),
        ("entity", "Who is the CEO of Microsoft?", "Who is the CEO of Apple?"),
        ("entity", "What's the legal drinking age in the UK?", "What's the legal drinking age in the US?"),
    ],
)
def test_each_guard_vetoes_its_trap_alone_and_in_the_full_set(guard: str, query: str, candidate: str) -> None:
    assert GuardSet([guard]).veto(query, candidate) == guard
    assert GuardSet([guard]).veto(candidate, query) == guard  # symmetric
    assert veto(query, candidate) is not None


@pytest.mark.parametrize(
    ("query", "candidate"),
    [
        ("What are your opening hours?", "When are you open?"),
        ("Can I pay with PayPal?", "do you accept paypal"),
        ("I need six cards", "I need 6 cards"),
        ("What's the capital of Australia?", "Which city is Australia's capital?"),
        ("What time does the centre open on Mondays?", "What time does the center open on Mondys?"),
        ("How do I order a replacement card?", "Hi, quick one: how do I order a replacement card?"),
        ("How do I get a bulky waste collection?", "Morning! How do I get a bulky waste collection?"),
        ("What's the price for non-members?", "How much is it if I'm not a member?"),
        ("HOW DO I RESET MY PASSWORD", "how do i reset my password"),
        ("How To Reset My Password In Settings", "how to reset my password in settings"),
        ("Which one should I pick?", "Which should I pick?"),
        ("Transfer £50 now", "Transfer 50 pounds now"),
        ("Is 10kg allowed?", "Is 10 kg allowed?"),
    ],
)
def test_rewordings_that_keep_the_answer_pass_every_guard(query: str, candidate: str) -> None:
    assert GuardSet(ALL_GUARDS).check(query, candidate) is None


def test_features_extract_the_tokens_the_guards_compare() -> None:
    f = features("Can I get a 2-bedroom flat in March for 1,500 dollars at 7:30pm on Mondays, order #4421?")
    assert f.numbers >= {"2", "1500"}
    assert f.dates >= {"march", "monday", "19:30"}
    assert f.currencies >= {"USD", "USD 1500"}
    assert "#4421" in f.identifiers
    assert "2-bedroom" not in f.identifiers  # a number joined to a word is the number guard's
    assert f.negations == 0


def test_ambiguous_month_names_count_only_when_capitalised() -> None:
    assert "may" not in features("may I open an account").dates
    assert "may" in features("is it open in May").dates


def test_veto_reason_names_the_most_specific_guard_first() -> None:
    assert next(iter(GUARDS)) == "identifier"
    found = GuardSet().check("Track order 48213", "Track order 48231")
    assert found is not None and found.guard == "identifier" and "48213" in found.detail


def test_guard_names_are_validated_and_kept_in_registry_order() -> None:
    assert validate_guard_names(["entity", "number", "number", " "]) == ("number", "entity")
    with pytest.raises(ValueError, match="unknown guard"):
        validate_guard_names(["numbers"])
    assert GuardSet(()).veto("Track order 1", "Track order 2") is None


def _entry(
    query: str | None,
    *,
    namespace: Namespace = NS,
    scope: Scope = SCOPE,
    expires_at: float | None = None,
    entry_id: str = "e",
) -> CacheEntry:
    return CacheEntry(
        id=entry_id,
        fingerprint=f"fp-{entry_id}",
        namespace=namespace,
        scope=scope,
        version="v1",  # type: ignore[arg-type]
        provider="openai",
        model="m",
        query=query,
        vector=None,
        response={},
        usage=Usage(),
        created_at=0.0,
        expires_at=expires_at,
    )


def test_accept_needs_threshold_and_no_veto() -> None:
    assert accept(0.95, 0.9, "Track order 1", "Track order 1")
    assert not accept(0.85, 0.9, "Track order 1", "Track order 1")
    assert not accept(0.99, 0.9, "Track order 1", "Track order 2")
    assert not accept(float("nan"), 0.0, "a", "a")
    assert not accept(0.99, 0.9, "a", None)  # nothing to guard: refused while guards are on
    assert accept(0.99, 0.9, "a", None, GuardSet(()))


def test_choose_falls_back_to_the_next_candidate_when_the_nearest_is_vetoed() -> None:
    wrong, right = (
        _entry("Track order 48213", entry_id="wrong"),
        _entry("Where is order 48231", entry_id="right"),
    )
    choice = choose(
        [(wrong, 0.97), (right, 0.93)],
        namespace=NS,
        scope=SCOPE,
        now=0.0,
        threshold=0.9,
        query="Track order 48231",
    )
    assert choice.entry is right and choice.accepted_similarity == 0.93 and choice.similarity == 0.97
    assert choice.veto is not None and choice.veto.guard == "identifier"
    below = choose(
        [(wrong, 0.97), (right, 0.85)],
        namespace=NS,
        scope=SCOPE,
        now=0.0,
        threshold=0.9,
        query="Track order 48231",
    )
    assert below.entry is None and below.veto is not None


def test_choose_ignores_other_namespaces_scopes_and_expired_entries() -> None:
    candidates = [
        (_entry("q", namespace=Namespace("other"), entry_id="a"), 0.99),
        (_entry("q", scope=Scope("tenant:b"), entry_id="b"), 0.99),
        (_entry("q", expires_at=5.0, entry_id="c"), 0.99),
    ]
    choice = choose(candidates, namespace=NS, scope=SCOPE, now=10.0, threshold=0.5, query="q")
    assert choice.entry is None and choice.similarity is None


async def test_choose_without_guards_agrees_with_the_semantic_tier() -> None:
    """The eval calls `choose`; with guards off it must accept exactly what SemanticTier accepts today."""
    embedder = KeywordEmbedder()
    store = MemoryStore()
    rng = np.random.default_rng(3)
    words = "card order refund open close account balance limit pin transfer fee when how why".split()
    texts = [" ".join(rng.choice(words, size=4)) for _ in range(60)]
    vectors = await embedder.embed(texts)
    for i, (text, vector) in enumerate(zip(texts[:30], vectors[:30], strict=True)):
        entry = _entry(text, entry_id=f"id{i}")
        entry.vector = vector
        await store.put(entry)
    for threshold in (0.5, 0.7, 0.9):
        tier = SemanticTier(store, embedder, Metrics(), threshold=threshold)
        for text, vector in zip(texts[30:], vectors[30:], strict=True):
            found = await tier.lookup(NS, SCOPE, text, now=0.0)
            candidates = await store.nearest(NS, SCOPE, vector, 1, 0.0)
            choice = choose(
                candidates,
                namespace=NS,
                scope=SCOPE,
                now=0.0,
                threshold=threshold,
                query=text,
                guards=GuardSet(()),
            )
            assert (found.entry.id if found.entry else None) == (choice.entry.id if choice.entry else None)
            assert found.similarity == choice.similarity
