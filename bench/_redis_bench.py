"""The code of bench/redis.py (see its docstring); kept apart so that file can stay tiny.

That file is named like the redis package, so it must not import anything
before it has fixed the import path; this one imports freely.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gc
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import redis.asyncio as aredis
from rich.console import Console
from rich.table import Table

from cascache._types import CacheEntry, Fingerprint, Namespace, PurgeSelector, Scope, Usage
from cascache.embedders.onnx_minilm import OnnxMiniLMEmbedder
from cascache.quality.vector_file import cached_vectors
from cascache.stores.redis import RedisStore
from cascache.stores.redis_stack_server import RedisStackServer

DATA = Path("/work/shared/data")
OUT = Path(__file__).resolve().parent / "out"
NAMESPACE = Namespace("bench-namespace")
SCOPE = Scope("tenant:bench")
console = Console(stderr=False)


# --- data ----------------------------------------------------------------------------------


def load_texts(data: Path) -> list[str]:
    with (data / "banking77" / "train.csv").open(encoding="utf-8", newline="") as f:
        return [row["text"] for row in csv.DictReader(f)]


def embed_cached(embedder: OnnxMiniLMEmbedder, texts: list[str], tag: str) -> np.ndarray:
    """Embed `texts`, reusing bench/out/ (`cascache.quality.vector_file`, as bench/threshold.py does)."""

    def embed(todo: list[str]) -> np.ndarray:
        started = time.perf_counter()
        vectors = embedder.embed_sync(todo)
        console.print(f"[dim]embedded {len(todo)} {tag} texts in {time.perf_counter() - started:.1f} s[/dim]")
        return vectors

    return cached_vectors(OUT, tag, embedder.name, texts, embed)


@dataclass(frozen=True)
class Corpus:
    texts: list[str]
    """Entry texts (copies are suffixed with their copy number)."""
    vectors: np.ndarray
    """(n, 384) float32, L2-normalised."""
    queries: np.ndarray
    """Held-out query vectors, never stored."""


def build_corpus(texts: list[str], vectors: np.ndarray, total: int, queries: int, seed: int) -> Corpus:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(texts))
    held, kept = order[:queries], order[queries:]
    base_texts = [texts[i] for i in kept]
    base = vectors[kept]
    out_texts = list(base_texts)
    parts = [base]
    copy = 0
    while sum(len(p) for p in parts) < total:
        copy += 1
        need = min(len(base), total - sum(len(p) for p in parts))
        noise = rng.standard_normal((need, base.shape[1])).astype(np.float32) * (0.33 / np.sqrt(base.shape[1]))
        perturbed = base[:need] + noise
        parts.append(perturbed / np.linalg.norm(perturbed, axis=1, keepdims=True))
        out_texts += [f"{text} (copy {copy})" for text in base_texts[:need]]
    return Corpus(out_texts[:total], np.concatenate(parts)[:total].astype(np.float32), vectors[held].astype(np.float32))


def response_for(text: str) -> dict[str, Any]:
    """A chat completion of realistic size (~0.6 kB as JSON)."""
    answer = f"Thanks for asking about: {text} " + "Here is what you can do next. " * 8
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "model": "bench-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 60, "total_tokens": 80},
    }


# --- loading -------------------------------------------------------------------------------


async def load_cascache(store: RedisStore, corpus: Corpus, start: int, stop: int, in_flight: int = 64) -> None:
    now = time.time()

    async def put(i: int) -> None:
        await store.put(
            CacheEntry(
                id=f"e{i}",
                fingerprint=Fingerprint(f"fp{i}"),
                namespace=NAMESPACE,
                scope=SCOPE,
                version="v1",
                provider="openai",
                model="bench-model",
                query=corpus.texts[i],
                vector=corpus.vectors[i],
                response=response_for(corpus.texts[i]),
                usage=Usage(input_tokens=20, output_tokens=60),
                created_at=now,
                expires_at=None,
            )
        )

    for batch in range(start, stop, in_flight):
        await asyncio.gather(*(put(i) for i in range(batch, min(batch + in_flight, stop))))


def load_redisvl(cache: Any, corpus: Corpus, start: int, stop: int, batch: int = 500) -> None:
    """Through the cache's own index loader (what `store()` calls), in pipelined batches."""
    from redisvl.extensions.cache.llm.schema import CacheEntry as RedisVLEntry

    for first in range(start, stop, batch):
        records = [
            RedisVLEntry(
                prompt=corpus.texts[i],
                response=json.dumps(response_for(corpus.texts[i])),
                prompt_vector=corpus.vectors[i].tolist(),
            ).to_dict("float32")
            for i in range(first, min(first + batch, stop))
        ]
        cache.index.load(records, id_field="entry_id")


