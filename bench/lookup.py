"""How fast is a lookup in the embedded store, and what does an entry cost, at 10k, 100k and 1M entries?

Question: in-process, on this machine, with `SqliteHnswStore` holding N entries
in ONE namespace (the worst case for the semantic search), what are p50/p99 of

- an exact hit (`store.get` of a stored fingerprint),
- an exact miss (`store.get` of an unknown fingerprint),
- a semantic hit, split into embedding time (the default embedder,
  `OnnxMiniLMEmbedder`, one short query) and search time (`store.nearest`, k=1),

what recall@1 does the HNSW search reach against exact brute force (the ANN's
top-1 equals numpy's top-1 over all N vectors), and how much memory (RSS
delta / N) and disk (data directory bytes / N) does an entry cost?

Vectors are real: MiniLM embeddings of the 10,003 BANKING77 training questions
and the fow-cache pair texts (cached in bench/out/). A size up to ~11k stores
real vectors; a larger one stores perturbed copies of them (real vector +
Gaussian noise, renormalised; see `noise_sigma` for the level and
`stored_vectors` for why the originals are then left out). Queries are fresh
perturbations of stored vectors, i.e. paraphrases of stored questions.
ef_search is swept; latency is reported at the smallest ef whose recall@1 is
>= 0.95 (the store's ef is set to it). Entries carry a realistic ~1 kB OpenAI
response, a 64-hex fingerprint and a TTL.

Finding, measured by the "star check" (`star_check`): when a stored original
sits amid ~100 stored copies of itself, hnswlib (M=16) loses most of the
copies: each copy is closer to the original than to any other copy, so the
neighbour-selection heuristic links it to the original only, the original
keeps at most 2M = 32 of those links, and the rest become unreachable
(recall@1 ~0.3 at any ef, and a copy queried with its own vector is often not
found). Real paraphrase families are far less star-shaped, but a namespace
that accumulates very many paraphrases of one question could drift that way.

By default every size goes through the whole store (SQLite + HNSW, the code
path of a real lookup). `--index-only-above N` measures sizes above N on the
index layer alone (`HnswIndex`, the class the store searches), which skips
the SQLite fill; the output then says so.

Run:    .venv/bin/python bench/lookup.py                 (10k, 100k, 1M + star check; 7-15 min on 2 cores)
        .venv/bin/python bench/lookup.py --quick         (10k only, under a minute once embeddings are cached)
        .venv/bin/python bench/lookup.py --sizes 10000,100000
The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from rich.console import Console
from rich.table import Table

from cascache._types import CacheEntry, Fingerprint, Namespace, Scope, Usage, Vector
from cascache.embedders.onnx_minilm import OnnxMiniLMEmbedder
from cascache.quality.vector_file import save_vectors, vector_file
from cascache.stores.sqlite_hnsw import HnswIndex, SqliteHnswStore

T = TypeVar("T")
BENCH = Path(__file__).resolve().parent
OUT = BENCH / "out"
DATA = Path("/work/shared/data")
DIM = 384
NAMESPACE = Namespace("5f0c" * 16)
SCOPE = Scope("tenant-" + "ab" * 16)
RECALL_TARGET = 0.95
EF_SWEEP = (10, 16, 24, 32, 48, 64, 96, 128, 192, 256)
TARGETS_MS = {"search_p50_1m": 0.5, "exact_hit_p50": 0.1, "embed_p50": 3.0}
ANSWER = (
    "Thanks for reaching out. Here is what you can do: open the app, go to Cards, choose the card, "
    "and tap the option you need. If the card has not arrived within the expected delivery window, "
    "you can order a replacement at no cost; the old card is frozen as soon as the new one is issued. "
    "Top-ups by card or bank transfer usually arrive within minutes, but some banks take up to one "
    "working day. If anything still looks wrong, contact support from the Help section in the app."
)

console = Console(stderr=True)  # progress on stderr; the table and the JSON line on stdout
report = Console(width=180)


# --- data ---------------------------------------------------------------------------------


def corpus() -> tuple[list[str], list[tuple[str, str]]]:
    """Every distinct text (BANKING77 train, then fow-cache pair texts) and the fow pairs that should hit."""
    with (DATA / "banking77" / "train.csv").open(encoding="utf-8", newline="") as f:
        texts = [row["text"] for row in csv.DictReader(f)]
    with (DATA / "fow-cache" / "pairs.jsonl").open(encoding="utf-8") as f:
        pairs = [json.loads(line) for line in f if line.strip()]
    texts += [text for pair in pairs for text in (pair["a"], pair["b"])]
    same = [(pair["a"], pair["b"]) for pair in pairs if pair["same_answer"]]
    return list(dict.fromkeys(texts)), same


async def embed_cached(embedder: OnnxMiniLMEmbedder, texts: list[str]) -> Vector:
    """Embed `texts` once; the file name hashes the model name and every text, so nothing stale is reused."""
    path = vector_file(OUT, "lookup", embedder.name, texts)
    if path.exists():
        cached: Vector = np.load(path)
        return cached
    started = time.perf_counter()
    vectors = np.concatenate([await embedder.embed(texts[i : i + 512]) for i in range(0, len(texts), 512)])
    console.print(f"[dim]embedded {len(texts)} texts in {time.perf_counter() - started:.0f} s[/dim]")
    save_vectors(path, vectors)
    return vectors


def noise_sigma(base: Vector, row_of: dict[str, int], same: list[tuple[str, str]]) -> tuple[float, float]:
    """Per-dimension Gaussian noise that puts a perturbed copy as far from its source as a real paraphrase.

    Adding N(0, s^2) to each of d dims of a unit vector and renormalising gives
    an expected cosine of 1/sqrt(1 + d s^2) with the source. We pick s so that
    this is the median cosine of the fow-cache pairs labelled "same answer"
    (paraphrases and near-repeats embedded by the same model): copies are then
    distinct vectors (the ANN must really rank them) at a realistic distance.
    Isotropic noise spreads copies in all 384 directions, while real paraphrases
    vary along few, so this is if anything harder for HNSW than real traffic.
    """
    cosines = np.array([base[row_of[a]] @ base[row_of[b]] for a, b in same])
    median = float(np.median(cosines))
    return float(np.sqrt((1 / median**2 - 1) / base.shape[1])), median


def perturb(vectors: Vector, sigma: float, rng: np.random.Generator) -> Vector:
    noisy = vectors + rng.standard_normal(vectors.shape, dtype=np.float32) * np.float32(sigma)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    return noisy


def stored_vectors(base: Vector, n: int, sigma: float, seed: int = 0) -> Vector:
    """The first n real vectors; or, past the real set, n perturbed copies (row i copies real row i mod len).

    Past the real set the originals are left out on purpose. An original stored
    amid its ~90 copies is the centre of a star (every copy is nearer to it than
    to the other copies), a shape that isotropic noise creates and real
    paraphrase families do not, and that breaks hnswlib's graph (see
    `star_check`). Copies alone form a family of near-equidistant paraphrases.
    """
    if n <= len(base):
        return base[:n].copy()
    rng = np.random.default_rng(seed)
    out = np.empty((n, base.shape[1]), dtype=np.float32)
    for start in range(0, n, 65_536):
        stop = min(n, start + 65_536)
        out[start:stop] = perturb(base[np.arange(start, stop) % len(base)], sigma, rng)
    return out


def star_check(base: Vector, sigma: float, n: int, queries: int) -> dict[str, float]:
    """Recall@1 of HnswIndex when each of n/100 originals is stored with 99 copies of itself (see module doc)."""
    families = n // 100
    rng = np.random.default_rng(7)
    stored = np.concatenate([base[:families]] + [perturb(base[:families], sigma, rng) for _ in range(99)])
    index = HnswIndex.build(DIM, np.arange(len(stored), dtype=np.int64), stored)
    picks = rng.integers(len(stored), size=queries)
    paraphrases = perturb(stored[picks], sigma, rng)
    truth = brute_force_top1(stored, paraphrases)
    out: dict[str, float] = {"entries": float(len(stored))}
    for ef in (64, 256):
        index.ef_search = ef
        found = np.array([index.search(query, 1)[0][0] for query in paraphrases])
        out[f"recall_at_1_ef{ef}"] = round(float(np.mean(found == truth)), 3)
        itself = np.array([index.search(stored[i], 1)[0][0] for i in picks])
        out[f"self_found_ef{ef}"] = round(float(np.mean(itself == picks)), 3)
    return out


def brute_force_top1(stored: Vector, queries: Vector) -> np.ndarray:
    """Exact top-1 row of every query, in chunks so a 1M x 1k similarity matrix never exists at once."""
    best = np.full(len(queries), -np.inf, dtype=np.float32)
    arg = np.zeros(len(queries), dtype=np.int64)
    for start in range(0, len(stored), 16_384):
        sims = stored[start : start + 16_384] @ queries.T
        top = sims.argmax(axis=0)
        value = sims[top, np.arange(len(queries))]
        better = value > best
        best[better], arg[better] = value[better], top[better] + start
    return arg


# --- entries ------------------------------------------------------------------------------


def fingerprint(i: int) -> Fingerprint:
    return Fingerprint(hashlib.blake2b(f"request-{i}".encode(), digest_size=32).hexdigest())


def make_entry(i: int, vector: Vector, text: str, now: float) -> CacheEntry:
    return CacheEntry(
        id=f"{i:016x}",
        fingerprint=fingerprint(i),
        namespace=NAMESPACE,
        scope=SCOPE,
        version="v1",
        provider="openai",
        model="gpt-4o-mini",
        query=text,
        vector=vector,
        response={
            "id": f"chatcmpl-{i:016x}",
            "object": "chat.completion",
            "created": int(now),
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": f"About “{text}”: {ANSWER}", "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 42, "completion_tokens": 96, "total_tokens": 138},
            "system_fingerprint": "fp_0ba0d124f1",
        },
        usage=Usage(input_tokens=42, output_tokens=96, cache_read_tokens=0),
        created_at=now,
        expires_at=now + 7 * 24 * 3600,
    )


# --- measuring ----------------------------------------------------------------------------


def rss() -> dict[str, int]:
    """Resident memory of this process in bytes: total, and the anonymous part (heap, numpy, hnswlib)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@dataclass
