"""What only `SqliteHnswStore` does: persistence, index rebuilds, the HNSW switch, crash safety.

The behaviour every store shares is in tests/contract/test_store_contract.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from cascache._errors import ConfigError, StoreUnavailable
from cascache._types import CacheEntry, Fingerprint, Namespace, PurgeSelector, Scope, Usage, Vector
from cascache.stores import sqlite_hnsw
from cascache.stores.sqlite_hnsw import SqliteHnswStore

DIM = 32
NS = Namespace("ns-big")
SCOPE = Scope("tenant-1")
NOW = 2_000.0


def clustered(n: int, *, clusters: int = 40, spread: float = 0.6, seed: int = 0) -> Vector:
    """Unit vectors around `clusters` random centres: near-duplicates, like paraphrases of a few questions."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, DIM))
    points = centres[rng.integers(clusters, size=n)] + spread * rng.standard_normal((n, DIM))
    unit: Vector = (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)
    return unit


def perturbed(vectors: Vector, noise: float = 0.05, seed: int = 1) -> Vector:
    rng = np.random.default_rng(seed)
    noisy = vectors + noise * rng.standard_normal(vectors.shape) / np.sqrt(DIM)
    out: Vector = (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)
    return out


def entry(n: int, vector: Vector, namespace: Namespace = NS) -> CacheEntry:
    return CacheEntry(
        id=f"id-{n}",
        fingerprint=Fingerprint(f"fp-{n}"),
        namespace=namespace,
        scope=SCOPE,
        version="v1",
        provider="openai",
        model="m",
        query=f"q{n}",
        vector=vector,
        response={"n": n},
        usage=Usage(),
        created_at=1_000.0 + n,
        expires_at=None,
    )


def open_store(path: Path, **options: int) -> SqliteHnswStore:
    return SqliteHnswStore(path, DIM, exact_search_below=50, **options)


async def fill(store: SqliteHnswStore, vectors: Vector, namespace: Namespace = NS, start: int = 0) -> None:
    for n, vector in enumerate(vectors, start=start):
        await store.put(entry(n, vector, namespace))


async def top_ids(store: SqliteHnswStore, queries: Vector, k: int = 1) -> list[list[str]]:
    return [[hit.id for hit, _ in await store.nearest(NS, SCOPE, q, k, NOW)] for q in queries]


def brute_force_top1(stored: Vector, queries: Vector) -> list[str]:
    return [f"id-{i}" for i in np.argmax(queries @ stored.T, axis=1)]


async def counters(store: SqliteHnswStore) -> dict[str, int]:
    extra = (await store.stats()).extra
    return {key: extra[key] for key in ("index_loads", "index_reconciles", "index_rebuilds", "hnsw_indexes")}


