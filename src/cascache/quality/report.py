"""Showing an `EvalReport`: rich tables, `report.json`, a PNG chart (matplotlib, optional), an HTML page.

The HTML page draws its chart as inline SVG, so it needs nothing installed and
is one self-contained file; the PNG is written only when matplotlib is
importable (a dev dependency, not a runtime one).
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cascache.quality.evaluate import EvalReport, PairSummary, summarise_pairs
from cascache.quality.replay import StreamCounts
from cascache.tiers.consensus import ConsensusRule

__all__ = ["print_report", "report_json", "write_report"]


_MAX_CATEGORY_COLUMNS = 8


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _stream_row(report: EvalReport, t: float, c: StreamCounts) -> dict[str, Any]:
    return {
        "threshold": t,
        "queries": c.queries,
        "hits": c.hits,
        "wrong_hits": c.wrong_hits,
        "seen": c.seen,
        "hit_rate": round(c.hit_rate, 6),
        "false_hit_rate": round(c.false_hit_rate, 6),
        "false_hit_rate_upper": round(report.upper(c), 6),
        "precision": round(c.precision, 6),
        "recall": round(c.recall, 6),
        "oracle_hit_rate": round(c.oracle_hit_rate, 6),
        "hits_of_oracle": round(c.of_oracle, 6),
        "exact_hits": c.exact_hits,
        "vetoed": c.vetoed,
        "bypassed": c.bypassed,
        "vetoes_by_guard": dict(c.vetoes_by_guard),
    }


def _pair_row(s: PairSummary) -> dict[str, Any]:
    return {
        "category": s.category,
        "same_answer": s.same_answer,
        "pairs": s.pairs,
        "hits": s.hits,
        "hit_rate": round(s.hit_rate, 6),
        "routes": dict(s.routes),
        "vetoes": dict(s.vetoes),
    }


def pair_totals(summaries: Sequence[PairSummary]) -> dict[str, float]:
    """Over all pairs at one threshold: positives' hit rate, traps' rejection, precision, false-hit rate."""
    pos = [s for s in summaries if s.same_answer]
    neg = [s for s in summaries if not s.same_answer]
    tp, fp = sum(s.hits for s in pos), sum(s.hits for s in neg)
    n_pos, n_neg = sum(s.pairs for s in pos), sum(s.pairs for s in neg)
    return {
        "positives": n_pos,
        "traps": n_neg,
        "positive_hit_rate": tp / n_pos if n_pos else 0.0,
        "trap_rejection": 1 - fp / n_neg if n_neg else 1.0,
        "precision": tp / (tp + fp) if tp + fp else 1.0,
        "false_hit_rate": fp / (tp + fp) if tp + fp else 0.0,
    }


def report_json(report: EvalReport) -> dict[str, Any]:
    o = report.options
    rec = report.recommendation
    out: dict[str, Any] = {
        "embedder": report.embedder,
        "options": {
            "thresholds": list(o.thresholds),
            "configured_threshold": o.configured_threshold,
            "guards": list(o.guards),
            "k": o.k,
            "consensus": None
            if o.consensus is None
            else {"k": o.consensus.k, "top": o.consensus.top, "floor": o.consensus.floor},
            "target_fhr": o.target_fhr,
            "confidence": o.confidence,
            "bound": o.bound,
            "rule": o.rule,
        },
        "tuning": {
            "streams": report.tuning_streams,
            "sweep": [_stream_row(report, t, c) for t, c in sorted(report.tuning.items())],
        },
        "recommendation": None
        if rec is None
        else {
            "threshold": rec.threshold,
            "rule": rec.rule,
            "false_hit_rate_upper": rec.upper,
            "tuning": None
            if rec.counts is None or rec.threshold is None
            else _stream_row(report, rec.threshold, rec.counts),
        },
        "store_check": {
            "streams": len(report.store_check),
            "agrees": report.store_check_agrees,
            "fast_hits": [f.hits for f, _ in report.store_check],
            "store_hits": [s.hits for _, s in report.store_check],
        },
        "holdout": {
            "streams": report.holdout_streams,
            "at": [_stream_row(report, t, c) for t, c in sorted(report.holdout.items())],
        },
    }
    if report.pairs:
        thresholds = sorted(report.pairs[0].hit)
        out["pairs"] = [
            {
                "threshold": t,
                "totals": pair_totals(s := summarise_pairs(report.pairs, t)),
                "categories": [_pair_row(x) for x in s],
            }
            for t in thresholds
        ]
    return out


def _consensus_note(rule: ConsensusRule | None) -> str:
    return "" if rule is None else f"; consensus k={rule.k} top {rule.top} floor {rule.floor}"


def print_report(report: EvalReport, console: Console) -> None:
    o = report.options
    if report.tuning:
        table = Table(
            title=f"Streams (tuning, {report.tuning_streams} pooled): hit rate vs false-hit rate "
            f"[guards: {', '.join(o.guards) or 'none'}; k={o.k}{_consensus_note(o.consensus)}]"
        )
        for head in (
            "threshold",
            "hits %",
            "false hits %",
            f"{o.confidence:.0%} upper %",
            "wrong / hits",
            "precision %",
            "recall %",
            "oracle %",
            "hits/oracle %",
            "vetoed",
        ):
            table.add_column(head, justify="right")
        chosen = report.recommendation.threshold if report.recommendation else None
        for t, c in sorted(report.tuning.items()):
            table.add_row(
                f"{t:.2f}",
                _pct(c.hit_rate),
                _pct(c.false_hit_rate),
                _pct(report.upper(c)),
                f"{c.wrong_hits} / {c.hits}",
                _pct(c.precision),
                _pct(c.recall),
                _pct(c.oracle_hit_rate),
                _pct(c.of_oracle),
                str(c.vetoed),
                style="bold green" if t == chosen else None,
            )
        console.print(table)
    rec = report.recommendation
    if rec is not None:
        if rec.threshold is None:
            console.print(
                f"[bold red]No threshold in the sweep meets the target[/] ({escape(rec.rule)}). "
                "Bypass this traffic, add guards or use verified mode."
            )
        else:
            console.print(
                f"[bold]Recommended threshold {rec.threshold:.2f}[/] ({escape(rec.rule)}): "
                f"false hits {_pct(rec.counts.false_hit_rate if rec.counts else None)}% "
                f"(upper {_pct(rec.upper)}%), hits {_pct(rec.counts.hit_rate if rec.counts else None)}% "
                f"= {_pct(rec.counts.of_oracle if rec.counts else None)}% of the oracle"
            )
    if report.store_check:
        state = "agrees" if report.store_check_agrees else "[bold red]DISAGREES[/]"
        console.print(
            f"MemoryStore replay of {len(report.store_check)} stream(s) at that threshold {state} "
            f"with the fast replay (hits {[f.hits for f, _ in report.store_check]} vs "
            f"{[s.hits for _, s in report.store_check]})"
        )
    if report.holdout:
        table = Table(title=f"Held-out streams ({report.holdout_streams} pooled), never used to choose")
        for head in (
            "threshold",
            "hits %",
            "false hits %",
            f"{o.confidence:.0%} upper %",
            "wrong / hits",
            "hits/oracle %",
        ):
            table.add_column(head, justify="right")
        for t, c in sorted(report.holdout.items()):
            table.add_row(
                f"{t:.2f}",
                _pct(c.hit_rate),
                _pct(c.false_hit_rate),
                _pct(report.upper(c)),
                f"{c.wrong_hits} / {c.hits}",
                _pct(c.of_oracle),
            )
        console.print(table)
    if report.pairs:
        _print_pairs(report, console)


def _print_pairs(report: EvalReport, console: Console) -> None:
    thresholds = sorted(report.pairs[0].hit)
    summaries = {t: summarise_pairs(report.pairs, t) for t in thresholds}
    # Many categories would not fit across a terminal: then the sweep shows totals only, and the
    # per-category hit rates come in the next table (at the configured threshold) and in report.json.
    first = summaries[thresholds[0]] if len(summaries[thresholds[0]]) <= _MAX_CATEGORY_COLUMNS else []
    table = Table(
        title="Pairs: % of b that hit once a is cached (green: should hit; red: traps, should miss)"
    )
    table.add_column("threshold", justify="right")
    for s in first:
        table.add_column(s.category, justify="right", style="green" if s.same_answer else "red")
    table.add_column("positives", justify="right", style="bold green")
    table.add_column("trap rejection", justify="right", style="bold red")
    for t in thresholds:
        totals = pair_totals(summaries[t])
        style = "bold" if t == report.options.configured_threshold else None
        shown = summaries[t] if first else []
        table.add_row(
            f"{t:.2f}",
            *(_pct(s.hit_rate) for s in shown),
            _pct(totals["positive_hit_rate"]),
            _pct(totals["trap_rejection"]),
            style=style,
        )
    console.print(table)
    at = report.options.configured_threshold
    routes = Table(title=f"Pairs at the configured threshold {at:.2f}: how each b was treated")
    for head in ("category", "pairs", "hit %", "bypass", "exact", "other key", "compared", "vetoed by"):
        routes.add_column(head, justify="right" if head != "vetoed by" else "left")
    for s in summaries[at]:
        routes.add_row(
            s.category,
            str(s.pairs),
            _pct(s.hit_rate),
            *(str(s.routes.get(r, 0)) for r in ("bypass", "exact", "key", "semantic")),
            ", ".join(f"{g} {n}" for g, n in sorted(s.vetoes.items(), key=lambda x: -x[1])),
        )
    console.print(routes)


# --- files ---------------------------------------------------------------------------------


def write_report(report: EvalReport, out_dir: Path) -> dict[str, Path]:
    """report.json, report.html (inline SVG chart) and, with matplotlib, hit_vs_fhr.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = report_json(report)
    written = {"json": out_dir / "report.json", "html": out_dir / "report.html"}
    written["json"].write_text(json.dumps(data, indent=2))
    curves = _curves(report)
    png = out_dir / "hit_vs_fhr.png"
    if _write_png(curves, png, report):
        written["png"] = png
    written["html"].write_text(_html(report, data, curves, png.name if "png" in written else None))
    return written


