"""`RedisStore`: entries in Redis Stack, shared by every gateway replica that points at it.

Layout under one key prefix ``P`` (default ``cc:``; one prefix = one store, so
several caches or test runs can share a server)::

    P e:<id>           hash   the entry; the only keys the search index covers
    P h:<id>           hash   hits, last_hit_at (kept apart: see "Counters")
    P fp:<fingerprint> string id of the entry with that fingerprint (exact lookups)
    P lru              zset   id -> recency (last hit, else creation): the LRU order
    P exp              zset   id -> expires_at (caller's clock): what `sweep` removes
    P stats            hash   evictions, expired_swept: shared by all replicas
    P idx              RediSearch index over ``P e:*``

Why each choice:

- **Exact lookups never touch the index.** ``GET P fp:<fp>`` then ``HGETALL``,
  in one round trip (a read-only Lua script). The index is only for KNN and
  for finding what a purge selects.
- **One RediSearch index, HNSW, COSINE, FLOAT32**, with CASESENSITIVE TAG
  fields namespace, scope, version and tags. Every KNN query is pre-filtered
  ``(@namespace:{..} @scope:{..})=>[KNN ...]``, so another namespace's or
  another tenant's vectors are never candidates (and results are checked again
  in Python: the security property must not rest on query syntax alone). Tag
  values are escaped character by character (`escape_tag`). Tags are joined
  with U+001F, a separator no sane tag contains (`put` refuses one that does).
- **A semantic lookup is one round trip**: a read-only Lua script runs the
  FT.SEARCH and reads the found entries' counters. For a large namespace the
  query forces ``HYBRID_POLICY BATCHES`` (`RedisStore.prefers_batches` says
  when and why: the planner brute-forces large filters on small indexes).
- **Vectors are stored as given** (float32 bytes): COSINE normalises inside the
  index, and `CacheEntry.vector` round-trips bit for bit.
- **Counters live outside the indexed hash.** Any write to an indexed hash
  makes RediSearch re-index the whole document, HNSW node included (measured
  here: ``HINCRBY`` on an unindexed field of an indexed hash bumps
  ``max_doc_id`` and costs ~0.7 ms). So `record_hit` writes ``P h:<id>``.
- **Native expiry for TTL.** ``PEXPIREAT`` on the entry, its counters and its
  fingerprint pointer, all at the same instant, so a pointer never outlives its
  entry for long; RediSearch drops expired documents from the index itself.
  Whether an entry is live is still decided by the caller's clock (`now`), as
  in every store: an entry whose ``expires_at`` is already past on the wall
  clock gets no native expiry (Redis would delete it at once, before a caller
  whose clock is behind has stopped serving it) and is removed by `sweep`.
- **max_entries by counting, not ``maxmemory``.** ``P lru`` orders ids by
  recency; `put` pops the least recently used ids past ``max_entries`` and
  deletes them, atomically in the same Lua script as the write. This is exact
  and shared by all replicas, and it makes the bound a number of answers, like
  the embedded store's. Run the server with ``maxmemory`` and
  ``maxmemory-policy volatile-lru`` (or ``allkeys-lru``) as a second, memory
  safety net: Redis may then evict single keys; a dangling fingerprint pointer
  or recency member only ever causes a miss, and members of ``P lru`` whose
  entry is gone are popped first or pruned by `sweep` (through ``P exp``).
- **Purges go through the index** (``FT.SEARCH <selector> NOCONTENT`` in pages
  of `PAGE`) and each page is deleted by one Lua call that also removes the
  pointer, counters and recency members, so a purge is exact and the loop
  yields between pages.
- **Lua for every multi-key change.** Replacing an entry with the same
  fingerprint, writing it and evicting must be atomic when many replicas write
  at once; a script is also one round trip. The scripts compute some key names
  inside (the old entry's); that is fine on a standalone node, which is what a
  shard is. See docs/redis.md for Redis Cluster.

Errors: connection loss, timeouts, a server still loading or out of memory
raise `StoreUnavailable` (callers fail open). A restarted server without
persistence has lost the index too: every new connection makes the store check
the index again before its next write or search, and a search that finds no
index recreates it and retries once.

Needs Redis Stack >= 7.4 (RediSearch >= 2.10, for INDEXEMPTY tags) or Redis >= 8.
"""

from __future__ import annotations

import asyncio
import functools
import math
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np
import orjson
import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

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

__all__ = ["RedisStore", "escape_tag", "open_redis"]

T = TypeVar("T")

