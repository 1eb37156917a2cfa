"""Threshold recommendation, the sweep spec, and a whole evaluation written to disk."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from rich.console import Console

from cascache.quality import (
    EvalOptions,
    LabelledPair,
    LabelledQuery,
    Stream,
    StreamCounts,
    evaluate,
    print_report,
    recommend,
    sweep,
    write_report,
)
from tests.fakes import KeywordEmbedder


def counts(hits: int, wrong: int) -> StreamCounts:
    return StreamCounts(queries=10_000, hits=hits, wrong_hits=wrong, seen=9_000)


def test_upper_rule_takes_the_lowest_threshold_whose_bound_is_within_target() -> None:
    results = {0.80: counts(5000, 300), 0.90: counts(3000, 30), 0.95: counts(2000, 8), 0.99: counts(10, 0)}
    rec = recommend(results, target=0.01)
    assert rec.threshold == 0.95 and rec.upper is not None and rec.upper <= 0.01
    # 0.90 measures exactly 1% but its bound is above: only the point rule takes it.
    assert recommend(results, target=0.01, rule="point").threshold == 0.90


def test_point_rule_ignores_a_lucky_dip_below_a_bad_threshold() -> None:
    results = {0.85: counts(4000, 20), 0.90: counts(3000, 60), 0.95: counts(2000, 8)}
    assert recommend(results, target=0.01, rule="point").threshold == 0.95


def test_no_threshold_meets_an_impossible_target() -> None:
    rec = recommend({0.9: counts(100, 5), 0.99: counts(0, 0)}, target=0.001)
    assert rec.threshold is None and rec.counts is None


def test_sweep_spec() -> None:
    assert sweep("0.90:0.93:0.01") == (0.9, 0.91, 0.92, 0.93)
    assert sweep("0.97, 0.9") == (0.9, 0.97)
    for bad in ("0.9:0.8:0.01", "1.5", "0.1:0.2:0", ""):
        with pytest.raises(ValueError):
            sweep(bad)


async def test_a_whole_evaluation_reports_and_writes_its_files(tmp_path: Path) -> None:
    labels = {
        "card": ["when will my card arrive", "card arrive when", "my card when arrive will"],
        "refund": ["refund not received yet", "where is my refund", "refund received not"],
    }
    queries = [
        LabelledQuery(t, label) for i in range(3) for label, texts in labels.items() for t in [texts[i]]
    ]
    streams = [Stream("a", tuple(queries)), Stream("b", tuple(reversed(queries)))]
    pairs = [
        LabelledPair(
            ({"role": "user", "content": "track order 1"},),
            ({"role": "user", "content": "track order 2"},),
            False,
            "number_date",
        ),
        LabelledPair(
            ({"role": "user", "content": "how do I open it"},),
            ({"role": "user", "content": "open it how do I"},),
            True,
            "paraphrase",
        ),
    ]
    options = EvalOptions(
        thresholds=(0.5, 0.7, 0.9), configured_threshold=0.9, target_fhr=0.5, check_streams=2
    )
    report = await evaluate(
        KeywordEmbedder(), pairs=pairs, streams=streams, holdout=streams[:1], options=options
    )
    assert report.tuning_streams == 2 and set(report.tuning) == {0.5, 0.7, 0.9}
    assert report.recommendation is not None and report.recommendation.threshold is not None
    assert len(report.store_check) == 2 and report.store_check_agrees
    assert report.recommendation.threshold in report.holdout and 0.9 in report.holdout
    assert [r.hit[0.9] for r in report.pairs] == [False, True]  # the number guard holds the trap

    console = Console(record=True, width=160)
    print_report(report, console)
    text = console.export_text()
    assert "Recommended threshold" in text and "trap rejection" in text

    written = write_report(report, tmp_path / "out")
    data = json.loads(written["json"].read_text())
    assert data["recommendation"]["threshold"] == report.recommendation.threshold
    assert [row["threshold"] for row in data["tuning"]["sweep"]] == [0.5, 0.7, 0.9]
    assert data["pairs"][0]["totals"]["traps"] == 1
    assert "<svg" in written["html"].read_text()
    has_matplotlib = importlib.util.find_spec("matplotlib") is not None
    assert ("png" in written) == has_matplotlib
    if has_matplotlib:
        assert written["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_many_pair_categories_fold_into_totals_across_the_sweep() -> None:
    pairs = [
        LabelledPair(
            ({"role": "user", "content": f"question {i}"},),
            ({"role": "user", "content": f"question {i}"},),
            True,
            f"cat{i}",
        )
        for i in range(9)
    ]
    report = await evaluate(
        KeywordEmbedder(), pairs=pairs, options=EvalOptions(thresholds=(0.5,), configured_threshold=0.9)
    )
    console = Console(record=True, width=200)
    print_report(report, console)
    sweep_table, routes_table = console.export_text().split("how each b was treated")
    assert "cat8" not in sweep_table and "positives" in sweep_table
    assert "cat8" in routes_table
