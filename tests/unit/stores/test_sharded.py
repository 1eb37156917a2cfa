"""`ShardedStore` without servers: rendezvous routing, the circuit breaker, failing open.

Shards are in-memory stores that can be switched "down" (every call raises
`StoreUnavailable`, as `RedisStore` does when its node is unreachable). The
same behaviour against real Redis nodes killed by pid is in
tests/integration/test_redis_store.py.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest

from cascache._errors import StoreUnavailable
from cascache._types import (
    CacheEntry,
    Fingerprint,
    Namespace,
    PurgeSelector,
    Scope,
    StoreStats,
    Usage,
    Vector,
)
from cascache.stores.base import Store
from cascache.stores.memory import MemoryStore
from cascache.stores.sharded import BreakerState, CircuitBreaker, Rendezvous, ShardedStore, ShardNode

DIM = 8
SCOPE = Scope("tenant-1")
NOW = 2_000.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeShard(MemoryStore):
    """A `MemoryStore` with a node name, a call log and an off switch."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.node_name = name
        self.calls: Counter[str] = Counter()
        self.down = False
        self.error: Exception | None = None

    def _gate(self, operation: str) -> None:
        self.calls[operation] += 1
        if self.error is not None:
            raise self.error
        if self.down:
            raise StoreUnavailable(f"{self.node_name} is down")

    async def get(self, fingerprint: Fingerprint, scope: Scope, now: float) -> CacheEntry | None:
        self._gate("get")
        return await super().get(fingerprint, scope, now)

    async def nearest(
        self, namespace: Namespace, scope: Scope, vector: Vector, k: int, now: float
    ) -> list[tuple[CacheEntry, float]]:
        self._gate("nearest")
        return await super().nearest(namespace, scope, vector, k, now)

    async def put(self, entry: CacheEntry) -> None:
        self._gate("put")
        await super().put(entry)

    async def record_hit(self, entry_id: str, now: float) -> None:
        self._gate("record_hit")
        await super().record_hit(entry_id, now)

    async def purge(self, selector: PurgeSelector) -> int:
        self._gate("purge")
        return await super().purge(selector)

    async def sweep(self, now: float) -> int:
        self._gate("sweep")
        return await super().sweep(now)

    async def list_entries(self, offset: int = 0, limit: int = 50) -> list[CacheEntry]:
        self._gate("list_entries")
        return await super().list_entries(offset, limit)

    async def stats(self) -> StoreStats:
        self._gate("stats")
        return await super().stats()


def unit(seed: int) -> Vector:
    vector = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return vector / np.linalg.norm(vector)


def entry(n: int, namespace: str, fingerprint: str | None = None, **changes: Any) -> CacheEntry:
    fields: dict[str, Any] = {
        "id": f"id-{n}",
        "fingerprint": Fingerprint(fingerprint or f"fp-{n}"),
        "namespace": Namespace(namespace),
        "scope": SCOPE,
        "version": "v1",
        "provider": "openai",
        "model": "m",
        "query": f"q{n}",
        "vector": unit(n),
        "response": {"n": n},
        "usage": Usage(),
        "created_at": 1_000.0 + n,
        "expires_at": None,
    }
    fields.update(changes)
    return CacheEntry(**fields)


def make(names: tuple[str, ...] = ("a", "b", "c"), **options: Any) -> tuple[ShardedStore, dict[str, FakeShard], FakeClock]:
    shards = {name: FakeShard(name) for name in names}
    clock = FakeClock()
    return ShardedStore(list(shards.values()), clock=clock, **options), shards, clock


def key_owned_by(store: ShardedStore, node: str, stem: str, avoid: str | None = None) -> str:
    """A key that `node` owns (and, if given, `avoid` does not)."""
    for n in range(10_000):
        key = f"{stem}-{n}"
        owner = store.shard_for(key).node_name
        if owner == node and owner != avoid:
            return key
    raise AssertionError("no such key")


KEYS = [f"ns-{n}" for n in range(20_000)]


# --- rendezvous hashing -----------------------------------------------------------------


def test_rendezvous_depends_on_names_not_their_order() -> None:
    forward = Rendezvous(["r1:6379", "r2:6379", "r3:6379"])
    backward = Rendezvous(["r3:6379", "r2:6379", "r1:6379"])

    assert [forward.names[forward.owner(key)] for key in KEYS] == [backward.names[backward.owner(key)] for key in KEYS]


def test_rendezvous_spreads_keys_evenly() -> None:
    ring = Rendezvous([f"node-{n}" for n in range(5)])

    counts = Counter(ring.owner(key) for key in KEYS)

    assert len(counts) == 5
    assert all(0.85 * 4_000 < count < 1.15 * 4_000 for count in counts.values()), counts


def test_adding_a_node_moves_about_one_in_n_keys_and_only_to_the_new_node() -> None:
    before = Rendezvous([f"node-{n}" for n in range(5)])
    after = Rendezvous([f"node-{n}" for n in range(6)])

    moved = [key for key in KEYS if before.names[before.owner(key)] != after.names[after.owner(key)]]

    assert 0.8 / 6 < len(moved) / len(KEYS) < 1.2 / 6
    assert {after.names[after.owner(key)] for key in moved} == {"node-5"}


