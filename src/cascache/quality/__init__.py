"""Offline evaluation of the semantic tier on labelled data (`cascache eval`, docs/eval.md).

The semantic tier is the only tier that can serve a wrong answer; this package
measures how often it does, with the embedder, keys, policy and acceptance the
cache runs with, and recommends a threshold for a target false-hit rate.

    report = await evaluate(embedder, pairs=read_pairs([path]), streams=read_streams([path]),
                            options=EvalOptions(target_fhr=0.01))
    print_report(report, Console()); write_report(report, Path("eval-report"))
"""

from cascache.quality.data import (
    LabelledPair,
    LabelledQuery,
    Stream,
    draw_zipf_stream,
    load_banking77,
    read_pairs,
    read_streams,
    stratified_split,
    write_streams,
)
from cascache.quality.evaluate import (
    DEFAULT_SWEEP,
    EvalOptions,
    EvalReport,
    PairSummary,
    Recommendation,
    evaluate,
    recommend,
    summarise_pairs,
    sweep,
)
from cascache.quality.replay import StreamCounts, replay_pairs, replay_stream, replay_stream_in_store
from cascache.quality.report import pair_totals, print_report, report_json, write_report
from cascache.quality.stats import clopper_pearson_upper, upper_bound, wilson_upper

__all__ = [
    "DEFAULT_SWEEP",
    "EvalOptions",
    "EvalReport",
    "LabelledPair",
    "LabelledQuery",
    "PairSummary",
    "Recommendation",
    "Stream",
    "StreamCounts",
    "clopper_pearson_upper",
    "draw_zipf_stream",
    "evaluate",
    "load_banking77",
    "pair_totals",
    "print_report",
    "read_pairs",
    "read_streams",
    "recommend",
    "replay_pairs",
    "replay_stream",
    "replay_stream_in_store",
    "report_json",
    "stratified_split",
    "summarise_pairs",
    "sweep",
    "upper_bound",
    "wilson_upper",
    "write_report",
    "write_streams",
]
