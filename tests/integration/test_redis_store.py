"""`RedisStore` and `ShardedStore` on real Redis Stack servers started from PyPI packages.

What every store does is in the shared contract suite (which runs on Redis
too); here is what only Redis does: sharing between processes, native expiry,
the index's life, and failing open when a node is killed or hangs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator

import numpy as np
import pytest
import pytest_asyncio
import redis.asyncio as aredis

from cascache._errors import ConfigError
from cascache._types import CacheEntry, Fingerprint, Namespace, PurgeSelector, Scope, Usage, Vector
from cascache.stores import open_store
from cascache.stores import redis as redis_store_module
from cascache.stores.redis import RedisStore
from cascache.stores.redis_stack_server import RedisStackServer
from cascache.stores.sharded import ShardedStore
from tests.redis_support import fresh_prefix, session_redis

pytestmark = pytest.mark.integration

DIM = 16
NS = Namespace("ns-a")
SCOPE = Scope("tenant:1")


def unit(seed: int) -> Vector:
    vector = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return vector / np.linalg.norm(vector)


def entry(n: int, *, namespace: str = NS, scope: str = SCOPE, expires_at: float | None = None,
          tags: tuple[str, ...] = (), created_at: float | None = None, fingerprint: str | None = None) -> CacheEntry:
    return CacheEntry(
        id=f"id-{n}",
        fingerprint=Fingerprint(fingerprint or f"fp-{n}"),
        namespace=Namespace(namespace),
        scope=Scope(scope),
        version="v1",
        provider="openai",
        model="m",
        query=f"q{n}",
        vector=unit(n),
        response={"n": n},
        usage=Usage(input_tokens=n),
        created_at=time.time() if created_at is None else created_at,
        expires_at=expires_at,
        tags=tags,
    )


@pytest.fixture(scope="session")
def server() -> RedisStackServer:
    return session_redis()


@pytest_asyncio.fixture
async def raw(server: RedisStackServer) -> AsyncIterator[aredis.Redis]:
    client = aredis.Redis.from_url(server.url, protocol=3)
    yield client
    await client.aclose()


@pytest_asyncio.fixture
async def pair(server: RedisStackServer) -> AsyncIterator[tuple[RedisStore, RedisStore]]:
    """Two stores on one server and prefix, as two gateway replicas would have."""
    prefix = fresh_prefix()
    first, second = RedisStore(server.url, DIM, prefix=prefix), RedisStore(server.url, DIM, prefix=prefix)
    yield first, second
    await first.close()
    await second.close()


async def test_two_replicas_see_each_others_entries_hits_and_purges(pair: tuple[RedisStore, RedisStore]) -> None:
    first, second = pair
    await first.put(entry(1, tags=("doc-1",)))
    await first.put(entry(2))
    now = time.time()

    got = await second.get(Fingerprint("fp-1"), SCOPE, now)
    near = await second.nearest(NS, SCOPE, unit(2), 1, now)
    await second.record_hit("id-1", now)

    assert got is not None and got.response == {"n": 1}
    assert [hit.id for hit, _ in near] == ["id-2"]
    again = await first.get(Fingerprint("fp-1"), SCOPE, now)
    assert again is not None and again.hits == 1

    assert await second.purge(PurgeSelector(tag="doc-1")) == 1
    assert await first.get(Fingerprint("fp-1"), SCOPE, now) is None
    assert [hit.id for hit, _ in await first.nearest(NS, SCOPE, unit(1), 5, now)] == ["id-2"]
    assert (await first.stats()).entries == (await second.stats()).entries == 1


async def test_native_expiry_removes_the_entry_with_its_pointer_and_counters(
    pair: tuple[RedisStore, RedisStore], raw: aredis.Redis
) -> None:
    store, _ = pair
    await store.put(entry(1, expires_at=time.time() + 0.3))
    await store.put(entry(2))
    assert await raw.exists(f"{store.prefix}e:id-1", f"{store.prefix}h:id-1", f"{store.prefix}fp:fp-1") == 3

    await asyncio.sleep(0.5)

    # Redis deleted the keys itself; no sweep ran, and no caller clock is involved.
    assert await raw.exists(f"{store.prefix}e:id-1", f"{store.prefix}h:id-1", f"{store.prefix}fp:fp-1") == 0
    assert await store.get(Fingerprint("fp-1"), SCOPE, now=0.0) is None
    assert [hit.id for hit, _ in await store.nearest(NS, SCOPE, unit(1), 5, now=0.0)] == ["id-2"]
    # sweep then only prunes the bookkeeping of what Redis already removed.
    assert await store.sweep(time.time()) == 0
    assert await raw.zcard(f"{store.prefix}lru") == 1 and await raw.zcard(f"{store.prefix}exp") == 0
    assert (await store.stats()).extra["expired_natively"] == 1


async def max_doc_id(raw: aredis.Redis, index: str) -> int:
    """Grows each time RediSearch (re)indexes a document."""
    info = await raw.execute_command("FT.INFO", index)  # type: ignore[no-untyped-call]
    return int(info[b"max_doc_id"])


async def test_record_hit_does_not_reindex_the_entry(pair: tuple[RedisStore, RedisStore], raw: aredis.Redis) -> None:
    """Hit counters live outside the indexed hash: any write to it re-inserts the HNSW node."""
    store, _ = pair
    await store.put(entry(1))
    before = await max_doc_id(raw, store.index_name)

    for _ in range(5):
        await store.record_hit("id-1", time.time())

    assert await max_doc_id(raw, store.index_name) == before
    got = await store.get(Fingerprint("fp-1"), SCOPE, time.time())
    assert got is not None and got.hits == 5


async def test_query_syntax_in_scopes_and_tags_is_literal(pair: tuple[RedisStore, RedisStore]) -> None:
    store, _ = pair
    scopes = ["tenant:a", "tenant:a/user:x", "tenant:a/user:x y", "*", "tenant:a|tenant:b", "tenant:a}"]
    for n, scope in enumerate(scopes, start=1):
        await store.put(entry(n, scope=scope, tags=(f"doc {n}, v{n}|x",), created_at=1_000.0 + n))

    for n, scope in enumerate(scopes, start=1):
        found = await store.nearest(NS, Scope(scope), unit(100), 10, now=2_000.0)
        assert [hit.id for hit, _ in found] == [f"id-{n}"], scope
    assert await store.purge(PurgeSelector(tag="doc 2, v2|x")) == 1
    assert await store.purge(PurgeSelector(scope=Scope("*"))) == 1
    assert await store.purge(PurgeSelector(scope=Scope("tenant:a|tenant:b"))) == 1
    assert sorted(e.id for e in await store.list_entries()) == ["id-1", "id-3", "id-6"]


async def test_an_index_of_another_dimension_is_refused(server: RedisStackServer) -> None:
    prefix = fresh_prefix()
    first, second = RedisStore(server.url, DIM, prefix=prefix), RedisStore(server.url, DIM * 2, prefix=prefix)
    try:
        await first.put(entry(1))
        with pytest.raises(ConfigError, match="holds 16-d vectors"):
            await second.stats()
    finally:
        await first.close()
        await second.close()


async def test_large_namespaces_are_searched_with_the_batches_policy(
    pair: tuple[RedisStore, RedisStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The BATCHES query path gives the same answers; which path a namespace takes follows its size."""
    monkeypatch.setattr(redis_store_module, "LARGE_FILTER", 10)
    store, _ = pair
    for n in range(20):
        await store.put(entry(n, namespace="ns-big"))
    for n in range(20, 22):
        await store.put(entry(n, namespace="ns-small"))

    assert await store.prefers_batches(Namespace("ns-big"), SCOPE)
    assert not await store.prefers_batches(Namespace("ns-small"), SCOPE)
    big = await store.nearest(Namespace("ns-big"), SCOPE, unit(7), 2, time.time())
    small = await store.nearest(Namespace("ns-small"), SCOPE, unit(21), 5, time.time())
    assert len(big) == 2 and big[0][0].id == "id-7" and big[0][1] == pytest.approx(1.0, abs=1e-5)
    assert [hit.id for hit, _ in small] == ["id-21", "id-20"]


