"""Tier 3b: which replica of a self-hosted pool serves a request. Pure: no IO, no clock, no randomness.

Three policies behind one small protocol, `RoutingPolicy.choose(blocks, candidates) -> Route`:

- `RoundRobin`: each replica in turn.
- `LeastOutstanding`: the replica with the fewest requests in flight (ties in turn).
- `PrefixAffinity`: the replica whose KV cache most likely holds the request's
  prompt prefix, as in sglang-router's cache-aware policy, unless load is
  imbalanced.

How a prompt becomes blocks (`prompt_blocks`), after vLLM's KV block hashes
(`vllm/v1/core/kv_cache_utils.py::hash_block_tokens`): the prompt-determining
fields of the body (tools, system, messages, prompt), as canonical JSON bytes,
are cut into fixed-size blocks, and block i's hash covers block i *and* the
hash of block i-1. So equal hashes mean equal prefixes, a block hash alone
names its whole prefix, and a prompt is matched block by block from the start.
As in vLLM, only full blocks are hashed, and the first hash is seeded with
"extra keys" that keep prefixes apart even when their text is equal: the model
and vLLM's per-tenant `cache_salt` (two tenants with a salt never share KV
blocks, so they must not be routed as if they did).

Why characters and not tokens: the gateway has no tokenizer for a replica's
model, and sglang-router's approximate tree also works on text. Why 64-byte
blocks: about 16 tokens of English, vLLM's default KV block size; a shared
prefix that ends mid-block loses at most 63 bytes of match, negligible against
the thousand-token prefixes that are worth routing, while a short shared system
prompt still spans several blocks. Hashing is cheap (blake2b over 64 bytes),
and `MAX_PROMPT_BLOCKS` caps the work for huge bodies: past 256 KiB of prompt
the rest is not hashed (no local engine's context is that long).

Hashes are 64-bit: a collision can only send a request to a replica that does
not hold its prefix (a slower answer, never a wrong one), so 64 bits are plenty.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NewType, Protocol

from cascache.keys import canonical_json

__all__ = [
    "BLOCK_BYTES",
    "MAX_PROMPT_BLOCKS",
    "POLICIES",
    "AffinitySettings",
    "BlockHash",
    "Candidate",
    "LeastOutstanding",
    "PrefixAffinity",
    "PrefixTree",
    "ReplicaId",
    "RoundRobin",
    "Route",
    "RouteReason",
    "RoutingPolicy",
    "hash_blocks",
    "make_policy",
    "prompt_blocks",
]

BlockHash = NewType("BlockHash", int)
"""Chained 64-bit hash of one full block of the canonical prompt and everything before it."""
ReplicaId = NewType("ReplicaId", str)
"""A replica's stable name within its pool (its base URL)."""

BLOCK_BYTES = 64
MAX_PROMPT_BLOCKS = 4096
_ROOT_KIND = "route-prefix/v1"
#: Body fields that make up the prompt an engine prefills, in the order chat
#: templates render them (tool definitions go into the system turn, first).
#: Sampling parameters, `stream`, `max_tokens`... never change the KV prefix.
_PROMPT_FIELDS = ("tools", "system", "messages", "prompt")
#: Body fields that partition KV caches even for equal prompts (vLLM's extra keys).
_EXTRA_KEY_FIELDS = ("model", "cache_salt")

RouteReason = Literal["round_robin", "least_outstanding", "imbalanced", "prefix_match", "most_free"]


