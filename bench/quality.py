"""Are cascache's semantic hits right? Guards, thresholds, multi-turn keys, and two other caches.

Question (issue 6): with the default embedder (all-MiniLM-L6-v2, int8 ONNX),
how many hits does the semantic tier make, and how many of them are wrong, in
its default mode (static threshold + answer-determining-token guards), and how
does that compare with GPTCache and RedisVL on the same data and vectors?

Data: /work/shared/data (see its README).

(a) BANKING77 streams. The train split is cut (seeded, per intent) into a 70%
    tuning part and a 30% held-out part, as bench/threshold.py does. Tuning:
    10 streams of 3,000 distinct queries with Zipf-like intent popularity
    (s = 1.1); held-out: 10 streams of 1,500. Each stream is replayed by
    `cascache.quality` (the cache's own keys, policy, `MemoryStore` ordering and
    `tiers.guards.choose`); a hit is right iff the cached query's intent is the
    query's. The threshold is chosen on the tuning part only (the one with the
    most hits whose measured false-hit rate is <= 1%, and stays so above it); the
    held-out part is replayed at that threshold only and is what is reported.
(b) fow-cache pairs: for each pair, `a` is cached, then `b` is asked. Reported
    per category across the sweep (the trade-off curve between traps rejected
    and paraphrases kept) and at the defaults; and per guard, what each one
    buys on the traps and costs on the positives and on BANKING77.
(c) fow-cache conversations (conv-parts, conv-long): the same, with whole
    chats: earlier turns are in the semantic namespace, so a changed context
    can never be compared, however similar the last message.
(d) Verified mode (`cascache.verification.simulate.run_verified_stream`, the
    label judge) at δ = 1%, 2%, 5% on the held-out streams, when that module is
    there: its false-hit rate over δ.
(e) Side by side on the first `--competitor-streams` held-out streams and on
    the fow pairs replayed as one stream (all `a`s, then all `b`s, labelled by
    answer class; a trap's `b` served another class's answer is wrong): GPTCache 0.1.44
    (`init_similar_cache` defaults: sqlite + faiss, SearchDistanceEvaluation,
    similarity_threshold 0.8; our embedder as its embedding function) and
    RedisVL `SemanticCache` (default distance_threshold 0.1; CustomVectorizer
    with our embedder; on a local Redis Stack) against cascache's defaults and
    verified mode.
    Every system stores only misses and gets the same precomputed vectors.
(f) Answer consensus (opt-in, `semantic.consensus_k`; docs/tuning.md): a row of
    the BANKING77 section. Its (k, top, floor) is chosen on the tuning streams
    only (of `CONSENSUS_GRID`, the most hits with a measured false-hit rate
    <= 1%), on top of the chosen static threshold and the default guards; the
    held-out streams are replayed at that choice. Also the fow pairs replayed
    as one stream (as in (e)), default vs consensus, so its effect on traps shows.
    The JSON keys of (a)-(e) stay those of the default mode; consensus adds
    `consensus_*` keys.

Run: .venv/bin/python bench/quality.py       (~5-10 min; embeddings are cached in bench/out/)
     --skip-competitors                      (cascache only)
The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import importlib.util
import json
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from cascache.config import PolicySettings, SemanticSettings
from cascache.embedders import make_embedder
from cascache.quality import (
    EvalOptions,
    EvalReport,
    LabelledQuery,
    Stream,
    StreamCounts,
    draw_zipf_stream,
    load_banking77,
    pair_totals,
    read_pairs,
    recommend,
    replay_pairs,
    replay_stream,
    stratified_split,
    summarise_pairs,
    write_report,
)
from cascache.quality.data import LabelledPair
from cascache.quality.replay import PairResult, embed_texts, texts_of_pairs
from cascache.tiers.consensus import ConsensusRule
from cascache.tiers.guards import DEFAULT_GUARDS, GUARDS, GuardSet

DATA = Path("/work/shared/data")
OUT = Path(__file__).resolve().parent / "out"
SWEEP = (0.80, 0.85, 0.88, 0.90, 0.91, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99)
PAIR_SWEEP = (0.0, 0.50, 0.60, 0.70, 0.75, 0.80, 0.85, 0.88, 0.90, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98)
GUARD_COST_AT = (0.90, 0.93, 0.97)
TARGET_FHR = 0.01
#: (k, top, floor) tried on the tuning streams; small on purpose (each point is 10 replays of 3,000).
CONSENSUS_GRID = tuple(
    ConsensusRule(k, top, floor)
    for k in (3, 5, 7)
    for top, floor in ((0.75, 0.65), (0.80, 0.65), (0.80, 0.70), (0.85, 0.75), (0.85, 0.80))
)
VERIFY_MODULE = "cascache.verification.simulate"

console = Console(width=170)


_STARTED = time.perf_counter()


def section(name: str) -> None:
    console.print(f"[dim]{time.perf_counter() - _STARTED:6.1f} s  {name}[/]")


def pct(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{100 * x:.1f}"  # NaN: a figure that does not apply


# --- streams ------------------------------------------------------------------------------


def banking_streams(
    texts: list[str], labels: list[str], rows: Sequence[int], n: int, count: int, seed: int
) -> list[Stream]:
    return [
        Stream(
            f"b77-{seed + k}",
            tuple(
                LabelledQuery(texts[i], labels[i]) for i in draw_zipf_stream(rows, labels, n, 1.1, seed + k)
            ),
        )
        for k in range(count)
    ]


def pooled(
    streams: Sequence[Stream],
    vectors: dict[str, np.ndarray],
    thresholds: Sequence[float],
    guards: Sequence[str],
    k: int,
    consensus: ConsensusRule | None = None,
) -> dict[float, StreamCounts]:
    out: dict[float, StreamCounts] = {}
    for stream in streams:
        for t, c in replay_stream(
            stream,
            vectors,
            thresholds,
            guards=GuardSet(guards),
            k=k,
            consensus=consensus,
            policy=PolicySettings(),
            embedder_name=EMBEDDER_NAME,
        ).items():
            out[t] = out.get(t, StreamCounts()) + c
    return out


def print_sweep(title: str, results: dict[float, StreamCounts], chosen: float | None = None) -> None:
    table = Table(title=title)
    for head in ("threshold", "hits %", "false hits %", "wrong / hits", "hits / oracle %", "vetoed"):
        table.add_column(head, justify="right")
    for t, c in sorted(results.items()):
        table.add_row(
            f"{t:.2f}",
            pct(c.hit_rate),
            pct(c.false_hit_rate),
            f"{c.wrong_hits} / {c.hits}",
            pct(c.of_oracle),
            str(c.vetoed),
            style="bold green" if t == chosen else None,
        )
    console.print(table)


# --- pairs --------------------------------------------------------------------------------


def category_rates(results: Sequence[PairResult], t: float) -> dict[str, float]:
    return {s.category: s.hit_rate for s in summarise_pairs(results, t)}


def print_pair_sweep(title: str, results: Sequence[PairResult], thresholds: Sequence[float]) -> None:
    cats = [s.category for s in summarise_pairs(results, thresholds[0])]
    table = Table(title=title)
    table.add_column("threshold", justify="right")
    for name in (*cats, "positives", "trap rejection"):
        table.add_column(name, justify="right")
    for t in thresholds:
        rates = category_rates(results, t)
        totals = pair_totals(summarise_pairs(results, t))
        table.add_row(
            f"{t:.2f}",
            *(pct(rates[c]) for c in cats),
            pct(totals["positive_hit_rate"]),
            pct(totals["trap_rejection"]),
        )
    console.print(table)


# --- competitors --------------------------------------------------------------------------


class Competitor:
    name: str

    def lookup(self, text: str) -> str | None: ...

    def store(self, text: str, label: str) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Tally:
    queries: int = 0
    hits: int = 0
    wrong: int = 0
    seconds: float = 0.0

    def __add__(self, other: Tally) -> Tally:
        return Tally(
            self.queries + other.queries,
            self.hits + other.hits,
            self.wrong + other.wrong,
            self.seconds + other.seconds,
        )


def run_competitor(make: Callable[[], Competitor], queries: Sequence[LabelledQuery]) -> Tally:
    """A fresh cache; each query looked up, misses stored with their label (as cascache's write-back)."""
    cache = make()
    hits = wrong = 0
    started = time.perf_counter()
    try:
        for q in queries:
            answer = cache.lookup(q.text)
            if answer is None:
                cache.store(q.text, q.label)
                continue
            hits += 1
            wrong += answer != q.label
    finally:
        cache.close()
    return Tally(len(queries), hits, wrong, time.perf_counter() - started)


class GPTCacheRunner(Competitor):
    """GPTCache's similar-cache defaults (`init_similar_cache`) with our vectors as its embedding."""

    name = "GPTCache 0.1.44 (default: SearchDistanceEvaluation, threshold 0.8)"

    def __init__(self, vectors: dict[str, np.ndarray]) -> None:
        from gptcache import Cache, Config
        from gptcache.adapter import api
        from gptcache.manager import manager_factory
        from gptcache.processor.pre import get_prompt
        from gptcache.similarity_evaluation.distance import SearchDistanceEvaluation

        self._api = api
        # GPTCache saves its faiss index from an atexit hook of every Cache it made, so the folders
        # must outlive this object: they go in one folder removed by a hook registered before them.
        self._dir = tempfile.mkdtemp(prefix="run-", dir=_gptcache_root())
        self._cache = Cache()
        self._cache.init(
            pre_embedding_func=get_prompt,
            embedding_func=lambda text, **_: vectors[text],
            data_manager=manager_factory(
                "sqlite,faiss",
                data_dir=self._dir,
                vector_params={"dimension": 384},
                eviction_params={"max_size": 1_000_000},
            ),
            similarity_evaluation=SearchDistanceEvaluation(),
            config=Config(),
        )

    def lookup(self, text: str) -> str | None:
        result = self._api.get(text, cache_obj=self._cache)
        return None if result is None else str(result)

    def store(self, text: str, label: str) -> None:
        self._api.put(text, label, cache_obj=self._cache)

    def close(self) -> None:
        self._cache.data_manager.close()


_GPTCACHE_ROOT: list[str] = []


def _gptcache_root() -> str:
    """One temporary folder for every GPTCache run, removed at exit after GPTCache's own hooks ran."""
    if not _GPTCACHE_ROOT:
        _GPTCACHE_ROOT.append(tempfile.mkdtemp(prefix="gptcache-"))
        atexit.register(shutil.rmtree, _GPTCACHE_ROOT[0], True)  # registered first, so it runs last
    return _GPTCACHE_ROOT[0]


class RedisVLRunner(Competitor):
    """RedisVL SemanticCache with its default distance threshold and our vectors (CustomVectorizer)."""

    name = "RedisVL SemanticCache (default distance_threshold 0.1)"
    _count = 0

    def __init__(self, vectors: dict[str, np.ndarray], url: str) -> None:
        from redisvl.extensions.cache.llm import SemanticCache
        from redisvl.utils.vectorize import CustomVectorizer

        RedisVLRunner._count += 1
        probe = np.eye(1, 384, dtype=np.float32)[0]  # RedisVL embeds "dimension test" once to learn the width

        def embed(text: str) -> list[float]:
            return [float(x) for x in vectors.get(text, probe)]

        vectorizer = CustomVectorizer(embed=embed, embed_many=lambda texts: [embed(t) for t in texts])
        self._cache = SemanticCache(
            name=f"quality{RedisVLRunner._count}", redis_url=url, vectorizer=vectorizer, overwrite=True
        )

    def lookup(self, text: str) -> str | None:
        found = self._cache.check(prompt=text, num_results=1)
        return str(found[0]["response"]) if found else None

    def store(self, text: str, label: str) -> None:
        self._cache.store(prompt=text, response=label)

    def close(self) -> None:
        self._cache.delete()


@contextlib.contextmanager
def redis_stack() -> Iterator[str | None]:
    """A loopback Redis Stack from the installed wheels (cascache's own helper), or None when not installed."""
    try:
        from cascache.stores.redis_stack_server import RedisStackNotInstalled, RedisStackServer
    except ImportError:
        yield None
        return
    try:
        server = RedisStackServer()
        server.start()
    except (RedisStackNotInstalled, OSError, RuntimeError) as exc:
        console.print(f"[yellow]Redis Stack not available ({exc}); RedisVL not run[/]")
        yield None
        return
    try:
        yield server.url
    finally:
        server.close()


def fow_as_stream(pairs: Sequence[LabelledPair]) -> list[LabelledQuery]:
    """All `a`s, then all `b`s, labelled by answer class.

    Texts joined by a positive pair share a class (union-find over the pairs,
    so a question that is the `a` of several pairs, or asked verbatim again,
    keeps one class); a trap's `b` is joined to nothing, so serving it any other
    class's answer is a wrong hit.
    """
    parent: dict[str, str] = {}

    def root(text: str) -> str:
        parent.setdefault(text, text)
        while parent[text] != text:
            parent[text] = parent[parent[text]]
            text = parent[text]
        return text

    for p in pairs:
        a, b = str(p.a[-1]["content"]), str(p.b[-1]["content"])
        root(a), root(b)
        if p.same_answer:
            parent[root(b)] = root(a)
    a_side = [LabelledQuery(str(p.a[-1]["content"]), root(str(p.a[-1]["content"]))) for p in pairs]
    b_side = [LabelledQuery(str(p.b[-1]["content"]), root(str(p.b[-1]["content"]))) for p in pairs]
    return a_side + b_side


def fow_stream_rates(pairs: Sequence[LabelledPair], outcomes: Sequence[bool | None]) -> dict[str, float]:
    """Of the `b` half: positives served their class's answer, traps served another class's."""
    half = len(pairs)
    pos = [half + i for i, p in enumerate(pairs) if p.same_answer]
    trap = [half + i for i, p in enumerate(pairs) if not p.same_answer]
    return {
        "positive_hit_rate": sum(outcomes[i] is True for i in pos) / len(pos),
        "trap_hit_rate": sum(outcomes[i] is False for i in trap) / len(trap),
    }


def trace_competitor(make: Callable[[], Competitor], queries: Sequence[LabelledQuery]) -> list[bool | None]:
    """Per query: None (miss), True (right hit), False (wrong hit)."""
    cache = make()
    out: list[bool | None] = []
    try:
        for q in queries:
            answer = cache.lookup(q.text)
            if answer is None:
                cache.store(q.text, q.label)
                out.append(None)
            else:
                out.append(answer == q.label)
    finally:
        cache.close()
    return out


def trace_cascache(
    queries: Sequence[LabelledQuery],
    vectors: dict[str, np.ndarray],
    threshold: float,
    guards: Sequence[str],
    k: int,
    consensus: ConsensusRule | None = None,
) -> list[bool | None]:
    """Per query: None (miss), True (right hit), False (wrong hit), from cascache's replay."""
    served: dict[int, int] = {}
    replay_stream(
        Stream("fow", tuple(queries)),
        vectors,
        [threshold],
        guards=GuardSet(guards),
        k=k,
        consensus=consensus,
        policy=PolicySettings(),
        embedder_name=EMBEDDER_NAME,
        on_hit=lambda _t, i, j, _s: served.__setitem__(i, j),
    )
    return [None if i not in served else queries[served[i]].label == q.label for i, q in enumerate(queries)]


# --- answer consensus (opt-in) -------------------------------------------------------------


@dataclass(slots=True)
class ConsensusFigures:
    rule: ConsensusRule | None
    """Chosen on the tuning streams; None when no grid point keeps the false-hit rate within the target."""
    tuning: StreamCounts | None
    heldout: StreamCounts | None
    grid: dict[str, StreamCounts]
    fow_default: dict[str, float] | None = None
    fow: dict[str, float] | None = None

    @property
    def name(self) -> str:
        return "-" if self.rule is None else _rule_name(self.rule)

    def figures(self) -> dict[str, Any]:
        def counts(c: StreamCounts | None) -> dict[str, float] | None:
            if c is None:
                return None
            return {"hits_of_oracle": round(c.of_oracle, 4), "false_hit_rate": round(c.false_hit_rate, 4),
                    "hit_rate": round(c.hit_rate, 4), "hits": c.hits, "wrong_hits": c.wrong_hits}

        rounded = (lambda r: None if r is None else {k: round(v, 4) for k, v in r.items()})
        return {
            "consensus_recall_vs_oracle_at_fhr_1pct_heldout": None
            if self.heldout is None
            else round(self.heldout.of_oracle, 4),
            "consensus_heldout_fhr": None if self.heldout is None else round(self.heldout.false_hit_rate, 4),
            "consensus_params": None
            if self.rule is None
            else {"k": self.rule.k, "top": self.rule.top, "floor": self.rule.floor},
            "consensus_tuning": counts(self.tuning),
            "consensus_heldout": counts(self.heldout),
            "consensus_grid_tuning": {name: counts(c) for name, c in self.grid.items()},
            "consensus_fow_stream": rounded(self.fow),
            "default_fow_stream": rounded(self.fow_default),
        }


def _rule_name(rule: ConsensusRule) -> str:
    return f"k={rule.k} top {rule.top:.2f} floor {rule.floor:.2f}"


def consensus_rows(
    tune: Sequence[Stream],
    held: Sequence[Stream],
    vectors: dict[str, np.ndarray],
    threshold: float,
    guards: Sequence[str],
    k: int,
    static_tuning: dict[float, StreamCounts],
    static_held: StreamCounts,
) -> ConsensusFigures:
    """Grid on the tuning streams (most hits with FHR <= target), then the held-out streams at the choice."""
    grid = {
        _rule_name(r): pooled(tune, vectors, [threshold], guards, k, r)[threshold] for r in CONSENSUS_GRID
    }
    within = [r for r in CONSENSUS_GRID if grid[_rule_name(r)].false_hit_rate <= TARGET_FHR]
    rule = max(within, key=lambda r: grid[_rule_name(r)].hits, default=None)
    tuning = grid[_rule_name(rule)] if rule is not None else None
    heldout = pooled(held, vectors, [threshold], guards, k, rule)[threshold] if rule is not None else None
    table = Table(
        title=f"BANKING77: static {threshold} + guards, with answer consensus (tuning grid; held-out)"
    )
    for head in ("mode", "split", "hits %", "false hits %", "wrong / hits", "hits / oracle %"):
        table.add_column(head, justify="right")
    chosen = None if rule is None else _rule_name(rule)
    rows = [("static (default mode)", "tuning", static_tuning[threshold], None)]
    rows += [
        (f"consensus {name}", "tuning", c, "green" if name == chosen else None) for name, c in grid.items()
    ]
    rows += [("static (default mode)", "held-out", static_held, None)]
    if heldout is not None:
        rows += [(f"consensus {chosen} (chosen on tuning)", "held-out", heldout, "bold green")]
    for name, split, c, style in rows:
        table.add_row(name, split, pct(c.hit_rate), pct(c.false_hit_rate), f"{c.wrong_hits} / {c.hits}",
                      pct(c.of_oracle), style=style)
    console.print(table)
    return ConsensusFigures(rule, tuning, heldout, grid)


# --- verified mode (another engineer's module; used only if present) ---------------------


VERIFIED_DELTAS = (0.01, 0.02, 0.05)


def verified_runs(
    streams: Sequence[Stream], vectors: dict[str, np.ndarray]
) -> dict[float, dict[str, float]] | None:
    """Verified mode at each δ, pooled over `streams`; None when that module is not there.

    Calls `cascache.verification.simulate.run_verified_stream(texts, labels, vectors, delta, seed)`
    as its docstring says: the label judge, exact cosine nearest neighbour, one seed per stream.
    Its false-hit rate counts semantic hits only (verbatim repeats are the exact tier's).
    """
    if importlib.util.find_spec(VERIFY_MODULE) is None:
        console.print("[yellow]verified mode: not built yet; its figures are left null[/]")
        return None
    from cascache.verification.simulate import run_verified_stream

    out: dict[float, dict[str, float]] = {}
    for delta in VERIFIED_DELTAS:
        totals = {"queries": 0, "hits": 0, "wrong_hits": 0, "seen": 0, "exact_hits": 0}
        for k, stream in enumerate(streams):
            texts = [q.text for q in stream.queries]
            matrix = np.stack([vectors[t] for t in texts])
            result = run_verified_stream(texts, [q.label for q in stream.queries], matrix, delta, seed=k)
            for key in totals:
                totals[key] += int(result[key])
        out[delta] = {
            "hit_rate": (totals["hits"] + totals["exact_hits"]) / totals["queries"],
            "false_hit_rate": totals["wrong_hits"] / totals["hits"] if totals["hits"] else 0.0,
            "hits_of_oracle": (totals["hits"] + totals["exact_hits"]) / totals["seen"]
            if totals["seen"]
            else 0.0,
            "hits": totals["hits"],
            "wrong_hits": totals["wrong_hits"],
        }
    return out


# --- main ----------------------------------------------------------------------------------

EMBEDDER_NAME = ""


async def main(argv: list[str] | None = None) -> int:
    global EMBEDDER_NAME
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--seed", type=int, default=77)
    parser.add_argument("--streams", type=int, default=10)
    parser.add_argument("--queries", type=int, default=3000)
    parser.add_argument("--competitor-streams", type=int, default=3)
    parser.add_argument("--skip-competitors", action="store_true")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    defaults = SemanticSettings()
    default_threshold, default_k, default_guards = defaults.threshold, defaults.k, DEFAULT_GUARDS
    embedder = make_embedder("minilm", memo_size=0)
    EMBEDDER_NAME = embedder.name
    console.print(
        f"embedder {embedder.name}; defaults: threshold {default_threshold}, k {default_k}, "
        f"guards {', '.join(default_guards)}"
    )

    texts, labels = load_banking77(args.data / "banking77" / "train.csv")
    pairs = read_pairs([args.data / "fow-cache" / "pairs.jsonl"])
    conversations = read_pairs(
        [args.data / "fow-cache" / "conv-parts", args.data / "fow-cache" / "conv-long"]
    )
    vectors = await embed_texts(
        embedder, set(texts) | texts_of_pairs(pairs) | texts_of_pairs(conversations), cache_dir=OUT
    )
    await embedder.close()

    # (a) BANKING77 -------------------------------------------------------------------------
    section("BANKING77 streams")
    tune_rows, held_rows = stratified_split(labels, 0.7, args.seed)
    tune = banking_streams(texts, labels, tune_rows, args.queries, args.streams, args.seed + 1)
    held = banking_streams(
        texts, labels, held_rows, min(args.queries, len(held_rows) // 2), args.streams, args.seed + 1001
    )
    sweep_none = pooled(tune, vectors, SWEEP, (), default_k)
    sweep_guarded = pooled(tune, vectors, SWEEP, default_guards, default_k)
    choice = recommend(sweep_guarded, target=TARGET_FHR, rule="point")
    chosen = choice.threshold if choice.threshold is not None else max(SWEEP)
    print_sweep("BANKING77 tuning, static threshold, no guards", sweep_none)
    print_sweep(f"BANKING77 tuning, static threshold + guards (chosen: {chosen})", sweep_guarded, chosen)
    held_at = pooled(held, vectors, sorted({chosen, default_threshold}), default_guards, default_k)
    print_sweep("BANKING77 held-out (never used to choose), threshold + guards", held_at, chosen)
    held_chosen = held_at[chosen]
    consensus = consensus_rows(
        tune, held, vectors, chosen, default_guards, default_k, sweep_guarded, held_chosen
    )

    # (b) fow-cache pairs --------------------------------------------------------------------
    section("fow-cache pairs")
    policy = PolicySettings()
    pair_guarded = await replay_pairs(
        pairs,
        vectors,
        PAIR_SWEEP,
        guards=GuardSet(default_guards),
        k=default_k,
        policy=policy,
        embedder_name=embedder.name,
    )
    pair_plain = await replay_pairs(
        pairs,
        vectors,
        PAIR_SWEEP,
        guards=GuardSet(()),
        k=default_k,
        policy=policy,
        embedder_name=embedder.name,
    )
    print_pair_sweep("fow-cache pairs, no guards: % of b that hit", pair_plain, PAIR_SWEEP)
    print_pair_sweep(
        "fow-cache pairs, with guards: % of b that hit (the trade-off curve)", pair_guarded, PAIR_SWEEP
    )
    at_default = pair_totals(summarise_pairs(pair_guarded, default_threshold))
    # The same figures as `cascache eval` writes them: report.json, report.html, hit_vs_fhr.png.
    written = write_report(
        EvalReport(
            options=EvalOptions(
                thresholds=SWEEP,
                configured_threshold=default_threshold,
                guards=default_guards,
                k=default_k,
                target_fhr=TARGET_FHR,
                rule="point",
            ),
            embedder=embedder.name,
            tuning=sweep_guarded,
            tuning_streams=len(tune),
            recommendation=choice,
            holdout=held_at,
            holdout_streams=len(held),
            pairs=pair_guarded,
        ),
        OUT / "quality",
    )
    console.print(f"charts and tables: {', '.join(str(p) for p in written.values())}")
    default_rates = category_rates(pair_guarded, default_threshold)

    # Per guard: what it buys on the traps, what it costs on positives and on BANKING77.
    section("per guard")
    table = Table(
        title="Each guard alone: traps rejected / positives kept (fow), hits / oracle (BANKING77 tuning)"
    )
    for head in (
        "guard",
        "fow traps rejected @0 (guard + policy)",
        "fow paraphrases lost @0",
        "fow near-repeats lost @0",
        *(f"trap rej. @{t}" for t in GUARD_COST_AT),
        *(f"B77 hits/oracle @{t}" for t in GUARD_COST_AT),
        "B77 false hits @0.90",
    ):
        table.add_column(head, justify="right")
    per_guard: dict[str, dict[str, float]] = {}
    for name in ("none", *GUARDS, "all"):
        guards = () if name == "none" else default_guards if name == "all" else (name,)
        results = (
            pair_guarded
            if name == "all"
            else pair_plain
            if name == "none"
            else await replay_pairs(
                pairs,
                vectors,
                PAIR_SWEEP,
                guards=GuardSet(guards),
                k=default_k,
                policy=policy,
                embedder_name=embedder.name,
            )
        )
        zero = summarise_pairs(results, 0.0)
        traps = sum(s.pairs - s.hits for s in zero if not s.same_answer) / sum(
            s.pairs for s in zero if not s.same_answer
        )
        para = {s.category: 1 - s.hit_rate for s in zero}
        b77 = (
            sweep_none
            if name == "none"
            else sweep_guarded
            if name == "all"
            else pooled(tune, vectors, GUARD_COST_AT, guards, default_k)
        )
        rej = {t: pair_totals(summarise_pairs(results, t))["trap_rejection"] for t in GUARD_COST_AT}
        per_guard[name] = {
            "traps_vetoed_any_similarity": traps,
            "paraphrases_vetoed": para["paraphrase"],
            **{f"b77_of_oracle_{t}": b77[t].of_oracle for t in GUARD_COST_AT},
            **{f"trap_rejection_{t}": rej[t] for t in GUARD_COST_AT},
        }
        table.add_row(
            name,
            pct(traps),
            pct(para["paraphrase"]),
            pct(para["near_repeat"]),
            *(pct(rej[t]) for t in GUARD_COST_AT),
            *(pct(b77[t].of_oracle) for t in GUARD_COST_AT),
            pct(b77[0.90].false_hit_rate),
        )
    console.print(table)

    section("fow-cache pairs as one stream: default vs answer consensus")
    fow_queries = fow_as_stream(pairs)
    consensus.fow_default = fow_stream_rates(
        pairs, trace_cascache(fow_queries, vectors, chosen, default_guards, default_k)
    )
    if consensus.rule is not None:
        consensus.fow = fow_stream_rates(
            pairs, trace_cascache(fow_queries, vectors, chosen, default_guards, default_k, consensus.rule)
        )
    table = Table(title=f"fow pairs as one stream (all a, then all b), threshold {chosen} + guards")
    for head in ("mode", "positives served right %", "traps served wrong %"):
        table.add_column(head, justify="right")
    for name, rates in (("default", consensus.fow_default), (f"consensus {consensus.name}", consensus.fow)):
        if rates:
            table.add_row(name, pct(rates["positive_hit_rate"]), pct(rates["trap_hit_rate"]))
    console.print(table)

    # (c) conversations ----------------------------------------------------------------------
    section("conversations")
    conv = await replay_pairs(
        conversations,
        vectors,
        (default_threshold, 0.90, 0.0),
        guards=GuardSet(default_guards),
        k=default_k,
        policy=policy,
        embedder_name=embedder.name,
    )
    table = Table(title="fow-cache conversations (conv-parts + conv-long): b after a is cached")
    for head in (
        "subtype",
        "should",
        "pairs",
        f"hit % @{default_threshold}",
        "hit % @0.90",
        "hit % @0.0",
        "other key (never compared)",
        "compared",
        "exact",
        "bypass",
    ):
        table.add_column(head, justify="right")
    conv_rows: dict[str, dict[str, float]] = {}
    for s in summarise_pairs(conv, default_threshold):
        at90 = next(x for x in summarise_pairs(conv, 0.90) if x.category == s.category)
        at0 = next(x for x in summarise_pairs(conv, 0.0) if x.category == s.category)
        conv_rows[s.category] = {"hit_rate": s.hit_rate, "other_key": s.routes.get("key", 0) / s.pairs}
        table.add_row(
            s.category,
            "hit" if s.same_answer else "miss",
            str(s.pairs),
            pct(s.hit_rate),
            pct(at90.hit_rate),
            pct(at0.hit_rate),
            str(s.routes.get("key", 0)),
            str(s.routes.get("semantic", 0)),
            str(s.routes.get("exact", 0)),
            str(s.routes.get("bypass", 0)),
        )
    console.print(table)

    # (d) verified mode and the other caches ------------------------------------------------
    section("verified mode and other caches")
    verified = verified_runs(held, vectors)
    worst_over_delta = None
    if verified is not None:
        table = Table(title="Verified mode (cascache.verification), BANKING77 held-out streams, label judge")
        for head in (
            "delta",
            "hits %",
            "false hits % (semantic)",
            "wrong / hits",
            "hits / oracle %",
            "FHR / delta",
        ):
            table.add_column(head, justify="right")
        for delta, row in verified.items():
            table.add_row(
                f"{delta:g}",
                pct(row["hit_rate"]),
                pct(row["false_hit_rate"]),
                f"{row['wrong_hits']:.0f} / {row['hits']:.0f}",
                pct(row["hits_of_oracle"]),
                f"{row['false_hit_rate'] / delta:.2f}",
            )
        console.print(table)
        worst_over_delta = max(row["false_hit_rate"] / delta for delta, row in verified.items())
    side: dict[str, dict[str, float]] = {}
    if not args.skip_competitors:
        subset = held[: args.competitor_streams]
        ours = pooled(subset, vectors, [default_threshold], default_guards, default_k)[default_threshold]
        ours_fow = fow_stream_rates(
            pairs, trace_cascache(fow_queries, vectors, default_threshold, default_guards, default_k)
        )
        side["cascache default"] = {
            "hit_rate": ours.hit_rate,
            "false_hit_rate": ours.false_hit_rate,
            "hits_of_oracle": ours.of_oracle,
            **{f"fow_{k}": v for k, v in ours_fow.items()},
        }
        if consensus.rule is not None:
            agreed = pooled(subset, vectors, [chosen], default_guards, default_k, consensus.rule)[chosen]
            side[f"cascache consensus ({consensus.name})"] = {
                "hit_rate": agreed.hit_rate,
                "false_hit_rate": agreed.false_hit_rate,
                "hits_of_oracle": agreed.of_oracle,
                **{f"fow_{k}": v for k, v in consensus.fow.items()},
            }
        for delta, row in (verified_runs(subset, vectors) or {}).items():
            side[f"cascache verified, delta {delta:g}"] = {
                **row,
                "fow_positive_hit_rate": float("nan"),
                "fow_trap_hit_rate": float("nan"),
            }
        runners: list[tuple[str, Callable[[], Competitor]]] = [
            (GPTCacheRunner.name, lambda: GPTCacheRunner(vectors))
        ]
        with redis_stack() as url:
            if url is not None:
                runners.append((RedisVLRunner.name, lambda: RedisVLRunner(vectors, url)))
            for name, make in runners:
                tally = Tally()
                for stream in subset:
                    tally = tally + run_competitor(make, stream.queries)
                fow = fow_stream_rates(pairs, trace_competitor(make, fow_queries))
                side[name] = {
                    "hit_rate": tally.hits / tally.queries,
                    "false_hit_rate": tally.wrong / tally.hits if tally.hits else 0.0,
                    "hits_of_oracle": tally.hits / ours.seen if ours.seen else 0.0,
                    **{f"fow_{k}": v for k, v in fow.items()},
                    "seconds": tally.seconds,
                }
        table = Table(
            title=f"Side by side: {len(subset)} BANKING77 held-out streams ({ours.queries} queries, "
            f"oracle {pct(ours.oracle_hit_rate)}%) and the fow pairs as one stream"
        )
        for head in (
            "cache",
            "hits %",
            "false hits %",
            "hits / oracle %",
            "fow positives served right %",
            "fow traps served wrong %",
        ):
            table.add_column(head, justify="right")
        for name, row in side.items():
            table.add_row(
                name,
                pct(row["hit_rate"]),
                pct(row["false_hit_rate"]),
                pct(row["hits_of_oracle"]),
                pct(row["fow_positive_hit_rate"]),
                pct(row["fow_trap_hit_rate"]),
            )
        console.print(table)

    figures: dict[str, Any] = {
        "recall_vs_oracle_at_fhr_1pct": round(held_chosen.of_oracle, 4),
        "verified_worst_fhr_over_delta": None if worst_over_delta is None else round(worst_over_delta, 4),
        "trap_rejection": round(at_default["trap_rejection"], 4),
        "paraphrase_hit_rate": round(default_rates["paraphrase"], 4),
        "positive_hit_rate": round(at_default["positive_hit_rate"], 4),
        "chosen_threshold": chosen,
        "heldout_fhr_at_chosen": round(held_chosen.false_hit_rate, 4),
        "tuning_of_oracle_at_chosen": round(sweep_guarded[chosen].of_oracle, 4),
        "tuning_fhr_at_chosen": round(sweep_guarded[chosen].false_hit_rate, 4),
        "default_threshold": default_threshold,
        "default_guards": list(default_guards),
        "conversations": {k: round(v["hit_rate"], 4) for k, v in conv_rows.items()},
        "verified": None
        if verified is None
        else {str(d): {m: round(v, 4) for m, v in row.items()} for d, row in verified.items()},
        "side_by_side": {
            k: {m: round(v, 4) for m, v in row.items() if not math.isnan(v)} for k, row in side.items()
        },
        **consensus.figures(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    sys.stdout.write(json.dumps(figures) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
