"""Verified acceptance: the decision table, the pool curve, entry histories and persistence."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from cascache.tiers.verify import (
    Action,
    EntryStats,
    EntryStatsBook,
    SimilarityCurve,
    Verdict,
    VerifiedAcceptance,
    VerifyParams,
    pool_key,
    static_verdict,
)

POOL = "ns"


class FixedRandom(random.Random):
    """An RNG whose `random()` always returns `value`: makes the verify coin deterministic."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def feed(acceptance: VerifiedAcceptance, similarities: list[float], wrong_every: int = 0) -> None:
    """Judged EXPLOREs into the pool (every `wrong_every`-th one wrong; 0: none)."""
    explore = Verdict(Action.EXPLORE, verify=True, reason="learning")
    for i, s in enumerate(similarities):
        wrong = wrong_every > 0 and i % wrong_every == 0
        acceptance.observe(POOL, EntryStats(), explore, s, correct=not wrong)


def spread(low: float, high: float, n: int) -> list[float]:
    return [low + (high - low) * i / (n - 1) for i in range(n)]


def clean_pool(delta: float = 0.02) -> VerifiedAcceptance:
    acceptance = VerifiedAcceptance(VerifyParams(delta=delta))
    feed(acceptance, spread(0.90, 0.99, 400))
    return acceptance


def noisy_pool(delta: float = 0.02) -> VerifiedAcceptance:
    acceptance = VerifiedAcceptance(VerifyParams(delta=delta))
    feed(acceptance, spread(0.80, 0.99, 400), wrong_every=10)  # 10% wrong everywhere
    return acceptance


def mildly_noisy_pool(delta: float = 0.02) -> VerifiedAcceptance:
    """Error near 1.5δ: too risky for an empty ledger, fine once cheap exploits built up budget."""
    acceptance = VerifiedAcceptance(VerifyParams(delta=delta))
    feed(acceptance, spread(0.85, 0.90, 600), wrong_every=80)  # 1.25% wrong below 0.90
    feed(acceptance, spread(0.95, 0.99, 600))  # clean above 0.95
    return acceptance


@dataclass(frozen=True)
class Row:
    name: str
    make: Callable[[], VerifiedAcceptance]
    similarity: float
    stats: EntryStats
    rng_value: float
    action: Action
    reason: str
    verify: bool


HISTORY_CLEAN = EntryStats(tuple((0.93, True) for _ in range(40)))
HISTORY_BAD = EntryStats(tuple((0.97, False) for _ in range(10)))

TABLE = [
    Row("nothing learnt yet", lambda: VerifiedAcceptance(VerifyParams()), 0.99, EntryStats(), 0.5,
        Action.EXPLORE, "learning", True),
    Row("below the floor is a plain miss", clean_pool, 0.3, EntryStats(), 0.5,
        Action.EXPLORE, "below-floor", False),
    Row("a NaN similarity is a plain miss", clean_pool, float("nan"), EntryStats(), 0.5,
        Action.EXPLORE, "below-floor", False),
    Row("clean window, sampled for verification", clean_pool, 0.97, EntryStats(), 0.05,
        Action.EXPLOIT, "within-bound", True),
    Row("clean window, not sampled", clean_pool, 0.97, EntryStats(), 0.5,
        Action.EXPLOIT, "within-bound", False),
    Row("no observations near s: window too thin", clean_pool, 0.75, EntryStats(), 0.5,
        Action.EXPLORE, "learning", True),
    Row("10% wrong is above 2δ", noisy_pool, 0.97, EntryStats(), 0.5,
        Action.EXPLORE, "too-risky", True),
    Row("an entry that was wrong at high similarity explores", clean_pool, 0.97, HISTORY_BAD, 0.5,
        Action.EXPLORE, "too-risky", True),
    Row("between δ and 2δ with an empty ledger", mildly_noisy_pool, 0.88, EntryStats(), 0.5,
        Action.EXPLORE, "over-budget", True),
]


@pytest.mark.parametrize("row", TABLE, ids=[row.name for row in TABLE])
def test_decision_table(row: Row) -> None:
    acceptance = row.make()
    verdict = acceptance.decide(POOL, row.stats, row.similarity, FixedRandom(row.rng_value))
    assert (verdict.action, verdict.reason, verdict.verify) == (row.action, row.reason, row.verify)
    if verdict.reason in ("within-bound", "too-risky", "over-budget"):
        assert verdict.risk is not None and verdict.model_risk is not None


