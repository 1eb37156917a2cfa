"""`ShardedStore`: one logical store over several nodes, sharded by namespace, failing open.

Routing (rendezvous hashing, a.k.a. highest random weight):

- **An entry lives on the node that owns its namespace**: the node whose keyed
  hash of the namespace is highest. So a semantic search is one KNN query on
  one node. Adding a node moves only the namespaces the new node now wins,
  ~1/(N+1) of them; removing one moves only its own. Routing never looks at
  health: a down node's namespaces miss, they are not moved elsewhere and back.
- **Exact lookups ask every node at once** and accept an entry only from the
  node that owns its namespace. `get` knows only (fingerprint, scope), not the
  namespace, so it cannot route. The lookups run concurrently, so latency is
  about one round trip, and each is a single-key read (~10 µs of server time,
  against ~0.3-2 ms for a KNN query), so the busiest path stays cheap even though
  every node sees every exact lookup. Accepting only the owner's entry keeps
  one rule for both tiers: an entry orphaned on another node (the namespace
  moved when nodes were added) is never served, and simply ages out.
  (Alternatives weighed: a ``fingerprint -> namespace`` locator on the node
  owning the fingerprint costs one round trip on a miss, but couples failures:
  when a locator's node is down or restarts empty, exact lookups of entries on
  *healthy* nodes miss too, which the integration test caught. Routing entries
  by fingerprint would scatter a namespace's vectors over all nodes and make
  every KNN a scatter-gather. The way to route exact lookups to one node is to
  make the fingerprint carry its namespace's routing token, as a Redis Cluster
  hash tag does: see docs/redis.md.)
- **record_hit** follows the entry: the node that returned an id is remembered
  (bounded, per process); an unknown id is sent to every node (a no-op where it
  is absent).

Failing open, per node, with a circuit breaker (`CircuitBreaker`):

- A node is *failing* when a call raises `StoreUnavailable` (connection refused
  or lost, timeout, loading, out of memory). Lookups on its namespaces then
  return a miss, writes are dropped, and nothing is raised; every such event
  is counted per node (`stats().extra`; an exact lookup asks every node, so it
  counts on a failing node even when the entry would have been elsewhere) and
  reported to `on_fail_open`, which `Cache` points at its Prometheus counters
  (the tiers never see these errors, so they cannot count them).
  Other exceptions are bugs and propagate.
- After `failures_to_open` consecutive failures the breaker opens: the node is
  not called at all for `retry_interval_s` (calls are skipped and counted), so
  a dead node costs no latency. Then one trial call goes through; success
  closes the breaker, failure reopens it. Other nodes are never affected.
- Purges go to every node (also by namespace: an orphaned copy must go too).
  Purges that a failing node missed are queued (bounded) and replayed on it
  before it serves again, so an answer purged while its node was down is not
  served once the node returns. The queue is per process: only the replica that
  issued the purge replays it. A node restarted without persistence is empty
  anyway.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import hashlib
import heapq
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TypeVar, runtime_checkable

from cascache._errors import StoreUnavailable
from cascache._types import (
    CacheEntry,
    Fingerprint,
    Namespace,
    PurgeSelector,
    Scope,
    StoreStats,
    Vector,
)
from cascache.stores.base import Store

__all__ = ["BreakerState", "CircuitBreaker", "Rendezvous", "ShardNode", "ShardedStore"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Ids remembered for routing `record_hit` (per process; ~100 bytes each).
REMEMBERED_IDS: Final = 16_384
#: Purges queued per failing node; older ones are dropped (and counted) past this.
PENDING_PURGES: Final = 1_024


@runtime_checkable
class ShardNode(Store, Protocol):
    """A `Store` that can serve as a shard: it has a stable name."""

    node_name: str
    """Stable identity (e.g. ``host:port/db``): routing hashes it, so it must not change."""


class Rendezvous:
    """Highest-random-weight hashing of string keys onto named nodes.

    Invariants: the owner of a key depends only on the key and the set of
    names (not their order, not node health); adding a name moves exactly the
    keys the new name wins. Each node's weight is a keyed BLAKE2b of the key, so
    name and key are never concatenated into one ambiguous string.
    """

    def __init__(self, names: Sequence[str]) -> None:
        if not names:
            raise ValueError("rendezvous hashing needs at least one node")
        if len(set(names)) != len(names):
            raise ValueError(f"node names must be unique, got {list(names)}")
        self.names = tuple(names)
        # BLAKE2b keys are at most 64 bytes; longer names are hashed to fit.
        self._keys = [
            name.encode() if len(name.encode()) <= 64 else hashlib.blake2b(name.encode()).digest()
            for name in self.names
        ]

    def owner(self, key: str) -> int:
        """Index (into `names`) of the node that owns `key`."""
        data = key.encode()
        best, best_weight = 0, -1
        for index, node_key in enumerate(self._keys):
            weight = int.from_bytes(hashlib.blake2b(data, digest_size=8, key=node_key).digest(), "big")
            if weight > best_weight:
                best, best_weight = index, weight
        return best


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    """Calls go through."""
    OPEN = "open"
    """Calls are skipped until the retry interval has passed."""
    TRIAL = "trial"
    """One call is in flight to find out whether the node is back; others are skipped."""


@dataclass(slots=True)
class CircuitBreaker:
    """The per-node decision "call it or skip it", as a small state machine; no IO, no clock of its own."""

    retry_interval_s: float = 1.0
    failures_to_open: int = 1
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    """Consecutive failures."""
    opened_at: float = 0.0
    trips: int = 0
    """How often the breaker opened."""

    def allow(self, now: float) -> bool:
        """Whether a call may go to the node now; the call that turns OPEN into TRIAL is the trial."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN and now - self.opened_at >= self.retry_interval_s:
            self.state = BreakerState.TRIAL
            return True
        return False

    def succeeded(self) -> None:
        self.state = BreakerState.CLOSED
        self.failures = 0

    def failed(self, now: float) -> None:
        self.failures += 1
        if self.state is BreakerState.TRIAL or self.failures >= self.failures_to_open:
            if self.state is not BreakerState.OPEN:
                self.trips += 1
            self.state = BreakerState.OPEN
            self.opened_at = now

    def abandoned(self) -> None:
        """The call ended without a verdict (cancelled): let the next caller try again."""
        if self.state is BreakerState.TRIAL:
            self.state = BreakerState.OPEN


