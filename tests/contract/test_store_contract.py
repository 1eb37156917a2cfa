"""The contract every `Store` keeps, run against every backend.

A new backend is one line in `BACKENDS`: a function that builds it in a
temporary directory with the given options.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio

from cascache._types import CacheEntry, Fingerprint, Namespace, PurgeSelector, Scope, Usage, Vector
from cascache.stores import MemoryStore, SqliteHnswStore, Store, open_store
from tests.redis_support import fresh_redis_store

DIM = 16
NS_A, NS_B, NS_C = Namespace("ns-a"), Namespace("ns-b"), Namespace("ns-c")
SCOPE_1, SCOPE_2 = Scope("tenant-1"), Scope("tenant-2")

#: backend name -> builder(tmp_path, **options). Redis will be one more line.
BACKENDS: dict[str, Callable[..., Store]] = {
    "memory": lambda tmp_path, **options: MemoryStore(**options),
    "sqlite-exact": lambda tmp_path, **options: SqliteHnswStore(tmp_path / "store", DIM, **options),
    # Every namespace goes to an HNSW graph at once, so the contract covers that path too.
    "sqlite-hnsw": lambda tmp_path, **options: SqliteHnswStore(
        tmp_path / "store", DIM, exact_search_below=1, **options
    ),
    "redis": lambda tmp_path, **options: fresh_redis_store(DIM, **options),
}

StoreMaker = Callable[..., Store]


@pytest_asyncio.fixture(params=list(BACKENDS))
async def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreMaker]:
    """Builds the backend under test (once per test) with options such as max_entries; closes it after."""
    opened: list[Store] = []

    def make(**options: Any) -> Store:
        store = BACKENDS[request.param](tmp_path, **options)
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()


@pytest_asyncio.fixture
async def store(make_store: StoreMaker) -> Store:
    return make_store()


def unit(seed: int) -> Vector:
    vector = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return vector / np.linalg.norm(vector)


def entry(
    n: int,
    *,
    namespace: Namespace = NS_A,
    scope: Scope = SCOPE_1,
    version: str = "v1",
    vector: Vector | None = None,
    with_vector: bool = True,
    created_at: float | None = None,
    expires_at: float | None = None,
    tags: tuple[str, ...] = (),
) -> CacheEntry:
    return CacheEntry(
        id=f"id-{n}",
        fingerprint=Fingerprint(f"fp-{n}"),
        namespace=namespace,
        scope=scope,
        version=version,
        provider="openai",
        model="test-model",
        query=f"question {n}" if with_vector else None,
        vector=(vector if vector is not None else unit(n)) if with_vector else None,
        response={
            "id": f"chatcmpl-{n}",
            "choices": [{"message": {"role": "assistant", "content": f"answer {n}"}}],
        },
        usage=Usage(input_tokens=10 + n, output_tokens=5),
        created_at=1_000.0 + n if created_at is None else created_at,
        expires_at=expires_at,
        tags=tags,
    )


async def ids_near(
    store: Store, namespace: Namespace, scope: Scope, vector: Vector, k: int = 10
) -> list[str]:
    return [found.id for found, _ in await store.nearest(namespace, scope, vector, k, now=5_000.0)]


async def test_every_backend_is_a_store(store: Store) -> None:
    assert isinstance(store, Store)


async def test_put_get_roundtrip_keeps_every_field(store: Store) -> None:
    original = CacheEntry(
        id="3f2a",
        fingerprint=Fingerprint("fp-roundtrip"),
        namespace=NS_A,
        scope=SCOPE_1,
        version="kb-7",
        provider="anthropic",
        model="claude-x",
        query="How do I reset my PIN?",
        vector=unit(7),
        response={
            "id": "msg_1",
            "content": [{"type": "text", "text": "Go to settings. ✓"}],
            "n": [1, 2.5, None],
        },
        usage=Usage(input_tokens=120, output_tokens=40, cache_read_tokens=100, cache_write_tokens=None),
        created_at=1_234.5,
        expires_at=9_999.0,
        tags=("doc-1", "doc-2"),
        hits=3,
        last_hit_at=1_300.0,
    )
    await store.put(original)

    got = await store.get(original.fingerprint, SCOPE_1, now=2_000.0)

    assert got is not None
    assert got.vector is not None and original.vector is not None
    assert got.vector.dtype == np.float32
    np.testing.assert_array_equal(got.vector, original.vector)
    assert dataclasses.replace(got, vector=None) == dataclasses.replace(original, vector=None)


async def test_get_of_unknown_fingerprint_is_none(store: Store) -> None:
    await store.put(entry(1))
    assert await store.get(Fingerprint("fp-unknown"), SCOPE_1, now=2_000.0) is None


async def test_entry_without_vector_is_found_by_get_only(store: Store) -> None:
    await store.put(entry(1, with_vector=False))
    await store.put(entry(2))

    got = await store.get(Fingerprint("fp-1"), SCOPE_1, now=2_000.0)

    assert got is not None and got.vector is None and got.query is None
    assert await ids_near(store, NS_A, SCOPE_1, unit(1)) == ["id-2"]


async def test_put_with_same_fingerprint_replaces_the_entry(store: Store) -> None:
    await store.put(entry(1))
    newer = dataclasses.replace(entry(2), fingerprint=Fingerprint("fp-1"))

    await store.put(newer)

    got = await store.get(Fingerprint("fp-1"), SCOPE_1, now=2_000.0)
    assert got is not None and got.id == "id-2" and got.response == newer.response
    assert (await store.stats()).entries == 1
    # The old vector left the index with its entry.
    assert await ids_near(store, NS_A, SCOPE_1, unit(1)) == ["id-2"]


async def test_returned_entries_are_copies(store: Store) -> None:
    await store.put(entry(1))
    got = await store.get(Fingerprint("fp-1"), SCOPE_1, now=2_000.0)
    assert got is not None
    got.hits = 99
    got.tags = ("changed",)

    again = await store.get(Fingerprint("fp-1"), SCOPE_1, now=2_000.0)

    assert again is not None and again.hits == 0 and again.tags == ()


async def test_get_never_crosses_scopes(store: Store) -> None:
    await store.put(entry(1, scope=SCOPE_1))

    assert await store.get(Fingerprint("fp-1"), SCOPE_2, now=2_000.0) is None
    assert await store.get(Fingerprint("fp-1"), SCOPE_1, now=2_000.0) is not None


async def test_expired_entry_is_never_returned(store: Store) -> None:
    await store.put(entry(1, expires_at=2_000.0))
    await store.put(entry(2))

    assert await store.get(Fingerprint("fp-1"), SCOPE_1, now=1_999.0) is not None
    assert await store.get(Fingerprint("fp-1"), SCOPE_1, now=2_000.0) is None
    before = await store.nearest(NS_A, SCOPE_1, unit(1), 2, now=1_999.0)
    after = await store.nearest(NS_A, SCOPE_1, unit(1), 2, now=2_000.0)
    assert [found.id for found, _ in before] == ["id-1", "id-2"]
    assert [found.id for found, _ in after] == ["id-2"]


async def test_sweep_deletes_expired_entries_and_counts_them(store: Store) -> None:
    await store.put(entry(1, expires_at=1_500.0))
    await store.put(entry(2, expires_at=2_500.0))
    await store.put(entry(3, expires_at=None))

    assert await store.sweep(now=2_000.0) == 1
    assert await store.sweep(now=2_000.0) == 0
    assert await store.sweep(now=3_000.0) == 1

    # Deleted, not merely hidden: even a lookup "in the past" finds nothing.
    assert await store.get(Fingerprint("fp-1"), SCOPE_1, now=0.0) is None
    assert await store.get(Fingerprint("fp-2"), SCOPE_1, now=0.0) is None
    assert await store.get(Fingerprint("fp-3"), SCOPE_1, now=3_000.0) is not None
    stats = await store.stats()
    assert (stats.entries, stats.expired_swept) == (1, 2)
    assert [found.id for found, _ in await store.nearest(NS_A, SCOPE_1, unit(1), 5, now=0.0)] == ["id-3"]


def with_cosine(base: Vector, other: Vector, cosine: float) -> Vector:
    """A unit vector whose cosine with unit `base` is exactly `cosine` (other is any non-parallel vector)."""
    orthogonal = other - float(other @ base) * base
    orthogonal /= np.linalg.norm(orthogonal)
    out: Vector = (cosine * base + np.sqrt(1 - cosine**2) * orthogonal).astype(np.float32)
    return out


async def test_nearest_ranks_by_cosine_and_reports_similarity(store: Store) -> None:
    query = unit(100)
    cosines = {"id-1": 0.2, "id-2": 0.95, "id-3": -0.5, "id-4": 0.7}
    for n, cosine in enumerate(cosines.values(), start=1):
        await store.put(entry(n, vector=with_cosine(query, unit(n), cosine)))

    found = await store.nearest(NS_A, SCOPE_1, query, 4, now=2_000.0)

    assert [hit.id for hit, _ in found] == ["id-2", "id-4", "id-1", "id-3"]
    assert [similarity for _, similarity in found] == pytest.approx([0.95, 0.7, 0.2, -0.5], abs=1e-5)


async def test_nearest_compares_by_cosine_not_length(store: Store) -> None:
    query = unit(100)
    await store.put(entry(1, vector=3.0 * with_cosine(query, unit(1), 0.9)))
    await store.put(entry(2, vector=with_cosine(query, unit(2), 0.8)))

    found = await store.nearest(NS_A, SCOPE_1, 0.5 * query, 2, now=2_000.0)

    assert [hit.id for hit, _ in found] == ["id-1", "id-2"]
    assert found[0][1] == pytest.approx(0.9, abs=1e-5)


@pytest.mark.parametrize("k", [1, 2, 5])
async def test_nearest_returns_at_most_k(store: Store, k: int) -> None:
    for n in range(1, 4):
        await store.put(entry(n))

    found = await store.nearest(NS_A, SCOPE_1, unit(1), k, now=2_000.0)

    assert len(found) == min(k, 3)
    assert found[0][0].id == "id-1" and found[0][1] == pytest.approx(1.0, abs=1e-5)


async def test_nearest_stays_in_its_namespace(store: Store) -> None:
    await store.put(entry(1, namespace=NS_A))
    await store.put(entry(2, namespace=NS_B, vector=unit(1)))  # the very same vector, other namespace

    assert await ids_near(store, NS_A, SCOPE_1, unit(1)) == ["id-1"]
    assert await ids_near(store, NS_B, SCOPE_1, unit(1)) == ["id-2"]


async def test_nearest_never_crosses_scopes(store: Store) -> None:
    """Security property: even inside one namespace, another scope's entry is never returned."""
    await store.put(entry(1, scope=SCOPE_2, vector=unit(1)))  # the best match, but not ours
    await store.put(entry(2, scope=SCOPE_1))
    await store.put(entry(3, scope=SCOPE_1))

    assert set(await ids_near(store, NS_A, SCOPE_1, unit(1))) == {"id-2", "id-3"}
    found = await store.nearest(NS_A, SCOPE_1, unit(1), 1, now=2_000.0)
    assert [hit.scope for hit, _ in found] == [SCOPE_1]
    assert await ids_near(store, NS_A, SCOPE_2, unit(1)) == ["id-1"]
    assert await ids_near(store, NS_A, Scope("tenant-3"), unit(1)) == []