def hash_blocks(stream: bytes, root: bytes, block_bytes: int = BLOCK_BYTES,
                max_blocks: int = MAX_PROMPT_BLOCKS) -> tuple[BlockHash, ...]:
    """Chained hashes of the full `block_bytes` blocks of `stream`; the chain starts at `root`.

    hash[i] = blake2b(hash[i-1] || block[i]); hash[-1] = blake2b(root). A trailing
    partial block is not hashed: it may still grow into a different block.
    """
    if block_bytes < 1 or max_blocks < 0:
        raise ValueError("block_bytes must be >= 1 and max_blocks >= 0")
    parent = hashlib.blake2b(root, digest_size=8).digest()
    hashes: list[BlockHash] = []
    count = min(len(stream) // block_bytes, max_blocks)
    for index in range(count):
        start = index * block_bytes
        parent = hashlib.blake2b(parent + stream[start:start + block_bytes], digest_size=8).digest()
        hashes.append(BlockHash(int.from_bytes(parent, "big")))
    return tuple(hashes)


def prompt_blocks(body: Mapping[str, Any], block_bytes: int = BLOCK_BYTES,
                  max_blocks: int = MAX_PROMPT_BLOCKS) -> tuple[BlockHash, ...]:
    """The chained block hashes of a request body's prompt (OpenAI chat, Anthropic, or `/completion`).

    Two bodies share their first n hashes exactly when their extra keys are
    equal and their canonical prompts share the first n * block_bytes bytes.
    Canonical JSON (sorted keys) is prefix-preserving for appended messages:
    `[m1,m2` is the start of both `[m1,m2]` and `[m1,m2,m3]`.
    """
    stream = b"".join(canonical_json(body[name]) for name in _PROMPT_FIELDS if name in body)
    root = canonical_json((_ROOT_KIND, *(body.get(name) for name in _EXTRA_KEY_FIELDS)))
    return hash_blocks(stream, root, block_bytes, max_blocks)


class PrefixTree:
    """The gateway's approximate picture of what one replica's prefix cache holds.

    Invariants:
    - Approximate: built only from this gateway's own routing decisions, never
      from the engine. It does not see the engine's own evictions, other
      gateways' traffic, or a restart (the pool clears it when the replica
      leaves); a wrong guess costs a prefill, never a wrong answer.
    - Bounded: at most `max_blocks` hashes; beyond that the least recently
      routed are dropped (LRU), as engines drop idle prefixes.
    - Prefix-closed: every stored block's parent block is stored. `insert`
      refreshes a path from its leaf up to its root, so a parent is never
      older than its children; the LRU end therefore always holds a leaf, and
      eviction trims branches from their tips, like sglang's LRU leaf
      eviction. Hence `match` may stop at the first missing block.
    - Per replica: trees never share nodes, so evicting on one replica leaves
      the others untouched.

    A set of chained hashes *is* a prefix tree: each hash names its node and,
    through the chain, its path from the root, so no child pointers are kept.
    """

    __slots__ = ("_blocks", "max_blocks")

    def __init__(self, max_blocks: int) -> None:
        if max_blocks < 1:
            raise ValueError("max_blocks must be >= 1")
        self.max_blocks = max_blocks
        self._blocks: OrderedDict[BlockHash, None] = OrderedDict()

    def match(self, blocks: Sequence[BlockHash]) -> int:
        """How many leading blocks of `blocks` this replica (probably) holds."""
        matched = 0
        for block in blocks:
            if block not in self._blocks:
                break
            matched += 1
        return matched

    def insert(self, blocks: Sequence[BlockHash]) -> None:
        """Record that the replica now holds this prefix; refresh it as most recently used."""
        stored = self._blocks
        # Leaf first, root last: parents end up newer than their children (see the invariants).
        for block in reversed(blocks[: self.max_blocks]):
            stored[block] = None
            stored.move_to_end(block)
        while len(stored) > self.max_blocks:
            stored.popitem(last=False)

    def clear(self) -> None:
        self._blocks.clear()

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, block: object) -> bool:
        return block in self._blocks


@dataclass(frozen=True, slots=True)
class Candidate:
    """A replica that may take the request, as the pool sees it now."""

    replica: ReplicaId
    outstanding: int
    """Requests sent to it and not finished (a stream counts until it is closed)."""