async def test_a_burst_beyond_the_pool_waits_instead_of_failing(server: RedisStackServer) -> None:
    store = RedisStore(server.url, DIM, prefix=fresh_prefix(), max_connections=2)
    try:
        await store.put(entry(1))
        results = await asyncio.gather(*(store.nearest(NS, SCOPE, unit(1), 1, time.time()) for _ in range(100)))
        assert all(found[0][0].id == "id-1" for found in results)
    finally:
        await store.close()


async def test_open_store_with_one_redis_url(server: RedisStackServer) -> None:
    store = open_store(f"{server.url}?prefix={fresh_prefix()}", DIM, max_entries=100)
    try:
        await store.put(entry(1))
        got = await store.get(Fingerprint("fp-1"), SCOPE, time.time())
        assert got is not None and got.id == "id-1"
        assert (await store.stats()).entries == 1
    finally:
        await store.close()


# --- nodes that die, hang and come back -------------------------------------------------


@pytest.fixture
def nodes() -> Iterator[list[RedisStackServer]]:
    servers = [RedisStackServer() for _ in range(3)]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.close()


def sharded(servers: list[RedisStackServer], timeout_s: float = 0.2) -> ShardedStore:
    stores = [
        RedisStore(server.url, DIM, prefix="cc:", socket_timeout_s=timeout_s, connect_timeout_s=timeout_s)
        for server in servers
    ]
    return ShardedStore(stores, retry_interval_s=0.2)