async def eventually(check: Callable[[], object], timeout: float = 30.0) -> None:
    """Wait for background index work (conversion, save) to show its effect."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():  # type: ignore[misc]
        assert asyncio.get_running_loop().time() < deadline, "background work did not finish"
        await asyncio.sleep(0.02)


def index_files(path: Path) -> list[Path]:
    return sorted((path / "index").glob("*"))


async def test_wal_mode_is_on(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    await store.put(entry(1, clustered(1)[0]))
    try:
        with sqlite3.connect(tmp_path / "cache.db") as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        await store.close()


async def test_a_directory_serves_one_process_at_a_time(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    with pytest.raises(StoreUnavailable, match="in use"):
        open_store(tmp_path)
    await store.close()
    again = open_store(tmp_path)  # the lock went with the first store
    await again.close()


async def test_a_database_of_another_dimension_is_refused(tmp_path: Path) -> None:
    await open_store(tmp_path).close()
    with pytest.raises(ConfigError, match="32-dim"):
        SqliteHnswStore(tmp_path, DIM + 1)
    await open_store(tmp_path).close()  # the refused open released its lock


async def test_reopen_keeps_entries_and_loads_the_saved_index(tmp_path: Path) -> None:
    stored = clustered(300)
    queries = perturbed(stored[:60])
    store = open_store(tmp_path)
    await fill(store, stored)
    before = await top_ids(store, queries, k=5)
    await store.close()
    assert [path.suffix for path in index_files(tmp_path)] == [".hnsw", ".json", ".npy"]

    store = open_store(tmp_path)
    after = await top_ids(store, queries, k=5)

    assert after == before
    assert [row[0] for row in after] == brute_force_top1(stored, queries)
    assert await counters(store) == {
        "index_loads": 1,
        "index_reconciles": 0,
        "index_rebuilds": 0,
        "hnsw_indexes": 1,
    }
    assert (await store.stats()).entries == 300
    assert await store.get(Fingerprint("fp-299"), SCOPE, NOW) is not None
    await store.close()


def delete_index(path: Path) -> None:
    for file in index_files(path):
        file.unlink()


def overwrite_middle_of_graph(path: Path) -> None:
    """Same size, garbage inside: only the checksum can tell."""
    (graph,) = (path / "index").glob("*.hnsw")
    with graph.open("r+b") as file:
        file.seek(graph.stat().st_size // 2)
        file.write(os.urandom(4_096))


def replace_graph_with_garbage(path: Path) -> None:
    (graph,) = (path / "index").glob("*.hnsw")
    graph.write_bytes(os.urandom(10_000))


def truncate_graph(path: Path) -> None:
    (graph,) = (path / "index").glob("*.hnsw")
    os.truncate(graph, graph.stat().st_size // 3)


def garble_manifest(path: Path) -> None:
    (manifest,) = (path / "index").glob("*.json")
    manifest.write_text("{not json")


def garble_labels(path: Path) -> None:
    (labels,) = (path / "index").glob("*.labels.npy")
    labels.write_bytes(b"\x93NUMPY garbage")


@pytest.mark.parametrize(
    "damage",
    [
        delete_index,
        overwrite_middle_of_graph,
        replace_graph_with_garbage,
        truncate_graph,
        garble_manifest,
        garble_labels,
    ],
)
async def test_missing_or_damaged_index_is_rebuilt_from_sqlite(
    tmp_path: Path, damage: Callable[[Path], None]
) -> None:
    stored = clustered(300)
    queries = perturbed(stored[:60])
    store = open_store(tmp_path)
    await fill(store, stored)
    before = await top_ids(store, queries)
    await store.close()

    damage(tmp_path)
    store = open_store(tmp_path)
    after = await top_ids(store, queries)

    assert after == before == [[top] for top in brute_force_top1(stored, queries)]
    assert await counters(store) == {
        "index_loads": 1,
        "index_reconciles": 0,
        "index_rebuilds": 1,
        "hnsw_indexes": 1,
    }
    await store.close()
    # The rebuilt index was saved: the next open loads it as is.
    store = open_store(tmp_path)
    assert await top_ids(store, queries) == before
    assert (await counters(store))["index_rebuilds"] == 0
    await store.close()


async def test_index_behind_sqlite_is_reconciled_not_rebuilt(tmp_path: Path) -> None:
    stored = clustered(300)
    store = open_store(tmp_path)
    await fill(store, stored)
    await store.nearest(NS, SCOPE, stored[0], 1, NOW)
    await store.close()
    # Another writer (or a crash after the last index save) changed SQLite only.
    with sqlite3.connect(tmp_path / "cache.db") as conn:
        conn.execute("DELETE FROM entries WHERE id IN ('id-3', 'id-4', 'id-5')")

    store = open_store(tmp_path)
    await fill(store, perturbed(stored[3:6], noise=0.01), start=1_000)  # and new ones after reopening
    found = await top_ids(store, stored[3:6], k=3)

    assert [row[0] for row in found] == ["id-1000", "id-1001", "id-1002"]
    assert not {"id-3", "id-4", "id-5"} & {hit for row in found for hit in row}
    assert await counters(store) == {
        "index_loads": 1,
        "index_reconciles": 1,
        "index_rebuilds": 0,
        "hnsw_indexes": 1,
    }
    await store.close()


async def test_a_rebuild_whose_save_fails_still_serves_and_saves_at_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = clustered(300)
    queries = perturbed(stored[:60])
    store = open_store(tmp_path)
    await fill(store, stored)
    before = await top_ids(store, queries)
    await store.close()
    delete_index(tmp_path)

    real_save = sqlite_hnsw._IndexFiles.save
    def disk_full(self: object, index: object) -> None:
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(sqlite_hnsw._IndexFiles, "save", disk_full)
    store = open_store(tmp_path)
    # The rebuilt index serves from memory although it could not be written.
    assert await top_ids(store, queries) == before
    extra = (await store.stats()).extra
    assert (extra["index_rebuilds"], extra["index_saves"]) == (1, 0)

    monkeypatch.setattr(sqlite_hnsw._IndexFiles, "save", real_save)
    await store.close()  # space is back: the unsaved index is written at close
    store = open_store(tmp_path)
    assert await top_ids(store, queries) == before
    assert (await counters(store))["index_rebuilds"] == 0
    await store.close()


async def test_index_far_behind_sqlite_is_rebuilt(tmp_path: Path) -> None:
    stored = clustered(300)
    store = open_store(tmp_path)
    await fill(store, stored)
    await store.close()
    with sqlite3.connect(tmp_path / "cache.db") as conn:
        conn.execute("DELETE FROM entries WHERE label % 2 = 0")

    store = open_store(tmp_path)
    found = await top_ids(store, stored)

    assert await counters(store) == {
        "index_loads": 1,
        "index_reconciles": 0,
        "index_rebuilds": 1,
        "hnsw_indexes": 1,
    }
    assert all(int(row[0].removeprefix("id-")) % 2 == 0 for row in found)  # labels are n + 1
    await store.close()


async def test_namespace_crossing_the_threshold_switches_to_hnsw(tmp_path: Path) -> None:
    stored = clustered(120)
    store = open_store(tmp_path)
    await fill(store, stored[:40])
    assert await top_ids(store, perturbed(stored[:40])) == [[f"id-{n}"] for n in range(40)]
    assert (await counters(store))["hnsw_indexes"] == 0

    await fill(store, stored[40:], start=40)  # crosses 50; the graph is built on a thread
    await eventually(lambda: _hnsw_count(store))
    queries = perturbed(stored)

    assert [row[0] for row in await top_ids(store, queries)] == brute_force_top1(stored, queries)
    await store.close()


async def _hnsw_count(store: SqliteHnswStore) -> bool:
    return (await counters(store))["hnsw_indexes"] == 1


async def test_hnsw_recall_at_1_against_brute_force(tmp_path: Path) -> None:
    stored = clustered(3_000, clusters=60)
    queries = perturbed(stored[::10], noise=0.3)
    store = open_store(tmp_path)
    await fill(store, stored)

    found = [row[0] for row in await top_ids(store, queries)]

    truth = brute_force_top1(stored, queries)
    recall = np.mean([a == b for a, b in zip(found, truth, strict=True)])
    assert recall >= 0.95, recall
    assert await _hnsw_count(store)
    await store.close()


async def test_periodic_save_while_writing_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_hnsw, "SAVE_INTERVAL_S", 0.0)
    monkeypatch.setattr(sqlite_hnsw, "SAVE_MIN_CHANGES", 20)
    stored = clustered(400)
    store = open_store(tmp_path)
    await fill(store, stored[:100])
    await store.nearest(NS, SCOPE, stored[0], 1, NOW)  # loads the namespace: a graph, saved once
    for n in range(100, 400):  # saves start in the background while these land
        await store.put(entry(n, stored[n]))
        if n % 7 == 0:
            await asyncio.sleep(0)
    await eventually(lambda: _saved_at_least(store, 3))
    assert [row[0] for row in await top_ids(store, stored)] == [f"id-{n}" for n in range(400)]
    await store.close()

    store = open_store(tmp_path)
    assert [row[0] for row in await top_ids(store, stored)] == [f"id-{n}" for n in range(400)]
    assert (await counters(store))["index_rebuilds"] == 0
    await store.close()


async def test_writes_during_a_save_are_searchable_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a save thread reads the graph, new vectors wait in a journal; nearest must still see them."""
    release = threading.Event()
    saving = threading.Event()
    original_save = sqlite_hnsw._IndexFiles.save

    def slow_save(files: sqlite_hnsw._IndexFiles, index: sqlite_hnsw.HnswIndex) -> None:
        saving.set()
        assert release.wait(timeout=30)
        original_save(files, index)

    stored = clustered(200)
    store = open_store(tmp_path)
    await fill(store, stored[:100])
    await store.nearest(NS, SCOPE, stored[0], 1, NOW)  # rebuilt and saved, before the gate is in place
    monkeypatch.setattr(sqlite_hnsw, "SAVE_INTERVAL_S", 0.0)
    monkeypatch.setattr(sqlite_hnsw, "SAVE_MIN_CHANGES", 1)
    monkeypatch.setattr(sqlite_hnsw, "SAVE_MIN_SHARE", 0.0)
    monkeypatch.setattr(sqlite_hnsw._IndexFiles, "save", slow_save)

    await store.put(entry(100, stored[100]))  # triggers a save, which now blocks mid-way
    assert await asyncio.to_thread(saving.wait, 30)
    await fill(store, stored[101:], start=101)
    await store.purge(PurgeSelector(id="id-150"))

    during = [row[0] if row else None for row in await top_ids(store, stored[100:])]
    release.set()
    await eventually(lambda: _saved_at_least(store, 2))
    after = [row[0] if row else None for row in await top_ids(store, stored[100:])]

    expected = [f"id-{n}" for n in range(100, 200)]
    assert during[50] != "id-150" and after[50] != "id-150"
    assert during[:50] + during[51:] == after[:50] + after[51:] == expected[:50] + expected[51:]
    await store.close()