# --- measuring -----------------------------------------------------------------------------


@dataclass
class Figures:
    p50_ms: float
    p99_ms: float
    qps: float


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


async def measure(
    systems: Mapping[str, Callable[[np.ndarray], Awaitable[Any]]], queries: np.ndarray, concurrency: int
) -> dict[str, Figures]:
    """Sequential latency, then throughput per system.

    Latency: the systems take turns on each query, in a fresh random order each
    time, so that neither machine noise nor what one system leaves behind (a
    slow query's aftermath) falls on the same system every time.
    """
    timings: dict[str, list[float]] = {name: [] for name in systems}
    names = list(systems)
    rng = np.random.default_rng(7)
    for vector in queries:
        for index in rng.permutation(len(names)):
            name = names[index]
            started = time.perf_counter()
            await systems[name](vector)
            timings[name].append((time.perf_counter() - started) * 1000)
    figures = {}
    for name, lookup in systems.items():
        pending = iter(queries)
        started = time.perf_counter()
        done = sum(await asyncio.gather(*(drain(pending, lookup) for _ in range(concurrency))))
        qps = done / (time.perf_counter() - started)
        figures[name] = Figures(statistics.median(timings[name]), percentile(timings[name], 99), qps)
    return figures


async def drain(pending: Iterator[np.ndarray], lookup: Callable[[np.ndarray], Awaitable[Any]]) -> int:
    """One of `concurrency` workers sharing the query iterator; returns how many it sent."""
    done = 0
    for vector in pending:
        await lookup(vector)
        done += 1
    return done


