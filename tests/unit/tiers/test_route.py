"""Tier 3b routing: prompt blocks, the bounded prefix tree, and each policy's decisions (table-driven)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import pytest

from cascache.tiers.route import (
    BLOCK_BYTES,
    AffinitySettings,
    BlockHash,
    Candidate,
    LeastOutstanding,
    PrefixAffinity,
    PrefixTree,
    ReplicaId,
    RoundRobin,
    RouteReason,
    hash_blocks,
    make_policy,
    prompt_blocks,
)

A, B, C = ReplicaId("a"), ReplicaId("b"), ReplicaId("c")
PROMPT = tuple(BlockHash(n) for n in (11, 12, 13, 14))


def _body(*messages: str, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text} for text in messages], **extra}


# -- prompt blocks -------------------------------------------------------------------------------------


def test_only_full_blocks_are_hashed_and_the_count_is_capped() -> None:
    assert hash_blocks(b"x" * (BLOCK_BYTES - 1), b"root") == ()
    assert len(hash_blocks(b"x" * (3 * BLOCK_BYTES + 5), b"root")) == 3
    assert len(hash_blocks(b"x" * (10 * BLOCK_BYTES), b"root", max_blocks=4)) == 4


def test_hashes_chain_so_equal_blocks_after_different_prefixes_differ() -> None:
    same_tail = b"t" * BLOCK_BYTES
    one = hash_blocks(b"a" * BLOCK_BYTES + same_tail, b"root")
    two = hash_blocks(b"b" * BLOCK_BYTES + same_tail, b"root")
    assert one[0] != two[0] and one[1] != two[1]


def test_a_longer_conversation_shares_every_full_block_of_the_shorter_one() -> None:
    document = "The quarterly report covers revenue, churn and hiring. " * 40
    short = prompt_blocks(_body(document))
    longer = prompt_blocks(_body(document, "and a follow-up question"))
    # `[{...m1}]` and `[{...m1},{...m2}]` agree up to the closing bracket of the shorter one.
    shared = (len(b'[{"content":"') + len(document) + len(b'","role":"user"}')) // BLOCK_BYTES
    assert len(short) >= shared > 20
    assert len(longer) > len(short)
    assert longer[:shared] == short[:shared]


def test_parameters_that_do_not_change_the_prompt_do_not_change_the_blocks() -> None:
    text = "x" * 1000
    plain = prompt_blocks(_body(text))
    assert prompt_blocks(_body(text, temperature=0.7, max_tokens=5, stream=True, seed=3)) == plain


def test_model_and_cache_salt_keep_equal_prompts_apart() -> None:
    text = "y" * 1000
    plain = prompt_blocks(_body(text))
    other_model = prompt_blocks({**_body(text), "model": "other"})
    salted = prompt_blocks(_body(text, cache_salt="tenant-1"))
    assert len(plain) == len(other_model) == len(salted) > 0
    assert not set(plain) & set(other_model)
    assert not set(plain) & set(salted)


def test_tools_come_first_and_their_key_order_does_not_matter() -> None:
    tool = {"type": "function",
            "function": {"name": "f", "description": "d" * 200, "parameters": {"type": "object"}}}
    reordered = {"function": {"parameters": {"type": "object"}, "description": "d" * 200, "name": "f"},
                 "type": "function"}
    one = prompt_blocks(_body("question one", tools=[tool]))
    two = prompt_blocks(_body("another question", tools=[reordered]))
    assert one[:3] == two[:3]


# -- the prefix tree -------------------------------------------------------------------------------------


def test_tree_matches_the_leading_blocks_only() -> None:
    tree = PrefixTree(max_blocks=100)
    tree.insert(PROMPT[:3])
    assert tree.match(PROMPT) == 3
    assert tree.match((BlockHash(99), *PROMPT)) == 0


def test_tree_is_bounded_and_evicts_the_leaves_of_the_least_recent_branch() -> None:
    tree = PrefixTree(max_blocks=12)
    old = [BlockHash(n) for n in range(10)]
    new = old[:5] + [BlockHash(100 + n) for n in range(5)]
    tree.insert(old)
    tree.insert(new)
    assert len(tree) == 12
    assert tree.match(new) == 10
    assert tree.match(old) == 7  # the three deepest blocks of the old branch went first


def test_tree_stays_prefix_closed_under_random_traffic() -> None:
    """Every stored block's parent is stored, whatever the order of inserts and evictions."""
    rng = random.Random(7)
    parent: dict[BlockHash, BlockHash | None] = {}
    paths: list[list[BlockHash]] = []
    for branch in range(30):
        base = rng.choice(paths)[: rng.randint(0, 6)] if paths else []
        path = base + [BlockHash(1000 * branch + depth) for depth in range(rng.randint(1, 8))]
        for index, block in enumerate(path):
            parent[block] = path[index - 1] if index else None
        paths.append(path)
    tree = PrefixTree(max_blocks=25)
    for _ in range(300):
        path = rng.choice(paths)
        tree.insert(path[: rng.randint(1, len(path))])
        assert len(tree) <= 25
        for block, parent_block in parent.items():
            if block in tree and parent_block is not None:
                assert parent_block in tree


