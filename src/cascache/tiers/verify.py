"""Verified acceptance: semantic hits under a bound δ on the false-hit rate. Pure: no IO.

In verified mode the semantic tier does not compare a candidate's similarity
with one fixed threshold. For the nearest candidate (entry `e`, similarity `s`)
it asks this module, which answers EXPLOIT (serve the cached answer) or
EXPLORE (serve a fresh answer from upstream, as on a miss, and let a judge
record whether the cached one would have been right). Judged candidates are
the observations every threshold here is learnt from. docs/verified-mode.md
has the derivation, the measurements and the limits at more length.

The model. vCache (arXiv 2502.03771) fits one sigmoid P(correct | s) per cached
embedding and explores with a probability tied to δ; it bounds errors per
*request*. This module bounds the false-hit rate among *served hits* (wrong
hits / hits), a stricter target, with its own estimator:

- **Pool curve** `g(s)`: error rate of candidates at similarity `s` in one pool
  (a namespace, or a namespace and category), from every judged candidate of
  the pool, recency-weighted (half-life `pool_half_life` observations: the
  error at a given similarity rises as a cache fills, so old evidence must
  fade). At `s` it takes the narrowest window `[s - w, s]` (w <= `max_window`)
  holding `window_count` observations (default ⌈2/δ⌉) and reports the upper
  Wilson bound (z = `confidence_z`) of its error share. The window reaches
  *down* only: where error does not rise with similarity, that can only
  overstate `g(s)`, and it never extrapolates above the data.
- **Entry factor** `r_e`: entry `e` fails more or less often than its pool by a
  factor (a per-entry shift of the pool's curve, as vCache's per-embedding
  sigmoids are shifts of one shape). With a Gamma(m, m) prior (mean 1,
  m = `entry_prior`) and the entry's own judged candidates (k wrong where the
  pool curve expected Σ g(s_i)), its posterior mean is
  `r_e = (m + k) / (m + Σ g(s_i))`.
- **Calibration factor** `c >= 1`: among judged EXPLOITs (a uniform random
  `verify_share` of the hits served), observed wrong against predicted:
  `c = max(1, (W + a) / (P + a))`. It can only make the model more careful, and
  it is measured on the answers clients actually received.
- **Decision**: the risk of serving `e` at `s` is `p = min(1, c · r_e · g(s))`.
  EXPLOIT iff `p <= max_risk_factor · δ` and the pool's ledger admits it: the
  (decayed) sum of the risks of its exploits stays within
  `budget_share · δ` times their number. Otherwise EXPLORE. Below
  `min_similarity` a candidate is a plain miss and is not recorded.

The guarantee. If each `p` is at least the probability that the served answer
is wrong given everything known when it was served, then by construction of
the ledger E[wrong hits] <= E[Σ p] <= budget_share · δ · E[hits]: the
false-hit rate is at most δ in expectation, and no single hit carries an
estimated risk above `max_risk_factor · δ`. The upper confidence bound in
`g(s)` is what makes "at least" plausible when a window holds few
observations (a posterior mean would be too low exactly where the ledger
chooses to exploit).

What this rests on, and where it breaks:

- **Exchangeability given similarity**: a judged candidate at `s` is as likely
  to be wrong as an unjudged one at `s`, in the same pool at about the same
  time. Exploration never depends on the outcome, so this holds up to drift;
  the half-life and the sampled EXPLOITs keep the curve current.
- **Monotonicity**: in a pool, error does not rise with similarity.
- **Entry heterogeneity**: an entry differs from its pool by a factor of the
  prior's spread; an entry with few judged candidates is judged by its pool.
  Pairs of near-identical questions whose answers differ are wrong at the
  highest similarities: the pool curve prices them in, no entry can foresee them.
- **Judge accuracy**: the bound holds for what the judge calls correct.
- **Few observations**: until a window below `s` holds `min_count` judged
  candidates, candidates at `s` explore; until the window's upper bound drops
  to about δ (about ⌈1/δ⌉ clean observations), nothing there is served. While
  the cache learns, clients get fresh answers, not riskier ones.

Per-entry state (`EntryStats`) is small and JSON-ready so that it can live on
the entry in the store; pool state lives in process (`snapshot` / `restore`
persist it). All state is touched from the event loop only.
"""

from __future__ import annotations

import enum
import math
import random
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import numpy as np
import numpy.typing as npt

