"""`SqliteHnswStore`: the embedded default store.

SQLite holds the entries; an in-process vector index per namespace holds their
vectors. SQLite is the source of truth and the indexes are derived data: on
first use of a namespace its index is loaded from disk and reconciled with
SQLite, or rebuilt from SQLite when it is missing, unreadable or too far off.

Layout of a data directory::

    <dir>/cache.db (+ -wal, -shm)   entries, tags, counters          SQLite, WAL
    <dir>/LOCK                      flock held while a process has the store open
    <dir>/index/<h>.hnsw            hnswlib graph of one large namespace (h = blake2b(namespace))
    <dir>/index/<h>.labels.npy      the live labels in it (hnswlib cannot list them)
    <dir>/index/<h>.json            manifest: parameters, count, checksums; written last

Why each storage choice:

- **SQLite in WAL mode, synchronous=NORMAL.** One file, no server, and a point
  lookup by a unique key costs ~5-10 µs, so lookups run inline on the event
  loop. WAL lets index loads read on worker threads while the loop writes.
  NORMAL skips the fsync on commit: after a process crash (kill -9) every
  committed transaction is still there and the database is never corrupt; only
  a power loss can drop the last few commits, which for a cache is a few misses.
- **WAL checkpoints mostly on a worker thread**, with SQLite's own
  autocheckpoint kept only as a bound on the WAL's size (see
  CHECKPOINT_EVERY_WRITES for the measurements behind this).
- **`label INTEGER PRIMARY KEY AUTOINCREMENT`.** The rowid doubles as the
  vector index label. AUTOINCREMENT means a label is never reused, so a stale
  label in a persisted index can never name a different, newer entry: at worst
  it names nothing, and lookups drop it.
- **Vectors as float32 BLOBs in SQLite, too.** They are what an index is
  rebuilt from, and `CacheEntry.vector` is returned with the entry.
- **Small columns first, big ones (query, response, vector) last.** A row that
  outgrows its page spills its tail to overflow pages; this way only big
  columns spill, and the filters on scope, expiry and recency never follow them.
- **response/usage as JSON text** (orjson: ~3x faster than `json` on the hit
  path). Replay needs the whole answer and nothing ever queries inside it.
- **Tags twice.** A JSON column rebuilds `CacheEntry.tags` without a join on
  the hit path; the `entry_tags(tag, label)` side table makes purge-by-tag an
  exact index lookup (no LIKE over JSON). A trigger keeps it in step on every
  delete path (replace, eviction, purge, sweep).
- **`recency` column** = last hit, else creation: one index gives the LRU victim.
- **Small namespaces searched exactly with numpy.** Below `exact_search_below`
  vectors a matrix product is both exact and faster than a graph walk, and it
  costs nothing to build, so it is never persisted.
- **Large namespaces in hnswlib** (inner product on L2-normalised vectors =
  cosine). Deletions are `mark_deleted`, and deleted slots are reused
  (`allow_replace_deleted`), so LRU churn at `max_entries` does not grow the
  graph forever.
- **Index files verified before they are read.** hnswlib trusts the file it
  loads; a torn or damaged file could crash the process. The manifest holds
  the file's size and CRC32 and is written after the files, so an index is
  loaded only when it is exactly what was saved.
- **One process at a time** (flock on `LOCK`). Two writers of the same index
  files would corrupt them; the kernel drops the lock of a killed process, so
  reopening after a crash just works.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import sqlite3
import time
import zlib
from collections.abc import Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TextIO

import hnswlib
import numpy as np
import numpy.typing as npt
import orjson

from cascache._errors import ConfigError, StoreUnavailable
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

__all__ = ["ExactIndex", "HnswIndex", "SqliteHnswStore", "VectorIndex"]

log = logging.getLogger(__name__)

Labels = npt.NDArray[np.int64]

#: Bump when the schema changes incompatibly; an old database is then refused, not misread.
SCHEMA_VERSION: Final = 1
#: Manifest format of persisted indexes; a different one is rebuilt.
INDEX_FORMAT: Final = 1
#: Rows deleted per statement by purge and sweep. Between batches the loop
#: serves other requests; 500 rows hold it for a few milliseconds.
DELETE_BATCH: Final = 500
#: A namespace with at most this many vectors is loaded inline on the event
#: loop (~0.2 ms); larger ones load on a worker thread.
INLINE_LOAD_MAX: Final = 256
#: A persisted HNSW index that differs from SQLite by more than this share of
#: its entries is rebuilt rather than patched (a patched graph stays as good,
#: but replaying most of it costs as much as a rebuild).
RECONCILE_MAX_SHARE: Final = 0.25
#: A loaded HNSW index is saved again after this many changes (or this share
#: of its size, whichever is larger), at most once per SAVE_INTERVAL_S.
SAVE_MIN_CHANGES: Final = 1_000
SAVE_MIN_SHARE: Final = 0.05
SAVE_INTERVAL_S: Final = 60.0
#: WAL checkpoints copy pages back into the database and fsync it: 5-20 ms
#: that SQLite's default autocheckpoint (every 1,000 pages) spends inside a
#: commit, i.e. on the event loop (measured at 50k puts: put p99 5.6 ms). So
#: every CHECKPOINT_EVERY_WRITES write transactions a PASSIVE checkpoint (it
#: never blocks the writer) runs on a worker thread and does most of the copying.
#: It cannot complete while writes keep arriving, though, and only a complete
#: checkpoint lets the WAL restart: under sustained writes the WAL grew without
#: bound (51 GB after 1M puts). The writer's own autocheckpoint therefore stays
#: on as the bound, at WAL_MAX_PAGES (~40 MB): when it runs, inline, the thread
#: has already copied nearly everything, so it is short.
CHECKPOINT_EVERY_WRITES: Final = 1_000
WAL_MAX_PAGES: Final = 10_000
#: HNSW builds of at least this many vectors use every core (see HnswIndex.build).
PARALLEL_BUILD_MIN: Final = 20_000
#: Cap on candidates fetched when scope/expiry filtering drops the first ones.
MAX_FETCH: Final = 4_096
#: Default wait (busy_timeout) of statements on the event loop for a lock another
#: process holds (a backup, the sqlite3 shell, a stray script). Only another
#: process can make this store's connection wait: readers never block the WAL
#: writer, the worker threads only read or run PASSIVE checkpoints, and LOCK
#: keeps other cascache processes out. The wait blocks the event loop, i.e.
#: every request in flight, so it is short: a cache that makes requests wait
#: seconds is worse than none (measured with SQLite's 5 s default: one locked
#: write stalled every concurrent request for 5 s; tests/reliability/test_store_faults.py).
LOCK_TIMEOUT_MS: Final = 50
#: After a write found the database locked, writes fail at once for this long:
#: under load, paying LOCK_TIMEOUT_MS on every write would still stall the loop.
LOCKED_BACKOFF_S: Final = 1.0

_COLUMNS: Final = (
    "label, id, fingerprint, namespace, scope, version, provider, model, query, "
    "response, usage, tags, created_at, expires_at, hits, last_hit_at, vector"
)

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS entries (
    label       INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    fingerprint TEXT NOT NULL UNIQUE,
    namespace   TEXT NOT NULL,
    has_vector  INTEGER NOT NULL,
    scope       TEXT NOT NULL,
    version     TEXT NOT NULL,
    provider    TEXT NOT NULL,
    model       TEXT NOT NULL,
    created_at  REAL NOT NULL,
    expires_at  REAL,
    hits        INTEGER NOT NULL DEFAULT 0,
    last_hit_at REAL,
    recency     REAL NOT NULL,
    tags        TEXT NOT NULL,
    usage       TEXT NOT NULL,
    query       TEXT,
    response    TEXT NOT NULL,
    vector      BLOB
);
-- (namespace, has_vector) serves purge by namespace and, as a covering index,
-- the list of a namespace's labels that an index load reconciles against.
CREATE INDEX IF NOT EXISTS entries_by_namespace ON entries (namespace, has_vector);
CREATE INDEX IF NOT EXISTS entries_by_scope ON entries (scope);
CREATE INDEX IF NOT EXISTS entries_by_version ON entries (version);
CREATE INDEX IF NOT EXISTS entries_by_recency ON entries (recency);
CREATE INDEX IF NOT EXISTS entries_by_expiry ON entries (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS entry_tags (
    tag   TEXT NOT NULL,
    label INTEGER NOT NULL,
    PRIMARY KEY (tag, label)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entry_tags_by_label ON entry_tags (label);
CREATE TRIGGER IF NOT EXISTS entries_drop_tags AFTER DELETE ON entries
WHEN OLD.tags != '[]'
BEGIN
    DELETE FROM entry_tags WHERE label = OLD.label;
END;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
"""

