"""Load: does `cascache serve` stay correct and memory-flat under a mixed load? Loopback only.

Issue 8, part 1. Set-up, every process started and stopped here:

- the provider simulator (`SimServer(ProviderSim())`, src/cascache/testing/provider_sim.py)
  in its own process as the upstream: it answers OpenAI chat completions, plain
  and streamed (SSE ending in ``data: [DONE]``), after a small fixed latency;
- one `cascache serve --upstream-url ...` process on a fresh data dir (default
  SQLite + HNSW store, local ONNX embedder, semantic threshold 0.97);
- the load generator process (bench/_loadgen.py, mode ``mix``): a raw asyncio
  HTTP/1.1 keep-alive client that sends a pre-built, seeded request list in
  order at a fixed concurrency and checks every single response: status 200 and
  a complete, valid body (a ``chat.completion`` JSON, or a ``text/event-stream``
  whose every event is JSON and whose last is ``data: [DONE]``).

The request list (seeded) mixes four kinds:

- ``miss``: a new question ("What is <three words>?");
- ``exact``: byte-identical repeat of an earlier non-streamed request;
- ``semantic``: a light paraphrase of an earlier question ("What's ...?",
  "what is ... ?", "Can you tell me what ... is?");
- ``stream``: ``"stream": true``, half new questions, half repeats of earlier
  streamed ones.

The kind is what the request was built to be; the ``x-cascache`` header says
what the gateway did (a repeat can be ``coalesced`` while its original is still
in flight, a paraphrase may miss when it scores under the threshold): both are
counted and reported, neither is an error. An error is only a response that is
not a complete, valid 200.

The same list is then sent a second time to the same gateway process. The
gateway's RSS (VmRSS in /proc/<pid>/status) is read before the first run, after
it and after the second: ``rss_growth_mb`` = after second - after first must be
~0 (flat memory over an identical run).

Run:    .venv/bin/python bench/load.py            (2 x 20,000 requests, concurrency 64)
        .venv/bin/python bench/load.py --quick    (2 x 2,000 requests)
The last line printed is one JSON object; it has `requests`, `errors`, `rss_growth_mb`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gateway import (
    _WORDS, HOST, PYTHON, REQUEST_HEADERS, Service, console, run_loadgen, start_gateway, target,
    terminate_cleanly,
)
from rich.table import Table

#: Above this growth over the second run, memory is reported as not flat.
RSS_FLAT_MB = 5.0

_SIM = """
import signal, sys, time
from cascache.testing.provider_sim import ProviderSim, SimServer
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
with SimServer(ProviderSim(latency_s=float(sys.argv[1]))) as server:
    print(f"listening {server.port}", flush=True)
    deadline = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < deadline:
        time.sleep(0.2)
