"""Workload replay: send recorded requests through cascache and report what each tier did.

A workload is JSONL, one request a line: either an OpenAI Chat Completions
body, or `{"body": {...}, "headers": {...}}` (headers such as the tenant's
`authorization`, `x-cascache-version`). The report gives, per tier: requests,
share, latency percentiles, tokens, dollars spent and saved, and the cost of
the same workload with no cache (spent + saved).
"""

from __future__ import annotations

import asyncio
import html
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from cascache._errors import InvalidRequest
from cascache.jsonl import json_objects

#: Sends one request; returns (status, headers, body bytes).
Sender = Callable[[bytes, Mapping[str, str]], Awaitable[tuple[int, Mapping[str, str], bytes]]]


@dataclass(frozen=True, slots=True)
class WorkItem:
    body: bytes
    headers: Mapping[str, str]


def read_workload(path: Path) -> Iterator[WorkItem]:
    try:
        for _, row in json_objects(path):
            body, headers = (row["body"], row.get("headers") or {}) if "body" in row else (row, {})
            yield WorkItem(orjson.dumps(body), {str(k).lower(): str(v) for k, v in headers.items()})
    except ValueError as exc:  # a line that is not a JSON object: the CLI reports it as bad input
        raise InvalidRequest(str(exc)) from None


@dataclass
class TierStats:
    latencies_s: list[float] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    saved_usd: float = 0.0
    errors: int = 0


@dataclass
class ReplayReport:
    tiers: dict[str, TierStats] = field(default_factory=lambda: defaultdict(TierStats))
    wall_s: float = 0.0

    @property
    def requests(self) -> int:
        return sum(len(t.latencies_s) for t in self.tiers.values())

    def record(self, served: str, latency_s: float, status: int, headers: Mapping[str, str], body: bytes) -> None:
        stats = self.tiers[served]
        stats.latencies_s.append(latency_s)
        if status != 200:
            stats.errors += 1
            return
        stats.cost_usd += float(headers.get("x-cascache-cost-usd", 0) or 0)
        stats.saved_usd += float(headers.get("x-cascache-saved-usd", 0) or 0)
        try:
            usage = orjson.loads(body).get("usage") or {}
        except (orjson.JSONDecodeError, AttributeError):
            usage = {}
        stats.input_tokens += int(usage.get("prompt_tokens") or usage.get("input_tokens") or 0)
        stats.output_tokens += int(usage.get("completion_tokens") or usage.get("output_tokens") or 0)

    def rows(self) -> list[dict[str, Any]]:
        total = max(self.requests, 1)
        out = []
        for served, stats in sorted(self.tiers.items()):
            ordered = sorted(stats.latencies_s)
            out.append({
                "served": served, "requests": len(ordered), "share": len(ordered) / total,
                "p50_ms": _percentile(ordered, 0.50) * 1000, "p95_ms": _percentile(ordered, 0.95) * 1000,
                "input_tokens": stats.input_tokens, "output_tokens": stats.output_tokens,
                "cost_usd": stats.cost_usd, "saved_usd": stats.saved_usd, "errors": stats.errors,
            })
        return out

    def totals(self) -> dict[str, float]:
        spent = sum(t.cost_usd for t in self.tiers.values())
        saved = sum(t.saved_usd for t in self.tiers.values())
        baseline = spent + saved
        return {"requests": self.requests, "cost_usd": spent, "saved_usd": saved, "no_cache_cost_usd": baseline,
                "cost_cut": saved / baseline if baseline else 0.0, "wall_s": self.wall_s}


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def replay(items: list[WorkItem], send: Sender, concurrency: int = 8,
                 progress: Callable[[], None] | None = None) -> ReplayReport:
    """Send every item (at most `concurrency` at once, in order of start) and record what served it."""
    report = ReplayReport()
    gate = asyncio.Semaphore(concurrency)

    async def one(item: WorkItem) -> None:
        async with gate:
            started = time.perf_counter()
            status, headers, body = await send(item.body, item.headers)
            report.record(headers.get("x-cascache", "unknown"), time.perf_counter() - started, status, headers, body)
            if progress is not None:
                progress()

    started = time.perf_counter()
    await asyncio.gather(*(one(item) for item in items))
    report.wall_s = time.perf_counter() - started
    return report


def render_html(report: ReplayReport, title: str = "cascache replay") -> str:
    """A self-contained page: the per-tier table and a bar chart of where requests were served."""
    rows = report.rows()
    totals = report.totals()
    width = 560
    bars = []
    for index, row in enumerate(rows):
        length = int(row["share"] * (width - 160))
        y = 10 + index * 28
        bars.append(f'<text x="0" y="{y + 15}">{html.escape(row["served"])}</text>'
                    f'<rect x="120" y="{y}" width="{length}" height="20" fill="#3b82f6"/>'
                    f'<text x="{126 + length}" y="{y + 15}">{row["share"]:.1%}</text>')
    chart = f'<svg width="{width}" height="{20 + 28 * len(rows)}" font-family="sans-serif" font-size="13">' \
            f'{"".join(bars)}</svg>'
    header = "".join(f"<th>{html.escape(k)}</th>" for k in (rows[0] if rows else {}))
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row.values()) + "</tr>" for row in rows)
    summary = "".join(f"<li>{html.escape(k)}: {_fmt(v)}</li>" for k, v in totals.items())
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 10px;text-align:right}</style></head>"
            f"<body><h1>{html.escape(title)}</h1><ul>{summary}</ul>{chart}<table><tr>{header}</tr>{body}</table>"
            "</body></html>")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if value < 100 else f"{value:.1f}"
    return html.escape(str(value))
