"""Answer consensus: below the threshold, the nearest candidate is served only when its k nearest agree."""

from __future__ import annotations

from typing import Any

import pytest

from cascache._types import CacheEntry, Namespace, Scope, Usage
from cascache.config import SemanticSettings
from cascache.tiers.consensus import ConsensusRule, agree, choose_with_consensus
from cascache.tiers.guards import GuardSet, choose

NS = Namespace("ns")
SCOPE = Scope("tenant:a")
RULE = ConsensusRule(k=3, top=0.80, floor=0.70)


def openai(text: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}


def anthropic(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "assistant", "content": [{"type": "text", "text": text}]}


def entry(query: str | None, answer: dict[str, Any], *, entry_id: str = "", scope: Scope = SCOPE,
          namespace: Namespace = NS, expires_at: float | None = None) -> CacheEntry:
    return CacheEntry(
        id=entry_id or f"e-{query}", fingerprint=f"fp-{entry_id or query}",  # type: ignore[arg-type]
        namespace=namespace, scope=scope, version="v1", provider="openai", model="m", query=query,
        vector=None, response=answer, usage=Usage(), created_at=0.0, expires_at=expires_at,
    )


def agreeing(*similarities: float, answer: str = "Card delivery takes 3-5 working days.") -> list[
        tuple[CacheEntry, float]]:
    return [(entry(f"question {i}", openai(answer)), s) for i, s in enumerate(similarities)]


def pick(candidates: list[tuple[CacheEntry, float]], *, threshold: float = 0.97, k: int = 1,
         rule: ConsensusRule | None = RULE, guards: GuardSet | None = None, query: str = "where is my card",
         scope: Scope = SCOPE) -> CacheEntry | None:
    return choose_with_consensus(candidates, namespace=NS, scope=scope, now=0.0, threshold=threshold,
                                 query=query, guards=guards or GuardSet(()), k=k, rule=rule).entry


# --- agree: the rule itself ------------------------------------------------------------------


def test_k_agreeing_neighbours_serve_the_nearest() -> None:
    ranked = agreeing(0.85, 0.78, 0.72)
    assert agree(ranked, RULE) == ranked[0]


@pytest.mark.parametrize(
    ("similarities", "why"),
    [
        ((0.79, 0.78, 0.72), "nearest below top"),
        ((0.85, 0.78, 0.69), "one of the k below floor"),
        ((0.85, 0.78), "fewer than k candidates"),
        ((float("nan"), 0.78, 0.72), "NaN never agrees"),
    ],
)
def test_similarity_limits(similarities: tuple[float, ...], why: str) -> None:
    assert agree(agreeing(*similarities), RULE) is None, why


def test_one_different_answer_among_the_k_refuses() -> None:
    ranked = agreeing(0.85, 0.78, 0.72)
    ranked[2] = (entry("question x", openai("Please contact support.")), 0.72)
    assert agree(ranked, RULE) is None


def test_only_the_k_nearest_vote() -> None:
    """A disagreeing fourth candidate is outside the k: it neither helps nor hurts."""
    ranked = [*agreeing(0.85, 0.78, 0.72), (entry("question x", openai("Something else")), 0.71)]
    assert agree(ranked, RULE) == ranked[0]


def test_answers_compare_after_the_exact_judges_normalisation_across_providers() -> None:
    ranked = [
        (entry("q1", openai("Card delivery takes 3-5 working days.")), 0.9),
        (entry("q2", anthropic("card delivery takes 3 5 working days")), 0.8),
        (entry("q3", openai("CARD DELIVERY TAKES 3-5 WORKING DAYS!")), 0.75),
    ]
    assert agree(ranked, RULE) == ranked[0]


def test_the_same_question_cached_k_times_is_one_witness() -> None:
    ranked = [(entry("Where is my card?", openai("3-5 days"), entry_id=f"e{i}"), s)
              for i, s in enumerate((0.9, 0.85, 0.8))]
    ranked[1] = (entry("where is my card", openai("3-5 days"), entry_id="e1"), 0.85)  # same after normalising
    assert agree(ranked, RULE) is None


@pytest.mark.parametrize("response", [{}, openai(""), {"label": "x"}])
def test_entries_without_answer_text_never_agree(response: dict[str, Any]) -> None:
    ranked = [(entry(f"q{i}", response), s) for i, s in enumerate((0.9, 0.85, 0.8))]
    assert agree(ranked, RULE) is None