@dataclass(slots=True)
class NodeCounters:
    """What failing open cost on one node, since this process started."""

    failed_open_lookups: int = 0
    """get/nearest answered as a miss because the node failed or was skipped."""
    dropped_writes: int = 0
    """put not stored."""
    failed_other: int = 0
    """record_hit, purge, sweep, stats, list that could not reach the node."""
    skipped: int = 0
    """Calls not even tried because the breaker was open (included in the counts above)."""
    purges_replayed: int = 0
    purges_lost: int = 0
    """Queued purges dropped because the queue was full."""


@dataclass(slots=True)
class _Node:
    index: int
    store: ShardNode
    breaker: CircuitBreaker
    counters: NodeCounters = field(default_factory=NodeCounters)
    pending_purges: deque[PurgeSelector] = field(default_factory=lambda: deque(maxlen=PENDING_PURGES))


#: Which counter a failed call of each kind increments.
_KIND_COUNTER: Final = {"lookup": "failed_open_lookups", "write": "dropped_writes", "other": "failed_other"}


class ShardedStore:
    """A `Store` over `ShardNode`s: routes by namespace, fails open per node (see the module docstring)."""

    def __init__(
        self,
        shards: Sequence[ShardNode],
        *,
        retry_interval_s: float = 1.0,
        failures_to_open: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """
        Args:
            shards: the nodes; their `node_name`s decide routing, not their order.
            retry_interval_s: how long an open breaker skips its node before one trial call.
            failures_to_open: consecutive failures that open the breaker. 1 by default:
                a cache would rather miss on one node for a second than keep
                requests waiting on its timeouts.
            clock: monotonic seconds, for the breakers (tests pass a fake).
        """
        self._nodes = [
            _Node(index, shard, CircuitBreaker(retry_interval_s=retry_interval_s, failures_to_open=failures_to_open))
            for index, shard in enumerate(shards)
        ]
        self._ring = Rendezvous([shard.node_name for shard in shards])
        self._clock = clock
        self._owner_of_id: OrderedDict[str, int] = OrderedDict()
        self.on_fail_open: Callable[[str, str], None] | None = None
        """Called as ``on_fail_open(kind, node_name)`` for each call that failed open
        (kind: "lookup", "write" or "other"), skipped ones included."""

    @property
    def shards(self) -> list[ShardNode]:
        return [node.store for node in self._nodes]

    def shard_for(self, key: str) -> ShardNode:
        """The node owning a namespace."""
        return self._nodes[self._ring.owner(key)].store

    # --- the Store protocol -----------------------------------------------------------

    async def get(self, fingerprint: Fingerprint, scope: Scope, now: float) -> CacheEntry | None:
        found = await self._everywhere("lookup", lambda store: store.get(fingerprint, scope, now), None)
        for node, entry in zip(self._nodes, found, strict=True):
            if entry is not None and self._node(entry.namespace) is node:
                self._remember(entry.id, node)
                return entry
        return None

    async def nearest(
        self, namespace: Namespace, scope: Scope, vector: Vector, k: int, now: float
    ) -> list[tuple[CacheEntry, float]]:
        node = self._node(namespace)
        nothing: list[tuple[CacheEntry, float]] = []
        found = await self._call(node, "lookup", lambda store: store.nearest(namespace, scope, vector, k, now), nothing)
        for entry, _ in found:
            self._remember(entry.id, node)
        return found

    async def put(self, entry: CacheEntry) -> None:
        await self._call(self._node(entry.namespace), "write", lambda store: store.put(entry), None)

    async def record_hit(self, entry_id: str, now: float) -> None:
        index = self._owner_of_id.get(entry_id)
        if index is None:
            await self._everywhere("other", lambda store: store.record_hit(entry_id, now), None)
        else:
            await self._call(self._nodes[index], "other", lambda store: store.record_hit(entry_id, now), None)

    async def purge(self, selector: PurgeSelector) -> int:
        counts = await asyncio.gather(*(self._purge_on(node, selector) for node in self._nodes))
        return sum(counts)

    async def sweep(self, now: float) -> int:
        return sum(await self._everywhere("other", lambda store: store.sweep(now), 0))

    async def list_entries(self, offset: int = 0, limit: int = 50) -> list[CacheEntry]:
        """Newest first across nodes (each node is asked for its first offset+limit); unreachable nodes are left out."""
        if limit <= 0:
            return []
        nothing: list[CacheEntry] = []
        pages = await self._everywhere("other", lambda store: store.list_entries(0, offset + limit), nothing)
        merged = heapq.merge(*pages, key=lambda entry: entry.created_at, reverse=True)
        return list(merged)[offset : offset + limit]

    async def stats(self) -> StoreStats:
        """Totals over reachable nodes; `extra` tells per node what failing open cost."""
        results = await self._everywhere("other", lambda store: _optional(store.stats()), None)
        reachable = [stats for stats in results if stats is not None]
        per_node: dict[str, Any] = {}
        for node, stats in zip(self._nodes, results, strict=True):
            per_node[node.store.node_name] = {
                "state": node.breaker.state.value,
                "reachable": stats is not None,
                "entries": None if stats is None else stats.entries,
                "trips": node.breaker.trips,
                "pending_purges": len(node.pending_purges),
                **dataclasses.asdict(node.counters),
                **({} if stats is None else {"store": dict(stats.extra)}),
            }
        return StoreStats(
            entries=sum(stats.entries for stats in reachable),
            namespaces=sum(stats.namespaces for stats in reachable),
            evictions=sum(stats.evictions for stats in reachable),
            expired_swept=sum(stats.expired_swept for stats in reachable),
            extra={
                "shards": per_node,
                "shards_down": [name for name, info in per_node.items() if not info["reachable"]],
                "failed_open_lookups": sum(node.counters.failed_open_lookups for node in self._nodes),
                "dropped_writes": sum(node.counters.dropped_writes for node in self._nodes),
                "failed_other": sum(node.counters.failed_other for node in self._nodes),
            },
        )

    async def close(self) -> None:
        await asyncio.gather(*(node.store.close() for node in self._nodes), return_exceptions=True)

    # --- failing open -------------------------------------------------------------------

    def _node(self, key: str) -> _Node:
        return self._nodes[self._ring.owner(key)]

    async def _everywhere(self, kind: str, call: Callable[[ShardNode], Awaitable[T]], fallback: T) -> list[T]:
        """`_call` on every node at once; results in node order."""
        if len(self._nodes) == 1:  # the common single-node URL: no task per call
            return [await self._call(self._nodes[0], kind, call, fallback)]
        return list(await asyncio.gather(*(self._call(node, kind, call, fallback) for node in self._nodes)))

    async def _call(self, node: _Node, kind: str, call: Callable[[ShardNode], Awaitable[T]], fallback: T) -> T:
        """Run `call(node.store)` unless the node's breaker is open; on `StoreUnavailable`, count and return `fallback`."""
        if not node.breaker.allow(self._clock()):
            node.counters.skipped += 1
            self._failed_open(node, kind)
            return fallback
        try:
            await self._replay_purges(node)
            result = await call(node.store)
        except StoreUnavailable as exc:
            if node.breaker.state is not BreakerState.OPEN:
                log.warning("store node %s unavailable, failing open: %s", node.store.node_name, exc)
            node.breaker.failed(self._clock())
            self._failed_open(node, kind)
            return fallback
        except BaseException:
            node.breaker.abandoned()
            raise
        if node.breaker.state is not BreakerState.CLOSED:
            log.warning("store node %s is back", node.store.node_name)
        node.breaker.succeeded()
        return result

    def _failed_open(self, node: _Node, kind: str) -> None:
        counter = _KIND_COUNTER[kind]
        setattr(node.counters, counter, getattr(node.counters, counter) + 1)
        if self.on_fail_open is not None:
            self.on_fail_open(kind, node.store.node_name)

    async def _purge_on(self, node: _Node, selector: PurgeSelector) -> int:
        reached = False

        async def purge(store: ShardNode) -> int:
            nonlocal reached
            removed = await store.purge(selector)
            reached = True
            return removed

        removed = await self._call(node, "other", purge, 0)
        if not reached:
            if len(node.pending_purges) == node.pending_purges.maxlen:
                node.counters.purges_lost += 1
            node.pending_purges.append(selector)
        return removed

    async def _replay_purges(self, node: _Node) -> None:
        """Before a node that missed purges serves again, apply them (oldest first)."""
        while node.pending_purges:
            selector = node.pending_purges[0]
            await node.store.purge(selector)
            # A concurrent call may have replayed it too (purges are idempotent); pop it once.
            if node.pending_purges and node.pending_purges[0] is selector:
                node.pending_purges.popleft()
                node.counters.purges_replayed += 1

    def _remember(self, entry_id: str, node: _Node) -> None:
        self._owner_of_id[entry_id] = node.index
        self._owner_of_id.move_to_end(entry_id)
        if len(self._owner_of_id) > REMEMBERED_IDS:
            self._owner_of_id.popitem(last=False)


async def _optional(call: Awaitable[T]) -> T | None:
    return await call