_GET: Final = (
    f"SELECT {_COLUMNS} FROM entries "
    "WHERE fingerprint = ? AND scope = ? AND (expires_at IS NULL OR expires_at > ?)"
)
_INSERT: Final = (
    "INSERT INTO entries (id, fingerprint, namespace, has_vector, scope, version, provider, model, query, "
    "response, usage, tags, created_at, expires_at, hits, last_hit_at, recency, vector) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_NAMESPACE_LABELS: Final = "SELECT label FROM entries WHERE namespace = ? AND has_vector = 1"
_NAMESPACE_VECTORS: Final = "SELECT label, vector FROM entries WHERE namespace = ? AND has_vector = 1"

#: How each purge selector becomes a WHERE clause over `entries`.
_PURGE_WHERE: Final[dict[str, str]] = {
    "id": "id = ?",
    "namespace": "namespace = ?",
    "version": "version = ?",
    "scope": "scope = ?",
    "tag": "label IN (SELECT label FROM entry_tags WHERE tag = ?)",
    "all": "1",
}


# ---------------------------------------------------------------------------
# The index layer: one of these per namespace, searched by `nearest`.
# ---------------------------------------------------------------------------


class ExactIndex:
    """Brute-force cosine over a numpy matrix: exact, and fastest for small namespaces.

    Invariant: rows `[0, len)` of `_vectors` hold the live vectors, `_labels`
    their labels and `_slot` maps label -> row. Removal moves the last row into
    the hole, so the matrix stays dense and a search is one matrix product.
    """

    kind: Final = "exact"

    def __init__(self, dim: int, capacity: int = 4) -> None:
        self.dim = dim
        self._vectors = np.empty((capacity, dim), dtype=np.float32)
        self._labels = np.empty(capacity, dtype=np.int64)
        self._slot: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._slot)

    def add(self, labels: Labels, vectors: Vector) -> None:
        """Add L2-normalised `vectors` under `labels`; a label already present is left as is."""
        for label, vector in zip(labels.tolist(), vectors, strict=True):
            if label in self._slot:
                continue
            row = len(self._slot)
            if row == len(self._labels):
                self._grow()
            self._vectors[row] = vector
            self._labels[row] = label
            self._slot[label] = row

    def remove(self, labels: Iterable[int]) -> None:
        for label in labels:
            row = self._slot.pop(int(label), None)
            if row is None:
                continue
            last = len(self._slot)
            if row != last:
                moved = int(self._labels[last])
                self._vectors[row] = self._vectors[last]
                self._labels[row] = moved
                self._slot[moved] = row

    def search(self, query: Vector, k: int) -> tuple[Labels, npt.NDArray[np.float32]]:
        """The k most similar labels, best first, with their cosine similarities."""
        size = len(self._slot)
        k = min(k, size)
        if k <= 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        similarities = self._vectors[:size] @ query
        if k < size:
            top = np.argpartition(-similarities, k - 1)[:k]
            top = top[np.argsort(-similarities[top], kind="stable")]
        else:
            top = np.argsort(-similarities, kind="stable")
        return self._labels[top].copy(), similarities[top]

    def labels(self) -> Labels:
        return self._labels[: len(self._slot)].copy()

    def snapshot(self) -> tuple[Labels, Vector]:
        """Copies of the live labels and vectors, for building a successor off the loop."""
        size = len(self._slot)
        return self._labels[:size].copy(), self._vectors[:size].copy()

    def _grow(self) -> None:
        capacity = 2 * len(self._labels)
        vectors = np.empty((capacity, self.dim), dtype=np.float32)
        vectors[: len(self._labels)] = self._vectors
        labels = np.empty(capacity, dtype=np.int64)
        labels[: len(self._labels)] = self._labels
        self._vectors, self._labels = vectors, labels