@dataclass(frozen=True, slots=True)
class Route:
    """Where a request goes, and why."""

    replica: ReplicaId
    reason: RouteReason
    matched_blocks: int = 0
    """Leading prompt blocks the chosen replica was believed to hold."""
    total_blocks: int = 0

    @property
    def match_ratio(self) -> float:
        return self.matched_blocks / self.total_blocks if self.total_blocks else 0.0


class RoutingPolicy(Protocol):
    """Picks one of the candidates. May keep state (a turn counter, prefix trees); never does IO."""

    name: str
    needs_prompt: bool
    """Whether `choose` uses the blocks (else the pool need not parse the body)."""

    def choose(self, blocks: Sequence[BlockHash], candidates: Sequence[Candidate]) -> Route:
        """`candidates` is never empty; the route names one of them."""
        ...

    def forget(self, replica: ReplicaId) -> None:
        """The replica left the pool (failed or restarted): drop what was believed about it."""
        ...


def _require(candidates: Sequence[Candidate]) -> None:
    if not candidates:
        raise ValueError("no candidate replica to route to")


class RoundRobin:
    """Each candidate in turn; when the candidates change (a replica out), the turn goes on over the rest."""

    name = "round_robin"
    needs_prompt = False

    def __init__(self) -> None:
        self._turn = 0

    def choose(self, blocks: Sequence[BlockHash], candidates: Sequence[Candidate]) -> Route:
        _require(candidates)
        chosen = candidates[self._turn % len(candidates)]
        self._turn += 1
        return Route(chosen.replica, "round_robin")

    def forget(self, replica: ReplicaId) -> None:
        return None


class LeastOutstanding:
    """The candidate with the fewest requests in flight; ties are taken in turn.

    Taking ties in turn matters at low load, where every replica is idle: always
    picking the first would send a sequential client's whole traffic to one replica.
    """

    name = "least_outstanding"
    needs_prompt = False

    def __init__(self) -> None:
        self._turn = 0

    def choose(self, blocks: Sequence[BlockHash], candidates: Sequence[Candidate]) -> Route:
        _require(candidates)
        least = min(candidate.outstanding for candidate in candidates)
        tied = [candidate for candidate in candidates if candidate.outstanding == least]
        chosen = tied[self._turn % len(tied)]
        self._turn += 1
        return Route(chosen.replica, "least_outstanding")

    def forget(self, replica: ReplicaId) -> None:
        return None