def test_a_path_longer_than_the_bound_keeps_its_root_part() -> None:
    tree = PrefixTree(max_blocks=3)
    tree.insert([BlockHash(n) for n in range(10)])
    assert tree.match([BlockHash(n) for n in range(10)]) == 3


# -- round robin and least outstanding -----------------------------------------------------------------------


def test_round_robin_takes_each_candidate_in_turn() -> None:
    policy = RoundRobin()
    candidates = [Candidate(A, 5), Candidate(B, 0), Candidate(C, 9)]
    assert [policy.choose((), candidates).replica for _ in range(4)] == [A, B, C, A]


@pytest.mark.parametrize(
    ("loads", "expected"),
    [
        ({A: 3, B: 1, C: 2}, [B, B]),
        ({A: 0, B: 0, C: 4}, [A, B]),  # ties in turn, never always the first
        ({A: 2}, [A, A]),
    ],
)
def test_least_outstanding(loads: dict[ReplicaId, int], expected: list[ReplicaId]) -> None:
    policy = LeastOutstanding()
    candidates = [Candidate(replica, load) for replica, load in loads.items()]
    assert [policy.choose((), candidates).replica for _ in expected] == expected


# -- prefix affinity ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    held: dict[ReplicaId, int]
    """Leading blocks of PROMPT each replica's tree holds before the decision."""
    loads: dict[ReplicaId, int]
    """Outstanding requests of each candidate (the candidates, in order)."""
    replica: ReplicaId
    reason: RouteReason
    blocks: tuple[BlockHash, ...] = PROMPT
    other: dict[ReplicaId, int] | None = None
    """Unrelated blocks each tree holds (makes it bigger, i.e. less free)."""