class HnswIndex:
    """An hnswlib graph (inner product on L2-normalised vectors, i.e. cosine).

    `_live` is the set of labels not marked deleted. hnswlib keeps deleted
    labels in its own table and offers no way to list only the live ones, and
    the set makes `add`/`remove` idempotent, which replaying a journal of
    changes over a snapshot relies on (see `SqliteHnswStore._apply_change`).
    It costs ~60 bytes per entry next to hnswlib's ~1.7 kB.
    """

    kind: Final = "hnsw"

    def __init__(self, graph: hnswlib.Index, live: set[int], ef_search: int) -> None:
        self._graph = graph
        self._live = live
        self.ef_search = ef_search

    @classmethod
    def build(
        cls,
        dim: int,
        labels: Labels,
        vectors: Vector,
        *,
        m: int = 16,
        ef_construction: int = 128,
        ef_search: int = 64,
        threads: int | None = None,
    ) -> HnswIndex:
        """A new graph holding `vectors` (L2-normalised) under `labels`.

        `threads` defaults to one below PARALLEL_BUILD_MIN vectors and all cores
        above. One thread with hnswlib's fixed seed gives the same graph for the
        same data every time, so a rebuilt small index answers exactly as the
        lost one did; concurrent insertion is only worth its nondeterminism
        when a build takes long.
        """
        if threads is None:
            threads = 1 if len(labels) < PARALLEL_BUILD_MIN else os.cpu_count() or 1
        graph = hnswlib.Index(space="ip", dim=dim)
        graph.init_index(
            max_elements=max(1_024, int(len(labels) * 1.25)),
            M=m,
            ef_construction=ef_construction,
            allow_replace_deleted=True,
        )
        if len(labels):
            graph.add_items(vectors, labels, num_threads=threads)
        return cls(graph, set(labels.tolist()), ef_search)

    @property
    def dim(self) -> int:
        return int(self._graph.dim)

    @property
    def m(self) -> int:
        return int(self._graph.M)

    @property
    def ef_construction(self) -> int:
        return int(self._graph.ef_construction)

    def __len__(self) -> int:
        return len(self._live)

    def add(self, labels: Labels, vectors: Vector) -> None:
        """Add L2-normalised `vectors` under `labels`; a label already present is left as is.

        A label's vector never changes (a replaced entry gets a new label), so
        skipping present labels loses nothing.
        """
        fresh = np.fromiter(
            (label not in self._live for label in labels.tolist()), dtype=bool, count=len(labels)
        )
        if not fresh.any():
            return
        labels, vectors = labels[fresh], vectors[fresh]
        free_slots = self._graph.element_count - len(self._live)
        needed = self._graph.element_count + max(0, len(labels) - free_slots)
        if needed > self._graph.max_elements:
            # hnswlib grows by realloc (pages are only touched when written),
            # so doubling wastes address space, not memory.
            self._graph.resize_index(max(needed, 2 * self._graph.max_elements))
        self._graph.add_items(vectors, labels, num_threads=1, replace_deleted=True)
        self._live.update(labels.tolist())

    def remove(self, labels: Iterable[int]) -> None:
        for label in labels:
            label = int(label)
            if label in self._live:
                self._graph.mark_deleted(label)
                self._live.discard(label)

    def search(self, query: Vector, k: int) -> tuple[Labels, npt.NDArray[np.float32]]:
        """The k most similar labels, best first, with their cosine similarities."""
        k = min(k, len(self._live))
        while k > 0:
            self._graph.set_ef(max(self.ef_search, k))
            try:
                found, distances = self._graph.knn_query(query, k=k, num_threads=1)
            except RuntimeError:
                # hnswlib raises when the walk finds fewer than k live nodes
                # (possible with many deletions); ask for fewer.
                k //= 2
                continue
            return found[0].astype(np.int64), (1.0 - distances[0]).astype(np.float32)
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)

    def labels(self) -> Labels:
        return np.fromiter(self._live, dtype=np.int64, count=len(self._live))

    def save(self, path: Path) -> None:
        self._graph.save_index(str(path))

    @classmethod
    def load(cls, path: Path, dim: int, live: set[int], ef_search: int) -> HnswIndex:
        graph = hnswlib.Index(space="ip", dim=dim)
        graph.load_index(str(path), max_elements=0, allow_replace_deleted=True)
        return cls(graph, live, ef_search)


VectorIndex = ExactIndex | HnswIndex


