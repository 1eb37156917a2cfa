"""Tier 3 on real llama.cpp replicas: does prefix-affinity routing cut time to first token, and
does coalescing turn 16 identical concurrent requests into one engine call?

Part A, routing (issue 4). Two local llama-server replicas (SmolLM2-135M-Instruct Q4_1, the
embedded default model), each configured as a bounded deployment would be:

- one slot (`-np 1`, 2,048-token context) and a host-RAM prompt cache `--cache-ram 115` MiB.
  A ~1,500-token prompt takes 33-36 MiB of KV state with this model (llama-server logs the size
  of every prompt-cache entry). llama-server saves the slot's state into the RAM cache before it
  looks the next prompt up there, so the RAM cache's entries are what a replica holds: 3
  prefixes per replica, 6 in the pool (measured: three prefixes in any order all hit; a fourth
  evicts the oldest);
- K = 6 distinct prefixes of ~1,450 tokens (a system prompt plus a ticket log built from
  BANKING77 customer messages, each log on its own intents), Q = 5 short questions each: 30
  requests in a seeded random order, sent by 2 concurrent clients (closed loop), streaming,
  temperature 0, 8 tokens per answer. So the prefixes exceed one replica's memory (6 > 3) and
  fit the pool's (6).

The same workload runs once per policy (round robin, least outstanding, prefix affinity), each
on freshly started replicas (cold caches), straight through `PoolUpstream` (no Tier 1 in front:
the figure is about routing). Reported per policy: mean and p90 time to first token (first
content token of the stream), total wall time, and per replica the requests routed and the
engine's own counters (`llamacpp:prompt_tokens_cached_total`, evaluated prompt tokens, and
prefill throughput, which shows how much CPU the machine gave the run).

Part B, coalescing. One replica (`-np 2`) behind a full `Cache` (memory store, semantic tier
off). Each case sends 16 identical concurrent requests with a fresh prompt (so no case is an
exact hit of another): non-streaming; streaming; streaming where the leader's client
disconnects after its first two events. Engine calls are counted at the engine: from
`/metrics`, (evaluated + cached prompt tokens) over the prompt tokens of one call, cross-checked
with generated tokens over one answer's tokens. A control case with coalescing disabled must
count 16, which shows the counter can see more than one call. Every client's answer is checked:
status 200, a complete answer (finish_reason, and `data: [DONE]` for streams), the same content
for every client.

Timings depend on what else runs on this 2-core machine: compare within one run. The prefill
throughput per run is printed to show it.

Run:    .venv/bin/python bench/tier3.py            (about 8-15 minutes here, depending on load)
        .venv/bin/python bench/tier3.py --quick    (a smoke run; its ratio means nothing)
The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import random
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from cascache.cache import Cache
from cascache.config import load_settings
from cascache.tiers.route import LeastOutstanding, PrefixAffinity, RoundRobin, RoutingPolicy
from cascache.upstreams.engine_metrics import EngineMetricsScraper
from cascache.upstreams.http import HttpUpstream
from cascache.upstreams.llamacpp_engine import EngineSettings, LlamaCppEngine
from cascache.upstreams.managed_pool import LocalPool
from cascache.upstreams.pool import PoolUpstream

DATA = Path("/work/shared/data")
SYSTEM = ("You are a support analyst at a retail bank. Below is today's log of customer tickets. "
          "Answer the user's question about the log in one short sentence.\n\n")
QUESTIONS = (
    "Which ticket is the first one about {topic}?",
    "How many tickets mention a card?",
    "Summarise ticket {n} in five words.",
    "Is any customer asking for a refund?",
    "What is the most common topic in the log?",
    "Which ticket sounds the most urgent?",
    "Does any ticket mention a top-up?",
    "Quote ticket {m}.",
)
COALESCE_CLIENTS = 16


# -- workload --------------------------------------------------------------------------------------


def load_tickets() -> dict[str, list[str]]:
    """BANKING77 customer messages by intent."""
    by_intent: dict[str, list[str]] = {}
    with (DATA / "banking77" / "train.csv").open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            by_intent.setdefault(row["category"], []).append(row["text"])
    return by_intent


async def token_count(client: httpx.AsyncClient, engine: LlamaCppEngine, text: str) -> int:
    response = await client.post(engine.root_url + "/tokenize", json={"content": text})
    response.raise_for_status()
    return len(response.json()["tokens"])


async def build_documents(engine: LlamaCppEngine, count: int, target_tokens: int,
                          seed: int) -> list[tuple[str, str]]:
    """`count` ticket logs, each on its own intents, that with the system prompt make about
    `target_tokens` tokens: (main topic, text). Lines are counted one by one, so every prefix
    ends within one ticket (~30 tokens) of the target and the prefixes have nearly equal sizes."""
    tickets = load_tickets()
    intents = sorted(tickets)
    random.Random(seed).shuffle(intents)
    per_doc = len(intents) // count
    documents: list[tuple[str, str]] = []
    async with httpx.AsyncClient(timeout=30) as client:
        for index in range(count):
            rng = random.Random(seed * 1000 + index)
            own = intents[index * per_doc:(index + 1) * per_doc]
            pool = [(intent, text) for intent in own for text in tickets[intent]]
            rng.shuffle(pool)
            lines: list[str] = []
            tokens = await token_count(client, engine, SYSTEM)
            for intent, text in pool:
                lines.append(f"Ticket {len(lines) + 1} ({intent.replace('_', ' ')}): {text}")
                tokens += await token_count(client, engine, lines[-1] + "\n")
                if tokens >= target_tokens:
                    break
            documents.append((own[0].replace("_", " "), "\n".join(lines)))
    return documents


@dataclass(frozen=True)
class Item:
    prefix: int
    question: str


def workload(documents: list[tuple[str, str]], questions: int, seed: int) -> list[Item]:
    rng = random.Random(seed)
    items = []
    for index, (topic, _) in enumerate(documents):
        for template in QUESTIONS[:questions]:
            question = template.format(topic=topic, n=rng.randint(1, 40), m=rng.randint(1, 40))
            items.append(Item(index, question))
    rng.shuffle(items)
    return items


def chat_body(document: str, question: str, stream: bool, max_tokens: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "smollm2-135m-instruct", "temperature": 0, "max_tokens": max_tokens, "stream": stream,
        "messages": [{"role": "system", "content": SYSTEM + document}, {"role": "user", "content": question}],
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


# -- part A: routing -------------------------------------------------------------------------------


@dataclass
class Timed:
    ttft_s: float
    total_s: float
    cache_n: int
    prompt_n: int


async def sse_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[dict[str, Any]]:
    """Decoded `data:` events of an SSE byte stream, `[DONE]` excluded."""
    pending = b""
    async for chunk in chunks:
        pending += chunk
        *events, pending = pending.replace(b"\r\n", b"\n").split(b"\n\n")
        for event in events:
            for line in event.split(b"\n"):
                if line.startswith(b"data:") and line[5:].strip() != b"[DONE]":
                    yield orjson.loads(line[5:])


async def timed_request(pool: PoolUpstream, body: dict[str, Any]) -> Timed:
    started = time.perf_counter()
    reply = await pool.post("/chat/completions", orjson.dumps(body), {}, stream=True)
    if reply.chunks is None:
        raise RuntimeError(f"replica answered {reply.status}: {reply.body!r}")
    ttft: float | None = None
    timings: dict[str, Any] = {}
    try:
        async for event in sse_events(reply.chunks):
            choices = event.get("choices") or [{}]
            if ttft is None and (choices[0].get("delta") or {}).get("content"):
                ttft = time.perf_counter() - started
            timings = event.get("timings") or timings
    finally:
        await reply.close()
    total = time.perf_counter() - started
    return Timed(ttft if ttft is not None else total, total, int(timings.get("cache_n", 0)),
                 int(timings.get("prompt_n", 0)))


@dataclass
class PolicyRun:
    policy: str
    timings: list[Timed]
    wall_s: float
    replicas: list[dict[str, Any]]
    decisions: dict[str, int]
    """Routing decisions by reason (prefix_match, most_free, ...)."""

    @property
    def mean_ttft(self) -> float:
        return sum(t.ttft_s for t in self.timings) / len(self.timings)

    @property
    def p90_ttft(self) -> float:
        ordered = sorted(t.ttft_s for t in self.timings)
        return ordered[max(0, -(-9 * len(ordered) // 10) - 1)]  # nearest rank

    def summary(self) -> dict[str, Any]:
        return {"mean_ttft_s": round(self.mean_ttft, 3), "p90_ttft_s": round(self.p90_ttft, 3),
                "wall_s": round(self.wall_s, 1), "requests": len(self.timings),
                "requests_with_cached_prefix": sum(t.cache_n > t.prompt_n for t in self.timings),
                "prompt_tokens": [min(t.cache_n + t.prompt_n for t in self.timings),
                                  max(t.cache_n + t.prompt_n for t in self.timings)],
                "replicas": self.replicas, "decisions": self.decisions}


async def run_policy(name: str, policy: RoutingPolicy, settings: EngineSettings, items: list[Item],
                     documents: list[tuple[str, str]], concurrency: int, max_tokens: int) -> PolicyRun:
    async with LocalPool(settings, replicas=2, policy=policy, restart_dead=False) as local:
        pool = local.pool
        pending = iter(items)
        timings: list[Timed] = []

        async def client() -> None:
            for item in pending:  # shared iterator: each item is taken by exactly one client
                body = chat_body(documents[item.prefix][1], item.question, stream=True, max_tokens=max_tokens)
                timings.append(await timed_request(pool, body))

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        wall = time.perf_counter() - started
        replicas = []
        for status, engine in zip(pool.status(), local.engines, strict=True):
            samples = await engine.metrics()
            evaluated = samples["llamacpp:prompt_tokens_total"]
            seconds = samples["llamacpp:prompt_seconds_total"]
            replicas.append({
                "routed": status.routed,
                "engine_cached_tokens": int(samples["llamacpp:prompt_tokens_cached_total"]),
                "engine_evaluated_tokens": int(evaluated),
                "prefill_tok_per_s": round(evaluated / seconds, 1) if seconds else None,
            })
        scraper = EngineMetricsScraper()
        stats = await scraper.scrape(pool.replica_ids)
        await scraper.close()
        for replica, stat in zip(replicas, stats.replicas, strict=True):
            replica["engine_hit_rate"] = round(stat.hit_rate, 3) if stat.hit_rate is not None else None
    decisions = {str(reason): count for reason, count in pool.decisions.items()}
    return PolicyRun(name, timings, wall, replicas, decisions)


# -- part B: coalescing ----------------------------------------------------------------------------


@dataclass
class ClientResult:
    served: str
    """The x-cascache header: "miss" for the leader, "coalesced" for followers."""
    status: int
    content: str
    complete: bool
    """A finish_reason (and, streaming, `data: [DONE]`) arrived."""
    left_early: bool = False
    """This client disconnected mid-stream on purpose (the leader, in one case)."""


@dataclass
class CoalesceCase:
    name: str
    calls_by_prompt: float
    calls_by_output: float
    clients: list[ClientResult] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        """Every client that stayed got the full answer, and all got the same one."""
        stayed = [c for c in self.clients if not c.left_early]
        contents = {c.content for c in stayed}
        return (len(self.clients) == COALESCE_CLIENTS and all(c.status == 200 and c.complete for c in stayed)
                and len(contents) == 1 and bool(next(iter(contents)).strip()))


async def read_client(outcome: Any, disconnect_after: int | None) -> ClientResult:
    served = outcome.headers.get("x-cascache", "")
    if outcome.stream is None:
        answer = orjson.loads(outcome.body or b"{}")
        choice = (answer.get("choices") or [{}])[0]
        content = (choice.get("message") or {}).get("content") or ""
        return ClientResult(served, outcome.status, content, bool(choice.get("finish_reason")))
    parts: list[str] = []
    finished = done = False
    seen = 0
    raw = b""
    try:
        async for event in outcome.stream:
            raw += event
            seen += 1
            if disconnect_after is not None and seen >= disconnect_after:
                return ClientResult(served, outcome.status, "", False, left_early=True)
    finally:
        await outcome.stream.aclose()  # what a client disconnect does to the gateway's stream
    for event in raw.split(b"\n\n"):
        payload = event.strip().removeprefix(b"data:").strip()
        if not payload:
            continue
        if payload == b"[DONE]":
            done = True
            continue
        data = orjson.loads(payload)
        for choice in data.get("choices") or []:
            parts.append((choice.get("delta") or {}).get("content") or "")
            finished = finished or bool(choice.get("finish_reason"))
    return ClientResult(served, outcome.status, "".join(parts), finished and done)


async def engine_call_count(engine: LlamaCppEngine, action: Callable[[], Any], prompt_tokens: int,
                            output_tokens: int) -> tuple[float, float, Any]:
    before = await engine.metrics()
    result = await action()
    after = await engine.metrics()

    def delta(name: str) -> float:
        return after[name] - before[name]

    prompt = delta("llamacpp:prompt_tokens_total") + delta("llamacpp:prompt_tokens_cached_total")
    return prompt / prompt_tokens, delta("llamacpp:tokens_predicted_total") / output_tokens, result


async def coalesce_case(cache: Cache, engine: LlamaCppEngine, name: str, prompt: str, stream: bool,
                        leader_disconnects: bool) -> CoalesceCase:
    body = chat_body("", prompt, stream=stream, max_tokens=48)
    body["messages"][0]["content"] = "You are a concise assistant."
    # One direct call, before counting, gives the prompt and answer sizes of one engine call.
    probe = {**body, "stream": False}
    probe.pop("stream_options", None)
    async with httpx.AsyncClient(timeout=120) as client:
        answer = (await client.post(engine.base_url + "/chat/completions", json=probe)).json()
    prompt_tokens = answer["usage"]["prompt_tokens"]
    output_tokens = answer["usage"]["completion_tokens"]
    raw = orjson.dumps(body)

    async def run() -> list[ClientResult]:
        outcomes = await asyncio.gather(*(cache.chat("openai", raw, {"authorization": "Bearer bench"})
                                          for _ in range(COALESCE_CLIENTS)))
        readers = [read_client(o, 2 if leader_disconnects and o.headers.get("x-cascache") == "miss" else None)
                   for o in outcomes]
        return list(await asyncio.gather(*readers))

    by_prompt, by_output, clients = await engine_call_count(engine, run, prompt_tokens, output_tokens)
    return CoalesceCase(name, by_prompt, by_output, clients)


async def run_coalescing(engine: LlamaCppEngine, data_dir: Path) -> list[CoalesceCase]:
    cases = []
    for enabled in (True, False):
        overrides = {"data_dir": str(data_dir / str(enabled)), "store.url": "memory://",
                     "semantic.enabled": False, "coalesce.enabled": enabled}
        settings = load_settings(overrides=overrides, environ={})
        upstream = HttpUpstream(engine.base_url, kind="llamacpp")
        cache = await Cache.open(settings, upstreams={"openai": upstream})
        try:
            if enabled:
                cases.append(await coalesce_case(cache, engine, "non-streaming",
                                                 "Name three uses of a prompt cache.", False, False))
                cases.append(await coalesce_case(cache, engine, "streaming",
                                                 "Name three uses of a KV cache.", True, False))
                cases.append(await coalesce_case(cache, engine, "streaming, leader disconnects",
                                                 "Name three uses of a replica pool.", True, True))
            else:
                cases.append(await coalesce_case(cache, engine, "control: coalescing off, non-streaming",
                                                 "Name three uses of a load balancer.", False, False))
        finally:
            await cache.close()
    return cases


# -- main ------------------------------------------------------------------------------------------


def print_routing(runs: list[PolicyRun], settings_note: str) -> None:
    print(f"\nPart A: routing over 2 llama.cpp replicas ({settings_note})")
    print(f"{'policy':<20}{'mean TTFT s':>12}{'p90 TTFT s':>12}{'wall s':>9}  per replica: routed / "
          f"engine cached tokens / evaluated tokens / prefill tok/s")
    for run in runs:
        per = "   ".join(f"{r['routed']} / {r['engine_cached_tokens']} / {r['engine_evaluated_tokens']} / "
                         f"{r['prefill_tok_per_s']}" for r in run.replicas)
        print(f"{run.policy:<20}{run.mean_ttft:>12.2f}{run.p90_ttft:>12.2f}{run.wall_s:>9.1f}  {per}")


def print_coalescing(cases: list[CoalesceCase]) -> None:
    print(f"\nPart B: {COALESCE_CLIENTS} identical concurrent requests through a Cache on one replica")
    for case in cases:
        served: dict[str, int] = {}
        for client in case.clients:
            served[client.served] = served.get(client.served, 0) + 1
        print(f"  {case.name:<42} engine calls {case.calls_by_prompt:5.2f} (by prompt tokens), "
              f"{case.calls_by_output:5.2f} (by output tokens); valid: {case.valid}; served {served}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small smoke run (its figures mean nothing)")
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--prefixes", type=int, default=6)
    parser.add_argument("--questions", type=int, default=5)
    parser.add_argument("--prefix-tokens", type=int, default=1450,
                        help="tokens of system prompt + ticket log")
    parser.add_argument("--cache-ram", type=int, default=115, help="MiB of --cache-ram per replica")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=8)
    args = parser.parse_args()
    if args.quick:
        args.prefixes, args.questions, args.prefix_tokens, args.cache_ram = 4, 2, 300, 24
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cascache-tier3-") as tmp:
        async with LlamaCppEngine(EngineSettings(parallel=2, ctx_per_slot=2048)) as engine:
            documents = await build_documents(engine, args.prefixes, args.prefix_tokens, args.seed)
            async with httpx.AsyncClient(timeout=30) as client:
                sizes = [await token_count(client, engine, SYSTEM + text) for _, text in documents]
            print(f"{len(documents)} prefixes of {min(sizes)}-{max(sizes)} tokens "
                  "(system prompt + ticket log)", flush=True)
            cases = await run_coalescing(engine, Path(tmp))
        print_coalescing(cases)

        replica = EngineSettings(parallel=1, ctx_per_slot=2048, cache_ram_mib=args.cache_ram)
        items = workload(documents, args.questions, args.seed)
        runs = []
        for name, make in (("round_robin", RoundRobin), ("least_outstanding", LeastOutstanding),
                           ("prefix_affinity", PrefixAffinity)):
            run = await run_policy(name, make(), replica, items, documents, args.concurrency, args.max_tokens)
            print(f"  {name}: mean TTFT {run.mean_ttft:.2f} s, wall {run.wall_s:.1f} s", flush=True)
            runs.append(run)
    note = (f"each -np 1, ctx 2048, --cache-ram {args.cache_ram} MiB; {args.prefixes} prefixes x "
            f"{args.questions} questions, {args.concurrency} clients, seed {args.seed}")
    print_routing(runs, note)
    by_name = {run.policy: run for run in runs}
    coalesced = [case for case in cases if not case.name.startswith("control")]
    figures = {
        "affinity_vs_roundrobin_ttft_ratio": round(by_name["round_robin"].mean_ttft
                                                   / by_name["prefix_affinity"].mean_ttft, 2),
        "coalesce_upstream_calls": round(max(case.calls_by_prompt for case in coalesced), 2),
        "coalesce_all_clients_valid": all(case.valid for case in coalesced),
        "coalesce_calls_by_case": {case.name: round(case.calls_by_prompt, 2) for case in cases},
        "routing": {run.policy: run.summary() for run in runs},
        "settings": {"replicas": 2, "model": "SmolLM2-135M-Instruct Q4_1", "parallel": 1,
                     "ctx_per_slot": 2048, "cache_ram_mib": args.cache_ram, "prefixes": args.prefixes,
                     "questions": args.questions,
                     "prefix_tokens": [min(sizes), max(sizes)], "concurrency": args.concurrency,
                     "max_tokens": args.max_tokens, "seed": args.seed, "quick": args.quick},
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