async def test_nearest_in_empty_or_unknown_namespace_is_empty(store: Store) -> None:
    assert await store.nearest(NS_A, SCOPE_1, unit(1), 3, now=2_000.0) == []
    await store.put(entry(1, namespace=NS_A))
    assert await store.nearest(NS_B, SCOPE_1, unit(1), 3, now=2_000.0) == []


async def test_record_hit_counts_and_refreshes(store: Store) -> None:
    await store.put(entry(1))

    await store.record_hit("id-1", now=1_500.0)
    await store.record_hit("id-1", now=1_600.0)
    await store.record_hit("id-unknown", now=1_600.0)  # gone meanwhile: not an error

    got = await store.get(Fingerprint("fp-1"), SCOPE_1, now=2_000.0)
    assert got is not None and (got.hits, got.last_hit_at) == (2, 1_600.0)


async def test_lru_eviction_keeps_recently_used_entries(make_store: StoreMaker) -> None:
    store = make_store(max_entries=3)
    for n in (1, 2, 3):
        await store.put(entry(n, created_at=float(n)))
    await store.record_hit("id-1", now=4.0)  # 1 is now the most recently used

    await store.put(entry(4, created_at=5.0))
    await store.put(entry(5, created_at=6.0))

    present = {n for n in range(1, 6) if await store.get(Fingerprint(f"fp-{n}"), SCOPE_1, now=7.0)}
    assert present == {1, 4, 5}
    stats = await store.stats()
    assert (stats.entries, stats.evictions) == (3, 2)
    assert set(await ids_near(store, NS_A, SCOPE_1, unit(2))) == {"id-1", "id-4", "id-5"}