def _normalised(vectors: Vector) -> Vector:
    """Rows scaled to unit length (a zero row stays zero), float32."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    out = np.zeros_like(vectors)
    np.divide(vectors, norms, out=out, where=norms > 0)
    return out


# ---------------------------------------------------------------------------
# Persisted indexes.
# ---------------------------------------------------------------------------


def _crc32_file(path: Path) -> int:
    """CRC32 of a file (~4 GB/s): detects torn or damaged files, which is all we need."""
    crc = 0
    with path.open("rb") as file:
        while chunk := file.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


def _labels_checksum(labels: Labels) -> int:
    return zlib.crc32(np.sort(labels).astype("<i8").tobytes())


@dataclass(frozen=True, slots=True)
class _IndexFiles:
    """The files of one namespace's persisted HNSW index; the manifest is written last."""

    directory: Path
    namespace: str

    @property
    def stem(self) -> str:
        # Namespaces are arbitrary strings; a hash makes a safe, fixed-length file name.
        return hashlib.blake2b(self.namespace.encode(), digest_size=16).hexdigest()

    @property
    def graph(self) -> Path:
        return self.directory / f"{self.stem}.hnsw"

    @property
    def labels(self) -> Path:
        return self.directory / f"{self.stem}.labels.npy"

    @property
    def manifest(self) -> Path:
        return self.directory / f"{self.stem}.json"

    def exists(self) -> bool:
        return any(path.exists() for path in (self.manifest, self.graph, *self.temporaries))

    @property
    def temporaries(self) -> tuple[Path, Path, Path]:
        """Where `save` writes graph, labels and manifest before renaming them into place."""
        return (self.graph.with_suffix(".hnsw.tmp"), self.labels.with_suffix(".tmp"),
                self.manifest.with_suffix(".json.tmp"))

    def remove(self) -> None:
        # The temporaries too: a save cut short by a crash leaves them (as big as the graph), and
        # once the namespace is gone no later save would replace them
        # (tests/reliability/test_crash_loop.py).
        for path in (self.manifest, self.graph, self.labels, *self.temporaries):
            path.unlink(missing_ok=True)

    def save(self, index: HnswIndex) -> None:
        """Write graph and labels to temporary names, rename, then write the manifest.

        The old manifest goes first, so at every instant either no manifest
        exists (load rebuilds) or it describes exactly the files beside it.
        No fsync: the index is derived data, and a torn file fails its checksum.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        labels = np.sort(index.labels())
        graph_tmp, labels_tmp, manifest_tmp = self.temporaries
        index.save(graph_tmp)
        with labels_tmp.open("wb") as file:
            np.save(file, labels)
        manifest = {
            "format": INDEX_FORMAT,
            "namespace": self.namespace,
            "space": "ip",
            "dim": index.dim,
            "m": index.m,
            "ef_construction": index.ef_construction,
            "count": len(labels),
            "labels_crc32": _labels_checksum(labels),
            "graph_bytes": graph_tmp.stat().st_size,
            "graph_crc32": _crc32_file(graph_tmp),
            "saved_at": time.time(),
        }
        self.manifest.unlink(missing_ok=True)
        os.replace(graph_tmp, self.graph)
        os.replace(labels_tmp, self.labels)
        manifest_tmp.write_text(json.dumps(manifest))
        os.replace(manifest_tmp, self.manifest)

    def load(self, dim: int, m: int, ef_construction: int, ef_search: int) -> HnswIndex | None:
        """The saved index if every check passes, else None (the caller rebuilds); says why in the log."""
        try:
            manifest = json.loads(self.manifest.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            log.warning("index manifest of namespace %r unreadable (%s); rebuilding", self.namespace, error)
            return None
        expected = {
            "format": INDEX_FORMAT,
            "namespace": self.namespace,
            "space": "ip",
            "dim": dim,
            "m": m,
            "ef_construction": ef_construction,
        }
        differing = sorted(key for key, value in expected.items() if manifest.get(key) != value)
        if differing:
            log.info("index of namespace %r was built with other %s; rebuilding", self.namespace, differing)
            return None
        try:
            if (
                self.graph.stat().st_size != manifest["graph_bytes"]
                or _crc32_file(self.graph) != manifest["graph_crc32"]
            ):
                log.warning("index file of namespace %r is damaged (checksum); rebuilding", self.namespace)
                return None
            labels = np.load(self.labels, allow_pickle=False)
            if (
                labels.dtype != np.int64
                or labels.ndim != 1
                or _labels_checksum(labels) != manifest["labels_crc32"]
            ):
                log.warning("label file of namespace %r is damaged (checksum); rebuilding", self.namespace)
                return None
            index = HnswIndex.load(self.graph, dim, set(labels.tolist()), ef_search)
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            log.warning("index of namespace %r unreadable (%s); rebuilding", self.namespace, error)
            return None
        if len(index) != manifest["count"]:
            log.warning(
                "index of namespace %r holds %d labels, manifest says %d; rebuilding",
                self.namespace,
                len(index),
                manifest["count"],
            )
            return None
        return index


# ---------------------------------------------------------------------------
# The store.
# ---------------------------------------------------------------------------

#: A change to a namespace's vectors: labels added (with their vectors) or removed (vectors None).
_Change = tuple[Labels, Vector | None]


@dataclass(slots=True)
class _Slot:
    """The in-memory index of one namespace and the background work on it.

    While a worker thread loads the index, builds its successor, or saves it,
    changes are also appended to `journal`, and replayed onto the result when
    the thread is done. Replay is idempotent (indexes skip present labels and
    absent removals), so a change that the thread's snapshot already saw does
    no harm. While saving, `frozen` is set: the thread is reading the graph,
    so changes go to the journal only and searches see the graph as it was
    (a new entry may briefly miss; a deleted one is filtered out by SQLite).
    """

    index: VectorIndex | None = None
    journal: list[_Change] | None = None
    frozen: bool = False
    task: asyncio.Task[None] | None = None
    changes_since_save: int = 0
    saved_at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class _Loaded:
    index: VectorIndex
    outcome: Literal["exact", "loaded", "reconciled", "rebuilt"]
    unsaved_changes: int
    files: Literal["absent", "verified", "rejected"] = "absent"
    """Persisted files: none claimed (no manifest), used after passing their checks, or refused."""


class SqliteHnswStore:
    """Entries in SQLite, vectors in one ANN index per namespace; see the module docstring.

    `path` is a data directory (created if missing). `dim` is the embedding
    size; a database created with another dim is refused. Namespaces with fewer
    than `exact_search_below` vectors are searched exactly; larger ones use
    HNSW with `hnsw_m`, `hnsw_ef_construction` and `hnsw_ef_search` (the
    default ef_search keeps recall@1 >= 0.95 at 1M entries, see bench/lookup.py).

    Opening is synchronous and cheap: indexes load lazily, on a namespace's
    first `nearest`. Only one process may have a data directory open at once.
    """

    def __init__(
        self,
        path: Path | str,
        dim: int,
        *,
        max_entries: int = 1_000_000,
        exact_search_below: int = 2_048,
        hnsw_m: int = 16,
        hnsw_ef_construction: int = 128,
        hnsw_ef_search: int = 64,
    ) -> None:
        if dim < 1 or max_entries < 1 or exact_search_below < 1:
            raise ValueError("dim, max_entries and exact_search_below must be >= 1")
        self.path = Path(path)
        self.dim = dim
        self.max_entries = max_entries
        self.exact_search_below = exact_search_below
        self.hnsw_m = hnsw_m
        self.hnsw_ef_construction = hnsw_ef_construction
        self._ef_search = hnsw_ef_search
        self.path.mkdir(parents=True, exist_ok=True)
        self._index_dir = self.path / "index"
        self._db_path = self.path / "cache.db"
        self._locked_until = 0.0
        self._lock_file = _lock_directory(self.path)
        try:
            self._conn = _connect(self._db_path)  # opening may wait the long default for a lock
            self._init_schema()
            self._count: int = self._conn.execute("SELECT count(*) FROM entries").fetchone()[0]
        except BaseException:
            self._lock_file.close()
            raise
        self.lock_timeout_ms = LOCK_TIMEOUT_MS
        self._conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_MAX_PAGES}")
        self._writes_since_checkpoint = 0
        self._checkpointing: asyncio.Task[None] | None = None
        self._checkpoint_conn: sqlite3.Connection | None = None
        self._slots: dict[Namespace, _Slot] = {}
        self._counters = {"index_loads": 0, "index_reconciles": 0, "index_rebuilds": 0, "index_saves": 0,
                          # What loads found on disk: files that passed their checks, and files refused
                          # (damaged, torn, other parameters) and rebuilt. Crash recovery shows up here.
                          "index_files_verified": 0, "index_files_rejected": 0}
        self._closed = False

    @property
    def hnsw_ef_search(self) -> int:
        """HNSW search breadth: higher is slower and finds the true nearest more often."""
        return self._ef_search

    @hnsw_ef_search.setter
    def hnsw_ef_search(self, value: int) -> None:
        """Tune at run time: applies to loaded graphs at once and to those loaded later."""
        if value < 1:
            raise ValueError(f"hnsw_ef_search must be >= 1, got {value}")
        self._ef_search = value
        for slot in self._slots.values():
            if isinstance(slot.index, HnswIndex):
                slot.index.ef_search = value

    @property
    def lock_timeout_ms(self) -> int:
        """How long a statement on the event loop waits for another process's lock (see LOCK_TIMEOUT_MS)."""
        return self._lock_timeout_ms

    @lock_timeout_ms.setter
    def lock_timeout_ms(self, value: int) -> None:
        if value < 0:
            raise ValueError(f"lock_timeout_ms must be >= 0, got {value}")
        self._lock_timeout_ms = int(value)
        self._conn.execute(f"PRAGMA busy_timeout = {self._lock_timeout_ms}")

    def __repr__(self) -> str:
        return f"SqliteHnswStore({str(self.path)!r}, dim={self.dim}, entries={self._count})"

    # -- lookups: inline on the event loop ---------------------------------
    #
    # A point lookup is ~5-10 µs of SQLite work; handing it to a thread
    # (asyncio.to_thread) would add ~50-100 µs of hop and wake-up, ten times
    # the work itself. So lookups and single-row writes run on the loop.

    async def get(self, fingerprint: Fingerprint, scope: Scope, now: float) -> CacheEntry | None:
        row = self._conn.execute(_GET, (fingerprint, scope, now)).fetchone()
        return None if row is None else _entry(row)

    async def nearest(
        self, namespace: Namespace, scope: Scope, vector: Vector, k: int, now: float
    ) -> list[tuple[CacheEntry, float]]:
        """Search the namespace's index, then keep only rows SQLite confirms: live, this namespace, this scope.

        The scope check is defence in depth (the namespace hash already
        includes the scope). When filtering drops candidates, more are fetched,
        up to MAX_FETCH.
        """
        if k <= 0:
            return []
        slot = self._slots.get(namespace)
        index = slot.index if slot is not None else None
        if index is None:
            index = await self._load(namespace)
            if index is None:
                return []
        query = _normalised(np.asarray(vector, dtype=np.float32).reshape(-1))
        fetch = k
        while True:
            labels, similarities = self._search(namespace, index, query, fetch)
            if len(labels) == 0:
                return []
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM entries WHERE label IN ({','.join('?' * len(labels))}) "
                "AND namespace = ? AND scope = ? AND (expires_at IS NULL OR expires_at > ?)",
                (*labels.tolist(), namespace, scope, now),
            ).fetchall()
            by_label = {row[0]: row for row in rows}
            found = [
                (_entry(by_label[label]), float(similarity))
                for label, similarity in zip(labels.tolist(), similarities.tolist(), strict=True)
                if label in by_label
            ]
            if len(found) >= k or len(labels) < fetch or fetch >= min(len(index), MAX_FETCH):
                return found[:k]
            fetch = min(fetch * 4, len(index), MAX_FETCH)

    def _search(
        self, namespace: Namespace, index: VectorIndex, query: Vector, k: int
    ) -> tuple[Labels, npt.NDArray[np.float32]]:
        """`index.search`, plus the vectors added while the graph is frozen for a save.

        Those wait in the slot's journal until the save ends; comparing them
        by brute force keeps read-your-writes (a put is found by the next
        nearest) without touching the graph the save thread is reading.
        """
        labels, similarities = index.search(query, k)
        slot = self._slots.get(namespace)
        if slot is None or not slot.frozen or not slot.journal:
            return labels, similarities
        pending: dict[int, Vector] = {}
        for changed, vectors in slot.journal:
            if vectors is None:
                for label in changed.tolist():
                    pending.pop(label, None)
            else:
                pending.update(zip(changed.tolist(), vectors, strict=True))
        if not pending:
            return labels, similarities
        labels = np.concatenate([labels, np.fromiter(pending, dtype=np.int64, count=len(pending))])
        similarities = np.concatenate([similarities, np.stack(list(pending.values())) @ query])
        best = np.argsort(-similarities, kind="stable")[:k]
        return labels[best], similarities[best]

    async def list_entries(self, offset: int = 0, limit: int = 50) -> list[CacheEntry]:
        """Newest first, i.e. most recently put (labels only grow)."""
        rows = self._conn.execute(
            f"SELECT {_COLUMNS} FROM entries ORDER BY label DESC LIMIT ? OFFSET ?", (limit, offset)
        ).fetchall()
        return [_entry(row) for row in rows]

    # -- writes -------------------------------------------------------------

    async def put(self, entry: CacheEntry) -> None:
        """Insert (replacing any entry with the same fingerprint or id), then evict LRU entries over capacity."""
        vector = None
        if entry.vector is not None:
            vector = np.asarray(entry.vector, dtype=np.float32).reshape(-1)
            if vector.shape != (self.dim,):
                raise ValueError(f"entry vector has {vector.size} dimensions, store expects {self.dim}")
        recency = entry.last_hit_at if entry.last_hit_at is not None else entry.created_at
        with self._transaction():
            replaced = self._conn.execute(
                "DELETE FROM entries WHERE fingerprint = ? OR id = ? RETURNING label, namespace, has_vector",
                (entry.fingerprint, entry.id),
            ).fetchall()
            cursor = self._conn.execute(
                _INSERT,
                (
                    entry.id,
                    entry.fingerprint,
                    entry.namespace,
                    int(vector is not None),
                    entry.scope,
                    entry.version,
                    entry.provider,
                    entry.model,
                    entry.query,
                    orjson.dumps(entry.response).decode(),
                    orjson.dumps(entry.usage.to_dict()).decode(),
                    orjson.dumps(entry.tags).decode(),
                    entry.created_at,
                    entry.expires_at,
                    entry.hits,
                    entry.last_hit_at,
                    recency,
                    None if vector is None else vector.tobytes(),
                ),
            )
            label = cursor.lastrowid
            assert label is not None
            if entry.tags:
                self._conn.executemany(
                    "INSERT OR IGNORE INTO entry_tags (tag, label) VALUES (?, ?)",
                    [(tag, label) for tag in entry.tags],
                )
            # Counted locally and kept only once COMMIT succeeds: a failed commit
            # (disk full) must not leave _count ahead of the table, or later puts
            # would evict live entries to make room for ones that were never stored.
            count = self._count + 1 - len(replaced)
            evicted: list[tuple[int, str, int]] = []
            if count > self.max_entries:
                evicted = self._conn.execute(
                    "DELETE FROM entries WHERE label IN "
                    "(SELECT label FROM entries ORDER BY recency, label LIMIT ?) "
                    "RETURNING label, namespace, has_vector",
                    (count - self.max_entries,),
                ).fetchall()
                self._bump_counter("evictions", len(evicted))
                count -= len(evicted)
        self._count = count
        self._wrote()
        self._forget_vectors(replaced + evicted)
        if vector is not None:
            self._apply_change(
                entry.namespace, (np.array([label], dtype=np.int64), _normalised(vector[None, :]))
            )

    async def record_hit(self, entry_id: str, now: float) -> None:
        with self._writing():
            self._conn.execute(
                "UPDATE entries SET hits = hits + 1, last_hit_at = ?1, recency = max(recency, ?1) "
                "WHERE id = ?2",
                (now, entry_id),
            )
        self._wrote()

    async def purge(self, selector: PurgeSelector) -> int:
        name, value = _selector_field(selector)
        params = () if name == "all" else (value,)
        removed = await self._delete_where(_PURGE_WHERE[name], params)
        if name == "namespace":
            await self._drop_index(Namespace(str(value)))
        elif name == "all":
            for namespace in list(self._slots):
                await self._drop_index(namespace)
            if self._index_dir.exists():
                for path in self._index_dir.iterdir():
                    path.unlink(missing_ok=True)
        return removed

    async def sweep(self, now: float) -> int:
        return await self._delete_where(
            "expires_at IS NOT NULL AND expires_at <= ?", (now,), counter="expired_swept"
        )

    # -- stats and lifecycle -----------------------------------------------

    async def stats(self) -> StoreStats:
        def count_namespaces() -> int:
            with contextlib.closing(_connect(self._db_path)) as conn:
                return int(conn.execute("SELECT count(DISTINCT namespace) FROM entries").fetchone()[0])

        namespaces = await asyncio.to_thread(count_namespaces)
        counters = dict(
            self._conn.execute("SELECT key, value FROM meta WHERE key IN ('evictions', 'expired_swept')")
        )
        kinds = [slot.index.kind for slot in self._slots.values() if slot.index is not None]
        return StoreStats(
            entries=self._count,
            namespaces=namespaces,
            evictions=int(counters.get("evictions", 0)),
            expired_swept=int(counters.get("expired_swept", 0)),
            extra={
                "max_entries": self.max_entries,
                "loaded_indexes": len(kinds),
                "hnsw_indexes": kinds.count("hnsw"),
                **self._counters,
                "db_bytes": sum(p.stat().st_size for p in self.path.glob("cache.db*") if p.is_file()),
            },
        )

    async def close(self) -> None:
        """Finish background work, save changed HNSW indexes, checkpoint the WAL, release the directory."""
        if self._closed:
            return
        self._closed = True
        for namespace, slot in list(self._slots.items()):
            if slot.task is not None:
                with contextlib.suppress(Exception):
                    await slot.task
            if isinstance(slot.index, HnswIndex) and slot.changes_since_save > 0:
                try:
                    await asyncio.to_thread(_IndexFiles(self._index_dir, namespace).save, slot.index)
                    self._counters["index_saves"] += 1
                except OSError:
                    log.exception("saving the index of namespace %r failed; it will be rebuilt", namespace)
        self._slots.clear()
        if self._checkpointing is not None:
            await self._checkpointing
        if self._checkpoint_conn is not None:
            self._checkpoint_conn.close()
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.execute("PRAGMA optimize")
        finally:
            self._conn.close()
            self._lock_file.close()

    # -- SQLite helpers --------------------------------------------------------

    def _init_schema(self) -> None:
        # One script in one transaction: a crash mid-way leaves no half schema.
        self._conn.executescript(f"BEGIN;{_SCHEMA}COMMIT;")
        with self._transaction():
            found = dict(self._conn.execute("SELECT key, value FROM meta"))
            if not found:
                self._conn.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [
                        ("schema_version", SCHEMA_VERSION),
                        ("dim", self.dim),
                        ("evictions", 0),
                        ("expired_swept", 0),
                    ],
                )
            elif found.get("schema_version") != SCHEMA_VERSION:
                raise ConfigError(
                    f"{self._db_path} has schema version {found.get('schema_version')}, "
                    f"this cascache reads {SCHEMA_VERSION}"
                )
            elif found.get("dim") != self.dim:
                raise ConfigError(
                    f"{self._db_path} holds {found.get('dim')}-dim vectors; the embedder makes {self.dim}-dim ones"
                )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._writing():
            self._conn.execute("BEGIN")
            try:
                yield
                self._conn.execute("COMMIT")
            except BaseException:
                # SQLite rolls back by itself after some errors (e.g. SQLITE_FULL at
                # COMMIT) and not after others; only a transaction still open is ours to end.
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Fail a write fast, as `StoreUnavailable`, while another process holds the write lock.

        The first write to find the lock waits `lock_timeout_ms`; writes in the
        next LOCKED_BACKOFF_S do not try at all. Callers fail open (the answer is
        served, not cached). Reads go on meanwhile: WAL readers never wait for a writer.
        """
        if time.monotonic() < self._locked_until:
            raise StoreUnavailable(f"{self._db_path} is locked by another process; write skipped")
        try:
            yield
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                raise
            self._locked_until = time.monotonic() + LOCKED_BACKOFF_S
            log.warning("%s is locked by another process; dropping writes for %.0f s", self._db_path,
                        LOCKED_BACKOFF_S)
            raise StoreUnavailable(f"{self._db_path} is locked by another process: {exc}") from exc

    def _wrote(self) -> None:
        """Count a committed write; every CHECKPOINT_EVERY_WRITES, checkpoint the WAL on a thread."""
        self._writes_since_checkpoint += 1
        if (
            self._writes_since_checkpoint >= CHECKPOINT_EVERY_WRITES
            and self._checkpointing is None
            and not self._closed
        ):
            self._writes_since_checkpoint = 0
            self._checkpointing = asyncio.get_running_loop().create_task(self._checkpoint())

    async def _checkpoint(self) -> None:
        def checkpoint() -> None:
            if self._checkpoint_conn is None:
                self._checkpoint_conn = _connect(self._db_path)
            self._checkpoint_conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

        try:
            await asyncio.to_thread(checkpoint)
        except sqlite3.Error:
            # Not fatal: the WAL just grows until the next checkpoint succeeds.
            log.warning("WAL checkpoint failed", exc_info=True)
        finally:
            self._checkpointing = None

    def _bump_counter(self, key: str, by: int) -> None:
        if by:
            self._conn.execute("UPDATE meta SET value = value + ? WHERE key = ?", (by, key))

    async def _delete_where(self, where: str, params: tuple[Any, ...], counter: str | None = None) -> int:
        """Delete matching rows in batches of DELETE_BATCH, yielding to the loop between batches.

        Why not a worker thread: this connection is the only writer, and a
        second writing connection would make inline writes on the loop wait
        for SQLite's write lock, blocking the loop for the whole purge.
        A big purge is therefore not atomic; each batch is.
        """
        total = 0
        while True:
            with self._transaction():
                rows = self._conn.execute(
                    f"DELETE FROM entries WHERE label IN (SELECT label FROM entries WHERE {where} LIMIT ?) "
                    "RETURNING label, namespace, has_vector",
                    (*params, DELETE_BATCH),
                ).fetchall()
                if counter is not None:
                    self._bump_counter(counter, len(rows))
            self._count -= len(rows)  # after COMMIT, as in `put`
            self._wrote()
            self._forget_vectors(rows)
            total += len(rows)
            if len(rows) < DELETE_BATCH:
                return total
            await asyncio.sleep(0)

    # -- index bookkeeping -------------------------------------------------

    def _forget_vectors(self, rows: Iterable[tuple[int, str, int]]) -> None:
        """Remove the vectors of deleted rows from their namespaces' indexes."""
        by_namespace: dict[str, list[int]] = {}
        for label, namespace, has_vector in rows:
            if has_vector:
                by_namespace.setdefault(namespace, []).append(label)
        for namespace, labels in by_namespace.items():
            self._apply_change(Namespace(namespace), (np.array(labels, dtype=np.int64), None))

    def _apply_change(self, namespace: Namespace, change: _Change) -> None:
        """Bring a namespace's in-memory index in step with a committed SQLite change.

        An unloaded namespace is left alone: SQLite is the truth and the index
        is reconciled with it when it is loaded.
        """
        slot = self._slots.get(namespace)
        if slot is None:
            return
        if slot.journal is not None:
            slot.journal.append(change)
        if slot.index is not None and not slot.frozen:
            _apply(slot.index, change)
            if len(slot.index) == 0 and slot.task is None:
                # Every entry of the namespace is gone (evicted, expired, purged):
                # free its memory and files rather than keep an empty index forever.
                del self._slots[namespace]
                _IndexFiles(self._index_dir, namespace).remove()
                return
        slot.changes_since_save += len(change[0])
        self._maintain(namespace, slot)

    def _maintain(self, namespace: Namespace, slot: _Slot) -> None:
        """Start background work a namespace needs: conversion to HNSW when big enough, or a periodic save."""
        if slot.task is not None or slot.index is None or self._closed:
            return
        if isinstance(slot.index, ExactIndex):
            if len(slot.index) >= self.exact_search_below:
                self._start(namespace, slot, self._convert(namespace, slot))
        elif (
            slot.changes_since_save >= max(SAVE_MIN_CHANGES, SAVE_MIN_SHARE * len(slot.index))
            and time.monotonic() - slot.saved_at >= SAVE_INTERVAL_S
        ):
            self._start(namespace, slot, self._save(namespace, slot))

    def _start(
        self, namespace: Namespace, slot: _Slot, work: Coroutine[Any, Any, None]
    ) -> asyncio.Task[None]:
        async def run() -> None:
            try:
                await work
            finally:
                slot.task = None
            if self._slots.get(namespace) is slot:
                self._maintain(namespace, slot)

        task = asyncio.get_running_loop().create_task(run(), name=f"cascache-index-{namespace[:16]}")
        slot.task = task
        task.add_done_callback(_log_failure)
        return task

    async def _load(self, namespace: Namespace) -> VectorIndex | None:
        """The namespace's index, loading it if needed; None if it has no vectors."""
        slot = self._slots.get(namespace)
        if slot is None:
            small = self._load_small(namespace)
            if small is not None:
                return small if isinstance(small, ExactIndex) else None
            slot = _Slot(journal=[])
            self._slots[namespace] = slot
            self._start(namespace, slot, self._load_in_thread(namespace, slot))
        if slot.index is None and slot.task is not None:
            await asyncio.shield(slot.task)
        current = self._slots.get(namespace)
        return current.index if current is not None else None

    def _load_small(self, namespace: Namespace) -> ExactIndex | Literal[False] | None:
        """Inline load of a small namespace: its ExactIndex, False if it has no vectors, None if too big."""
        limit = min(INLINE_LOAD_MAX, self.exact_search_below - 1)
        rows = self._conn.execute(f"{_NAMESPACE_VECTORS} LIMIT ?", (namespace, limit + 1)).fetchall()
        if len(rows) > limit:
            return None
        if not rows:
            return False
        labels, vectors = _unpack(rows, len(rows), self.dim)
        index = ExactIndex(self.dim, capacity=max(4, len(labels)))
        index.add(labels, vectors)
        self._slots[namespace] = _Slot(index=index)
        files = _IndexFiles(self._index_dir, namespace)
        if files.exists():
            files.remove()  # a namespace that shrank: its old graph would only be rebuilt
        self._counters["index_loads"] += 1
        return index

    async def _load_in_thread(self, namespace: Namespace, slot: _Slot) -> None:
        try:
            loaded = await asyncio.to_thread(self._load_sync, namespace)
        except BaseException:
            if self._slots.get(namespace) is slot:
                del self._slots[namespace]
            raise
        if self._slots.get(namespace) is not slot:
            return
        journal, slot.journal = slot.journal or [], None
        if loaded is None:
            del self._slots[namespace]
            return
        for change in journal:
            _apply(loaded.index, change)
        slot.index = loaded.index
        slot.changes_since_save = loaded.unsaved_changes + sum(len(labels) for labels, _ in journal)
        self._counters["index_loads"] += 1
        if loaded.outcome == "reconciled":
            self._counters["index_reconciles"] += 1
        elif loaded.outcome == "rebuilt":
            self._counters["index_rebuilds"] += 1
            if loaded.unsaved_changes == 0:  # saved at once, unless the save failed (see _load_sync)
                self._counters["index_saves"] += 1
        if loaded.files != "absent":
            self._counters[f"index_files_{loaded.files}"] += 1

    def _load_sync(self, namespace: Namespace) -> _Loaded | None:
        """Worker thread: load and reconcile the persisted index, or build one from SQLite.

        Reads one SQLite snapshot (a read transaction on its own connection),
        so labels and vectors agree with each other.
        """
        files = _IndexFiles(self._index_dir, namespace)
        with contextlib.closing(_connect(self._db_path)) as conn:
            conn.execute("BEGIN")
            labels = np.fromiter(
                (row[0] for row in conn.execute(_NAMESPACE_LABELS, (namespace,))), dtype=np.int64
            )
            if len(labels) == 0:
                files.remove()
                return None
            if len(labels) < self.exact_search_below:
                files.remove()
                index: VectorIndex = ExactIndex(self.dim, capacity=len(labels))
                stored, vectors = _unpack(
                    conn.execute(_NAMESPACE_VECTORS, (namespace,)), len(labels), self.dim
                )
                index.add(stored, vectors)
                return _Loaded(index, "exact", 0)
            claimed = files.manifest.exists()
            saved = files.load(self.dim, self.hnsw_m, self.hnsw_ef_construction, self.hnsw_ef_search)
            verdict: Literal["absent", "verified", "rejected"] = (
                "absent" if not claimed else "rejected" if saved is None else "verified"
            )
            if saved is not None:
                in_index = saved.labels()
                missing = np.setdiff1d(labels, in_index, assume_unique=True)
                stale = np.setdiff1d(in_index, labels, assume_unique=True)
                drift = len(missing) + len(stale)
                if drift <= RECONCILE_MAX_SHARE * len(labels):
                    saved.remove(stale.tolist())
                    for start in range(0, len(missing), DELETE_BATCH):
                        chunk = missing[start : start + DELETE_BATCH].tolist()
                        rows = conn.execute(
                            f"SELECT label, vector FROM entries WHERE label IN ({','.join('?' * len(chunk))})",
                            chunk,
                        ).fetchall()
                        added, vectors = _unpack(rows, len(rows), self.dim)
                        saved.add(added, vectors)
                    return _Loaded(saved, "reconciled" if drift else "loaded", drift, verdict)
                log.info("index of namespace %r is %d changes behind SQLite; rebuilding", namespace, drift)
            stored, vectors = _unpack(conn.execute(_NAMESPACE_VECTORS, (namespace,)), len(labels), self.dim)
        index = HnswIndex.build(
            self.dim,
            stored,
            vectors,
            m=self.hnsw_m,
            ef_construction=self.hnsw_ef_construction,
            ef_search=self.hnsw_ef_search,
        )
        # A rebuild is the expensive path; persist it at once rather than at close. A save that
        # fails (disk full) must not cost the namespace its index: serve from memory, leave the
        # half-written files behind no manifest, and let the next save or close try again.
        try:
            files.save(index)
        except OSError:
            log.warning("saving the rebuilt index of namespace %r failed; keeping it in memory",
                        namespace, exc_info=True)
            return _Loaded(index, "rebuilt", len(index), verdict)
        return _Loaded(index, "rebuilt", 0, verdict)

    async def _convert(self, namespace: Namespace, slot: _Slot) -> None:
        """An ExactIndex reached `exact_search_below`: build its HNSW successor on a thread, then swap."""
        assert isinstance(slot.index, ExactIndex)
        labels, vectors = slot.index.snapshot()
        slot.journal = []
        try:
            index = await asyncio.to_thread(
                HnswIndex.build,
                self.dim,
                labels,
                vectors,
                m=self.hnsw_m,
                ef_construction=self.hnsw_ef_construction,
                ef_search=self.hnsw_ef_search,
            )
        finally:
            journal, slot.journal = slot.journal or [], None
        for change in journal:
            _apply(index, change)
        slot.index = index
        slot.changes_since_save = len(index)

    async def _save(self, namespace: Namespace, slot: _Slot) -> None:
        assert isinstance(slot.index, HnswIndex)
        index = slot.index
        slot.journal, slot.frozen = [], True
        try:
            await asyncio.to_thread(_IndexFiles(self._index_dir, namespace).save, index)
        finally:
            journal, slot.journal, slot.frozen = slot.journal or [], None, False
            for change in journal:
                _apply(index, change)
        slot.changes_since_save = sum(len(labels) for labels, _ in journal)
        slot.saved_at = time.monotonic()
        self._counters["index_saves"] += 1

    async def _drop_index(self, namespace: Namespace) -> None:
        """Forget a namespace's index in memory and on disk (its entries are gone)."""
        slot = self._slots.pop(namespace, None)
        if slot is not None and slot.task is not None:
            with contextlib.suppress(Exception):
                await slot.task
        _IndexFiles(self._index_dir, namespace).remove()