#: Separator of the multi-valued `tags` TAG field.
TAG_SEPARATOR: Final = "\x1f"
#: Ids per purge/sweep page: one FT.SEARCH and one Lua call (~40 ms of server time at most).
PAGE: Final = 200
#: Longest wait for a new index to take in the keys already on the server.
INITIAL_SCAN_WAIT_S: Final = 2.0
#: A (namespace, scope) with at least this many entries, and this share of the
#: index, is searched with HYBRID_POLICY BATCHES (see `RedisStore.prefers_batches`).
LARGE_FILTER: Final = 5_000
LARGE_FILTER_SHARE: Final = 0.1
#: How long a namespace's size is trusted, and how many are remembered.
POLICY_TTL_S: Final = 30.0
POLICY_CACHE_SIZE: Final = 4_096
#: Cap on KNN candidates fetched when expired entries hide the first ones.
MAX_FETCH: Final = 1_024
#: FT.AGGREGATE arguments counting distinct namespaces (namespace is a SORTABLE tag: no hash reads).
_COUNT_NAMESPACES: Final = ("*", "GROUPBY", "0", "REDUCE", "COUNT_DISTINCT", "1", "@namespace", "AS", "n", "DIALECT", "2")
#: ResponseError prefixes that mean "this node cannot serve now", not "bad command".
_UNAVAILABLE_REPLIES: Final = ("LOADING", "OOM", "READONLY", "MASTERDOWN", "BUSY", "CLUSTERDOWN", "TRYAGAIN")
_NO_INDEX_REPLIES: Final = ("no such index", "unknown index name", "unknown index")
_TAG_SPECIAL: Final = re.compile(r"([^A-Za-z0-9_])")

# --- Lua scripts (KEYS are declared where the key is known in advance) ---------------

#: Shared by the scripts below: delete one entry and everything that points at it.
#: Returns 1 if the entry hash still existed (so natively expired ones are not counted).
_REMOVE_FN: Final = """
local function remove(prefix, lru, exp, victim)
  local ekey = prefix .. 'e:' .. victim
  local fp = redis.call('HGET', ekey, 'fingerprint')
  local existed = redis.call('DEL', ekey)
  redis.call('DEL', prefix .. 'h:' .. victim)
  if fp then
    local fkey = prefix .. 'fp:' .. fp
    if redis.call('GET', fkey) == victim then redis.call('DEL', fkey) end
  end
  redis.call('ZREM', lru, victim)
  redis.call('ZREM', exp, victim)
  return existed
end
"""

#: KEYS: entry, counters, fingerprint pointer, lru, exp, stats
#: ARGV: prefix, id, recency, native expiry ms ('' = none), expires_at ('' = none),
#:       max_entries, hits, last_hit_at ('' = none), field, value, field, value...
_PUT: Final = (
    _REMOVE_FN
    + """
local prefix, id = ARGV[1], ARGV[2]
local old = redis.call('GET', KEYS[3])
if old and old ~= id then remove(prefix, KEYS[4], KEYS[5], old) end
if redis.call('EXISTS', KEYS[1]) == 1 then remove(prefix, KEYS[4], KEYS[5], id) end
redis.call('HSET', KEYS[1], unpack(ARGV, 9))
if ARGV[8] == '' then
  redis.call('HSET', KEYS[2], 'hits', ARGV[7])
else
  redis.call('HSET', KEYS[2], 'hits', ARGV[7], 'last_hit_at', ARGV[8])
end
redis.call('SET', KEYS[3], id)
if ARGV[4] ~= '' then
  redis.call('PEXPIREAT', KEYS[1], ARGV[4])
  redis.call('PEXPIREAT', KEYS[2], ARGV[4])
  redis.call('PEXPIREAT', KEYS[3], ARGV[4])
end
redis.call('ZADD', KEYS[4], ARGV[3], id)
if ARGV[5] ~= '' then redis.call('ZADD', KEYS[5], ARGV[5], id) end
local evicted = 0
local over = redis.call('ZCARD', KEYS[4]) - tonumber(ARGV[6])
while over > 0 do
  local popped = redis.call('ZPOPMIN', KEYS[4], over)
  for i = 1, #popped, 2 do evicted = evicted + remove(prefix, KEYS[4], KEYS[5], popped[i]) end
  over = redis.call('ZCARD', KEYS[4]) - tonumber(ARGV[6])
end
if evicted > 0 then redis.call('HINCRBY', KEYS[6], 'evictions', evicted) end
return evicted
"""
)

#: KEYS: fingerprint pointer. ARGV: prefix. Returns {entry fields, {hits, last_hit_at}} or nil.
_GET: Final = """#!lua flags=no-writes
local id = redis.call('GET', KEYS[1])
if not id then return false end
local fields = redis.call('HGETALL', ARGV[1] .. 'e:' .. id)
if #fields == 0 then return false end
return {fields, redis.call('HMGET', ARGV[1] .. 'h:' .. id, 'hits', 'last_hit_at')}
"""