"""


def start_sim(stack: contextlib.ExitStack, latency_s: float, max_s: float) -> tuple[Service, int]:
    """The provider simulator in its own process; it and the port it printed."""
    import select

    service = Service("provider simulator", [PYTHON, "-c", _SIM, str(latency_s), str(max_s)],
                      capture_stdout=True)
    stack.callback(service.stop)
    assert service.proc.stdout is not None
    ready, _, _ = select.select([service.proc.stdout], [], [], 30.0)
    line = service.proc.stdout.readline().decode() if ready else ""
    if not line.startswith("listening "):
        raise RuntimeError(f"the provider simulator did not start (got {line!r})")
    return service, int(line.split()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for pid {pid}")


def body(text: str, stream: bool) -> str:
    doc: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "You are a concise assistant."},
                     {"role": "user", "content": text}],
        "temperature": 0,
        "max_tokens": 64,
    }
    if stream:
        doc["stream"] = True
    return json.dumps(doc, separators=(",", ":"))


_PARAPHRASES = ("What's {}?", "what is {} ?", "What is {}", "Can you tell me what {} is?")


def build_items(n: int, seed: int) -> list[dict[str, Any]]:
    """A seeded list of n requests: misses, exact repeats, paraphrases and streams."""
    rng = random.Random(seed)
    seen: set[str] = set()

    def new_topic() -> str:
        while True:
            topic = " ".join(rng.sample(_WORDS, 3))
            if topic not in seen:
                seen.add(topic)
                return topic

    topics: list[str] = []          # every question asked so far (plain or streamed)
    plain: list[str] = []           # bodies of non-streamed requests sent so far
    streamed: list[str] = []        # bodies of streamed requests sent so far
    items: list[dict[str, Any]] = []
    for _ in range(n):
        roll = rng.random()
        if roll < 0.35 and plain:
            items.append({"kind": "exact", "stream": False, "body": rng.choice(plain)})
        elif roll < 0.55 and topics:
            text = rng.choice(_PARAPHRASES).format(rng.choice(topics))
            items.append({"kind": "semantic", "stream": False, "body": body(text, False)})
        elif roll < 0.75:
            if streamed and rng.random() < 0.5:
                items.append({"kind": "stream", "stream": True, "body": rng.choice(streamed)})
            else:
                topic = new_topic()
                topics.append(topic)
                streamed.append(body(f"What is {topic}?", True))
                items.append({"kind": "stream", "stream": True, "body": streamed[-1]})
        else:
            topic = new_topic()
            topics.append(topic)
            plain.append(body(f"What is {topic}?", False))
            items.append({"kind": "miss", "stream": False, "body": plain[-1]})
    return items


def run_once(port: int, items: list[dict[str, Any]], concurrency: int, max_s: float) -> dict[str, Any]:
    job = {"mode": "mix", "target": target(port, None), "items": items, "headers": REQUEST_HEADERS,
           "concurrency": concurrency, "max_requests": len(items), "max_seconds": max_s}
    return run_loadgen(job, max_s)


def served_totals(result: dict[str, Any]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for by_served in result["counts"].values():
        for served, n in by_served.items():
            totals[served] = totals.get(served, 0) + n
    return dict(sorted(totals.items()))


def report(runs: list[dict[str, Any]], rss: list[float], concurrency: int) -> None:
    kinds = sorted({k for r in runs for k in r["counts"]})
    served = sorted({s for r in runs for by in r["counts"].values() for s in by})
    for number, result in enumerate(runs, 1):
        table = Table(title=f"Run {number}: {result['sent']:,} requests at concurrency {concurrency}, "
                            f"{result['rps']:,.0f} req/s, p50 {result['p50_ms']:.1f} ms, "
                            f"p99 {result['p99_ms']:.1f} ms, errors {result['errors']}")
        table.add_column("sent as \\ x-cascache")
        for s in served:
            table.add_column(s, justify="right")
        table.add_column("total", justify="right")
        for kind in kinds:
            by = result["counts"].get(kind, {})
            table.add_row(kind, *(f"{by.get(s, 0):,}" for s in served), f"{sum(by.values()):,}")
        totals = served_totals(result)
        table.add_row("[bold]all", *(f"{totals.get(s, 0):,}" for s in served), f"{sum(totals.values()):,}")
        console.print(table)
        for sample in result["error_samples"]:
            console.print(f"  [red]error sample[/]: {sample}", markup=True, highlight=False)
    table = Table(title="Gateway RSS (VmRSS, MB)")
    for column in ("before run 1", "after run 1", "after run 2", "growth run 1", "growth run 2 (flat?)"):
        table.add_column(column, justify="right")
    growth = rss[2] - rss[1]
    table.add_row(f"{rss[0]:.1f}", f"{rss[1]:.1f}", f"{rss[2]:.1f}", f"{rss[1] - rss[0]:+.1f}",
                  f"{growth:+.1f} ({'yes' if growth <= RSS_FLAT_MB else 'NO'})")
    console.print(table)


def main() -> int:
    parser = argparse.ArgumentParser(description="Mixed load on `cascache serve`: errors and memory (loopback).")
    parser.add_argument("--quick", action="store_true", help="2 x 2,000 requests instead of 2 x 20,000")
    parser.add_argument("--requests", type=int, help="requests per run")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=5.0, help="the simulator's latency per response")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="bound on each run")
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--runs", type=int, default=2,
                        help="identical runs (>= 2); rss_growth_mb is always run 2 minus run 1")
    args = parser.parse_args()
    n = args.requests or (2_000 if args.quick else 20_000)
    items = build_items(n, args.seed)
    started = time.perf_counter()
    with terminate_cleanly(), tempfile.TemporaryDirectory(prefix="cascache-load-") as tmp, \
            contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        console.print(f"[bold]bench/load.py[/] {'quick' if args.quick else 'full'}: 2 x {n:,} requests, "
                      f"concurrency {args.concurrency}, upstream = provider simulator "
                      f"({args.latency_ms:g} ms)")
        _, sim_port = start_sim(stack, args.latency_ms / 1000.0, 3 * args.max_seconds + 300.0)
        gateway, port = start_gateway(stack, workdir, "load", sim_port, semantic=True)
        rss = [rss_mb(gateway.pid)]
        runs = []
        for _ in range(max(2, args.runs)):
            runs.append(run_once(port, items, args.concurrency, args.max_seconds))
            time.sleep(0.5)  # let in-flight write-backs settle before reading RSS
            if gateway.proc.poll() is not None:
                raise RuntimeError(f"the gateway died (exit {gateway.proc.returncode}):\n{gateway.log_tail()}")
            rss.append(rss_mb(gateway.pid))
        report(runs, rss, args.concurrency)
        log_tail = gateway.log_tail(10)
        if log_tail.strip():
            console.print("gateway log (last lines):", highlight=False)
            console.print(log_tail, markup=False, highlight=False)
    if len(runs) > 2:
        console.print("RSS after each run (MB): " + ", ".join(f"{x:.1f}" for x in rss[1:]))
    sent = sum(r["sent"] for r in runs)
    errors = sum(r["errors"] for r in runs)
    console.print(f"done in {time.perf_counter() - started:.1f} s: {sent:,} requests, {errors} errors, "
                  f"{'PASS' if errors == 0 and sent == len(runs) * n and rss[2] - rss[1] <= RSS_FLAT_MB else 'FAIL'}")
    figures = {
        "requests": sent,
        "errors": errors,
        "rss_growth_mb": round(rss[2] - rss[1], 1),
        "rss_before_mb": round(rss[0], 1),
        "rss_after_run1_mb": round(rss[1], 1),
        "rss_after_run2_mb": round(rss[2], 1),
        "rss_after_each_run_mb": [round(x, 1) for x in rss[1:]],
        "requests_per_run": n,
        "concurrency": args.concurrency,
        "rps_run1": round(runs[0]["rps"], 1),
        "rps_run2": round(runs[1]["rps"], 1),
        "p99_ms_run1": round(runs[0]["p99_ms"], 1),
        "p99_ms_run2": round(runs[1]["p99_ms"], 1),
        "served_run1": served_totals(runs[0]),
        "served_run2": served_totals(runs[1]),
        "served_by_kind_run1": runs[0]["counts"],
        "served_by_kind_run2": runs[1]["counts"],
        "error_samples": runs[0]["error_samples"] + runs[1]["error_samples"],
    }
    print(json.dumps(figures), flush=True)
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