def _apply(index: VectorIndex, change: _Change) -> None:
    labels, vectors = change
    if vectors is None:
        index.remove(labels.tolist())
    else:
        index.add(labels, vectors)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background index work failed", exc_info=task.exception())


def _unpack(rows: Iterable[tuple[int, bytes]], count: int, dim: int) -> tuple[Labels, Vector]:
    """Labels and L2-normalised vectors of `count` (label, blob) rows, streamed into preallocated arrays.

    Streaming matters at a million rows: a list of rows, a joined buffer and a
    normalised copy would each hold another 1.5 GB at the peak of a rebuild.
    """
    labels = np.empty(count, dtype=np.int64)
    vectors = np.empty((count, dim), dtype=np.float32)
    filled = 0
    for filled, (label, blob) in enumerate(rows, start=1):
        labels[filled - 1] = label
        vectors[filled - 1] = np.frombuffer(blob, dtype=np.float32)
    labels, vectors = labels[:filled], vectors[:filled]
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    np.divide(vectors, norms, out=vectors, where=norms > 0)
    return labels, vectors


def _selector_field(selector: PurgeSelector) -> tuple[str, object]:
    if selector.all:
        return "all", True
    for name in ("id", "namespace", "version", "scope", "tag"):
        value = getattr(selector, name)
        if value is not None:
            return name, value
    raise ValueError("empty purge selector")  # PurgeSelector.__post_init__ forbids this