Curve = tuple[str, list[tuple[float, float, float]]]
"""(name, [(x = false-hit or trap-hit %, y = hit %, threshold)])."""


def _curves(report: EvalReport) -> list[Curve]:
    curves: list[Curve] = []
    if report.tuning:
        curves.append(
            (
                "streams (tuning): hit % vs false-hit %",
                [(100 * c.false_hit_rate, 100 * c.hit_rate, t) for t, c in sorted(report.tuning.items())],
            )
        )
    if report.pairs:
        points = []
        for t in sorted(report.pairs[0].hit):
            totals = pair_totals(summarise_pairs(report.pairs, t))
            points.append((100 * (1 - totals["trap_rejection"]), 100 * totals["positive_hit_rate"], t))
        curves.append(("pairs: positives hit % vs traps hit %", points))
    return curves


def _write_png(curves: list[Curve], path: Path, report: EvalReport) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    if not curves:
        return False
    fig, axes = plt.subplots(1, len(curves), figsize=(6.5 * len(curves), 5), squeeze=False)
    for ax, (name, points) in zip(axes[0], curves, strict=True):
        xs, ys, _ = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o", markersize=3)
        for x, y, t in points[:: max(1, len(points) // 10)]:
            ax.annotate(f"{t:.2f}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if name.startswith("streams") and report.tuning:
            oracle = 100 * next(iter(report.tuning.values())).oracle_hit_rate
            ax.axhline(oracle, linestyle="--", color="grey", linewidth=1, label=f"oracle {oracle:.1f}%")
            ax.axvline(
                100 * report.options.target_fhr,
                linestyle=":",
                color="red",
                linewidth=1,
                label=f"target {100 * report.options.target_fhr:.1f}%",
            )
            ax.legend(loc="lower right")
        ax.set_title(name)
        ax.set_xlabel("false-hit %" if name.startswith("streams") else "traps that hit %")
        ax.set_ylabel("hit %")
        ax.grid(alpha=0.3)
    fig.suptitle(f"cascache eval, {report.embedder}, guards: {', '.join(report.options.guards) or 'none'}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _svg(points: list[tuple[float, float, float]], title: str, width: int = 520, height: int = 360) -> str:
    pad = 48
    max_x = max(1.0, max(p[0] for p in points) * 1.1)
    max_y = max(1.0, max(p[1] for p in points) * 1.1)

    def sx(x: float) -> float:
        return pad + (width - 2 * pad) * x / max_x

    def sy(y: float) -> float:
        return height - pad - (height - 2 * pad) * y / max_y

    line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y, _ in points)
    dots = "".join(
        f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3"><title>threshold {t:.2f}: x {x:.2f}%, '
        f"hit {y:.2f}%</title></circle>"
        for x, y, t in points
    )
    labels = "".join(
        f'<text x="{sx(x) + 4:.1f}" y="{sy(y) - 4:.1f}" font-size="9">{t:.2f}</text>'
        for x, y, t in points[:: max(1, len(points) // 8)]
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif">'
        f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13">{html.escape(title)}</text>'
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="black"/>'
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="black"/>'
        f'<text x="{width / 2}" y="{height - 12}" text-anchor="middle" font-size="11">x: % (0 .. {max_x:.1f})</text>'
        f'<text x="12" y="{height / 2}" font-size="11" transform="rotate(-90 12 {height / 2})" '
        f'text-anchor="middle">hit % (0 .. {max_y:.1f})</text>'
        f'<polyline fill="none" stroke="steelblue" stroke-width="2" points="{line}"/>'
        f'<g fill="steelblue">{dots}</g>{labels}</svg>'
    )


def _table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(r.get(c)))}</td>" for c in columns) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    return "" if value is None else str(value)


def _html(report: EvalReport, data: Mapping[str, Any], curves: list[Curve], png: str | None) -> str:
    rec = data.get("recommendation") or {}
    parts = [
        "<!doctype html><meta charset='utf-8'><title>cascache eval</title>",
        (
            "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;"
            "margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}</style>"
        ),
        (
            f"<h1>cascache eval</h1><p>Embedder <b>{html.escape(report.embedder)}</b>; guards "
            f"<b>{html.escape(', '.join(report.options.guards) or 'none')}</b>; k={report.options.k}.</p>"
        ),
    ]
    if rec:
        parts.append(
            f"<p>Recommended threshold: <b>{rec.get('threshold')}</b> ({html.escape(str(rec.get('rule')))}).</p>"
        )
    parts.append("".join(_svg(points, name) for name, points in curves))
    if png:
        parts.append(f"<p>PNG: <a href='{html.escape(png)}'>{html.escape(png)}</a></p>")
    columns = [
        "threshold",
        "hits",
        "wrong_hits",
        "hit_rate",
        "false_hit_rate",
        "false_hit_rate_upper",
        "precision",
        "recall",
        "oracle_hit_rate",
        "hits_of_oracle",
        "vetoed",
    ]
    if data["tuning"]["sweep"]:
        parts.append("<h2>Tuning streams</h2>" + _table(data["tuning"]["sweep"], columns))
    if data["holdout"]["at"]:
        parts.append("<h2>Held-out streams</h2>" + _table(data["holdout"]["at"], columns))
    for block in data.get("pairs", []):
        if block["threshold"] == report.options.configured_threshold:
            parts.append(
                f"<h2>Pairs at the configured threshold {block['threshold']}</h2>"
                + _table(
                    block["categories"],
                    ["category", "same_answer", "pairs", "hits", "hit_rate", "routes", "vetoes"],
                )
            )
    return "\n".join(parts)