class Timing:
    p50_ms: float
    p99_ms: float

    @classmethod
    def of(cls, samples_ns: Sequence[int]) -> Timing:
        p50, p99 = np.percentile(np.asarray(samples_ns) / 1e6, [50, 99])
        return cls(round(float(p50), 4), round(float(p99), 4))


async def timed(items: Iterable[T], call: Callable[[T], Awaitable[object]]) -> Timing:
    """Latency of `await call(item)` for each item, one at a time."""
    samples = []
    for item in items:
        started = time.perf_counter_ns()
        await call(item)
        samples.append(time.perf_counter_ns() - started)
    return Timing.of(samples)


@dataclass
class SizeResult:
    entries: int
    layer: str
    """"store" (SqliteHnswStore end to end) or "index" (HnswIndex alone)."""
    fill_s: float
    index_build_s: float
    ef_search: int
    recall_at_1: float
    search: Timing
    exact_hit: Timing | None = None
    exact_miss: Timing | None = None
    semantic_hit_total: Timing | None = None
    rss_bytes_per_entry: float = 0.0
    anon_bytes_per_entry: float = 0.0
    disk_bytes_per_entry: float = 0.0
    ef_sweep: list[tuple[int, float, float]] = field(default_factory=list)
    """(ef, recall@1, search p50 ms) for every ef tried."""