#: name -> entry (namespace, scope, version, tags). "doc-10" must survive a purge of "doc-1".
POPULATION: dict[int, tuple[Namespace, Scope, str, tuple[str, ...]]] = {
    1: (NS_A, SCOPE_1, "v1", ("doc-1",)),
    2: (NS_A, SCOPE_1, "v2", ("doc-1", "doc-2")),
    3: (NS_B, SCOPE_2, "v1", ("doc-2",)),
    4: (NS_B, SCOPE_2, "v2", ()),
    5: (NS_C, SCOPE_1, "v1", ("doc-10",)),
}


@pytest.mark.parametrize(
    ("selector", "purged"),
    [
        (PurgeSelector(id="id-1"), {1}),
        (PurgeSelector(namespace=NS_B), {3, 4}),
        (PurgeSelector(version="v2"), {2, 4}),
        (PurgeSelector(scope=SCOPE_1), {1, 2, 5}),
        (PurgeSelector(tag="doc-1"), {1, 2}),
        (PurgeSelector(tag="doc-2"), {2, 3}),
        (PurgeSelector(all=True), {1, 2, 3, 4, 5}),
        (PurgeSelector(tag="doc-404"), set()),
        (PurgeSelector(id="id-404"), set()),
    ],
    ids=lambda value: repr(value) if isinstance(value, PurgeSelector) else "",
)
async def test_purge_removes_exactly_the_selected_entries(
    store: Store, selector: PurgeSelector, purged: set[int]
) -> None:
    for n, (namespace, scope, version, tags) in POPULATION.items():
        await store.put(entry(n, namespace=namespace, scope=scope, version=version, tags=tags))
    for n, (namespace, scope, _, _) in POPULATION.items():  # load every index before purging
        assert await ids_near(store, namespace, scope, unit(n), k=1) == [f"id-{n}"]

    assert await store.purge(selector) == len(purged)

    for n, (namespace, scope, _, _) in POPULATION.items():
        got = await store.get(Fingerprint(f"fp-{n}"), scope, now=2_000.0)
        near = await ids_near(store, namespace, scope, unit(n))
        if n in purged:
            assert got is None and f"id-{n}" not in near, n
        else:
            assert got is not None and near[0] == f"id-{n}", n
    assert (await store.stats()).entries == len(POPULATION) - len(purged)