@dataclass(frozen=True, slots=True)
class AffinitySettings:
    """Thresholds of `PrefixAffinity` (sglang-router's names and meaning).

    sglang-router's defaults (cache_threshold 0.3, balance_abs_threshold 64,
    balance_rel_threshold 1.5) suit GPU engines that batch dozens of requests.
    A CPU llama.cpp replica runs a few slots, so a handful of extra requests
    already queue behind each other: hence a much lower absolute threshold.
    """

    cache_threshold: float = 0.5
    """Follow the best match only if it covers at least this share of the prompt's blocks.
    Below it affinity saves less than half a prefill, so load and free capacity decide."""
    balance_abs_threshold: int = 4
    """Load is imbalanced when max - min outstanding exceeds this..."""
    balance_rel_threshold: float = 1.5
    """...and max exceeds this times min. Then the least loaded replica is chosen, prefix or not."""
    max_blocks_per_replica: int = 65_536
    """Bound of each replica's tree (64-byte blocks: 4 MiB of prompt text, about a million tokens)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.cache_threshold <= 1.0:
            raise ValueError("cache_threshold must be within 0..1")
        if self.balance_abs_threshold < 0 or self.balance_rel_threshold < 1.0:
            raise ValueError("balance_abs_threshold must be >= 0 and balance_rel_threshold >= 1")
        if self.max_blocks_per_replica < 1:
            raise ValueError("max_blocks_per_replica must be >= 1")


class PrefixAffinity:
    """sglang-router's cache-aware decision over per-replica approximate prefix trees.

    1. Load imbalanced (max - min outstanding > abs threshold AND max > rel
       threshold * min): the least loaded candidate ("imbalanced").
    2. Else, if the best-matching candidate holds at least `cache_threshold`
       of the prompt's blocks: that candidate ("prefix_match"); among equal
       matches, the least loaded, then the one with the most free tree room.
    3. Else: the candidate with the most free room, i.e. the smallest tree,
       then the least loaded, ties in turn ("most_free"). Room before load, as
       in sglang: new prefixes then partition the pool's memory evenly instead
       of following momentary load (which step 1 already guards), so each
       replica ends up holding its share of the prefixes, not a copy of all.

    Every decision is recorded in the chosen replica's tree (also under
    imbalance, as sglang does): the replica is about to compute that prefix.
    """

    name = "prefix_affinity"
    needs_prompt = True

    def __init__(self, settings: AffinitySettings | None = None) -> None:
        self.settings = settings or AffinitySettings()
        self._trees: dict[ReplicaId, PrefixTree] = {}
        self._turn = 0

    def tree(self, replica: ReplicaId) -> PrefixTree:
        tree = self._trees.get(replica)
        if tree is None:
            tree = self._trees[replica] = PrefixTree(self.settings.max_blocks_per_replica)
        return tree

    def choose(self, blocks: Sequence[BlockHash], candidates: Sequence[Candidate]) -> Route:
        _require(candidates)
        total = len(blocks)
        matches = {candidate.replica: self.tree(candidate.replica).match(blocks) for candidate in candidates}
        reason: RouteReason
        if self._imbalanced(candidates):
            chosen, reason = self._least_loaded(candidates), "imbalanced"
        else:
            best = max(candidates,
                       key=lambda c: (matches[c.replica], -c.outstanding, -len(self.tree(c.replica))))
            if total and matches[best.replica] / total >= self.settings.cache_threshold:
                chosen, reason = best, "prefix_match"
            else:
                chosen, reason = self._most_free(candidates), "most_free"
        self.tree(chosen.replica).insert(blocks)
        return Route(chosen.replica, reason, matches[chosen.replica], total)

    def forget(self, replica: ReplicaId) -> None:
        self._trees.pop(replica, None)

    def _imbalanced(self, candidates: Sequence[Candidate]) -> bool:
        loads = [candidate.outstanding for candidate in candidates]
        most, least = max(loads), min(loads)
        return (most - least > self.settings.balance_abs_threshold
                and most > self.settings.balance_rel_threshold * least)

    def _least_loaded(self, candidates: Sequence[Candidate]) -> Candidate:
        return self._first(candidates, lambda c: (c.outstanding, len(self.tree(c.replica))))

    def _most_free(self, candidates: Sequence[Candidate]) -> Candidate:
        return self._first(candidates, lambda c: (len(self.tree(c.replica)), c.outstanding))

    def _first(self, candidates: Sequence[Candidate],
               rank: Callable[[Candidate], tuple[int, int]]) -> Candidate:
        """The candidate of lowest rank; equal ranks are taken in turn."""
        best = min(rank(candidate) for candidate in candidates)
        tied = [candidate for candidate in candidates if rank(candidate) == best]
        chosen = tied[self._turn % len(tied)]
        self._turn += 1
        return chosen


#: Policy registry: config names a policy by key; a new policy is one class and one line here.
POLICIES: Mapping[str, Callable[[], RoutingPolicy]] = {
    RoundRobin.name: RoundRobin,
    LeastOutstanding.name: LeastOutstanding,
    PrefixAffinity.name: PrefixAffinity,
}


def make_policy(name: str, affinity: AffinitySettings | None = None) -> RoutingPolicy:
    """A fresh policy by registry name; `affinity` configures `prefix_affinity`."""
    if name == PrefixAffinity.name:
        return PrefixAffinity(affinity)
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown routing policy {name!r}; known: {', '.join(sorted(POLICIES))}") from None