def test_removing_a_node_moves_only_its_keys() -> None:
    before = Rendezvous([f"node-{n}" for n in range(5)])
    after = Rendezvous([f"node-{n}" for n in range(5) if n != 2])

    for key in KEYS:
        old = before.names[before.owner(key)]
        if old != "node-2":
            assert after.names[after.owner(key)] == old


def test_rendezvous_refuses_duplicate_or_missing_names() -> None:
    with pytest.raises(ValueError, match="unique"):
        Rendezvous(["a", "a"])
    with pytest.raises(ValueError, match="at least one"):
        Rendezvous([])


# --- the circuit breaker ---------------------------------------------------------------


def state(breaker: CircuitBreaker) -> BreakerState:
    """Read through a call, so the type checker does not keep an earlier narrowing."""
    return breaker.state



def test_breaker_opens_on_failure_skips_then_lets_one_trial_through() -> None:
    breaker = CircuitBreaker(retry_interval_s=2.0)
    assert breaker.allow(0.0)

    breaker.failed(0.0)

    assert state(breaker) is BreakerState.OPEN and breaker.trips == 1
    assert not breaker.allow(1.9)
    assert breaker.allow(2.0)  # the trial
    assert state(breaker) is BreakerState.TRIAL
    assert not breaker.allow(2.1)  # one trial at a time
    breaker.succeeded()
    assert state(breaker) is BreakerState.CLOSED and breaker.allow(2.2)


def test_breaker_failed_trial_reopens_for_another_interval() -> None:
    breaker = CircuitBreaker(retry_interval_s=2.0)
    breaker.failed(0.0)
    assert breaker.allow(2.0)

    breaker.failed(2.0)

    assert state(breaker) is BreakerState.OPEN
    assert not breaker.allow(3.9)
    assert breaker.allow(4.0)


def test_breaker_counts_consecutive_failures_only() -> None:
    breaker = CircuitBreaker(retry_interval_s=1.0, failures_to_open=3)
    breaker.failed(0.0)
    breaker.failed(0.0)
    breaker.succeeded()
    breaker.failed(0.0)
    breaker.failed(0.0)
    assert state(breaker) is BreakerState.CLOSED
    breaker.failed(0.0)
    assert state(breaker) is BreakerState.OPEN


def test_abandoned_trial_lets_the_next_caller_try() -> None:
    breaker = CircuitBreaker(retry_interval_s=1.0)
    breaker.failed(0.0)
    assert breaker.allow(1.0)

    breaker.abandoned()

    assert breaker.allow(1.0)


# --- routing ------------------------------------------------------------------------------


async def test_semantic_search_asks_only_the_namespace_owner() -> None:
    store, shards, _ = make()
    namespace = key_owned_by(store, "b", "ns")
    await store.put(entry(1, namespace))

    found = await store.nearest(Namespace(namespace), SCOPE, unit(1), 1, NOW)

    assert [hit.id for hit, _ in found] == ["id-1"]
    assert {name: shard.calls["nearest"] for name, shard in shards.items()} == {"a": 0, "b": 1, "c": 0}
    assert (await shards["b"].stats()).entries == 1
    assert (await shards["a"].stats()).entries == (await shards["c"].stats()).entries == 0


async def test_exact_lookup_asks_every_node_and_trusts_only_the_namespace_owner() -> None:
    store, shards, _ = make()
    namespace = key_owned_by(store, "a", "ns")
    await store.put(entry(1, namespace))
    # An orphan: the same fingerprint on a node that does not own the namespace
    # (as left behind when a node is added and the namespace moves).
    await shards["c"].put(entry(2, namespace, fingerprint="fp-1"))

    got = await store.get(Fingerprint("fp-1"), SCOPE, NOW)

    assert got is not None and got.id == "id-1"
    assert {name: shard.calls["get"] for name, shard in shards.items()} == {"a": 1, "b": 1, "c": 1}
    assert await store.get(Fingerprint("fp-1"), Scope("tenant-2"), NOW) is None
    await store.purge(PurgeSelector(namespace=Namespace(namespace)))
    assert await store.get(Fingerprint("fp-1"), SCOPE, NOW) is None
    assert (await shards["c"].stats()).entries == 0  # the purge reached the orphan too


async def test_an_orphaned_entry_alone_is_never_served() -> None:
    store, shards, _ = make()
    namespace = key_owned_by(store, "a", "ns")
    await shards["b"].put(entry(1, namespace))

    assert await store.get(Fingerprint("fp-1"), SCOPE, NOW) is None
    assert await store.nearest(Namespace(namespace), SCOPE, unit(1), 1, NOW) == []