async def test_store_is_usable_after_purging_everything(store: Store) -> None:
    await store.put(entry(1))
    assert await store.purge(PurgeSelector(all=True)) == 1

    await store.put(entry(2))

    assert await ids_near(store, NS_A, SCOPE_1, unit(2)) == ["id-2"]


async def test_list_entries_pages_newest_first(store: Store) -> None:
    for n in range(1, 6):
        await store.put(entry(n))

    pages = [[e.id for e in await store.list_entries(offset, 2)] for offset in (0, 2, 4, 6)]

    assert pages == [["id-5", "id-4"], ["id-3", "id-2"], ["id-1"], []]
    assert [e.id for e in await store.list_entries()] == ["id-5", "id-4", "id-3", "id-2", "id-1"]


async def test_stats_count_entries_and_namespaces(store: Store) -> None:
    empty = await store.stats()
    assert (empty.entries, empty.namespaces, empty.evictions, empty.expired_swept) == (0, 0, 0, 0)

    await store.put(entry(1, namespace=NS_A))
    await store.put(entry(2, namespace=NS_A))
    await store.put(entry(3, namespace=NS_B))

    stats = await store.stats()
    assert (stats.entries, stats.namespaces) == (3, 2)


async def test_open_store_maps_urls_to_backends(tmp_path: Path) -> None:
    opened = [
        open_store("memory://", DIM, max_entries=10),
        open_store(f"sqlite://{tmp_path / 'a'}", DIM, max_entries=10),
        open_store(str(tmp_path / "b"), DIM),
    ]
    try:
        assert [type(store) for store in opened] == [MemoryStore, SqliteHnswStore, SqliteHnswStore]
        assert [store.max_entries for store in opened[:2]] == [10, 10]  # type: ignore[attr-defined]
        assert (tmp_path / "a" / "cache.db").exists() and (tmp_path / "b" / "cache.db").exists()
        with pytest.raises(ValueError, match="unknown store URL"):
            open_store("redis+bogus://x", DIM)
    finally:
        for store in opened:
            await store.close()
