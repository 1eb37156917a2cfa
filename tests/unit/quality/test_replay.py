"""Replays use the cache's own keys, policy, store and acceptance; the fast sweep agrees with the store."""

from __future__ import annotations

import numpy as np
import pytest

from cascache.config import PolicySettings
from cascache.quality.data import LabelledPair, LabelledQuery, Stream
from cascache.quality.replay import (
    StreamCounts,
    embed_texts,
    replay_pairs,
    replay_stream,
    replay_stream_in_store,
    texts_of_pairs,
    texts_of_streams,
)
from cascache.tiers.consensus import ConsensusRule
from cascache.tiers.guards import ALL_GUARDS, GuardSet
from tests.fakes import KeywordEmbedder

POLICY = PolicySettings()
NO_GUARDS = GuardSet(())


def stream(*rows: tuple[str, str]) -> Stream:
    return Stream("s", tuple(LabelledQuery(text, label) for text, label in rows))


async def vectors_for(*streams: Stream, pairs: tuple[LabelledPair, ...] = ()) -> dict[str, np.ndarray]:
    return await embed_texts(KeywordEmbedder(), texts_of_streams(streams) | texts_of_pairs(pairs))


async def test_a_hand_counted_stream() -> None:
    s = stream(
        ("when will my card arrive", "card_arrival"),  # miss, cached; label new
        ("my card arrive when will", "card_arrival"),  # same words: similarity 1 -> right hit
        ("why was my refund declined", "refund"),  # miss (nothing similar), cached
        ("when will my card arrive", "card_arrival"),  # exact repeat: exact hit
        ("when will my new card arrive", "card_delivery"),  # similar to the first, other label: wrong hit
        ("how do I reset a pin", "pin"),  # miss
    )
    vectors = await vectors_for(s)
    counts = replay_stream(
        s, vectors, [0.8], guards=NO_GUARDS, k=1, policy=POLICY, embedder_name="keyword-test"
    )[0.8]
    assert counts == StreamCounts(
        queries=6, hits=3, wrong_hits=1, seen=2, exact_hits=1, vetoed=0, bypassed=0, vetoes_by_guard={}
    )
    assert counts.false_hit_rate == pytest.approx(1 / 3) and counts.of_oracle == pytest.approx(3 / 2)
    assert counts.recall == 1.0 and counts.oracle_hit_rate == pytest.approx(2 / 6)


async def test_guards_turn_a_wrong_hit_into_a_counted_veto() -> None:
    s = stream(("track order 48213", "o1"), ("track order 48231", "o2"))
    vectors = await vectors_for(s)
    plain = replay_stream(s, vectors, [0.5], guards=NO_GUARDS, k=1, policy=POLICY, embedder_name="e")[0.5]
    guarded = replay_stream(
        s, vectors, [0.5], guards=GuardSet(ALL_GUARDS), k=1, policy=POLICY, embedder_name="e"
    )[0.5]
    assert (plain.hits, plain.wrong_hits) == (1, 1)
    assert (guarded.hits, guarded.vetoed, dict(guarded.vetoes_by_guard)) == (0, 1, {"identifier": 1})


async def test_time_sensitive_queries_bypass_and_are_never_cached() -> None:
    s = stream(
        ("what is the weather today", "w"), ("what is the weather today", "w"), ("what is the forecast", "w")
    )
    vectors = await vectors_for(s)
    counts = replay_stream(s, vectors, [0.1], guards=NO_GUARDS, k=1, policy=POLICY, embedder_name="e")[0.1]
    assert counts.bypassed == 2 and counts.hits == 0 and counts.seen == 0


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("guards", [(), ALL_GUARDS])
@pytest.mark.parametrize("consensus", [None, ConsensusRule(3, 0.5, 0.4)])
async def test_fast_replay_equals_the_memory_store_replay(
    k: int, guards: tuple[str, ...], consensus: ConsensusRule | None
) -> None:
    rng = np.random.default_rng(11)
    words = "card order 12 13 refund not open close Paris London account pin fee when how why".split()
    s = Stream(
        "r",
        tuple(
            LabelledQuery(" ".join(rng.choice(words, size=4)), f"l{int(rng.integers(6))}") for _ in range(150)
        ),
    )
    vectors = await vectors_for(s)
    thresholds = [0.3, 0.5, 0.75, 0.9]
    common = {"guards": GuardSet(guards), "k": k, "policy": POLICY, "embedder_name": "e",
              "consensus": consensus}
    fast = replay_stream(s, vectors, thresholds, **common)  # type: ignore[arg-type]
    for t in thresholds:
        slow = await replay_stream_in_store(s, vectors, t, **common)  # type: ignore[arg-type]
        assert fast[t] == slow, t
    assert fast[0.3].hits > fast[0.9].hits > 0