async def _saved_at_least(store: SqliteHnswStore, saves: int) -> bool:
    return bool((await store.stats()).extra["index_saves"] >= saves)


WRITER = textwrap.dedent(
    """
    import asyncio, sys
    import numpy as np
    from cascache._types import CacheEntry, Usage
    from cascache.stores.sqlite_hnsw import SqliteHnswStore

    async def main(path):
        store = SqliteHnswStore(path, 32, exact_search_below=20)
        rng = np.random.default_rng(0)
        n = 0
        while True:
            vector = rng.standard_normal(32).astype(np.float32)
            vector /= np.linalg.norm(vector)
            namespace = "ns-small" if n % 4 == 0 else "ns-big"
            await store.put(CacheEntry(
                id=f"id-{n}", fingerprint=f"fp-{n}", namespace=namespace, scope="tenant-1",
                version="v1", provider="openai", model="m", query=f"q{n}", vector=vector,
                response={"n": n, "text": "x" * (n % 500)}, usage=Usage(), created_at=float(n),
                expires_at=None, tags=(f"doc-{n % 7}",)))
            if n % 50 == 0:
                await store.nearest(namespace, "tenant-1", vector, 1, float(n))
            if n % 97 == 0:
                await store.record_hit(f"id-{n // 2}", float(n))
            if n == 400:
                print("ready", flush=True)
            n += 1

    asyncio.run(main(sys.argv[1]))
    """
)