def recall_at_1(found_ids: list[int | None], corpus: Corpus, size: int, queries: np.ndarray) -> float:
    exact = np.argmax(queries @ corpus.vectors[:size].T, axis=1)
    return float(np.mean([found == int(best) for found, best in zip(found_ids, exact, strict=True)]))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from redisvl.extensions.cache.llm import SemanticCache
    from redisvl.utils.vectorize import CustomVectorizer

    embedder = OnnxMiniLMEmbedder(memo_size=0)
    texts = load_texts(args.data)
    vectors = embed_cached(embedder, texts, "banking77")
    corpus = build_corpus(texts, vectors, max(args.sizes), args.queries, args.seed)
    console.print(f"corpus: {len(corpus.vectors)} entries ({len(vectors) - args.queries} real), "
                  f"{len(corpus.queries)} held-out queries, dim {corpus.vectors.shape[1]}")

    server: RedisStackServer | None = None
    url = args.url
    if url is None:
        server = RedisStackServer()
        server.start()
        url = server.url
    run_id = f"{int(time.time())}"
    def cascache_store() -> RedisStore:
        return RedisStore(url, corpus.vectors.shape[1], prefix=f"bench{run_id}:", ef_runtime=args.ef_runtime,
                          socket_timeout_s=5.0)

    store = cascache_store()  # loads; each size is then looked up through a fresh one, as a
    lookups = {"store": store}  # newly started replica would (it has not yet sized the namespace)
    # Lookups pass vectors, so this only serves RedisVL's set-up (it embeds a probe text to learn the dimension).
    vectorizer = CustomVectorizer(embed=lambda text: embedder.embed_sync([text])[0].tolist(), dtype="float32")
    redisvl = SemanticCache(name=f"rvl{run_id}", redis_url=url, vectorizer=vectorizer, distance_threshold=0.1)
    raw = aredis.Redis.from_url(url, protocol=3)
    # The bare query is cascache's own (same filter, same HNSW breadth, same hybrid
    # policy), so the difference is cascache's overhead; "ft_search_auto" leaves
    # the hybrid policy to RediSearch's planner, as a hand-written query would.
    bare_query = {True: store.knn_query(NAMESPACE, SCOPE, 1, batches=True), False: store.knn_query(NAMESPACE, SCOPE, 1)}
    policy = {"batches": False}

    async def cascache_lookup(vector: np.ndarray) -> Any:
        return await lookups["store"].nearest(NAMESPACE, SCOPE, vector, 1, time.time())

    async def redisvl_lookup(vector: np.ndarray) -> Any:
        return await redisvl.acheck(vector=vector.tolist())

    async def bare(vector: np.ndarray, query: str) -> Any:
        return await raw.execute_command(  # type: ignore[no-untyped-call]
            "FT.SEARCH", store.index_name, query, "PARAMS", "2", "vec", vector.tobytes(),
            "SORTBY", "__dist", "LIMIT", "0", "1", "DIALECT", "2",
        )  # fmt: skip

    async def bare_lookup(vector: np.ndarray) -> Any:
        return await bare(vector, bare_query[policy["batches"]])

    async def bare_auto_lookup(vector: np.ndarray) -> Any:
        return await bare(vector, bare_query[False])

    systems = {
        "cascache": cascache_lookup,
        "redisvl": redisvl_lookup,
        "ft_search": bare_lookup,
        "ft_search_auto": bare_auto_lookup,
    }
    results: dict[int, dict[str, Any]] = {}
    loaded = 0
    memory_used = {"cascache": 0, "redisvl": 0}
    """Server memory each system's entries take (INFO used_memory deltas around each load)."""
    try:
        for size in sorted(args.sizes):
            memory = await used_memory(raw)
            started = time.perf_counter()
            await load_cascache(store, corpus, loaded, size)
            cascache_load = time.perf_counter() - started
            memory_after_cascache = await used_memory(raw)
            started = time.perf_counter()
            load_redisvl(redisvl, corpus, loaded, size)
            redisvl_load = time.perf_counter() - started
            memory_used["cascache"] += memory_after_cascache - memory
            memory_used["redisvl"] += await used_memory(raw) - memory_after_cascache
            loaded = size
            await wait_indexed(raw, [store.index_name, redisvl.index.name])
            lookups["store"] = cascache_store()
            policy["batches"] = await lookups["store"].prefers_batches(NAMESPACE, SCOPE)
            console.print(f"[dim]{size}: loaded in {cascache_load:.0f} s (cascache), {redisvl_load:.0f} s (RedisVL)[/dim]")
            # The corpus (100k texts) and RedisVL's objects are long-lived: freeze them
            # so that garbage collections during the measurement do not walk them
            # (it would charge the most allocating client for the whole heap).
            gc.collect()
            gc.freeze()
            for vector in corpus.queries[:20]:  # warm connections and scripts
                for lookup in systems.values():
                    await lookup(vector)
            figures = await measure(systems, corpus.queries, args.concurrency)
            found = [await cascache_lookup(vector) for vector in corpus.queries]
            ids = [int(hits[0][0].id[1:]) if hits else None for hits in found]
            results[size] = {
                "figures": figures,
                "batches": policy["batches"],
                "recall": recall_at_1(ids, corpus, size, corpus.queries),
                "load_s": {"cascache": cascache_load, "redisvl": redisvl_load},
                "bytes_per_entry": {name: used / size for name, used in memory_used.items()},
            }
            print_table(size, figures, results[size]["recall"])
            await lookups["store"].close()
    finally:
        if server is None:  # someone else's server: leave it as we found it
            await store.purge(PurgeSelector(all=True))
            await raw.execute_command("FT.DROPINDEX", store.index_name)  # type: ignore[no-untyped-call]
            redisvl.delete()
        await store.close()
        await raw.aclose()
        if server is not None:
            server.close()
    largest = results[max(results)]
    figures = largest["figures"]
    summary: dict[str, Any] = {
        "cascache_p50_ms": round(figures["cascache"].p50_ms, 3),
        "redisvl_p50_ms": round(figures["redisvl"].p50_ms, 3),
        "ft_search_p50_ms": round(figures["ft_search"].p50_ms, 3),
        "entries": max(results),
        "cascache_p99_ms": round(figures["cascache"].p99_ms, 3),
        "redisvl_p99_ms": round(figures["redisvl"].p99_ms, 3),
        "ft_search_p99_ms": round(figures["ft_search"].p99_ms, 3),
        "cascache_qps": round(figures["cascache"].qps),
        "redisvl_qps": round(figures["redisvl"].qps),
        "ft_search_qps": round(figures["ft_search"].qps),
        "cascache_recall_at_1": round(largest["recall"], 4),
        "ef_runtime": args.ef_runtime,
        "by_size": {
            str(size): {
                **{f"{name}_p50_ms": round(f.p50_ms, 3) for name, f in result["figures"].items()},
                **{f"{name}_p99_ms": round(f.p99_ms, 3) for name, f in result["figures"].items()},
                **{f"{name}_qps": round(f.qps) for name, f in result["figures"].items()},
                "cascache_recall_at_1": round(result["recall"], 4),
                "hybrid_policy": "BATCHES" if result["batches"] else "planner",
                **{f"{name}_bytes_per_entry": round(value) for name, value in result["bytes_per_entry"].items()},
                **{f"{name}_load_s": round(value, 1) for name, value in result["load_s"].items()},
            }
            for size, result in results.items()
        },
    }
    summary["cascache_vs_redisvl_p50"] = round(figures["cascache"].p50_ms / figures["redisvl"].p50_ms, 3)
    summary["cascache_vs_ft_search_p50"] = round(figures["cascache"].p50_ms / figures["ft_search"].p50_ms, 3)
    return summary