def test_exploits_stay_within_their_bound() -> None:
    acceptance = clean_pool(delta=0.02)
    verdict = acceptance.decide(POOL, EntryStats(), 0.97, FixedRandom(0.5))
    assert verdict.action is Action.EXPLOIT
    assert verdict.risk is not None and verdict.risk <= 0.02


def test_ledger_admits_risky_hits_only_after_cheap_ones_built_budget() -> None:
    acceptance = mildly_noisy_pool(delta=0.02)
    rng = FixedRandom(0.5)
    first = acceptance.decide(POOL, EntryStats(), 0.88, rng)
    assert first.reason == "over-budget"
    assert first.risk is not None and 0.02 < first.risk <= 0.04
    cheap = [acceptance.decide(POOL, EntryStats(), 0.98, rng) for _ in range(20)]
    assert all(v.action is Action.EXPLOIT for v in cheap)
    later = acceptance.decide(POOL, EntryStats(), 0.88, rng)
    assert later.action is Action.EXPLOIT
    # The ledger's invariant: the risks of all exploits average at most δ.
    risks = [v.risk for v in [*cheap, later] if v.risk is not None]
    assert sum(risks) <= 0.02 * len(risks)


def test_an_entry_with_a_clean_history_is_trusted_more_than_one_with_errors() -> None:
    acceptance = noisy_pool()
    pool_only = acceptance.model_risk(POOL, EntryStats(), 0.95)
    clean = acceptance.model_risk(POOL, HISTORY_CLEAN, 0.95)
    bad = acceptance.model_risk(POOL, HISTORY_BAD, 0.95)
    assert pool_only is not None and clean is not None and bad is not None
    assert clean < pool_only < bad


def test_entry_factor_is_the_gamma_posterior_mean() -> None:
    acceptance = noisy_pool()
    curve_at = acceptance._pool(POOL).curve.error_rate
    history = EntryStats(((0.9, True), (0.92, False), (0.95, True)))
    g = curve_at(0.96)
    expected = sum(curve_at(s) or 0.0 for s, _ in history.observations)
    m = acceptance.params.entry_prior
    assert g is not None
    assert acceptance.model_risk(POOL, history, 0.96) == pytest.approx((m + 1) / (m + expected) * g)


def test_wrong_verified_exploits_raise_the_calibration_factor_and_never_lower_it_below_one() -> None:
    acceptance = clean_pool()
    rng = FixedRandom(0.0)  # every exploit sampled
    before = acceptance.decide(POOL, EntryStats(), 0.97, rng)
    assert before.action is Action.EXPLOIT and before.risk is not None
    for _ in range(10):
        acceptance.observe(POOL, EntryStats(), before, 0.97, correct=True)
    assert acceptance.pool_summary(POOL)["calibration_factor"] == 1.0
    for _ in range(10):
        acceptance.observe(POOL, EntryStats(), before, 0.97, correct=False)
    assert acceptance.pool_summary(POOL)["calibration_factor"] > 1.5
    after = acceptance.decide(POOL, EntryStats(), 0.97, rng)
    assert after.risk is not None and after.risk > before.risk


def test_pools_are_kept_apart() -> None:
    acceptance = clean_pool()
    assert acceptance.decide(POOL, EntryStats(), 0.97, FixedRandom(0.5)).action is Action.EXPLOIT
    other = pool_key(POOL, "billing")
    assert other != POOL
    assert acceptance.decide(other, EntryStats(), 0.97, FixedRandom(0.5)).reason == "learning"


def test_a_category_bound_overrides_the_default_per_pool() -> None:
    strict = VerifiedAcceptance(VerifyParams(delta=0.02))
    feed(strict, spread(0.90, 0.99, 600), wrong_every=25)  # 4% wrong: fine under 20%, not under 2%
    verdict = strict.decide(POOL, EntryStats(), 0.97, FixedRandom(0.5))
    lenient = strict.decide(POOL, EntryStats(), 0.97, FixedRandom(0.5), delta=0.2)
    assert verdict.action is Action.EXPLORE and lenient.action is Action.EXPLOIT
    assert strict.pool_summary(POOL)["delta"] == 0.2
    assert strict.decide("other", EntryStats(), 0.97, FixedRandom(0.5), delta=0.01).reason == "learning"
    assert strict.pool_summary("other")["delta"] == 0.01
    with pytest.raises(ValueError, match="delta"):
        strict.decide(POOL, EntryStats(), 0.97, FixedRandom(0.5), delta=0.7)