def choose_ef(sweep: list[tuple[int, float, float]]) -> int:
    passing = [ef for ef, recall, _ in sweep if recall >= RECALL_TARGET]
    return passing[0] if passing else sweep[-1][0]


async def run_store(
    n: int,
    stored: Vector,
    queries: Vector,
    truth: np.ndarray,
    texts: list[str],
    embedder: OnnxMiniLMEmbedder,
    samples: int,
) -> SizeResult:
    """Fill a fresh SqliteHnswStore with n entries and measure every lookup through it."""
    path = OUT / f"lookup-store-{n}"
    shutil.rmtree(path, ignore_errors=True)
    before = rss()
    store = SqliteHnswStore(path, DIM, max_entries=n)
    now = time.time()
    started = time.perf_counter()
    for i in range(n):
        await store.put(make_entry(i, stored[i], texts[i % len(texts)], now))
        if i and i % 100_000 == 0:
            console.print(f"[dim]  {i:,} entries in {time.perf_counter() - started:.0f} s[/dim]")
    fill_s = time.perf_counter() - started
    # Puts to a namespace whose index is not loaded only touch SQLite; the
    # first search builds the graph from SQLite (all cores) and saves it.
    started = time.perf_counter()
    await store.nearest(NAMESPACE, SCOPE, queries[0], 1, now)
    build_s = time.perf_counter() - started
    after = rss()
    console.print(f"[dim]  filled in {fill_s:.0f} s, index built in {build_s:.0f} s[/dim]")

    async def top1(query: Vector) -> int:
        ((hit, _),) = await store.nearest(NAMESPACE, SCOPE, query, 1, now)
        return int(hit.id, 16)

    sweep = []
    for ef in EF_SWEEP:
        store.hnsw_ef_search = ef
        samples_ns, found = [], []
        for query in queries:
            started_ns = time.perf_counter_ns()
            found.append(await top1(query))
            samples_ns.append(time.perf_counter_ns() - started_ns)
        recall = float(np.mean(np.array(found) == truth))
        sweep.append((ef, recall, Timing.of(samples_ns).p50_ms))
        if recall >= RECALL_TARGET and ef >= 2 * choose_ef(sweep):
            break  # enough of the curve past the chosen point
    ef = choose_ef(sweep)
    store.hnsw_ef_search = ef
    recall = next(r for e, r, _ in sweep if e == ef)

    rng = np.random.default_rng(1)
    picks = rng.integers(n, size=samples)
    hit = await timed(picks.tolist(), lambda i: store.get(fingerprint(i), SCOPE, now))
    miss = await timed(picks.tolist(), lambda i: store.get(fingerprint(n + i), SCOPE, now))
    search = await timed(queries[:samples], lambda q: store.nearest(NAMESPACE, SCOPE, q, 1, now))

    async def semantic_hit(text: str) -> None:
        vector = (await embedder.embed([text]))[0]
        await store.nearest(NAMESPACE, SCOPE, vector, 1, now)

    semantic = await timed(texts[: min(300, samples)], semantic_hit)
    await store.close()
    disk = dir_bytes(path)
    shutil.rmtree(path, ignore_errors=True)
    return SizeResult(
        entries=n,
        layer="store",
        fill_s=round(fill_s, 1),
        index_build_s=round(build_s, 1),
        ef_search=ef,
        recall_at_1=recall,
        search=search,
        exact_hit=hit,
        exact_miss=miss,
        semantic_hit_total=semantic,
        rss_bytes_per_entry=round((after["VmRSS"] - before["VmRSS"]) / n),
        anon_bytes_per_entry=round((after["RssAnon"] - before["RssAnon"]) / n),
        disk_bytes_per_entry=round(disk / n),
        ef_sweep=sweep,
    )