async def test_record_hit_goes_to_the_node_that_served_the_entry() -> None:
    store, shards, _ = make()
    namespace = key_owned_by(store, "b", "ns")
    await store.put(entry(1, namespace))
    [(hit, _)] = await store.nearest(Namespace(namespace), SCOPE, unit(1), 1, NOW)

    await store.record_hit(hit.id, NOW)
    await store.record_hit("id-from-another-process", NOW)  # unknown here: asked everywhere

    assert {name: shard.calls["record_hit"] for name, shard in shards.items()} == {"a": 1, "b": 2, "c": 1}
    [(again, _)] = await store.nearest(Namespace(namespace), SCOPE, unit(1), 1, NOW)
    assert again.hits == 1


async def test_list_entries_merges_nodes_newest_first_and_stats_add_up() -> None:
    store, _, _ = make()
    for n in range(1, 10):
        await store.put(entry(n, f"ns-{n}"))

    pages = [[e.id for e in await store.list_entries(offset, 4)] for offset in (0, 4, 8)]
    stats = await store.stats()

    assert pages == [["id-9", "id-8", "id-7", "id-6"], ["id-5", "id-4", "id-3", "id-2"], ["id-1"]]
    assert (stats.entries, stats.namespaces) == (9, 9)
    assert set(stats.extra["shards"]) == {"a", "b", "c"}


# --- failing open ---------------------------------------------------------------------------


async def test_a_down_node_fails_open_and_the_others_keep_serving() -> None:
    store, shards, _ = make()
    namespaces = {name: key_owned_by(store, name, "ns") for name in shards}
    for n, name in enumerate(shards, start=1):
        await store.put(entry(n, namespaces[name]))
    shards["b"].down = True

    results = {
        name: await store.nearest(Namespace(namespaces[name]), SCOPE, unit(n), 1, NOW)
        for n, name in enumerate(shards, start=1)
    }
    await store.put(entry(9, namespaces["b"]))  # dropped, silently
    await store.put(entry(10, namespaces["a"]))  # stored

    assert [len(found) for found in results.values()] == [1, 0, 1]
    # Exact lookups of entries on healthy nodes are undisturbed; those on b miss.
    assert [await store.get(Fingerprint(f"fp-{n}"), SCOPE, NOW) is not None for n in (1, 2, 3)] == [True, False, True]
    stats = await store.stats()
    assert stats.extra["shards_down"] == ["b"]
    assert stats.extra["failed_open_lookups"] >= 1 and stats.extra["dropped_writes"] == 1
    assert stats.extra["shards"]["b"]["state"] == "open"
    assert stats.entries == 3  # a and c: the entries 1, 3 and 10


async def test_an_open_breaker_skips_the_node_until_the_retry_interval() -> None:
    store, shards, clock = make(retry_interval_s=5.0)
    namespace = Namespace(key_owned_by(store, "b", "ns"))
    await store.put(entry(1, namespace))
    shards["b"].down = True

    assert await store.nearest(namespace, SCOPE, unit(1), 1, NOW) == []  # fails, opens
    for _ in range(10):
        assert await store.nearest(namespace, SCOPE, unit(1), 1, NOW) == []
    assert shards["b"].calls["nearest"] == 1  # skipped: a dead node costs no time

    shards["b"].down = False
    clock.now += 4.9
    assert await store.nearest(namespace, SCOPE, unit(1), 1, NOW) == []  # still skipped
    clock.now += 0.1
    assert len(await store.nearest(namespace, SCOPE, unit(1), 1, NOW)) == 1  # trial succeeds: back
    assert len(await store.nearest(namespace, SCOPE, unit(1), 1, NOW)) == 1
    node = (await store.stats()).extra["shards"]["b"]
    assert (node["state"], node["trips"], node["skipped"], node["failed_open_lookups"]) == ("closed", 1, 11, 12)


async def test_a_purge_missed_while_down_is_applied_before_the_node_serves_again() -> None:
    store, shards, clock = make(retry_interval_s=1.0)
    namespace = Namespace(key_owned_by(store, "b", "ns"))
    await store.put(entry(1, namespace, tags=("doc-1",)))
    await store.put(entry(2, namespace, tags=("doc-2",)))
    shards["b"].down = True

    purged_now = await store.purge(PurgeSelector(tag="doc-1"))
    shards["b"].down = False
    clock.now += 1.0

    found = await store.nearest(namespace, SCOPE, unit(1), 5, NOW)
    assert purged_now == 0
    assert [hit.id for hit, _ in found] == ["id-2"]
    node = (await store.stats()).extra["shards"]["b"]
    assert (node["purges_replayed"], node["pending_purges"]) == (1, 0)


async def test_errors_other_than_unavailability_are_not_hidden() -> None:
    store, shards, _ = make()
    namespace = Namespace(key_owned_by(store, "a", "ns"))
    shards["a"].error = ValueError("a bug, not an outage")

    with pytest.raises(ValueError, match="a bug"):
        await store.nearest(namespace, SCOPE, unit(1), 1, NOW)
    shards["a"].error = None
    assert (await store.stats()).extra["shards"]["a"]["state"] == "closed"


def test_fake_shard_is_a_shard_node_and_the_sharded_store_a_store() -> None:
    store, shards, _ = make()
    assert isinstance(shards["a"], ShardNode)
    assert isinstance(store, Store)