async def test_consensus_in_the_replay_adds_below_threshold_hits_only_when_labels_agree() -> None:
    """Three cached rewordings of one intent; a fourth at cosine 0.75 to each hits only with consensus."""
    cached = (("alpha beta gamma delta", "x"), ("alpha beta gamma epsilon", "x"), ("alpha beta gamma zeta", "x"))
    agreeing = stream(*cached, ("alpha beta gamma eta", "x"))
    split = stream(*cached[:2], ("alpha beta gamma zeta", "y"), ("alpha beta gamma eta", "x"))
    rule = ConsensusRule(3, 0.7, 0.7)
    vectors = await vectors_for(agreeing, split)

    def fast(s: Stream, consensus: ConsensusRule | None) -> StreamCounts:
        return replay_stream(s, vectors, [0.97], guards=NO_GUARDS, k=1, policy=POLICY, embedder_name="e",
                             consensus=consensus)[0.97]

    agreed = fast(agreeing, rule)
    assert (fast(agreeing, None).hits, agreed.hits, agreed.wrong_hits) == (0, 1, 0)
    slow = await replay_stream_in_store(agreeing, vectors, 0.97, guards=NO_GUARDS, k=1, policy=POLICY,
                                        embedder_name="e", consensus=rule)
    assert slow == agreed
    assert fast(split, rule).hits == 0


def pair(a: object, b: object, same: bool, category: str = "c") -> LabelledPair:
    def msgs(x: object) -> tuple[dict[str, str], ...]:
        return ({"role": "user", "content": x},) if isinstance(x, str) else tuple(x)  # type: ignore[arg-type]

    return LabelledPair(msgs(a), msgs(b), same, category)


async def test_pairs_take_the_route_the_cache_would() -> None:
    ctx_a = [{"role": "user", "content": "my gym membership"}, {"role": "assistant", "content": "ok"}]
    ctx_b = [{"role": "user", "content": "my streaming plan"}, {"role": "assistant", "content": "ok"}]
    last = {"role": "user", "content": "cancel it"}
    pairs = (
        pair([*ctx_a, last], [*ctx_b, last], False, "context_swap"),  # other namespace: never compared
        pair([*ctx_a, last], [*ctx_a, last], True, "repeat"),  # same request: exact
        pair("how do I cancel it", "cancel it how do I", True),  # same words: semantic, similarity 1
        pair("news today", "news today please", True),  # time-sensitive: bypass
        pair("track order 1", "track order 2", False, "trap"),
    )
    vectors = await vectors_for(pairs=pairs)
    results = await replay_pairs(
        pairs, vectors, [0.0, 0.5], guards=GuardSet(ALL_GUARDS), k=1, policy=POLICY, embedder_name="e"
    )
    assert [r.route for r in results] == ["key", "exact", "semantic", "bypass", "semantic"]
    assert [r.hit[0.0] for r in results] == [False, True, True, False, False]
    assert results[2].similarity == pytest.approx(1.0)
    assert results[4].veto[0.5] is not None and results[4].veto[0.5].guard == "number"


async def test_embeddings_are_cached_on_disk_by_embedder_and_texts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    embedder = KeywordEmbedder()
    first = await embed_texts(embedder, ["a b", "c"], cache_dir=tmp_path, batch=1)
    assert embedder.calls == 2
    again = await embed_texts(embedder, ["c", "a b"], cache_dir=tmp_path)
    assert embedder.calls == 2 and all(np.array_equal(first[t], again[t]) for t in first)
    await embed_texts(embedder, ["c", "a b", "new"], cache_dir=tmp_path)
    assert embedder.calls == 3


async def test_the_hit_hook_sees_every_hit_with_its_cached_query() -> None:
    s = stream(
        ("when will my card arrive", "a"),
        ("my card arrive when will", "a"),
        ("when will my card arrive", "a"),
        ("refund please", "b"),
    )
    vectors = await vectors_for(s)
    seen: list[tuple[int, int]] = []
    replay_stream(
        s,
        vectors,
        [0.9],
        guards=NO_GUARDS,
        k=1,
        policy=POLICY,
        embedder_name="e",
        on_hit=lambda _t, i, j, _sim: seen.append((i, j)),
    )
    assert seen == [(1, 0), (2, 0)]  # a semantic hit, then an exact one; both served by query 0