CASES = [
    Case("no history: most free, ties in turn", {}, {A: 0, B: 0}, A, "most_free"),
    Case("full match, balanced", {A: 4}, {A: 0, B: 0}, A, "prefix_match"),
    Case("full match, busier but within abs threshold", {A: 4}, {A: 4, B: 0}, A, "prefix_match"),
    Case("imbalanced: abs and rel both exceeded", {A: 4}, {A: 6, B: 1}, B, "imbalanced"),
    Case("abs exceeded but not rel", {A: 4}, {A: 20, B: 15}, A, "prefix_match"),
    Case("rel exceeded but not abs", {A: 4}, {A: 3, B: 0}, A, "prefix_match"),
    Case("imbalanced, three replicas: the least loaded", {A: 4, C: 4}, {A: 9, B: 3, C: 2}, C, "imbalanced"),
    Case("match below threshold: more free room wins", {A: 1}, {A: 0, B: 0}, B, "most_free"),
    Case("match exactly at threshold", {A: 2}, {A: 0, B: 0}, A, "prefix_match"),
    Case("below threshold: free room before load", {A: 1}, {A: 0, B: 2}, B, "most_free"),
    Case("below threshold, equal room: the less loaded", {}, {A: 1, B: 0}, B, "most_free"),
    Case("imbalanced: load before free room", {A: 1}, {A: 0, B: 6}, A, "imbalanced"),
    Case("longest match wins", {A: 3, B: 4}, {A: 0, B: 0}, B, "prefix_match"),
    Case("equal matches: the less loaded", {A: 4, B: 4}, {A: 1, B: 0}, B, "prefix_match"),
    Case("equal matches and loads: the emptier tree", {A: 4, B: 4}, {A: 0, B: 0}, B, "prefix_match",
         other={A: 5}),
    Case("holder is not a candidate (taken out)", {A: 4}, {B: 3}, B, "most_free"),
    Case("empty prompt routes by load", {A: 4}, {A: 1, B: 0}, B, "most_free", blocks=()),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_prefix_affinity_decisions(case: Case) -> None:
    settings = AffinitySettings(cache_threshold=0.5, balance_abs_threshold=4, balance_rel_threshold=1.5)
    policy = PrefixAffinity(settings)
    for replica, count in case.held.items():
        policy.tree(replica).insert(PROMPT[:count])
    for replica, count in (case.other or {}).items():
        policy.tree(replica).insert([BlockHash(10_000 + n) for n in range(count)])
    route = policy.choose(case.blocks, [Candidate(replica, load) for replica, load in case.loads.items()])
    assert (route.replica, route.reason) == (case.replica, case.reason)
    assert route.total_blocks == len(case.blocks)
    assert route.matched_blocks == min(case.held.get(case.replica, 0), len(case.blocks))
    # The decision is recorded: the chosen replica now holds the whole prompt.
    assert policy.tree(route.replica).match(case.blocks) == len(case.blocks)


def test_affinity_keeps_a_prefix_on_one_replica_and_spreads_new_ones() -> None:
    policy = PrefixAffinity()
    candidates = [Candidate(A, 0), Candidate(B, 0)]
    documents = [prompt_blocks(_body(f"document {n} " * 100)) for n in range(4)]
    first = [policy.choose(blocks, candidates).replica for blocks in documents]
    assert sorted(first) == [A, A, B, B]  # new prefixes go to the replica with the most free room
    again = [policy.choose(blocks, candidates) for blocks in documents]
    assert [route.replica for route in again] == first
    assert all(route.reason == "prefix_match" and route.match_ratio == 1.0 for route in again)


def test_forget_drops_what_was_believed_about_a_replica() -> None:
    policy = PrefixAffinity()
    policy.tree(A).insert(PROMPT)
    policy.forget(A)
    assert policy.tree(A).match(PROMPT) == 0


def test_make_policy_by_name() -> None:
    assert isinstance(make_policy("round_robin"), RoundRobin)
    assert isinstance(make_policy("least_outstanding"), LeastOutstanding)
    affinity = make_policy("prefix_affinity", AffinitySettings(cache_threshold=0.8))
    assert isinstance(affinity, PrefixAffinity) and affinity.settings.cache_threshold == 0.8
    with pytest.raises(ValueError, match="unknown routing policy"):
        make_policy("random")


@pytest.mark.parametrize(
    "options",
    [{"cache_threshold": 1.5}, {"balance_abs_threshold": -1}, {"balance_rel_threshold": 0.5},
     {"max_blocks_per_replica": 0}],
)
def test_affinity_settings_are_validated(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        AffinitySettings(**options)


def test_a_policy_needs_a_candidate() -> None:
    for policy in (RoundRobin(), LeastOutstanding(), PrefixAffinity()):
        with pytest.raises(ValueError):
            policy.choose(PROMPT, [])