async def test_a_restarted_node_gets_its_index_back(nodes: list[RedisStackServer]) -> None:
    node = nodes[0]
    store = RedisStore(node.url, DIM, prefix="cc:")
    try:
        await store.put(entry(1))
        node.stop()
        node.start()  # same port, empty: no persistence, no index

        await store.put(entry(2))

        assert [hit.id for hit, _ in await store.nearest(NS, SCOPE, unit(2), 5, time.time())] == ["id-2"]
    finally:
        await store.close()


async def test_killed_node_fails_open_and_hits_resume_after_restart(nodes: list[RedisStackServer]) -> None:
    """A cache loop (look up; on a miss, write back) while one of three nodes is killed by pid and restarted."""
    store = sharded(nodes)
    namespaces = [Namespace(f"ns-{n}") for n in range(45)]
    owner = {ns: store.shard_for(ns).node_name for ns in namespaces}
    victim = nodes[1]
    victim_name = store.shards[1].node_name
    assert 5 < sum(name == victim_name for name in owner.values()) < 30

    async def one_round() -> dict[str, list[bool]]:
        """Per namespace: exact and semantic lookup of its one entry, write-back on a miss. Hits by node."""
        hits: dict[str, list[bool]] = {}
        for n, ns in enumerate(namespaces):
            now = time.time()
            exact = await store.get(Fingerprint(f"fp-{ns}"), SCOPE, now)
            near = await store.nearest(ns, SCOPE, unit(n), 1, now)
            if exact is not None and near:
                await store.record_hit(exact.id, now)
            else:
                await store.put(entry(n, namespace=ns, fingerprint=f"fp-{ns}"))
            hits.setdefault(owner[ns], []).append(exact is not None and bool(near))
        return hits

    try:
        await one_round()  # fill
        warm = await one_round()
        assert all(all(values) for values in warm.values())

        os.kill(victim.pid or 0, signal.SIGKILL)
        victim.stop()  # reap the killed process
        down = await one_round()
        down_again = await one_round()

        for name in {**down, **down_again}:
            if name == victim_name:
                assert not any(down[name]) and not any(down_again[name])
            else:
                assert all(down[name]) and all(down_again[name]), name
        stats = await store.stats()
        assert stats.extra["shards_down"] == [victim_name]
        assert stats.extra["shards"][victim_name]["failed_open_lookups"] > 0
        assert stats.extra["shards"][victim_name]["dropped_writes"] > 0
        others = [info for name, info in stats.extra["shards"].items() if name != victim_name]
        assert all(info["failed_open_lookups"] == info["dropped_writes"] == 0 for info in others)

        victim.start()  # same port, empty
        await asyncio.sleep(0.25)  # past the retry interval
        await one_round()  # misses on the victim's namespaces write back
        after = await one_round()

        assert all(all(values) for values in after.values()), after
        assert (await store.stats()).extra["shards"][victim_name]["state"] == "closed"
    finally:
        await store.close()


async def test_a_hung_node_costs_one_timeout_then_is_skipped(nodes: list[RedisStackServer]) -> None:
    store = sharded(nodes, timeout_s=0.2)
    frozen = store.shards[2].node_name
    namespace = next(Namespace(f"ns-{n}") for n in range(100) if store.shard_for(f"ns-{n}").node_name == frozen)
    healthy = next(Namespace(f"ns-{n}") for n in range(100) if store.shard_for(f"ns-{n}").node_name != frozen)
    await store.put(entry(1, namespace=namespace))
    await store.put(entry(2, namespace=healthy))
    os.kill(nodes[2].pid or 0, signal.SIGSTOP)
    try:
        started = time.perf_counter()
        results = [await store.nearest(namespace, SCOPE, unit(1), 1, time.time()) for _ in range(20)]
        elapsed = time.perf_counter() - started
        healthy_hits = [await store.nearest(healthy, SCOPE, unit(2), 1, time.time()) for _ in range(5)]

        assert results == [[]] * 20
        assert 0.15 < elapsed < 0.2 * 3  # one socket timeout, then the breaker skips the node
        assert all(len(found) == 1 for found in healthy_hits)
    finally:
        os.kill(nodes[2].pid or 0, signal.SIGCONT)
    await asyncio.sleep(0.25)
    assert len(await store.nearest(namespace, SCOPE, unit(1), 1, time.time())) == 1
    await store.close()