#: ARGV: index, query, vector blob, k, prefix. One round trip for the KNN query
#: and the hit counters of what it found: {FT.SEARCH reply, counters of result 1, ...}.
_NEAREST: Final = """#!lua flags=no-writes
local reply = redis.call('FT.SEARCH', ARGV[1], ARGV[2], 'PARAMS', '2', 'vec', ARGV[3],
  'SORTBY', '__dist', 'LIMIT', '0', ARGV[4], 'DIALECT', '2')
local out = {reply}
local cut = #ARGV[5] + 3
for i = 2, #reply, 2 do
  out[#out + 1] = redis.call('HMGET', ARGV[5] .. 'h:' .. string.sub(reply[i], cut), 'hits', 'last_hit_at')
end
return out
"""

#: KEYS: entry, counters, lru. ARGV: now, id.
_RECORD_HIT: Final = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HINCRBY', KEYS[2], 'hits', 1) == 1 then
  -- (re)created: give it the entry's lifetime
  local at = redis.call('PEXPIRETIME', KEYS[1])
  if at > 0 then redis.call('PEXPIREAT', KEYS[2], at) end
end
redis.call('HSET', KEYS[2], 'last_hit_at', ARGV[1])
redis.call('ZADD', KEYS[3], 'XX', ARGV[1], ARGV[2])
return 1
"""

#: KEYS: lru, exp, stats. ARGV: prefix, stats field to add the count to ('' = none), ids...
_REMOVE: Final = (
    _REMOVE_FN
    + """