async def run_index(n: int, stored: Vector, queries: Vector, truth: np.ndarray, samples: int) -> SizeResult:
    """The index layer alone: the HnswIndex the store would build for this namespace, searched the same way."""
    before = rss()
    started = time.perf_counter()
    index = HnswIndex.build(DIM, np.arange(n, dtype=np.int64), stored)
    build_s = time.perf_counter() - started
    after = rss()
    sweep = []
    for ef in EF_SWEEP:
        index.ef_search = ef
        samples_ns, found = [], []
        for query in queries:
            started_ns = time.perf_counter_ns()
            found.append(int(index.search(query, 1)[0][0]))
            samples_ns.append(time.perf_counter_ns() - started_ns)
        recall = float(np.mean(np.array(found) == truth))
        sweep.append((ef, recall, Timing.of(samples_ns).p50_ms))
        if recall >= RECALL_TARGET and ef >= 2 * choose_ef(sweep):
            break
    index.ef_search = ef = choose_ef(sweep)
    search = Timing.of([_time_ns(index.search, query) for query in queries[:samples]])
    path = OUT / f"lookup-index-{n}.hnsw"
    index.save(path)
    disk = path.stat().st_size + 8 * n  # + the labels file the store writes beside it
    path.unlink()
    return SizeResult(
        entries=n,
        layer="index",
        fill_s=0.0,
        index_build_s=round(build_s, 1),
        ef_search=ef,
        recall_at_1=next(r for e, r, _ in sweep if e == ef),
        search=search,
        rss_bytes_per_entry=round((after["VmRSS"] - before["VmRSS"]) / n),
        anon_bytes_per_entry=round((after["RssAnon"] - before["RssAnon"]) / n),
        disk_bytes_per_entry=round(disk / n),
        ef_sweep=sweep,
    )


def _time_ns(search: Callable[[Vector, int], object], query: Vector) -> int:
    started = time.perf_counter_ns()
    search(query, 1)
    return time.perf_counter_ns() - started


# --- main ---------------------------------------------------------------------------------