def _entry(row: tuple[Any, ...]) -> CacheEntry:
    (
        _,
        entry_id,
        fingerprint,
        namespace,
        scope,
        version,
        provider,
        model,
        query,
        response,
        usage,
        tags,
        created_at,
        expires_at,
        hits,
        last_hit_at,
        vector,
    ) = row
    return CacheEntry(
        id=entry_id,
        fingerprint=Fingerprint(fingerprint),
        namespace=Namespace(namespace),
        scope=Scope(scope),
        version=version,
        provider=provider,
        model=model,
        query=query,
        # Read-only view on the row's bytes: no copy, and nobody can alter it.
        vector=None if vector is None else np.frombuffer(vector, dtype=np.float32),
        response=orjson.loads(response),
        usage=Usage.from_dict(orjson.loads(usage)),
        created_at=created_at,
        expires_at=expires_at,
        tags=tuple(orjson.loads(tags)),
        hits=hits,
        last_hit_at=last_hit_at,
    )


def _connect(path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit) with the store's pragmas."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    # WAL + NORMAL: see the module docstring. busy_timeout covers a reader
    # thread's checkpoint racing the writer; journal_size_limit trims the WAL
    # file after a checkpoint lets it restart. mmap lets point lookups read
    # pages without a read() syscall and copy each.
    for pragma in (
        "journal_mode = WAL",
        "synchronous = NORMAL",
        "busy_timeout = 5000",
        "journal_size_limit = 67108864",
        "temp_store = MEMORY",
        "cache_size = -32768",
        "mmap_size = 268435456",
    ):
        conn.execute(f"PRAGMA {pragma}")
    return conn


def _lock_directory(path: Path) -> TextIO:
    """Hold an exclusive flock on `<path>/LOCK` for the store's life, or raise StoreUnavailable."""
    lock_file = (path / "LOCK").open("a+")
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.seek(0)
        holder = lock_file.read().strip() or "another process"
        lock_file.close()
        raise StoreUnavailable(f"{path} is in use by {holder}; a data directory serves one process") from None
    lock_file.seek(0)
    lock_file.truncate()
    lock_file.write(f"pid {os.getpid()}\n")
    lock_file.flush()
    return lock_file