local removed = 0
for i = 3, #ARGV do removed = removed + remove(ARGV[1], KEYS[1], KEYS[2], ARGV[i]) end
if ARGV[2] ~= '' and removed > 0 then redis.call('HINCRBY', KEYS[3], ARGV[2], removed) end
return removed
"""
)

def escape_tag(value: str) -> str:
    """`value` as a literal inside a RediSearch TAG query ``@field:{...}`` (DIALECT 2).

    Every character other than ASCII letters, digits and ``_`` is
    backslash-escaped (non-ASCII ones too: an escaped character is always a
    literal, an unescaped one might be a separator), so ``:``, ``/``, ``-``, spaces, ``|`` and braces can never
    change the query. The empty string is ``""`` (fields are INDEXEMPTY).
    """
    return _TAG_SPECIAL.sub(r"\\\1", value) if value else '""'


class RedisStore:
    """A `Store` in one Redis Stack (or Redis 8) server, shared by all processes that use the same prefix."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379",
        dim: int = 384,
        *,
        prefix: str = "cc:",
        max_entries: int = 1_000_000,
        socket_timeout_s: float = 0.5,
        connect_timeout_s: float = 0.25,
        max_connections: int = 64,
        ef_runtime: int = 100,
        hnsw_m: int = 16,
        hnsw_ef_construction: int = 200,
    ) -> None:
        """
        Args:
            url: one server, ``redis://[user:password@]host:port[/db]``.
            dim: embedding dimension; an existing index with another one is refused.
            prefix: key prefix; stores with different prefixes never see each other,
                as long as no prefix begins with another one plus ``e:`` (the index
                covers every key that starts with ``<prefix>e:``).
            max_entries: LRU bound on entries, enforced on every `put`.
            socket_timeout_s / connect_timeout_s: per command / per connect. Short,
                because a cache that waits longer than its upstream is worse than none.
            max_connections: connection pool size per process.
            ef_runtime: HNSW search breadth (recall vs latency; 100 gives ~0.99
                recall@1 on 100k MiniLM vectors here, see bench/redis.py).
            hnsw_m / hnsw_ef_construction: HNSW graph parameters (index creation only).
        """
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        if not prefix or any(c in prefix for c in "*?[]"):
            raise ValueError(f"prefix must be non-empty and free of glob characters, got {prefix!r}")
        self.url = url
        self.dim = dim
        self.prefix = prefix
        self.max_entries = max_entries
        self.ef_runtime = ef_runtime
        self.hnsw_m = hnsw_m
        self.hnsw_ef_construction = hnsw_ef_construction
        parts = urlsplit(url)
        #: Stable identity of the node (no credentials): what `ShardedStore` hashes.
        self.node_name = f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}{parts.path or '/0'}"
        self.index_name = f"{prefix}idx"
        # Blocking: a burst beyond max_connections waits (up to the socket timeout)
        # for a free connection instead of failing, which a ShardedStore would take
        # for a dead node.
        self._pool = aredis.BlockingConnectionPool.from_url(
            url,
            protocol=3,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=connect_timeout_s,
            max_connections=max_connections,
            timeout=socket_timeout_s,
            # One immediate retry on a dropped connection: after a server restart
            # the pool's first connection is stale, a fresh one works. Timeouts are
            # not retried: a slow node must fail fast so callers can fail open.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            redis_connect_func=self._on_connect,
        )
        self._redis = aredis.Redis(connection_pool=self._pool)
        self._put_script = self._redis.register_script(_PUT)
        self._get_script = self._redis.register_script(_GET)
        self._nearest_script = self._redis.register_script(_NEAREST)
        self._hit_script = self._redis.register_script(_RECORD_HIT)
        self._remove_script = self._redis.register_script(_REMOVE)
        self._index_ready = False
        self._index_lock = asyncio.Lock()
        self._policy_cache: OrderedDict[tuple[str, str], tuple[float, bool]] = OrderedDict()
        """(namespace, scope) -> (valid until, force BATCHES), see `prefers_batches`."""
        self._expired_natively = 0
        """Ids `sweep` pruned whose entry Redis had already expired (this process)."""

    # --- keys -------------------------------------------------------------------------

    def _entry_key(self, entry_id: str) -> str:
        return f"{self.prefix}e:{entry_id}"

    def _counters_key(self, entry_id: str) -> str:
        return f"{self.prefix}h:{entry_id}"

    def _fingerprint_key(self, fingerprint: str) -> str:
        return f"{self.prefix}fp:{fingerprint}"

    @property
    def _lru_key(self) -> str:
        return f"{self.prefix}lru"

    @property
    def _exp_key(self) -> str:
        return f"{self.prefix}exp"

    @property
    def _stats_key(self) -> str:
        return f"{self.prefix}stats"

    # --- the Store protocol -----------------------------------------------------------

    async def get(self, fingerprint: Fingerprint, scope: Scope, now: float) -> CacheEntry | None:
        reply = await self._io(
            lambda: self._get_script(keys=[self._fingerprint_key(fingerprint)], args=[self.prefix])
        )
        if not reply:
            return None
        fields, counters = reply
        entry = _entry_from_fields(_pairs(fields), counters)
        if entry.fingerprint != fingerprint or entry.scope != scope or entry.is_expired(now):
            return None
        return entry

    async def nearest(
        self, namespace: Namespace, scope: Scope, vector: Vector, k: int, now: float
    ) -> list[tuple[CacheEntry, float]]:
        if k <= 0:
            return []
        blob = self._vector_bytes(vector)
        batches = await self.prefers_batches(namespace, scope)
        fetch = k
        while True:
            query = self.knn_query(namespace, scope, fetch, batches=batches)
            args: list[str | bytes | int] = [self.index_name, query, blob, fetch, self.prefix]
            reply = await self._index_call(functools.partial(self._nearest_script, keys=[], args=args))
            rows, counters = reply[0], reply[1:]
            found: list[tuple[CacheEntry, float]] = []
            for position in range(len(counters)):
                fields = _pairs(rows[2 + 2 * position] or [])  # empty: expired during the query
                # Checked again here: the security property must not rest on query syntax.
                if fields.get(b"namespace", b"").decode() != namespace or fields.get(b"scope", b"").decode() != scope:
                    continue
                expires_at = fields.get(b"expires_at")
                if expires_at is not None and now >= float(expires_at):
                    continue
                similarity = 1.0 - float(fields[b"__dist"])
                found.append((_entry_from_fields(fields, counters[position]), similarity))
            if len(found) >= k or len(counters) < fetch or fetch >= MAX_FETCH:
                return found[:k]
            fetch = min(4 * fetch, MAX_FETCH)  # expired entries hid some candidates: look further

    async def put(self, entry: CacheEntry) -> None:
        fields = self._entry_fields(entry)
        recency = entry.last_hit_at if entry.last_hit_at is not None else entry.created_at
        native_ms = _native_expiry_ms(entry.expires_at)
        args: list[Any] = [
            self.prefix,
            entry.id,
            repr(float(recency)),
            "" if native_ms is None else native_ms,
            "" if entry.expires_at is None else repr(float(entry.expires_at)),
            self.max_entries,
            entry.hits,
            "" if entry.last_hit_at is None else repr(float(entry.last_hit_at)),
        ]
        for name, value in fields.items():
            args += [name, value]
        keys = [
            self._entry_key(entry.id),
            self._counters_key(entry.id),
            self._fingerprint_key(entry.fingerprint),
            self._lru_key,
            self._exp_key,
            self._stats_key,
        ]
        await self._ensure_index()
        await self._io(lambda: self._put_script(keys=keys, args=args))

    async def record_hit(self, entry_id: str, now: float) -> None:
        keys = [self._entry_key(entry_id), self._counters_key(entry_id), self._lru_key]
        await self._io(lambda: self._hit_script(keys=keys, args=[repr(float(now)), entry_id]))

    async def purge(self, selector: PurgeSelector) -> int:
        if selector.id is not None:
            return await self._remove([selector.id])
        query = _purge_query(selector)
        removed = 0
        previous: list[str] | None = None
        while True:
            ids = await self._search_ids(query, PAGE)
            if not ids or ids == previous:  # the same page twice: nothing more can go
                break
            removed += await self._remove(ids)
            previous = ids
        if selector.all:
            # Pointers and counters whose entry was evicted by Redis itself, and the
            # sets: `purge(all)` leaves nothing of this prefix but the index.
            await self._delete_matching(f"{self.prefix}fp:*", f"{self.prefix}h:*")
            await self._io(lambda: self._redis.delete(self._lru_key, self._exp_key))
        return removed

    async def sweep(self, now: float) -> int:
        swept = 0
        while True:
            members = await self._io(
                lambda: self._redis.zrangebyscore(self._exp_key, "-inf", repr(float(now)), start=0, num=PAGE)
            )
            ids = [member.decode() for member in members if isinstance(member, bytes)]
            if not ids:
                break
            removed = await self._remove(ids, count_as="expired_swept")
            swept += removed
            self._expired_natively += len(ids) - removed
            if len(ids) < PAGE:
                break
        return swept

    async def list_entries(self, offset: int = 0, limit: int = 50) -> list[CacheEntry]:
        if limit <= 0:
            return []
        reply = await self._search(
            ["*", "SORTBY", "created_at", "DESC", "LIMIT", str(offset), str(limit), "DIALECT", "2"]
        )
        rows = [row[b"extra_attributes"] for row in reply.get(b"results") or []]
        counters = await self._counters([fields[b"id"].decode() for fields in rows])
        return [_entry_from_fields(fields, hits) for fields, hits in zip(rows, counters, strict=True)]

    async def stats(self) -> StoreStats:
        info = await self._index_call(lambda: self._command("FT.INFO", self.index_name))
        groups = await self._index_call(lambda: self._command("FT.AGGREGATE", self.index_name, *_COUNT_NAMESPACES))
        rows = groups.get(b"results") or []
        namespaces = int(rows[0][b"extra_attributes"][b"n"]) if rows and int(info[b"num_docs"]) else 0
        counters = await self._io(lambda: self._redis.hgetall(self._stats_key))
        return StoreStats(
            entries=int(info[b"num_docs"]),
            namespaces=namespaces,
            evictions=int(counters.get(b"evictions", 0)),
            expired_swept=int(counters.get(b"expired_swept", 0)),
            extra={
                "node": self.node_name,
                "prefix": self.prefix,
                "max_entries": self.max_entries,
                "index_failures": int(info.get(b"hash_indexing_failures", 0)),
                "expired_natively": self._expired_natively,
            },
        )

    async def close(self) -> None:
        """Close the pool's connections. A later call reconnects (closing is idempotent)."""
        await self._redis.aclose()
        await self._pool.disconnect()

    # --- the IO boundary ----------------------------------------------------------------

    async def _on_connect(self, connection: Any) -> None:
        """Every new connection may be to a new server process (a restart without
        persistence has no index): check the index again before the next write or search."""
        await connection.on_connect()
        self._index_ready = False

    async def _io(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis call; "this node cannot serve now" becomes `StoreUnavailable`."""
        try:
            return await call()
        except (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"redis {self.node_name}: {type(exc).__name__}: {exc}") from exc
        except ResponseError as exc:
            if str(exc).startswith(_UNAVAILABLE_REPLIES):
                raise StoreUnavailable(f"redis {self.node_name}: {exc}") from exc
            raise

    async def _index_call(self, call: Callable[[], Awaitable[T]]) -> T:
        """`_io` for index commands: a server restarted without persistence lost the index; recreate it once."""
        await self._ensure_index()
        try:
            return await self._io(call)
        except ResponseError as exc:
            if not _is_missing_index(exc):
                raise
            self._index_ready = False
            await self._ensure_index()
            return await self._io(call)

    async def _command(self, *arguments: Any) -> Any:
        """A raw command (FT.* have no typed wrappers in redis-py); replies are RESP3 maps with bytes keys."""
        return await self._redis.execute_command(*arguments)  # type: ignore[no-untyped-call]

    async def _search(self, arguments: Sequence[Any]) -> Mapping[bytes, Any]:
        reply: Mapping[bytes, Any] = await self._index_call(
            lambda: self._command("FT.SEARCH", self.index_name, *arguments)
        )
        return reply

    async def _search_ids(self, query: str, limit: int) -> list[str]:
        reply = await self._search([query, "NOCONTENT", "LIMIT", "0", str(limit), "DIALECT", "2"])
        cut = len(self.prefix) + 2  # "e:"
        return [row[b"id"].decode()[cut:] for row in reply.get(b"results") or []]

    async def _remove(self, ids: Sequence[str], count_as: str = "") -> int:
        removed: int = await self._io(
            lambda: self._remove_script(
                keys=[self._lru_key, self._exp_key, self._stats_key], args=[self.prefix, count_as, *ids]
            )
        )
        return removed

    async def _counters(self, ids: Sequence[str]) -> list[list[bytes | None]]:
        if not ids:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for entry_id in ids:
            pipe.hmget(self._counters_key(entry_id), ["hits", "last_hit_at"])
        result: list[list[bytes | None]] = await self._io(pipe.execute)
        return result

    async def _delete_matching(self, *patterns: str) -> None:
        async def delete(pattern: str) -> None:
            batch: list[bytes] = []
            async for key in self._redis.scan_iter(match=pattern, count=1_000):
                batch.append(key)
                if len(batch) == 1_000:
                    await self._redis.unlink(*batch)
                    batch.clear()
            if batch:
                await self._redis.unlink(*batch)

        for pattern in patterns:
            await self._io(functools.partial(delete, pattern))

    async def _ensure_index(self) -> None:
        """Create the search index once per process (and again after a server lost it)."""
        if self._index_ready:
            return
        async with self._index_lock:
            if self._index_ready:
                return
            try:
                info = await self._io(lambda: self._command("FT.INFO", self.index_name))
            except ResponseError as exc:
                if not _is_missing_index(exc):
                    raise
                try:
                    await self._io(lambda: self._command(*self._create_index_command()))
                except ResponseError as race:  # another replica created it meanwhile
                    if "already exists" not in str(race).lower():
                        raise
                await self._await_initial_scan()
            else:
                self._check_index(info)
            self._index_ready = True

    async def _await_initial_scan(self) -> None:
        """Wait (at most `INITIAL_SCAN_WAIT_S`) until a new index has taken in the keys already there.

        FT.CREATE indexes existing hashes in the background. On a server that
        restarted empty, entries written before the index was recreated would
        otherwise be invisible to the first searches. With millions of keys
        (an index dropped by hand) we stop waiting and let the scan finish alone.
        """
        deadline = time.monotonic() + INITIAL_SCAN_WAIT_S
        while time.monotonic() < deadline:
            info = await self._io(lambda: self._command("FT.INFO", self.index_name))
            if not int(info.get(b"indexing", 0)):
                return
            await asyncio.sleep(0.01)

    def _create_index_command(self) -> list[Any]:
        return [
            "FT.CREATE", self.index_name, "ON", "HASH", "PREFIX", "1", f"{self.prefix}e:",
            # No text fields: skip what only full-text search needs.
            "NOOFFSETS", "NOHL", "NOFIELDS", "NOFREQS", "STOPWORDS", "0",
            "SCHEMA",
            "namespace", "TAG", "CASESENSITIVE", "INDEXEMPTY", "SORTABLE",
            "scope", "TAG", "CASESENSITIVE", "INDEXEMPTY",
            "version", "TAG", "CASESENSITIVE", "INDEXEMPTY",
            "tags", "TAG", "SEPARATOR", TAG_SEPARATOR, "CASESENSITIVE",
            "created_at", "NUMERIC", "SORTABLE",
            "vector", "VECTOR", "HNSW", "12",
            "TYPE", "FLOAT32", "DIM", str(self.dim), "DISTANCE_METRIC", "COSINE",
            "M", str(self.hnsw_m), "EF_CONSTRUCTION", str(self.hnsw_ef_construction),
            "EF_RUNTIME", str(self.ef_runtime),
        ]  # fmt: skip

    def _check_index(self, info: Mapping[bytes, Any]) -> None:
        """Refuse an existing index whose vectors have another dimension (a different embedder)."""
        for attribute in info.get(b"attributes") or []:
            fields = _attribute_map(attribute)
            if fields.get("identifier") == "vector":
                dim = int(fields.get("dim", self.dim))
                if dim != self.dim:
                    raise ConfigError(
                        f"store.url: index {self.index_name!r} on {self.node_name} holds {dim}-d vectors but the "
                        f"embedder gives {self.dim}-d; use another prefix or purge the old index"
                    )

    # --- encoding -------------------------------------------------------------------------

    def _vector_bytes(self, vector: Vector) -> bytes:
        array = np.ascontiguousarray(np.asarray(vector, dtype=np.float32).reshape(-1))
        if array.shape[0] != self.dim:
            raise ValueError(f"vector has {array.shape[0]} dimensions, the store {self.dim}")
        return array.tobytes()

    def knn_query(self, namespace: Namespace, scope: Scope, k: int, *, batches: bool = False) -> str:
        """The FT.SEARCH query of `nearest` (public so that benchmarks can send exactly the same one)."""
        return _knn_query(namespace, scope, k, max(self.ef_runtime, k), batches)

    async def prefers_batches(self, namespace: Namespace, scope: Scope) -> bool:
        """Whether to force RediSearch's BATCHES policy for a filtered KNN in this namespace and scope.

        A filtered KNN either brute-forces the filter's matches (ADHOC_BF) or
        walks the HNSW graph in batches, dropping non-matches (BATCHES). The
        planner chooses well at 100k entries, but on smaller indexes it picks
        ADHOC_BF even when the filter matches most of the index (measured here:
        10k entries in one namespace, 1.4 ms ADHOC_BF vs 0.4 ms BATCHES). So
        when a (namespace, scope) holds at least `LARGE_FILTER` entries and
        `LARGE_FILTER_SHARE` of the index, we force BATCHES; otherwise the
        planner decides (for small filters ADHOC_BF is right: BATCHES would
        walk much of the graph to find them). Sizes are counted with one
        round trip and remembered for `POLICY_TTL_S`.
        """
        key = (namespace, scope)
        cached = self._policy_cache.get(key)
        clock = time.monotonic()
        if cached is not None and cached[0] > clock:
            return cached[1]
        async def sizes() -> list[Any]:
            pipe = self._redis.pipeline(transaction=False)
            pipe.execute_command("FT.INFO", self.index_name)
            pipe.execute_command(
                "FT.SEARCH", self.index_name,
                f"@namespace:{{{escape_tag(namespace)}}} @scope:{{{escape_tag(scope)}}}",
                "NOCONTENT", "LIMIT", "0", "0", "DIALECT", "2",
            )  # fmt: skip
            return await pipe.execute()

        info, counted = await self._index_call(sizes)
        size, matches = int(info[b"num_docs"]), int(counted[b"total_results"])
        batches = matches >= LARGE_FILTER and matches >= LARGE_FILTER_SHARE * size
        self._policy_cache[key] = (clock + POLICY_TTL_S, batches)
        self._policy_cache.move_to_end(key)
        if len(self._policy_cache) > POLICY_CACHE_SIZE:
            self._policy_cache.popitem(last=False)
        return batches

    def _entry_fields(self, entry: CacheEntry) -> dict[str, bytes | str]:
        for tag in entry.tags:
            if TAG_SEPARATOR in tag:
                raise ValueError(f"tag {tag!r} contains U+001F, the tag separator")
        fields: dict[str, bytes | str] = {
            "id": entry.id,
            "fingerprint": entry.fingerprint,
            "namespace": entry.namespace,
            "scope": entry.scope,
            "version": entry.version,
            "provider": entry.provider,
            "model": entry.model,
            "response": orjson.dumps(entry.response),
            "usage": orjson.dumps(entry.usage.to_dict()),
            "tags": TAG_SEPARATOR.join(entry.tags),
            "created_at": repr(float(entry.created_at)),
        }
        if entry.query is not None:
            fields["query"] = entry.query
        if entry.vector is not None:
            fields["vector"] = self._vector_bytes(entry.vector)
        if entry.expires_at is not None:
            fields["expires_at"] = repr(float(entry.expires_at))
        return fields


# --- pure helpers ------------------------------------------------------------------------


def _native_expiry_ms(expires_at: float | None) -> int | None:
    """When Redis should delete the keys, or None when it should not (see the module docstring)."""
    if expires_at is None:
        return None
    at_ms = math.ceil(expires_at * 1000)
    return at_ms if at_ms > time.time() * 1000 else None


@functools.lru_cache(maxsize=4_096)
def _knn_query(namespace: str, scope: str, k: int, ef_runtime: int, batches: bool) -> str:
    """Memoised: a namespace is searched again and again, and escaping costs a few µs per lookup."""
    policy = " HYBRID_POLICY BATCHES" if batches else ""
    return (
        f"(@namespace:{{{escape_tag(namespace)}}} @scope:{{{escape_tag(scope)}}})"
        f"=>[KNN {k} @vector $vec EF_RUNTIME {ef_runtime}{policy} AS __dist]"
    )


def _is_missing_index(error: ResponseError) -> bool:
    message = str(error).lower()
    return any(reply in message for reply in _NO_INDEX_REPLIES)


def _purge_query(selector: PurgeSelector) -> str:
    if selector.all:
        return "*"
    for field, value in (
        ("namespace", selector.namespace),
        ("version", selector.version),
        ("scope", selector.scope),
        ("tags", selector.tag),
    ):
        if value is not None:
            if field == "tags" and not value:
                return "-*"  # no entry carries the empty tag (tags are not INDEXEMPTY)
            return f"@{field}:{{{escape_tag(value)}}}"
    raise ValueError(f"unsupported selector {selector!r}")


def _pairs(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _attribute_map(attribute: Any) -> dict[str, str]:
    """One FT.INFO attribute (a RESP3 map, or a flat list) as str -> str, keys lower-cased."""
    if isinstance(attribute, Mapping):
        items = list(attribute.items())
    else:
        items = list(zip(attribute[::2], attribute[1::2], strict=False))
    out: dict[str, str] = {}
    for key, value in items:
        if isinstance(key, bytes):
            key = key.decode()
        if isinstance(value, bytes):
            value = value.decode()
        out[str(key).lower()] = str(value)
    return out


def _entry_from_fields(fields: Mapping[bytes, bytes], counters: Sequence[bytes | None]) -> CacheEntry:
    hits, last_hit_at = counters
    vector = fields.get(b"vector")
    query = fields.get(b"query")
    expires_at = fields.get(b"expires_at")
    tags = fields.get(b"tags", b"")
    return CacheEntry(
        id=fields[b"id"].decode(),
        fingerprint=Fingerprint(fields[b"fingerprint"].decode()),
        namespace=Namespace(fields[b"namespace"].decode()),
        scope=Scope(fields[b"scope"].decode()),
        version=fields[b"version"].decode(),
        provider=fields[b"provider"].decode(),
        model=fields[b"model"].decode(),
        query=None if query is None else query.decode(),
        vector=None if vector is None else np.frombuffer(vector, dtype=np.float32).copy(),
        response=orjson.loads(fields[b"response"]),
        usage=Usage.from_dict(orjson.loads(fields[b"usage"])),
        created_at=float(fields[b"created_at"]),
        expires_at=None if expires_at is None else float(expires_at),
        tags=tuple(tags.decode().split(TAG_SEPARATOR)) if tags else (),
        hits=int(hits or 0),
        last_hit_at=None if last_hit_at is None else float(last_hit_at),
    )


# --- opening from a URL ------------------------------------------------------------------

#: URL query options -> (RedisStore keyword, type). `retry_interval` goes to ShardedStore.
_URL_OPTIONS: Final[dict[str, tuple[str, type]]] = {
    "prefix": ("prefix", str),
    "timeout": ("socket_timeout_s", float),
    "connect_timeout": ("connect_timeout_s", float),
    "max_connections": ("max_connections", int),
    "ef_runtime": ("ef_runtime", int),
    "m": ("hnsw_m", int),
    "ef_construction": ("hnsw_ef_construction", int),
}


def open_redis(location: str, dim: int, **options: Any) -> Any:
    """The store for ``redis://[user:pass@]host:port[,host2:port2...][/db][?option=value&...]``.

    `location` is the URL after ``redis://``. Every node becomes a `RedisStore`
    and they are wrapped in a `ShardedStore`, also when there is only one: the
    wrapper is what fails open (a down node is a miss, not an error, and is not
    asked again until its retry interval has passed) and counts what it dropped.
    With one node it adds nothing but a function call.

    ``max_entries`` (from the settings) is the whole cache's: each of N nodes
    gets ``ceil(max_entries / N)``. URL options: prefix, timeout,
    connect_timeout (seconds), max_connections, ef_runtime, m, ef_construction,
    retry_interval (seconds, for the circuit breaker).
    """
    from cascache.stores.sharded import ShardedStore

    parts = urlsplit(f"redis://{location}")
    credentials, _, hosts = parts.netloc.rpartition("@")
    nodes = [host.strip() for host in hosts.split(",") if host.strip()]
    if not nodes:
        raise ValueError("redis:// needs at least one host, e.g. redis://127.0.0.1:6379")
    store_options: dict[str, Any] = {}
    sharded_options: dict[str, Any] = {}
    for name, values in parse_qs(parts.query, strict_parsing=bool(parts.query)).items():
        if name == "retry_interval":
            sharded_options["retry_interval_s"] = float(values[-1])
        elif name in _URL_OPTIONS:
            keyword, kind = _URL_OPTIONS[name]
            store_options[keyword] = kind(unquote(values[-1]))
        else:
            known = ", ".join([*_URL_OPTIONS, "retry_interval"])
            raise ValueError(f"unknown redis:// option {name!r}; known: {known}")
    total = int(options.pop("max_entries", 1_000_000))
    store_options.update(options)
    store_options["max_entries"] = max(1, math.ceil(total / len(nodes)))
    auth = f"{credentials}@" if credentials else ""
    shards = [RedisStore(f"redis://{auth}{node}{parts.path}", dim, **store_options) for node in nodes]
    return ShardedStore(shards, **sharded_options)