async def used_memory(raw: aredis.Redis) -> int:
    return int((await raw.info("memory"))["used_memory"])


async def wait_indexed(raw: aredis.Redis, indexes: list[str], timeout_s: float = 300.0) -> None:
    """Both indexes index synchronously on write; this only guards a background scan (an --url server)."""
    deadline = time.monotonic() + timeout_s
    for name in indexes:
        while time.monotonic() < deadline:
            info = await raw.execute_command("FT.INFO", name)  # type: ignore[no-untyped-call]
            if not int(info.get(b"indexing", 0)):
                break
            await asyncio.sleep(0.1)


def print_table(size: int, figures: dict[str, Figures], recall: float) -> None:
    table = Table(title=f"semantic lookup at {size:,} entries (excluding embedding)")
    table.add_column("system")
    table.add_column("p50 ms", justify="right")
    table.add_column("p99 ms", justify="right")
    table.add_column("lookups/s", justify="right")
    for name, f in figures.items():
        table.add_row(name, f"{f.p50_ms:.3f}", f"{f.p99_ms:.3f}", f"{f.qps:,.0f}")
    console.print(table)
    console.print(f"cascache recall@1 vs exact search: {recall:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description="cascache vs RedisVL vs bare FT.SEARCH on one Redis Stack")
    parser.add_argument("--url", help="an existing Redis Stack server (default: start one)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--ef-runtime", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    summary = asyncio.run(run(args))
    sys.stdout.write(json.dumps(summary) + "\n")