def test_pools_beyond_max_pools_are_forgotten_least_recently_used_first() -> None:
    acceptance = VerifiedAcceptance(VerifyParams(), max_pools=2)
    for key in ("a", "b", "a", "c"):
        acceptance.decide(key, EntryStats(), 0.9, FixedRandom(0.5))
    assert acceptance.summary()["pools"] == 2
    assert acceptance.pool_summary("b") == {}
    assert acceptance.pool_summary("a") != {}


def test_static_verdict_samples_at_the_share() -> None:
    assert static_verdict(FixedRandom(0.09), 0.1).verify
    assert not static_verdict(FixedRandom(0.1), 0.1).verify
    assert static_verdict(FixedRandom(0.0), 0.1).action is Action.EXPLOIT


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"delta": 0.0}, "delta"), ({"delta": 0.5}, "delta"), ({"verify_share": 1.5}, "verify_share"),
     ({"budget_share": 0.0}, "budget_share"), ({"max_risk_factor": 0.5}, "max_risk_factor"),
     ({"confidence_z": -1.0}, "confidence_z"), ({"window_count": 0}, "window_count")],
)
def test_params_are_validated(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VerifyParams(**kwargs)  # type: ignore[arg-type]


# --- the pool curve --------------------------------------------------------------------------


def test_curve_reaches_down_only() -> None:
    curve = SimilarityCurve(window_count=20, min_count=5, max_window=0.1, half_life=1e9, confidence_z=0.0)
    for _ in range(30):
        curve.record(0.95, wrong=False)
    for _ in range(30):
        curve.record(0.85, wrong=True)
    # At 0.95 the window is filled at 0.95 itself: the errors below are not needed and not used.
    assert curve.error_rate(0.955) == pytest.approx(0.5 / 31)
    # Above the data, the estimate carries the highest window down, never extrapolates lower.
    assert curve.error_rate(0.99) == pytest.approx(0.5 / 31)
    # Just above the errors, the window must reach them: the estimate is pessimistic.
    assert curve.error_rate(0.86) == pytest.approx(30.5 / 31)
    # Below all data there is nothing to say.
    assert curve.error_rate(0.80) is None


def test_curve_window_is_capped_at_max_window() -> None:
    curve = SimilarityCurve(window_count=100, min_count=5, max_window=0.05, half_life=1e9, confidence_z=0.0)
    for _ in range(10):
        curve.record(0.80, wrong=True)
    for _ in range(10):
        curve.record(0.90, wrong=False)
    # Only 10 observations lie within 0.05 below 0.92: the errors at 0.80 are out of reach.
    assert curve.error_rate(0.92) == pytest.approx(0.5 / 11)


def test_curve_upper_bound_is_above_the_mean_and_shrinks_with_data() -> None:
    small = SimilarityCurve(window_count=10, min_count=5, confidence_z=1.0, half_life=1e9)
    large = SimilarityCurve(window_count=1000, min_count=5, confidence_z=1.0, half_life=1e9)
    for curve, n in ((small, 20), (large, 2000)):
        for i in range(n):
            curve.record(0.95, wrong=i % 20 == 0)  # 5% wrong
    small_rate, large_rate = small.error_rate(0.95), large.error_rate(0.95)
    assert small_rate is not None and large_rate is not None
    assert small_rate > large_rate > 0.05


def test_curve_ignores_non_finite_similarities() -> None:
    curve = SimilarityCurve()
    curve.record(float("nan"), wrong=True)
    assert curve.total == 0.0


def test_curve_forgets_with_its_half_life() -> None:
    curve = SimilarityCurve(window_count=1, min_count=1, half_life=10.0)
    curve.record(0.9, wrong=True)
    for _ in range(10):
        curve.record(0.5, wrong=False)
    assert curve.errors.sum() == pytest.approx(0.5)


def test_curve_json_round_trip_and_junk() -> None:
    curve = SimilarityCurve(window_count=10, min_count=2)
    for s in spread(0.9, 0.99, 30):
        curve.record(s, wrong=s > 0.98)
    copy = SimilarityCurve(window_count=10, min_count=2)
    copy.load_json(json.loads(json.dumps(curve.to_json())))
    assert copy.error_rate(0.95) == pytest.approx(curve.error_rate(0.95), rel=1e-3)
    untouched = SimilarityCurve()
    untouched.load_json({"n": [1.0], "k": [0.0]})  # wrong length: ignored
    assert untouched.total == 0.0


# --- entry histories and persistence ---------------------------------------------------------


def test_entry_stats_keep_the_most_recent_observations() -> None:
    stats = EntryStats()
    for i in range(10):
        stats = stats.observe(0.9 + i / 100, correct=i % 2 == 0, capacity=4)
    assert [s for s, _ in stats.observations] == pytest.approx([0.96, 0.97, 0.98, 0.99])
    assert stats.errors == 2


def test_entry_stats_json_round_trip() -> None:
    stats = EntryStats(((0.91234567, True), (0.8, False)))
    assert EntryStats.from_json(json.loads(json.dumps(stats.to_json()))) == EntryStats(
        ((0.9123, True), (0.8, False))
    )


@pytest.mark.parametrize(
    "junk",
    [None, "x", {"v": 2, "o": []}, {"v": 1, "o": "no"}, {"v": 1}, [1, 2]],
)
def test_unreadable_entry_stats_are_an_empty_history(junk: object) -> None:
    assert EntryStats.from_json(junk) == EntryStats()


def test_entry_stats_skip_bad_rows() -> None:
    data = {"v": 1, "o": [[0.9, 1], [1.5, 1], ["a", 0], [0.8, 2], [True, 1], [0.7, 0]]}
    assert EntryStats.from_json(data).observations == ((0.9, True), (0.7, False))


def test_book_prefers_its_copy_then_the_stored_one_and_drops_least_recently_used() -> None:
    book = EntryStatsBook(maxsize=2)
    stored = EntryStats(((0.9, False),)).to_json()
    assert book.get("a", stored) == EntryStats(((0.9, False),))
    book.put("a", EntryStats(((0.95, True),)))
    assert book.get("a", stored) == EntryStats(((0.95, True),))
    book.put("b", EntryStats())
    book.get("a")
    book.put("c", EntryStats())
    assert "a" in book and "c" in book and "b" not in book
    book.forget("a")
    assert "a" not in book and len(book) == 1


def test_snapshot_restore_gives_the_same_decisions() -> None:
    acceptance = mildly_noisy_pool()
    rng = FixedRandom(0.5)
    for _ in range(5):
        acceptance.decide(POOL, EntryStats(), 0.98, rng)
    restored = VerifiedAcceptance(acceptance.params)
    assert restored.restore(json.loads(json.dumps(acceptance.snapshot()))) == 1
    for s in (0.86, 0.88, 0.93, 0.97):
        a = acceptance.decide(POOL, EntryStats(), s, rng)
        b = restored.decide(POOL, EntryStats(), s, rng)
        assert (a.action, a.reason) == (b.action, b.reason)
        assert a.risk == pytest.approx(b.risk, rel=1e-3)


def test_restore_ignores_unreadable_snapshots() -> None:
    acceptance = VerifiedAcceptance()
    assert acceptance.restore({"v": 99, "pools": {}}) == 0
    assert acceptance.restore({"v": 1, "pools": {"p": "junk", 3: {}}}) == 0
    assert acceptance.restore({"v": 1, "pools": {"p": {"ledger": ["x", 1], "calibration": [-1, 2]}}}) == 1
    assert acceptance.pool_summary("p")["ledger_hits"] == 0.0


def test_windows_hold_window_factor_over_delta_observations_unless_overridden() -> None:
    assert VerifiedAcceptance(VerifyParams(delta=0.02))._pool(POOL).curve.window_count == 100
    assert VerifiedAcceptance(VerifyParams(delta=0.05, window_factor=1.0))._pool(POOL).curve.window_count == 20
    assert VerifiedAcceptance(VerifyParams(delta=0.05, window_count=7))._pool(POOL).curve.window_count == 7
    acceptance = VerifiedAcceptance(VerifyParams(delta=0.02))
    acceptance.decide(POOL, EntryStats(), 0.9, FixedRandom(0.5), delta=0.01)
    assert acceptance._pool(POOL).curve.window_count == 200