__all__ = [
    "Action",
    "EntryStats",
    "EntryStatsBook",
    "Probe",
    "SimilarityCurve",
    "Verdict",
    "VerifiedAcceptance",
    "VerifyParams",
    "static_verdict",
]

#: Version of the JSON form of `EntryStats` and of the pool snapshot.
STATS_VERSION = 1


class Action(enum.StrEnum):
    """What to do with a semantic candidate."""

    EXPLOIT = "exploit"
    """Serve the cached answer."""
    EXPLORE = "explore"
    """Serve a fresh answer from upstream (as on a miss)."""


@dataclass(frozen=True, slots=True)
class VerifyParams:
    """Settings of verified acceptance; `delta` is the only one most users set."""

    delta: float = 0.02
    """Bound on the false-hit rate (wrong hits / hits), in (0, 0.5)."""
    verify_share: float = 0.1
    """Share of exploits verified off the critical path (online monitoring and learning)."""
    budget_share: float = 1.0
    """Share of δ the ledger may spend (lower it to keep a margin beyond `confidence_z`)."""
    max_risk_factor: float = 2.0
    """No hit is served whose estimated risk exceeds this multiple of δ."""
    min_similarity: float = 0.5
    """Candidates below this similarity are plain misses and are not recorded."""
    window_factor: float = 2.0
    """The pool curve estimates g(s) from ⌈window_factor / δ⌉ observations below s: enough to
    expect `window_factor` errors at rate δ, so that a window whose error is near δ rarely
    looks clean by chance."""
    window_count: int | None = None
    """Overrides ⌈window_factor / δ⌉ when set."""
    min_count: int = 10
    """Fewer observations than this within `max_window` below `s`: no estimate, explore."""
    max_window: float = 0.1
    """How far below `s` the pool curve may reach for observations."""
    confidence_z: float = 1.0
    """The pool curve reports the upper Wilson bound at this z (1: 84% one-sided; 0: the
    Jeffreys posterior mean). With 0 errors among ⌈1/δ⌉ observations the bound is about δ."""
    bins: int = 100
    """Similarity resolution of the pool curve (bins over [0, 1])."""
    pool_half_life: float = 1000.0
    """Pool observations after which an old observation weighs half."""
    entry_prior: float = 2.0
    """Strength m of the Gamma(m, m) prior on an entry's risk factor (in expected errors)."""
    entry_capacity: int = 64
    """Observations kept per entry (the most recent)."""
    calibration_prior: float = 3.0
    """Pseudo-count a of the calibration factor (in expected errors)."""
    calibration_half_life: float = 2000.0
    """Verified exploits after which an old one weighs half in the calibration factor."""
    ledger_half_life: float | None = 2000.0
    """Exploits after which an old one weighs half in the ledger; None: never forget."""

    def __post_init__(self) -> None:
        checks = [
            (0.0 < self.delta < 0.5, "delta must be in (0, 0.5)"),
            (0.0 <= self.verify_share <= 1.0, "verify_share must be in [0, 1]"),
            (0.0 < self.budget_share <= 1.0, "budget_share must be in (0, 1]"),
            (self.max_risk_factor >= 1.0, "max_risk_factor must be >= 1"),
            (0.0 <= self.min_similarity < 1.0, "min_similarity must be in [0, 1)"),
            (self.window_factor > 0, "window_factor must be > 0"),
            (self.window_count is None or self.window_count >= 1, "window_count must be >= 1"),
            (self.min_count >= 1, "min_count must be >= 1"),
            (0.0 < self.max_window <= 1.0, "max_window must be in (0, 1]"),
            (self.confidence_z >= 0.0, "confidence_z must be >= 0"),
            (self.bins >= 10, "bins must be >= 10"),
            (self.pool_half_life > 0, "pool_half_life must be > 0"),
            (self.entry_prior > 0, "entry_prior must be > 0"),
            (self.entry_capacity >= 1, "entry_capacity must be >= 1"),
            (self.calibration_prior > 0, "calibration_prior must be > 0"),
            (self.calibration_half_life > 0, "calibration_half_life must be > 0"),
            (self.ledger_half_life is None or self.ledger_half_life > 0, "ledger_half_life must be > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def _decay(half_life: float | None) -> float:
    return 1.0 if half_life is None else 0.5 ** (1.0 / half_life)


# --- per-entry state ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EntryStats:
    """One entry's verification history: its most recent (similarity, correct) observations.

    Immutable: `observe` returns a new record, so a probe's copy never changes
    under it. `to_json` is what the store keeps on the entry.
    """

    observations: tuple[tuple[float, bool], ...] = ()

    def observe(self, similarity: float, correct: bool, capacity: int = 64) -> EntryStats:
        kept = (*self.observations, (float(similarity), bool(correct)))
        return EntryStats(kept[-capacity:])

    @property
    def errors(self) -> int:
        return sum(1 for _, correct in self.observations if not correct)

    def to_json(self) -> dict[str, Any]:
        return {"v": STATS_VERSION, "o": [[round(s, 4), int(c)] for s, c in self.observations]}

    @classmethod
    def from_json(cls, data: object) -> EntryStats:
        """Parse `to_json` output; anything unreadable is an empty history (never an error)."""
        if not isinstance(data, Mapping) or data.get("v") != STATS_VERSION:
            return cls()
        rows = data.get("o")
        if not isinstance(rows, list):
            return cls()
        out: list[tuple[float, bool]] = []
        for row in rows:
            if (
                isinstance(row, list | tuple)
                and len(row) == 2
                and isinstance(row[0], int | float)
                and not isinstance(row[0], bool)
                and 0.0 <= float(row[0]) <= 1.0 + 1e-6
                and row[1] in (0, 1)
            ):
                out.append((float(row[0]), bool(row[1])))
        return cls(tuple(out))


class EntryStatsBook:
    """Recent `EntryStats` by entry id, in process (least recently used dropped first).

    The freshest copy of an entry's history: an observation recorded here is
    visible to the next decision at once, even before (or without) the store
    persisting it. `get` falls back to the history the store returned on the
    entry (`verify_stats`), then to an empty one.
    """

    def __init__(self, maxsize: int = 100_000) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self.maxsize = maxsize
        self._items: OrderedDict[str, EntryStats] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self._items

    def get(self, entry_id: str, stored: object = None) -> EntryStats:
        """The book's copy; else `stored` (the entry's `verify_stats` from the store); else empty."""
        found = self._items.get(entry_id)
        if found is not None:
            self._items.move_to_end(entry_id)
            return found
        return EntryStats.from_json(stored) if stored is not None else EntryStats()

    def put(self, entry_id: str, stats: EntryStats) -> None:
        self._items[entry_id] = stats
        self._items.move_to_end(entry_id)
        while len(self._items) > self.maxsize:
            self._items.popitem(last=False)

    def forget(self, entry_id: str) -> None:
        self._items.pop(entry_id, None)


# --- per-pool state --------------------------------------------------------------------------


class SimilarityCurve:
    """Recency-weighted error rate of judged candidates by similarity, for one pool.

    `error_rate(s)` looks at the narrowest window [s - w, s] holding
    `window_count` observations (w <= `max_window`) and reports the larger of
    the Jeffreys posterior mean (errors + ½) / (n + 1) and the upper Wilson
    bound at `confidence_z`; None when even the widest window holds fewer than
    `min_count`. Reaching down only makes the estimate conservative when error
    does not rise with similarity, and keeps it from extrapolating into a
    range where nothing was judged.
    """

    def __init__(
        self,
        bins: int = 100,
        window_count: int = 50,
        min_count: int = 10,
        max_window: float = 0.1,
        half_life: float = 1000.0,
        confidence_z: float = 1.0,
    ) -> None:
        self.bins = bins
        self.confidence_z = confidence_z
        self.window_count = window_count
        self.min_count = min_count
        self.max_window_bins = max(0, round(max_window * bins))
        self._decay = _decay(half_life)
        self.counts: npt.NDArray[np.float64] = np.zeros(bins + 1)
        self.errors: npt.NDArray[np.float64] = np.zeros(bins + 1)
        self._table: npt.NDArray[np.float64] | None = None

    def set_window_count(self, window_count: int) -> None:
        self.window_count = window_count
        self._table = None

    def _bin(self, similarity: float) -> int:
        return min(self.bins, max(0, int(similarity * self.bins)))

    def record(self, similarity: float, wrong: bool) -> None:
        if not math.isfinite(similarity):
            return  # a broken vector's similarity says nothing about any similarity
        self.counts *= self._decay
        self.errors *= self._decay
        b = self._bin(similarity)
        self.counts[b] += 1.0
        self.errors[b] += float(wrong)
        self._table = None

    @property
    def total(self) -> float:
        """Recency-weighted number of observations."""
        return float(self.counts.sum())

    def error_rate(self, similarity: float) -> float | None:
        if self._table is None:
            self._table = self._fit()
        value = float(self._table[self._bin(similarity)])
        return None if math.isnan(value) else value

    def _fit(self) -> npt.NDArray[np.float64]:
        """The estimate for every bin at once (prefix sums; one searchsorted)."""
        n_cum = np.concatenate([[0.0], np.cumsum(self.counts)])
        k_cum = np.concatenate([[0.0], np.cumsum(self.errors)])
        top = np.arange(self.bins + 1)
        # Lowest window start j <= b such that bins j..b hold >= window_count: the largest j with
        # n_cum[j] <= n_cum[b + 1] - window_count; clamped to the widest allowed window.
        start = np.searchsorted(n_cum, n_cum[top + 1] - self.window_count, side="right") - 1
        start = np.clip(start, top - self.max_window_bins, top)
        start = np.maximum(start, 0)
        n = n_cum[top + 1] - n_cum[start]
        k = k_cum[top + 1] - k_cum[start]
        rate = (k + 0.5) / (n + 1.0)
        if self.confidence_z > 0:
            rate = np.maximum(rate, _wilson_upper(k, n, self.confidence_z))
        # Floating-point dust from the decay must not count as observations.
        return np.where(n >= self.min_count - 1e-9, rate, np.nan)

    def to_json(self) -> dict[str, Any]:
        return {"n": [round(float(x), 4) for x in self.counts], "k": [round(float(x), 4) for x in self.errors]}

    def load_json(self, data: Mapping[str, Any]) -> None:
        counts, errors = data.get("n"), data.get("k")
        if isinstance(counts, list) and isinstance(errors, list) and len(counts) == len(errors) == self.bins + 1:
            self.counts = np.clip(np.asarray(counts, dtype=np.float64), 0.0, None)
            self.errors = np.minimum(np.clip(np.asarray(errors, dtype=np.float64), 0.0, None), self.counts)
            self._table = None


def _wilson_upper(
    k: npt.NDArray[np.float64], n: npt.NDArray[np.float64], z: float
) -> npt.NDArray[np.float64]:
    """Upper Wilson score bound of k/n, elementwise (1 where n is 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(n > 0, k / n, 0.0)
        z2 = z * z
        centre = p + z2 / (2 * n)
        half = z * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
        upper = (centre + half) / (1 + z2 / n)
    return np.where(n > 0, np.minimum(upper, 1.0), 1.0)


@dataclass(slots=True)
class _Ledger:
    """Running (decayed) sum of the risks of a pool's exploits, and their number."""

    decay: float
    risk: float = 0.0
    hits: float = 0.0

    def admits(self, p: float, budget: float) -> bool:
        return self.risk * self.decay + p <= budget * (self.hits * self.decay + 1.0) + 1e-12

    def charge(self, p: float) -> None:
        self.risk = self.risk * self.decay + p
        self.hits = self.hits * self.decay + 1.0


@dataclass(slots=True)
class _Calibration:
    """Observed against predicted errors among verified exploits (decayed)."""

    decay: float
    prior: float
    wrong: float = 0.0
    predicted: float = 0.0

    def record(self, predicted: float, wrong: bool) -> None:
        self.wrong = self.wrong * self.decay + float(wrong)
        self.predicted = self.predicted * self.decay + predicted

    @property
    def factor(self) -> float:
        return max(1.0, (self.wrong + self.prior) / (self.predicted + self.prior))


@dataclass(slots=True)
class _Pool:
    delta: float
    curve: SimilarityCurve
    ledger: _Ledger
    calibration: _Calibration
    decisions: dict[str, int] = field(default_factory=dict)


# --- decisions -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    """The decision on one candidate, with what it was based on."""

    action: Action
    verify: bool
    """Judge this candidate (always for EXPLORE above the floor; a sampled share of EXPLOITs)."""
    reason: str
    """"within-bound", "learning" (no estimate yet), "too-risky", "over-budget",
    "below-floor", or "static" (accepted by a fixed threshold, outside verified mode)."""
    risk: float | None = None
    """Estimated probability that the cached answer is wrong (calibrated), when known."""
    model_risk: float | None = None
    """The same before the calibration factor (what calibration compares outcomes with)."""


def static_verdict(rng: random.Random, verify_share: float) -> Verdict:
    """An EXPLOIT by a fixed threshold (default mode), sampled for monitoring at `verify_share`."""
    return Verdict(Action.EXPLOIT, verify=rng.random() < verify_share, reason="static")


@dataclass(frozen=True, slots=True)
class Probe:
    """A semantic candidate under verification: what the judge needs and where the outcome goes."""

    pool: str
    """Pool of the decision (see `pool_key`)."""
    namespace: str
    category: str | None
    entry_id: str
    similarity: float
    query: str
    """The new request's compared text (the question the judge is told about)."""
    cached_response: Mapping[str, Any]
    """The cached answer, in the provider's JSON shape."""
    verdict: Verdict
    stats: EntryStats = EntryStats()
    """The entry's history the decision saw (used when the book no longer holds the entry)."""


def pool_key(namespace: str, category: str | None = None) -> str:
    """Pools are kept apart per namespace and, when categories are used, per category."""
    return namespace if category is None else f"{namespace}\x1f{category}"


class VerifiedAcceptance:
    """Decides EXPLOIT or EXPLORE for semantic candidates and learns from their verification.

    `decide` and `observe` are pure computations on in-process state (no IO,
    randomness only from the injected `rng`); the caller keeps each entry's
    `EntryStats` (see `EntryStatsBook`). Pools are kept for the `max_pools`
    most recently used keys.
    """

    def __init__(self, params: VerifyParams | None = None, max_pools: int = 4096) -> None:
        self.params = params or VerifyParams()
        self.max_pools = max_pools
        self._pools: OrderedDict[str, _Pool] = OrderedDict()

    # -- state ---------------------------------------------------------------------------------

    def _window_count(self, delta: float) -> int:
        p = self.params
        return p.window_count if p.window_count is not None else math.ceil(p.window_factor / delta)

    def _pool(self, key: str, delta: float | None = None) -> _Pool:
        pool = self._pools.get(key)
        if pool is None:
            p = self.params
            bound = p.delta if delta is None else delta
            pool = _Pool(
                delta=bound,
                curve=SimilarityCurve(
                    bins=p.bins,
                    window_count=self._window_count(bound),
                    min_count=p.min_count,
                    max_window=p.max_window,
                    half_life=p.pool_half_life,
                    confidence_z=p.confidence_z,
                ),
                ledger=_Ledger(decay=_decay(p.ledger_half_life)),
                calibration=_Calibration(decay=_decay(p.calibration_half_life), prior=p.calibration_prior),
            )
            self._pools[key] = pool
            while len(self._pools) > self.max_pools:
                self._pools.popitem(last=False)
        else:
            self._pools.move_to_end(key)
            if delta is not None and delta != pool.delta:  # the operator changed a category's bound
                pool.delta = delta
                pool.curve.set_window_count(self._window_count(delta))
        return pool

    # -- the model -----------------------------------------------------------------------------

    def model_risk(self, pool: str, stats: EntryStats, similarity: float) -> float | None:
        """r_e · g(s): the entry's estimated error rate at `similarity`, before calibration."""
        curve = self._pool(pool).curve
        base = curve.error_rate(similarity)
        if base is None:
            return None
        expected = 0.0
        errors = 0
        for observed, correct in stats.observations:
            g = curve.error_rate(observed)
            if g is None:
                continue  # outside what the pool can estimate: no information about r_e
            expected += g
            errors += not correct
        m = self.params.entry_prior
        return min(1.0, (m + errors) / (m + expected) * base)

    def decide(self, pool: str, stats: EntryStats, similarity: float, rng: random.Random,
               delta: float | None = None) -> Verdict:
        """EXPLOIT or EXPLORE for the nearest candidate; an EXPLOIT is charged to the ledger at once.

        `delta` overrides the bound for this pool (a category's); None: `params.delta`.
        """
        if delta is not None and not 0.0 < delta < 0.5:
            raise ValueError(f"delta must be in (0, 0.5), got {delta}")
        state = self._pool(pool, delta)
        verdict = self._decide(state, pool, stats, similarity, rng)
        state.decisions[verdict.reason] = state.decisions.get(verdict.reason, 0) + 1
        if verdict.action is Action.EXPLOIT and verdict.risk is not None:
            state.ledger.charge(verdict.risk)
        return verdict

    def _decide(self, state: _Pool, pool: str, stats: EntryStats, similarity: float,
                rng: random.Random) -> Verdict:
        p = self.params
        if not math.isfinite(similarity) or similarity < p.min_similarity:
            return Verdict(Action.EXPLORE, verify=False, reason="below-floor")
        model = self.model_risk(pool, stats, similarity)
        if model is None:
            return Verdict(Action.EXPLORE, verify=True, reason="learning")
        risk = min(1.0, model * state.calibration.factor)
        if risk > p.max_risk_factor * state.delta:
            return Verdict(Action.EXPLORE, verify=True, reason="too-risky", risk=risk, model_risk=model)
        if not state.ledger.admits(risk, p.budget_share * state.delta):
            return Verdict(Action.EXPLORE, verify=True, reason="over-budget", risk=risk, model_risk=model)
        return Verdict(Action.EXPLOIT, verify=rng.random() < p.verify_share, reason="within-bound",
                       risk=risk, model_risk=model)

    def observe(self, pool: str, stats: EntryStats, verdict: Verdict, similarity: float,
                correct: bool) -> EntryStats:
        """Learn from one judged candidate; returns the entry's new history (store it).

        The pool curve learns from every judged candidate; the calibration factor
        only from judged EXPLOITs (the answers clients actually received).
        """
        state = self._pool(pool)
        state.curve.record(similarity, wrong=not correct)
        if verdict.action is Action.EXPLOIT and verdict.model_risk is not None:
            state.calibration.record(verdict.model_risk, wrong=not correct)
        return stats.observe(similarity, correct, self.params.entry_capacity)

    # -- reporting and persistence -------------------------------------------------------------

    def pool_summary(self, pool: str) -> dict[str, Any]:
        state = self._pools.get(pool)
        if state is None:
            return {}
        ledger = state.ledger
        return {
            "delta": state.delta,
            "observations": round(state.curve.total, 1),
            "calibration_factor": round(state.calibration.factor, 4),
            "ledger_hits": round(ledger.hits, 1),
            "ledger_mean_risk": round(ledger.risk / ledger.hits, 6) if ledger.hits else None,
            "decisions": dict(state.decisions),
        }

    def summary(self) -> dict[str, Any]:
        """Decision counts over all pools, for `cascache stats`."""
        decisions: dict[str, int] = {}
        for state in self._pools.values():
            for reason, count in state.decisions.items():
                decisions[reason] = decisions.get(reason, 0) + count
        return {"delta": self.params.delta, "pools": len(self._pools), "decisions": decisions}

    def snapshot(self) -> dict[str, Any]:
        """Every pool's learned state, JSON-ready (write it to the data dir on shutdown)."""
        return {
            "v": STATS_VERSION,
            "pools": {
                key: {
                    "delta": state.delta,
                    "curve": state.curve.to_json(),
                    "ledger": [state.ledger.risk, state.ledger.hits],
                    "calibration": [state.calibration.wrong, state.calibration.predicted],
                }
                for key, state in self._pools.items()
            },
        }

    def restore(self, data: Mapping[str, Any]) -> int:
        """Load a `snapshot`; returns the number of pools restored. Unreadable parts are skipped."""
        if data.get("v") != STATS_VERSION or not isinstance(data.get("pools"), Mapping):
            return 0
        restored = 0
        for key, saved in data["pools"].items():
            if not isinstance(key, str) or not isinstance(saved, Mapping):
                continue
            saved_delta = saved.get("delta")
            valid_delta = isinstance(saved_delta, float) and 0.0 < saved_delta < 0.5
            state = self._pool(key, saved_delta if valid_delta else None)
            curve = saved.get("curve")
            if isinstance(curve, Mapping):
                state.curve.load_json(curve)
            ledger, calibration = saved.get("ledger"), saved.get("calibration")
            if _pair(ledger):
                state.ledger.risk, state.ledger.hits = float(ledger[0]), float(ledger[1])
            if _pair(calibration):
                state.calibration.wrong, state.calibration.predicted = float(calibration[0]), float(calibration[1])
            restored += 1
        return restored


def _pair(value: object) -> TypeGuard[list[float] | tuple[float, float]]:
    return (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(x, int | float) and not isinstance(x, bool) and x >= 0 for x in value)
    )