async def main(
    sizes: list[int], recall_queries: int, samples: int, index_only_above: int | None, star_entries: int
) -> dict[str, Any]:
    wall = time.perf_counter()
    texts, same = corpus()
    embedder = OnnxMiniLMEmbedder(memo_size=0)  # memo off: every call below runs the model
    base = await embed_cached(embedder, texts)
    sigma, median_cos = noise_sigma(base, {text: i for i, text in enumerate(texts)}, same)
    console.print(
        f"{len(texts):,} real texts; copies use noise s={sigma:.4f}/dim (median paraphrase cos {median_cos:.3f})"
    )

    short = [t for t in texts[:10_003] if len(t) <= 80][:500]
    await embedder.embed(short[:20])  # warm-up: first runs allocate
    embed = await timed(short, lambda text: embedder.embed([text]))
    console.print(f"embedding one short query: p50 {embed.p50_ms} ms (load average {os.getloadavg()[0]:.1f})")

    results: list[SizeResult] = []
    for n in sizes:
        console.rule(f"{n:,} entries")
        stored = stored_vectors(base, n, sigma)
        rng = np.random.default_rng(n)
        # Queries: fresh perturbations of random stored vectors, i.e. paraphrases of stored questions.
        queries = perturb(stored[rng.integers(n, size=max(recall_queries, samples))], sigma, rng)
        truth = brute_force_top1(stored, queries[:recall_queries])
        if index_only_above is not None and n > index_only_above:
            result = await run_index(n, stored, queries[:recall_queries], truth, samples)
        else:
            result = await run_store(n, stored, queries[:recall_queries], truth, texts, embedder, samples)
        results.append(result)
        console.print(
            f"[dim]  done; {time.perf_counter() - wall:.0f} s since start, load average {os.getloadavg()[0]:.1f}[/dim]"
        )
        del stored, queries

    star = None
    if star_entries:
        console.rule(f"star check, {star_entries:,} entries on the index layer")
        star = star_check(base, sigma, star_entries, min(recall_queries, 500))
    print_table(results, embed, sigma, median_cos, star)
    figures = summary(results, embed, sigma, time.perf_counter() - wall)
    figures["star_check"] = star
    return figures


def print_table(
    results: list[SizeResult], embed: Timing, sigma: float, median_cos: float, star: dict[str, float] | None
) -> None:
    table = Table(title="cascache store lookups (one namespace; ms = milliseconds; k=1)")
    for column in (
        "entries",
        "layer",
        "exact hit p50/p99",
        "miss p50/p99",
        "search p50/p99",
        "ef",
        "recall@1",
        "semantic hit p50/p99",
        "RSS B/entry (anon)",
        "disk B/entry",
        "fill / build s",
    ):
        table.add_column(column, justify="right")

    def fmt(timing: Timing | None) -> str:
        return "-" if timing is None else f"{timing.p50_ms:.3f} / {timing.p99_ms:.3f}"

    for r in results:
        table.add_row(
            f"{r.entries:,}",
            r.layer,
            fmt(r.exact_hit),
            fmt(r.exact_miss),
            fmt(r.search),
            str(r.ef_search),
            f"{r.recall_at_1:.3f}",
            fmt(r.semantic_hit_total),
            f"{r.rss_bytes_per_entry:,.0f} ({r.anon_bytes_per_entry:,.0f})",
            f"{r.disk_bytes_per_entry:,.0f}",
            f"{r.fill_s:.0f} / {r.index_build_s:.0f}",
        )
    report.print(table)
    sweep = Table(
        title=f"ef_search sweep: recall@1 vs brute force, search p50 ms (target recall >= {RECALL_TARGET})"
    )
    sweep.add_column("entries", justify="right")
    sweep.add_column("ef: recall@1 / p50 ms")
    for r in results:
        sweep.add_row(
            f"{r.entries:,}", "   ".join(f"{ef}: {rec:.3f}/{p50:.3f}" for ef, rec, p50 in r.ef_sweep)
        )
    report.print(sweep)
    report.print(
        f"embedding (OnnxMiniLMEmbedder, one short query, memo off): p50 {embed.p50_ms:.2f} ms, p99 {embed.p99_ms:.2f} ms. "
        f"Stored copies (sizes past the real set) and queries: vector + N(0, {sigma:.4f}^2) per dim, "
        f"renormalised (cos ~{median_cos:.2f} to the source, the median of real paraphrase pairs)."
    )
    if star is not None:
        report.print(
            f"[yellow]star check[/yellow] ({star['entries']:,.0f} entries: each original stored with 99 copies "
            f"of itself, HnswIndex M=16): recall@1 {star['recall_at_1_ef64']:.3f} at ef 64, "
            f"{star['recall_at_1_ef256']:.3f} at ef 256; a stored vector found by its own vector "
            f"{star['self_found_ef64']:.3f} / {star['self_found_ef256']:.3f}. Why: see bench/lookup.py's docstring."
        )
    if any(r.layer == "index" for r in results):
        report.print(
            "[yellow]layer 'index': HnswIndex alone (the class the store searches), no SQLite row fetch.[/yellow]"
        )
    for name, figure, limit in targets(results, embed):
        if figure is None:
            report.print(f"target {name} <= {limit} ms: not measured (needs 1M entries)")
        else:
            verdict = "[green]met[/green]" if figure <= limit else "[red]NOT met[/red]"
            report.print(f"target {name} <= {limit} ms: {figure:.3f} ms {verdict}")