def test_entries_without_stored_query_never_agree() -> None:
    ranked = agreeing(0.9, 0.85, 0.8)
    ranked[1] = (entry(None, openai("Card delivery takes 3-5 working days."), entry_id="no-text"), 0.85)
    assert agree(ranked, RULE) is None


def test_rule_validation() -> None:
    with pytest.raises(ValueError, match="k >= 2"):
        ConsensusRule(k=1, top=0.8, floor=0.7)
    with pytest.raises(ValueError, match="above top"):
        ConsensusRule(k=3, top=0.7, floor=0.8)


# --- choose_with_consensus: what the tier and the replay run ----------------------------------------


def test_consensus_adds_a_hit_below_the_threshold() -> None:
    candidates = agreeing(0.85, 0.78, 0.72)
    assert pick(candidates, rule=None) is None
    choice = choose_with_consensus(candidates, namespace=NS, scope=SCOPE, now=0.0, threshold=0.97,
                                   query="where is my card", guards=GuardSet(()), k=1, rule=RULE)
    assert choice.entry is candidates[0][0] and choice.consensus
    assert choice.accepted_similarity == 0.85


def test_above_the_threshold_nothing_changes() -> None:
    """A static hit is served as before, even when the neighbours disagree; and it is not a consensus hit."""
    candidates = [(entry("q0", openai("A")), 0.99), (entry("q1", openai("B")), 0.8),
                  (entry("q2", openai("C")), 0.8)]
    choice = choose_with_consensus(candidates, namespace=NS, scope=SCOPE, now=0.0, threshold=0.97,
                                   query="q", guards=GuardSet(()), k=1, rule=RULE)
    assert choice.entry is candidates[0][0] and not choice.consensus


def test_static_part_sees_only_the_k_nearest() -> None:
    """With more candidates fetched for consensus, a vetoed nearest must not fall through to a farther static
    hit that a k=1 lookup would never have seen: the outcome equals `choose` on the k nearest."""
    guards = GuardSet(["number"])
    candidates = [(entry("order 2 status", openai("A")), 0.99), (entry("order 3 status", openai("B")), 0.98),
                  (entry("order 4 status", openai("C")), 0.98)]
    query = "order 3 status"
    static = choose(candidates[:1], namespace=NS, scope=SCOPE, now=0.0, threshold=0.97, query=query,
                    guards=guards)
    assert static.entry is None
    assert pick(candidates, k=1, rule=RULE, guards=guards, query=query) is None


def test_guards_veto_the_consensus_candidate() -> None:
    guards = GuardSet(["number"])
    candidates = [(entry(f"Is a {n}-bedroom flat available?", openai("Yes")), s)
                  for n, s in ((2, 0.9), (4, 0.85), (5, 0.8))]
    choice = choose_with_consensus(candidates, namespace=NS, scope=SCOPE, now=0.0, threshold=0.97,
                                   query="Is a 3-bedroom flat available?", guards=guards, k=1, rule=RULE)
    assert choice.entry is None and choice.veto is not None and choice.veto.guard == "number"
    assert pick(candidates, guards=GuardSet(()), query="Is a 3-bedroom flat available?") is not None


def test_other_scopes_namespaces_and_expired_entries_never_count() -> None:
    for foreign in (
        {"scope": Scope("tenant:b")},
        {"namespace": Namespace("other")},
        {"expires_at": 0.0},
    ):
        candidates = agreeing(0.9, 0.85)
        stranger = entry("question f", openai("Card delivery takes 3-5 working days."), **foreign)
        candidates.append((stranger, 0.8))
        assert pick(candidates) is None, foreign
    everyone_else = [(entry(f"q{i}", openai("same"), scope=Scope("tenant:b")), 0.9) for i in range(5)]
    assert pick(everyone_else) is None


# --- settings -------------------------------------------------------------------------------------


def test_settings_default_off_and_build_the_rule() -> None:
    assert SemanticSettings().consensus_rule() is None
    on = SemanticSettings(consensus_k=5, consensus_top=0.8, consensus_floor=0.65)
    assert on.consensus_rule() == ConsensusRule(5, 0.8, 0.65)
    assert on.consensus_rule(0) is None and on.consensus_rule(3) == ConsensusRule(3, 0.8, 0.65)
    with pytest.raises(ValueError):
        SemanticSettings(consensus_k=1)
    with pytest.raises(ValueError):
        SemanticSettings(consensus_k=3, consensus_top=0.7, consensus_floor=0.8)
