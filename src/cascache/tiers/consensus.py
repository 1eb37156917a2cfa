"""Answer consensus: serve a below-threshold neighbour when its k nearest neighbours agree. Pure: no IO.

Opt-in (`semantic.consensus_k`, 0 = off), for traffic whose answers repeat
verbatim: FAQ bots, intent or label answers. The static threshold (0.97 with
MiniLM) must be high because one neighbour at 0.85 may be a different question;
but when the k nearest cached queries all sit above `floor` and were all given
the same answer, the query is in a region of embedding space where that answer
is what gets asked for. On BANKING77 streams that multiplies hits (of the
oracle's) by about 7 at the same ~1% false-hit rate (docs/tuning.md).

Invariants:

- It only adds hits below the threshold. `choose_with_consensus` runs the
  static `choose` over the `k` nearest first and returns its choice whenever
  it serves; consensus is asked only on a miss.
- The entry served is the nearest eligible candidate, and the guards check it
  against the query exactly as for a static hit: a guard veto is a miss.
- Agreement is on the answer's text after the exact judge's normalisation
  (`verification.judges.answer_text` and `normalise`), so OpenAI and
  Anthropic responses both compare; an entry without text never agrees.
- The k agreeing entries must be k distinct questions (normalised text): one
  question cached several times (another scope's copy never gets here, but a
  re-write after expiry does) is one witness, not k.
- Candidates are the namespace's and scope's only (`guards.eligible`), as for
  every semantic hit: consensus never crosses a scope.

The risk, and why it is off by default: with free-text answers, identical
answers are mostly generic ones ("Yes.", a refusal, "I don't know"), and five
different questions answered "Yes." say nothing about a sixth. Turn it on for
label- or FAQ-style answers only, per category where traffic is mixed
(`consensus_k` on a category).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from cascache._types import CacheEntry, Namespace, Scope
from cascache.tiers.guards import Choice, GuardSet, choose_ranked, eligible, veto_for
from cascache.verification.judges import answer_text, normalise

__all__ = ["ConsensusRule", "agree", "choose_with_consensus"]


@dataclass(frozen=True, slots=True)
class ConsensusRule:
    """When neighbours that agree may serve below the threshold (the `semantic.consensus_*` settings)."""

    k: int
    """How many nearest eligible candidates must agree (at least 2)."""
    top: float
    """Similarity the nearest candidate (the one served) must reach."""
    floor: float
    """Similarity every one of the k nearest must reach."""

    def __post_init__(self) -> None:
        if self.k < 2:
            raise ValueError(f"consensus needs k >= 2 neighbours, got {self.k}")
        if self.floor > self.top:
            raise ValueError(f"consensus floor {self.floor} is above top {self.top}")


def agree(ranked: Sequence[tuple[CacheEntry, float]], rule: ConsensusRule) -> tuple[CacheEntry, float] | None:
    """The nearest candidate when the `rule.k` nearest agree on its answer, else None.

    `ranked`: eligible candidates (`guards.eligible`), most similar first. The
    k nearest must each clear `rule.floor`, the nearest `rule.top`; all k must
    carry the same non-empty normalised answer and be k distinct questions.
    Guards are not checked here (`choose_with_consensus` does, on the entry served).
    """
    if len(ranked) < rule.k:
        return None
    nearest = ranked[: rule.k]
    if not nearest[0][1] >= rule.top or not all(similarity >= rule.floor for _, similarity in nearest):
        return None  # `not >=`: a NaN similarity never agrees
    answers = {_answer(entry) for entry, _ in nearest}
    if len(answers) != 1 or None in answers:
        return None
    questions = {normalise(entry.query) if entry.query is not None else None for entry, _ in nearest}
    if len(questions) != rule.k or None in questions:
        return None
    return nearest[0]


def choose_with_consensus(
    candidates: Iterable[tuple[CacheEntry, float]],
    *,
    namespace: Namespace,
    scope: Scope,
    now: float,
    threshold: float,
    query: str,
    guards: GuardSet,
    k: int,
    rule: ConsensusRule | None,
) -> Choice:
    """The semantic tier's acceptance: static `choose` over the `k` nearest, then, on a miss, consensus.

    `candidates` may hold more than `k` (a lookup fetches `max(k, rule.k)`);
    the static rule sees only the `k` nearest, so with `rule` None, or above
    the threshold, the outcome is `choose`'s on what a k-lookup returns.
    `cascache eval` and bench/quality.py call this same function.
    """
    ranked = eligible(candidates, namespace=namespace, scope=scope, now=now)
    choice = choose_ranked(ranked[:k], threshold=threshold, query=query, guards=guards)
    if choice.entry is not None or rule is None:
        return choice
    agreed = agree(ranked, rule)
    if agreed is None:
        return choice
    entry, similarity = agreed
    found = veto_for(guards, query, entry.query)
    if found is not None:
        return Choice(None, choice.similarity, None, choice.veto or found)
    return Choice(entry, choice.similarity, similarity, choice.veto, consensus=True)


def _answer(entry: CacheEntry) -> str | None:
    text = answer_text(entry.response)
    return _normalised_answer(text) if text is not None else None


@lru_cache(maxsize=4096)
def _normalised_answer(text: str) -> str | None:
    """Memoised: a lookup compares the same few cached answers again and again."""
    return normalise(text) or None