async def test_kill_9_while_writing_leaves_a_sound_store(tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    data = tmp_path / "data"
    writer = await asyncio.create_subprocess_exec(
        sys.executable, str(script), str(data), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert writer.stdout is not None
        assert (await asyncio.wait_for(writer.stdout.readline(), timeout=60)).strip() == b"ready"
        await asyncio.sleep(0.3)  # let it get into the middle of some write
    finally:
        writer.send_signal(signal.SIGKILL)
        await asyncio.wait_for(writer.wait(), timeout=30)
    assert writer.returncode == -signal.SIGKILL

    with sqlite3.connect(data / "cache.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        last = conn.execute(
            "SELECT id, fingerprint, vector FROM entries WHERE namespace = 'ns-big' ORDER BY label DESC LIMIT 25"
        ).fetchall()
    store = SqliteHnswStore(data, DIM, exact_search_below=20)  # the dead writer's lock is gone
    try:
        assert (await store.stats()).entries > 400
        for entry_id, fingerprint, blob in last:
            vector = np.frombuffer(blob, dtype=np.float32)
            assert await store.get(Fingerprint(fingerprint), SCOPE, NOW) is not None
            ((hit, similarity),) = await store.nearest(NS, SCOPE, vector, 1, NOW)
            assert hit.id == entry_id and similarity == pytest.approx(1.0, abs=1e-4)
        state = await counters(store)
        # The index saved before the kill missed the last writes: it was patched or rebuilt.
        assert state["index_reconciles"] + state["index_rebuilds"] == 1 and state["hnsw_indexes"] == 1
    finally:
        await store.close()
