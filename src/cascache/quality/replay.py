"""Replaying labelled data through the cache's own decisions: keys, policy, nearest, acceptance.

Nothing here re-implements a cache decision. Every request is parsed by the
real provider adapter (`providers.openai.parse`), keyed by `keys.request_keys`,
judged by `policy.decide`, and a candidate is accepted by
`tiers.consensus.choose_with_consensus`, the function the semantic tier runs on
the store's candidates (`tiers.guards.choose`, then answer consensus when a
`ConsensusRule` is given). Vectors come from the embedder the cache is
configured with. A cached entry's answer is its label, in an OpenAI-shaped
response, so consensus compares labels exactly as it compares answers online.

Two engines replay a stream:

- `replay_stream_in_store` writes misses into a real `MemoryStore` and asks its
  `get` / `nearest`, exactly as the pipeline does (exact tier, then semantic,
  then write-back of misses; hits are not written). It is the reference.
- `replay_stream` computes the stream's similarity matrix once and replays
  every threshold of a sweep from it, taking the nearest k cached queries the
  way `MemoryStore.nearest` orders them (by similarity, ties in insertion
  order). A sweep of 20 thresholds over 10 streams of 3,000 queries takes
  seconds instead of minutes. `cascache eval` replays the recommended
  threshold through the store as well and reports any disagreement (there is
  none unless a similarity sits within float rounding of the threshold).

Pairs (`replay_pairs`) put `a` into a `MemoryStore` and look `b` up, each pair
under a scope of its own, so every pair meets a cache holding only its `a`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cascache._types import CacheEntry, ChatRequest, Fingerprint, Namespace, Scope, Usage, Vector
from cascache.config import PolicySettings
from cascache.embedders.base import Embedder
from cascache.keys import make_scope, request_keys
from cascache.policy import decide
from cascache.providers.openai import parse
from cascache.quality.data import LabelledPair, Message, Stream
from cascache.quality.vector_file import save_vectors, vector_file
from cascache.stores.memory import MemoryStore
from cascache.tiers.consensus import ConsensusRule, choose_with_consensus
from cascache.tiers.guards import Choice, GuardSet, Veto

__all__ = [
    "PairResult",
    "Prepared",
    "StreamCounts",
    "embed_texts",
    "prepare",
    "replay_pairs",
    "replay_stream",
    "replay_stream_in_store",
    "texts_of_pairs",
    "texts_of_streams",
]

#: The model named in every replayed request (it only has to be the same for all of them).
EVAL_MODEL = "cascache-eval"
_NOW = 1_000_000.0
"""A fixed clock: nothing expires during a replay."""

Progress = Callable[[int], None]
"""Called with the number of items just finished (a rich progress bar's `advance`)."""


# --- requests as the cache sees them -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Prepared:
    """One request after parsing, keys and policy: everything the tiers look at, bar the vector."""

    text: str | None
    """The semantically compared text (the last user message), as the pipeline embeds it."""
    fingerprint: Fingerprint
    namespace: Namespace | None
    scope: Scope
    lookup: bool
    store: bool
    bypass_reason: str | None


def prepare(
    messages: Sequence[Message],
    *,
    policy: PolicySettings,
    embedder_name: str,
    scope: Scope | None = None,
    model: str = EVAL_MODEL,
    headers: Mapping[str, str] | None = None,
) -> Prepared:
    """Parse, key and judge one chat request exactly as `Pipeline.handle` does."""
    request: ChatRequest = parse({"model": model, "messages": list(messages), "temperature": 0})
    scope = scope if scope is not None else make_scope(None, None)
    decision = decide(request, headers or {}, policy)
    keys = request_keys(request, scope, decision.version, embedder_name)
    return Prepared(
        text=request.semantic_text,
        fingerprint=keys.fingerprint,
        namespace=keys.namespace,
        scope=scope,
        lookup=decision.lookup,
        store=decision.store,
        bypass_reason=decision.reason,
    )


# --- vectors -------------------------------------------------------------------------------


async def embed_texts(
    embedder: Embedder,
    texts: Iterable[str],
    *,
    batch: int = 256,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Vector]:
    """Each distinct text's vector from `embedder`, in batches.

    With `cache_dir`, vectors are kept in a `.npy` file named by a hash of the
    embedder's name and every text (`quality.vector_file`), so a changed model
    or data set can never pick up stale vectors.
    """
    unique = sorted(set(texts))
    path: Path | None = None
    if cache_dir is not None:
        path = vector_file(cache_dir, "eval", embedder.name, unique)
        if path.exists():
            matrix = np.load(path)
            if progress is not None:
                progress(len(unique))
            return {text: matrix[i] for i, text in enumerate(unique)}
    rows: list[Vector] = []
    for start in range(0, len(unique), batch):
        chunk = unique[start : start + batch]
        rows.append(np.asarray(await embedder.embed(chunk), dtype=np.float32))
        if progress is not None:
            progress(len(chunk))
    matrix = np.concatenate(rows) if rows else np.zeros((0, 0), dtype=np.float32)
    if path is not None:
        save_vectors(path, matrix)
    return {text: matrix[i] for i, text in enumerate(unique)}


def _normalised(vector: Vector) -> Vector:
    """As `MemoryStore` normalises stored vectors, so similarities agree to the last bit."""
    vector = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def _entry(prepared: Prepared, label: str, vector: Vector | None, index: int) -> CacheEntry:
    """The entry the write-back would store for `prepared`, its answer being the label."""
    return CacheEntry(
        id=f"q{index}",
        fingerprint=prepared.fingerprint,
        namespace=prepared.namespace if prepared.namespace is not None else Namespace(prepared.fingerprint),
        scope=prepared.scope,
        version="eval",
        provider="openai",
        model=EVAL_MODEL,
        query=prepared.text if prepared.namespace is not None else None,
        vector=vector if prepared.namespace is not None else None,
        response=_labelled_response(label),
        usage=Usage(),
        created_at=_NOW,
        expires_at=None,
    )


def _labelled_response(label: str) -> dict[str, Any]:
    """An OpenAI Chat response whose answer is `label` (what `judges.answer_text` reads), plus the label."""
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": label}}], "label": label}


def _fetch(k: int, consensus: ConsensusRule | None) -> int:
    """Candidates per lookup, as the semantic tier fetches them."""
    return max(k, consensus.k) if consensus is not None else k


# --- streams -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamCounts:
    """What one or more replayed streams did at one threshold (counts add up across streams)."""

    queries: int = 0
    hits: int = 0
    """Exact plus semantic hits."""
    wrong_hits: int = 0
    """Hits whose cached label differs from the query's."""
    seen: int = 0
    """Queries whose label was already cached when they came (the oracle's hits)."""
    exact_hits: int = 0
    vetoed: int = 0
    """Misses where a guard vetoed a candidate that cleared the threshold."""
    bypassed: int = 0
    """Queries the policy kept away from Tier 1 (time-sensitive wording...)."""
    vetoes_by_guard: Mapping[str, int] = field(default_factory=dict)

    def __add__(self, other: StreamCounts) -> StreamCounts:
        guards = dict(self.vetoes_by_guard)
        for name, count in other.vetoes_by_guard.items():
            guards[name] = guards.get(name, 0) + count
        return StreamCounts(
            queries=self.queries + other.queries,
            hits=self.hits + other.hits,
            wrong_hits=self.wrong_hits + other.wrong_hits,
            seen=self.seen + other.seen,
            exact_hits=self.exact_hits + other.exact_hits,
            vetoed=self.vetoed + other.vetoed,
            bypassed=self.bypassed + other.bypassed,
            vetoes_by_guard=guards,
        )

    @property
    def correct_hits(self) -> int:
        return self.hits - self.wrong_hits

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0

    @property
    def false_hit_rate(self) -> float:
        """Wrong hits / hits (0 when nothing hit)."""
        return self.wrong_hits / self.hits if self.hits else 0.0

    @property
    def precision(self) -> float:
        """Correct hits / hits (1 when nothing hit: nothing wrong was served)."""
        return self.correct_hits / self.hits if self.hits else 1.0

    @property
    def recall(self) -> float:
        """Correct hits / oracle hits: the share of the possible right hits that were made."""
        return self.correct_hits / self.seen if self.seen else 0.0

    @property
    def oracle_hit_rate(self) -> float:
        return self.seen / self.queries if self.queries else 0.0

    @property
    def of_oracle(self) -> float:
        """Hit rate / oracle hit rate."""
        return self.hits / self.seen if self.seen else 0.0


@dataclass(frozen=True, slots=True)
class _PreparedStream:
    prepared: list[Prepared]
    labels: list[str]
    vectors: Vector
    """(n, d), row i the normalised vector of query i (zeros when it has no text)."""
    seen: list[bool]


def _prepare_stream(
    stream: Stream, vectors: Mapping[str, Vector], policy: PolicySettings, embedder_name: str
) -> _PreparedStream:
    prepared = [
        prepare([*q.context, {"role": "user", "content": q.text}], policy=policy, embedder_name=embedder_name)
        for q in stream.queries
    ]
    labels = [q.label for q in stream.queries]
    dim = len(next(iter(vectors.values()))) if vectors else 0
    matrix = np.zeros((len(prepared), dim), dtype=np.float32)
    for i, p in enumerate(prepared):
        if p.text is not None:
            matrix[i] = _normalised(vectors[p.text])
    # Oracle: the label was cached before, in this namespace, by a query the policy let be stored.
    cached_labels: set[tuple[Namespace | None, str]] = set()
    seen = []
    for p, label in zip(prepared, labels, strict=True):
        seen.append(p.lookup and (p.namespace, label) in cached_labels)
        if p.store:
            cached_labels.add((p.namespace, label))
    return _PreparedStream(prepared, labels, matrix, seen)


class _MemoGuards(GuardSet):
    """A `GuardSet` that remembers its verdicts: a sweep meets the same pair at every threshold."""

    __slots__ = ("_memo",)

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__(names)
        self._memo: dict[tuple[str, str], Veto | None] = {}

    def check(self, query: str, candidate_query: str) -> Veto | None:
        key = (query, candidate_query)
        if key not in self._memo:
            self._memo[key] = super().check(query, candidate_query)
        return self._memo[key]


def replay_stream(
    stream: Stream,
    vectors: Mapping[str, Vector],
    thresholds: Sequence[float],
    *,
    guards: GuardSet,
    k: int,
    policy: PolicySettings,
    embedder_name: str,
    consensus: ConsensusRule | None = None,
    on_hit: Callable[[float, int, int, float], None] | None = None,
) -> dict[float, StreamCounts]:
    """Counts at every threshold for one stream replayed into an empty cache (the fast engine).

    `on_hit(threshold, query_index, cached_index, similarity)` sees every hit (exact hits with similarity 1).
    """
    data = _prepare_stream(stream, vectors, policy, embedder_name)
    similarities = data.vectors @ data.vectors.T
    guards = _MemoGuards(guards.names)
    entries = [
        _entry(p, label, None, i) for i, (p, label) in enumerate(zip(data.prepared, data.labels, strict=True))
    ]
    return {
        t: _replay_one(data, similarities, entries, t, guards=guards, k=k, consensus=consensus, on_hit=on_hit)
        for t in thresholds
    }


def _replay_one(
    data: _PreparedStream,
    similarities: Vector,
    entries: list[CacheEntry],
    threshold: float,
    *,
    guards: GuardSet,
    k: int,
    consensus: ConsensusRule | None,
    on_hit: Callable[[float, int, int, float], None] | None,
) -> StreamCounts:
    exact: dict[Fingerprint, int] = {}
    # Per namespace: stream positions of the cached queries, in insertion order (a growing buffer).
    cached: dict[Namespace, tuple[np.ndarray, list[int]]] = {}
    hits = wrong = exact_hits = vetoed = bypassed = 0
    by_guard: dict[str, int] = {}
    fetch = _fetch(k, consensus)
    for i, p in enumerate(data.prepared):
        if not p.lookup:
            bypassed += 1
            continue  # a bypassed request is neither looked up nor written back
        served: int | None = exact.get(p.fingerprint)
        similarity = 1.0
        if served is not None:
            exact_hits += 1
        elif p.namespace is not None and p.text is not None and p.namespace in cached:
            buffer, size = cached[p.namespace]
            positions = buffer[: size[0]]
            row = similarities[i, positions]
            order = [int(np.argmax(row))] if fetch == 1 else _nearest(row, fetch)
            choice: Choice = choose_with_consensus(
                [(entries[positions[j]], float(row[j])) for j in order],
                namespace=p.namespace,
                scope=p.scope,
                now=_NOW,
                threshold=threshold,
                query=p.text,
                guards=guards,
                k=k,
                rule=consensus,
            )
            if choice.entry is not None:
                served = int(choice.entry.id[1:])
                similarity = choice.accepted_similarity or 0.0
            elif choice.veto is not None:
                vetoed += 1
                by_guard[choice.veto.guard] = by_guard.get(choice.veto.guard, 0) + 1
        if served is not None:
            hits += 1
            wrong += data.labels[served] != data.labels[i]
            if on_hit is not None:
                on_hit(threshold, i, served, similarity)
            continue  # hits are not written back
        if p.store:
            exact[p.fingerprint] = i
            if p.namespace is not None and p.text is not None:
                buffer, size = cached.setdefault(p.namespace, (np.empty(len(data.prepared), np.int64), [0]))
                buffer[size[0]] = i
                size[0] += 1
    return StreamCounts(
        queries=len(data.prepared),
        hits=hits,
        wrong_hits=wrong,
        seen=sum(data.seen),
        exact_hits=exact_hits,
        vetoed=vetoed,
        bypassed=bypassed,
        vetoes_by_guard=by_guard,
    )


def _nearest(row: Vector, k: int) -> list[int]:
    """Positions of the k largest similarities, most similar first, ties in insertion order (as
    `MemoryStore.nearest`); a partial sort first, since consensus asks for several of many."""
    if len(row) > 4 * k:
        # Everything tied with the k-th value is kept, so the stable sort below breaks ties as the store does.
        kth = np.partition(row, len(row) - k)[len(row) - k]
        candidates = np.flatnonzero(row >= kth)
        return candidates[np.argsort(-row[candidates], kind="stable")][:k].tolist()
    return np.argsort(-row, kind="stable")[:k].tolist()


async def replay_stream_in_store(
    stream: Stream,
    vectors: Mapping[str, Vector],
    threshold: float,
    *,
    guards: GuardSet,
    k: int,
    policy: PolicySettings,
    embedder_name: str,
    consensus: ConsensusRule | None = None,
) -> StreamCounts:
    """One threshold, through a real `MemoryStore` (the reference the fast engine is checked against)."""
    data = _prepare_stream(stream, vectors, policy, embedder_name)
    store = MemoryStore(max_entries=max(1, len(data.prepared)))
    hits = wrong = exact_hits = vetoed = bypassed = 0
    by_guard: dict[str, int] = {}
    for i, p in enumerate(data.prepared):
        if not p.lookup:
            bypassed += 1
            continue
        found = await store.get(p.fingerprint, p.scope, _NOW)
        if found is not None:
            exact_hits += 1
        elif p.namespace is not None and p.text is not None:
            fetch = _fetch(k, consensus)
            candidates = await store.nearest(p.namespace, p.scope, data.vectors[i], fetch, _NOW)
            choice = choose_with_consensus(
                candidates,
                namespace=p.namespace,
                scope=p.scope,
                now=_NOW,
                threshold=threshold,
                query=p.text,
                guards=guards,
                k=k,
                rule=consensus,
            )
            found = choice.entry
            if found is None and choice.veto is not None:
                vetoed += 1
                by_guard[choice.veto.guard] = by_guard.get(choice.veto.guard, 0) + 1
        if found is not None:
            hits += 1
            wrong += found.response["label"] != data.labels[i]
            continue
        if p.store:
            await store.put(_entry(p, data.labels[i], data.vectors[i] if p.text is not None else None, i))
    return StreamCounts(
        queries=len(data.prepared),
        hits=hits,
        wrong_hits=wrong,
        seen=sum(data.seen),
        exact_hits=exact_hits,
        vetoed=vetoed,
        bypassed=bypassed,
        vetoes_by_guard=by_guard,
    )


# --- pairs ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PairResult:
    """How the cache treats `b` once `a` is cached, at each threshold."""

    pair: LabelledPair
    route: str
    """"bypass" (policy), "exact" (same fingerprint), "key" (different namespace: never compared),
    or "semantic" (compared by similarity)."""
    similarity: float | None
    hit: Mapping[float, bool]
    veto: Mapping[float, Veto | None]
    """Per threshold: the guard that refused a candidate clearing it, if any."""


async def replay_pairs(
    pairs: Sequence[LabelledPair],
    vectors: Mapping[str, Vector],
    thresholds: Sequence[float],
    *,
    guards: GuardSet,
    k: int,
    policy: PolicySettings,
    embedder_name: str,
    consensus: ConsensusRule | None = None,
    progress: Progress | None = None,
) -> list[PairResult]:
    """Cache each pair's `a` (in a scope of its own), then look its `b` up at every threshold.

    A cache holding one entry per scope never reaches consensus (k >= 2), so `consensus` changes
    nothing here; it is taken so that every replay runs the tier's acceptance with the same arguments.
    To see consensus on pairs, replay them as a stream.
    """
    store = MemoryStore(max_entries=max(1, len(pairs)))
    results: list[PairResult] = []
    for index, pair in enumerate(pairs):
        scope = Scope(f"eval-pair-{index}")
        a = prepare(pair.a, policy=policy, embedder_name=embedder_name, scope=scope)
        b = prepare(pair.b, policy=policy, embedder_name=embedder_name, scope=scope)
        if a.store and a.lookup:
            vector = _normalised(vectors[a.text]) if a.text is not None else None
            await store.put(_entry(a, "a", vector, index))
        route, similarity = "key", None
        hit = dict.fromkeys(thresholds, False)
        veto: dict[float, Veto | None] = dict.fromkeys(thresholds)
        if not (a.lookup and a.store and b.lookup):
            route = "bypass"
        elif await store.get(b.fingerprint, scope, _NOW) is not None:
            route = "exact"
            hit = dict.fromkeys(thresholds, True)
        elif b.namespace is not None and b.text is not None:
            candidates = await store.nearest(
                b.namespace, scope, _normalised(vectors[b.text]), _fetch(k, consensus), _NOW
            )
            if candidates:
                route, similarity = "semantic", max(s for _, s in candidates)
                for t in thresholds:
                    choice = choose_with_consensus(
                        candidates,
                        namespace=b.namespace,
                        scope=scope,
                        now=_NOW,
                        threshold=t,
                        query=b.text,
                        guards=guards,
                        k=k,
                        rule=consensus,
                    )
                    hit[t] = choice.entry is not None
                    veto[t] = choice.veto
        results.append(PairResult(pair, route, similarity, hit, veto))
        if progress is not None:
            progress(1)
    return results


def texts_of_pairs(pairs: Iterable[LabelledPair]) -> set[str]:
    """Every compared text (the last user message of each side)."""
    return {str(p.a[-1]["content"]) for p in pairs} | {str(p.b[-1]["content"]) for p in pairs}


def texts_of_streams(streams: Iterable[Stream]) -> set[str]:
    return {q.text for s in streams for q in s.queries}