def targets(results: list[SizeResult], embed: Timing) -> list[tuple[str, float | None, float]]:
    at_1m = next((r for r in results if r.entries >= 1_000_000), None)
    with_store = [r for r in results if r.exact_hit is not None]
    hit = max(with_store, key=lambda r: r.entries).exact_hit if with_store else None
    return [
        (
            "search p50 excluding embedding at 1M",
            at_1m.search.p50_ms if at_1m else None,
            TARGETS_MS["search_p50_1m"],
        ),
        ("exact hit p50 (largest store)", hit.p50_ms if hit else None, TARGETS_MS["exact_hit_p50"]),
        ("embedding p50, one short query", embed.p50_ms, TARGETS_MS["embed_p50"]),
    ]


def summary(results: list[SizeResult], embed: Timing, sigma: float, wall_s: float) -> dict[str, Any]:
    at_1m = next((r for r in results if r.entries >= 1_000_000), None)
    with_store = [r for r in results if r.exact_hit is not None]
    largest_store = max(with_store, key=lambda r: r.entries) if with_store else None
    out: dict[str, Any] = {
        "search_p50_ms_1m": at_1m.search.p50_ms if at_1m else None,
        "search_p99_ms_1m": at_1m.search.p99_ms if at_1m else None,
        "recall_at_1_1m": at_1m.recall_at_1 if at_1m else None,
        "ef_search_1m": at_1m.ef_search if at_1m else None,
        "search_1m_layer": at_1m.layer if at_1m else None,
        "exact_hit_p50_ms": largest_store.exact_hit.p50_ms
        if largest_store and largest_store.exact_hit
        else None,
        "exact_hit_p99_ms": largest_store.exact_hit.p99_ms
        if largest_store and largest_store.exact_hit
        else None,
        "exact_hit_entries": largest_store.entries if largest_store else None,
        "embed_p50_ms": embed.p50_ms,
        "embed_p99_ms": embed.p99_ms,
        "noise_sigma": round(sigma, 5),
        "targets_met": {
            name: figure is not None and figure <= limit for name, figure, limit in targets(results, embed)
        },
        "wall_s": round(wall_s),
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
        "sizes": {str(r.entries): {k: v for k, v in asdict(r).items() if k != "ef_sweep"} for r in results},
    }
    return out


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated entry counts")
    parser.add_argument("--quick", action="store_true", help="10k entries only, fewer samples (smoke run)")
    parser.add_argument(
        "--recall-queries", type=int, default=1_000, help="queries per ef in the recall sweep"
    )
    parser.add_argument("--samples", type=int, default=2_000, help="timed calls per latency figure")
    parser.add_argument(
        "--index-only-above",
        type=int,
        default=None,
        help="measure sizes above this on the index layer alone (skips the SQLite fill)",
    )
    parser.add_argument(
        "--star-check",
        type=int,
        default=200_000,
        help="entries of the star diagnostic (0: skip; --quick skips it)",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args(sys.argv[1:])
    sizes = [10_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    recall_queries, samples = (300, 500) if args.quick else (args.recall_queries, args.samples)
    star_entries = 0 if args.quick else args.star_check
    figures = asyncio.run(main(sizes, recall_queries, samples, args.index_only_above, star_entries))
    print(json.dumps(figures, separators=(",", ":")))
