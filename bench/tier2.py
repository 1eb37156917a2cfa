"""Tier 2 figures for issue 3: what provider prefix caching saves, and what a volatile prefix costs.

Three questions, each answered on this machine, loopback only:

1. The seeds' walkthrough on the Anthropic provider simulator
   (`cascache.testing.provider_sim.ProviderSim`, model claude-sonnet-4-6): 100
   requests that share a ~4,000-token system prompt, each with a ~50-token
   question, 30 of them exact repeats of earlier questions (seeded). The same
   request sequence is sent three ways, each time to a fresh simulator and
   (b, c) a fresh `Cache` (MemoryStore, the default ONNX MiniLM embedder):
     (a) no cache: straight to the simulator, no breakpoints (what a team
         without cascache sends);
     (b) Tier 2 only: through cascache with `exact.enabled=false` and
         `semantic.enabled=false`, so every request reaches the simulator, shaped;
     (c) Tiers 1+2: through cascache with its defaults.
   Every upstream call is priced with cascache's own accounting
   (`cascache.accounting.cost` over the simulator's reported usage, default
   price table), for all three runs alike; a Tier 1 hit costs 0.
2. The real llama.cpp engine (`LlamaCppEngine`, SmolLM2-135M, one slot, 4,096
   tokens): time to first token for a repeated ~1,500-token prefix (system
   prompt + a document of realistic English support text), shaping on
   (cascache adds `cache_prompt: true`) vs off (a Cache with
   `prefix.enabled=false` and the body carrying `cache_prompt: false`, since
   llama.cpp's own default is true). Streamed, temperature 0, 16 tokens, one
   warm-up then distinct questions per mode; Tier 1 disabled so every request
   reaches the engine. `timings.cache_n` (final streamed chunk) confirms reuse.
3. A volatile prefix: walkthrough (b) again, with "Current time: <ISO
   timestamp>" in the system prompt, advancing one second per request, placed
   at the head of the system prompt (the usual template) and at its tail.
   Reports the `x-cascache-prefix-warning` header and the cache-read tokens
   lost against the stable prompt.

The figures (JSON keys):
- `tier2_prefix_cost_cut` = 1 - (input cost of the shared prefix in run (b), requests 2..N)
  / (the same in run (a)). The shared prefix is prompt positions [0, P), P = the
  system prompt's simulator tokens. A usage report is read as consecutive spans
  in prompt order (cache read, 1h writes, 5m writes, uncached input; see
  `span_prices`), each at its own price, and the prefix is charged for the part of
  each span inside [0, P) (`prefix_cost_usd`). So a request that reads the whole
  prefix pays P x cache-read price; with no cache, P x input price. Request 1 (the
  first write, 1.25x) is excluded from the ratio and printed separately.
- `tiers12_total_cost_cut` = 1 - total cost (c) / total cost (a): all input and
  output tokens of every upstream call, Tier 1 hits at 0.
- `llamacpp_ttft_ratio_off_on` = mean TTFT off / mean TTFT on, warm-ups excluded.
  A request that fails with 502 because llama-server dropped a pooled keep-alive
  connection (it happens, see `engine_part`) is counted and sent again; only the
  attempt that reached the engine is timed.

Token measure on the simulator: whitespace-separated words (the simulator's
documented approximation), so "4,000 tokens" means 4,000 words there. Texts:
the system prompt is an instruction header plus approved answers taken from
the assistant turns of /work/shared/data/fow-cache/conv-long (realistic support
English; turns the prefix lint would flag, such as opening hours "6:30pm", are
left out so the stable prompt is lint-clean); questions are BANKING77 customer
questions of one intent each, joined to ~50 words (time-sensitive phrasings
such as "today", which the policy sends around Tier 1, are left out).

Run:    .venv/bin/python bench/tier2.py            (a few minutes; the engine's cold prefills dominate)
        .venv/bin/python bench/tier2.py --quick    (smoke run: 20 requests, shorter prefixes)
        .venv/bin/python bench/tier2.py --no-engine
The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import random
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from rich.console import Console
from rich.table import Table

from cascache._types import Usage
from cascache.accounting import CostBreakdown, ModelPrice, cost, default_price_table, parse_usage
from cascache.cache import Cache
from cascache.config import DEFAULT_TIME_SENSITIVE_PATTERNS, load_settings
from cascache.embedders import make_embedder
from cascache.stores.memory import MemoryStore
from cascache.testing.provider_sim import ProviderSim, SimRecord, count_tokens
from cascache.tiers.prefix.lint import lint_prefix
from cascache.upstreams.base import UpstreamReply
from cascache.upstreams.http import HttpUpstream

DATA = Path("/work/shared/data")
CONV_LONG = DATA / "fow-cache" / "conv-long"
BANKING77 = DATA / "banking77" / "train.csv"
MODEL = "claude-sonnet-4-6"
HEADERS = {"x-api-key": "sk-ant-bench-tenant", "anthropic-version": "2023-06-01"}
SEED = 20261124
TARGETS = {"tier2_prefix_cost_cut": 0.85, "tiers12_total_cost_cut": 0.70}
ENGINE_TIME_LIMIT_S = 480.0
DISCONNECT_RETRIES = 3
PRICES = default_price_table()

console = Console(stderr=True)  # progress on stderr; tables and the JSON line on stdout
report = Console(width=170)


def progress(message: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {message}")


# --- texts ----------------------------------------------------------------------------------------


def support_answers() -> list[str]:
    """Assistant turns of the fow-cache long conversations, deduplicated in file order, lint-clean."""
    texts: list[str] = []
    for path in sorted(CONV_LONG.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            conversation = json.loads(line)
            for side in ("a", "b"):
                for message in conversation.get(side) or []:
                    if message.get("role") == "assistant" and isinstance(message.get("content"), str):
                        texts.append(message["content"].strip())
    unique = list(dict.fromkeys(texts))
    return [
        text for text in unique if not lint_prefix({"system": text, "messages": []}, "anthropic").findings
    ]


SYSTEM_HEADER = (
    "You are the customer support assistant of Kestrel Bank. Answer the customer's question in two or three "
    "short sentences, in plain English, without promising anything the bank's policies do not allow. "
    "Never ask "
    "for a full card number, a PIN or a password. If the question needs a person (fraud in progress, a "
    "bereavement, a complaint), say so and explain how to reach the right team. Below are approved answers "
    "from past conversations: reuse their facts and their tone.\n\nApproved answers:\n"
)


def build_system_prompt(words: int) -> str:
    """An instruction header plus approved answers, cut at a whole answer once `words` is reached."""
    parts = [SYSTEM_HEADER]
    total = count_tokens(SYSTEM_HEADER)
    for number, answer in enumerate(support_answers(), 1):
        if total >= words:
            break
        entry = f"{number}. {answer}\n"
        parts.append(entry)
        total += count_tokens(entry)
    if total < words:
        raise RuntimeError(f"not enough text for a {words}-word prompt (got {total})")
    return "".join(parts)


def build_questions(count: int, words: int, rng: random.Random) -> list[str]:
    """`count` customer messages of ~`words` words, each from one BANKING77 intent (distinct intents)."""
    time_sensitive = re.compile("|".join(DEFAULT_TIME_SENSITIVE_PATTERNS), re.IGNORECASE)
    by_intent: dict[str, list[str]] = {}
    with BANKING77.open(newline="") as handle:
        for row in csv.DictReader(handle):
            text = " ".join(row["text"].split())
            if not time_sensitive.search(text):
                by_intent.setdefault(row["category"], []).append(text)
    intents = sorted(by_intent)
    rng.shuffle(intents)
    if count > len(intents):
        raise RuntimeError(f"only {len(intents)} intents for {count} unique questions")
    questions = []
    for intent in intents[:count]:
        pool = list(by_intent[intent])
        rng.shuffle(pool)
        picked: list[str] = []
        for sentence in pool:
            if sum(count_tokens(s) for s in picked) >= words - 4:
                break
            picked.append(sentence if sentence[-1] in ".?!" else sentence + ".")
        questions.append(" ".join(picked))
    return questions


def request_sequence(unique: int, repeats: int, rng: random.Random) -> list[int]:
    """Indices into the unique questions: each appears once in order, plus `repeats` repeats of
    already-asked ones at random positions (never the first request)."""
    slots = sorted(rng.sample(range(1, unique + repeats), repeats))
    sequence: list[int] = []
    next_new = 0
    for position in range(unique + repeats):
        if slots and position == slots[0]:
            slots.pop(0)
            sequence.append(rng.randrange(next_new))
        else:
            sequence.append(next_new)
            next_new += 1
    return sequence


def anthropic_body(system: str, question: str) -> bytes:
    return orjson.dumps(
        {
            "model": MODEL,
            "max_tokens": 300,
            "system": system,
            "messages": [{"role": "user", "content": question}],
        }
    )


# --- accounting -----------------------------------------------------------------------------------


def span_prices(raw: Mapping[str, Any], price: ModelPrice) -> list[tuple[int, float]]:
    """The prompt as consecutive spans (tokens, USD per 1M) in prompt order, from an Anthropic usage.

    Anthropic (and the simulator) report a prompt as: the longest cached prefix
    read (`cache_read_input_tokens`), then the segments written up to the last
    breakpoint (1-hour entries must come before 5-minute ones), then
    `input_tokens`, the uncached tail after the last breakpoint.
    """
    split = raw.get("cache_creation") or {}
    write_1h = int(split.get("ephemeral_1h_input_tokens") or 0)
    write_5m = int(split.get("ephemeral_5m_input_tokens") or 0)
    if not split:
        write_5m = int(raw.get("cache_creation_input_tokens") or 0)
    return [
        (int(raw.get("cache_read_input_tokens") or 0), price.cache_read),
        (write_1h, price.cache_write_1h),
        (write_5m, price.cache_write_5m),
        (int(raw.get("input_tokens") or 0), price.input),
    ]


def prefix_cost_usd(raw: Mapping[str, Any], prefix_tokens: int, price: ModelPrice) -> float:
    """Input cost attributed to the shared prefix, i.e. prompt positions [0, prefix_tokens).

    Attribution: each span of `span_prices` is priced at its own rate, and the
    prefix gets the part of each span that overlaps its positions. A request
    that reads the whole prefix pays prefix_tokens x cache_read; one that
    writes it pays the write rate; with no cache it pays the input rate.
    """
    usd, start = 0.0, 0
    for tokens, per_million in span_prices(raw, price):
        overlap = max(0, min(start + tokens, prefix_tokens) - start)
        usd += overlap * per_million * 1e-6
        start += tokens
    return usd


@dataclass
class Call:
    """One request of a walkthrough run."""

    index: int
    question: int
    served: str
    """"upstream" (no cascache), or cascache's x-cascache value (miss, hit-exact, hit-semantic, ...)."""
    status: int
    raw_usage: dict[str, Any] | None
    """The simulator's usage block for a call that reached it; None for a Tier 1 hit."""
    record: SimRecord | None
    money: CostBreakdown
    header_cost: float | None = None
    header_saved: float | None = None
    warning: str | None = None

    @property
    def usage(self) -> Usage:
        return parse_usage({"usage": self.raw_usage}, "anthropic") if self.raw_usage else Usage()


@dataclass
class Run:
    name: str
    calls: list[Call]
    sim_log: list[SimRecord]
    notes: list[str] = field(default_factory=list)

    def total(self, attr: str) -> int:
        return sum(int(getattr(c.usage, attr) or 0) for c in self.calls)

    @property
    def cost_usd(self) -> float:
        return sum(c.money.cost_usd for c in self.calls)

    @property
    def uncached_input(self) -> int:
        return sum(int((c.raw_usage or {}).get("input_tokens") or 0) for c in self.calls)

    @property
    def served_by_sim_cache(self) -> int:
        return sum(1 for r in self.sim_log if r.served_from_cache)

    def count(self, served: str) -> int:
        return sum(1 for c in self.calls if c.served == served)


def sim_client(sim: ProviderSim) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=sim.app), timeout=60.0)


def priced(raw: dict[str, Any] | None) -> CostBreakdown:
    if raw is None:
        return CostBreakdown(0.0, 0.0, 0.0, True)
    return cost(parse_usage({"usage": raw}, "anthropic"), MODEL, PRICES)


async def run_no_cache(systems: Sequence[str], questions: Sequence[str], sequence: Sequence[int]) -> Run:
    sim = ProviderSim()
    calls: list[Call] = []
    async with sim_client(sim) as client:
        for index, q in enumerate(sequence):
            response = await client.post(
                "http://sim/v1/messages",
                content=anthropic_body(systems[index], questions[q]),
                headers={**HEADERS, "content-type": "application/json"},
            )
            raw = response.json().get("usage") if response.status_code == 200 else None
            calls.append(Call(index, q, "upstream", response.status_code, raw, sim.log[-1], priced(raw)))
    return Run("(a) no cache", calls, sim.log)


async def run_cascache(
    name: str, systems: Sequence[str], questions: Sequence[str], sequence: Sequence[int], tier1: bool
) -> Run:
    sim = ProviderSim()
    overrides: dict[str, Any] = {} if tier1 else {"exact.enabled": False, "semantic.enabled": False}
    settings = load_settings(environ={}, overrides=overrides)
    upstream = HttpUpstream("http://sim/v1", client=sim_client(sim), key_header="x-api-key")
    cache = Cache(settings, MemoryStore(), make_embedder("minilm"), {"anthropic": upstream})
    calls: list[Call] = []
    try:
        for index, q in enumerate(sequence):
            before = len(sim.log)
            outcome = await cache.chat("anthropic", anthropic_body(systems[index], questions[q]), HEADERS)
            new = sim.log[before:]
            if len(new) > 1:
                raise RuntimeError(f"{name}: request {index} reached the simulator {len(new)} times")
            record = new[0] if new else None
            raw = record.usage if record is not None and record.status == 200 else None
            header_cost = outcome.headers.get("x-cascache-cost-usd")
            header_saved = outcome.headers.get("x-cascache-saved-usd")
            calls.append(
                Call(
                    index,
                    q,
                    outcome.headers.get("x-cascache", "?"),
                    outcome.status,
                    raw,
                    record,
                    priced(raw),
                    float(header_cost) if header_cost is not None else None,
                    float(header_saved) if header_saved is not None else None,
                    outcome.headers.get("x-cascache-prefix-warning"),
                )
            )
    finally:
        await cache.close()
    return Run(name, calls, sim.log)


# --- part 1 and 3: the walkthrough ----------------------------------------------------------------


@dataclass
class Walkthrough:
    prefix_tokens: int
    question_tokens: float
    sequence: list[int]
    runs: dict[str, Run]
    volatile: dict[str, Run]
    volatile_lint_lost: dict[str, int]
    volatile_example: dict[str, str]


async def walkthrough(n_requests: int, n_repeats: int, prefix_words: int) -> Walkthrough:
    rng = random.Random(SEED)
    system = build_system_prompt(prefix_words)
    questions = build_questions(n_requests - n_repeats, 50, rng)
    sequence = request_sequence(n_requests - n_repeats, n_repeats, rng)
    prefix_tokens = count_tokens(system)
    stable = [system] * n_requests
    progress(
        f"walkthrough: {n_requests} requests, {n_repeats} repeats, system prompt {prefix_tokens} sim tokens"
    )

    runs: dict[str, Run] = {}
    runs["a"] = await run_no_cache(stable, questions, sequence)
    progress("  (a) no cache done")
    runs["b"] = await run_cascache("(b) Tier 2 only", stable, questions, sequence, tier1=False)
    progress("  (b) Tier 2 only done")
    runs["c"] = await run_cascache("(c) Tiers 1+2", stable, questions, sequence, tier1=True)
    progress("  (c) Tiers 1+2 done")

    volatile: dict[str, Run] = {}
    lint_lost: dict[str, int] = {}
    example: dict[str, str] = {}
    start = 1795505462  # 2026-11-24T07:31:02Z
    stamps = [time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start + i)) for i in range(n_requests)]
    variants = {
        "head": [f"Current time: {s}.\n\n{system}" for s in stamps],
        "tail": [f"{system}\nCurrent time: {s}." for s in stamps],
    }
    for where, systems in variants.items():
        volatile[where] = await run_cascache(f"volatile ({where})", systems, questions, sequence, tier1=False)
        body = orjson.loads(anthropic_body(systems[1], questions[sequence[1]]))
        lint_lost[where] = lint_prefix(body, "anthropic").tokens_lost
        example[where] = systems[0][:60] if where == "head" else systems[0][-45:]
        progress(f"  volatile prefix ({where}) done")
    return Walkthrough(
        prefix_tokens,
        sum(count_tokens(q) for q in questions) / len(questions),
        sequence,
        runs,
        volatile,
        lint_lost,
        example,
    )


def prefix_cut(run: Run, baseline: Run, prefix_tokens: int) -> tuple[float, float, float]:
    """(Tier 2 prefix cost, no-cache prefix cost, cut) over every request after the first of `run`."""
    price = PRICES.lookup(MODEL)
    assert price is not None
    shaped = sum(prefix_cost_usd(c.raw_usage or {}, prefix_tokens, price) for c in run.calls[1:])
    plain = sum(prefix_cost_usd(c.raw_usage or {}, prefix_tokens, price) for c in baseline.calls[1:])
    return shaped, plain, 1.0 - shaped / plain if plain else float("nan")


# --- part 2: the llama.cpp engine -----------------------------------------------------------------


class RecordingUpstream:
    """Wraps an upstream and keeps the bodies it sent (to show what shaping did)."""

    def __init__(self, inner: HttpUpstream) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.sent: list[dict[str, Any]] = []
        self.failures: list[str] = []

    async def post(self, path: str, body: bytes, headers: Mapping[str, str], stream: bool) -> UpstreamReply:
        self.sent.append(orjson.loads(body))
        reply = await self.inner.post(path, body, headers, stream)
        if reply.status != 200:
            self.failures.append(
                f"upstream {reply.status} {dict(reply.headers)} {(reply.body or b'')[:200]!r}"
            )
        return reply

    async def get(self, path: str, headers: Mapping[str, str]) -> UpstreamReply:
        return await self.inner.get(path, headers)

    async def close(self) -> None:
        await self.inner.close()


@dataclass
class EngineCall:
    mode: str
    warmup: bool
    question: str
    status: int
    served: str
    ttft_s: float | None
    total_s: float
    cache_prompt_sent: Any
    cache_n: int | None
    prompt_n: int | None
    prompt_ms: float | None
    prompt_tokens: int | None
    text: str
    error: str | None = None
    index: int = 0


async def engine_stream(
    cache: Cache, upstream: RecordingUpstream, mode: str, warmup: bool, system: str, question: str, alias: str
) -> EngineCall:
    body: dict[str, Any] = {
        "model": alias,
        "temperature": 0,
        "max_tokens": 16,
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
    }
    if mode == "off":
        body["cache_prompt"] = False
    sent_before = len(upstream.sent)
    started = time.perf_counter()
    outcome = await cache.chat("openai", orjson.dumps(body), {"authorization": "Bearer bench-tenant"})
    ttft: float | None = None
    timings: dict[str, Any] = {}
    usage: dict[str, Any] = {}
    pieces: list[str] = []
    if outcome.stream is not None:
        async for event in outcome.stream:
            for line in event.split(b"\n"):
                if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
                    continue
                chunk = orjson.loads(line[5:].strip())
                for choice in chunk.get("choices") or []:
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        if ttft is None:
                            ttft = time.perf_counter() - started
                        pieces.append(content)
                if isinstance(chunk.get("timings"), dict):
                    timings = chunk["timings"]
                if isinstance(chunk.get("usage"), dict):
                    usage = chunk["usage"]
    total = time.perf_counter() - started
    sent = upstream.sent[sent_before:]
    return EngineCall(
        mode,
        warmup,
        question,
        outcome.status,
        outcome.headers.get("x-cascache", "?"),
        ttft,
        total,
        sent[0].get("cache_prompt", "(absent)") if sent else "(not sent)",
        timings.get("cache_n"),
        timings.get("prompt_n"),
        timings.get("prompt_ms"),
        usage.get("prompt_tokens"),
        "".join(pieces),
        None
        if outcome.status == 200
        else f"{outcome.headers} {(outcome.body or b'')[:200]!r} {upstream.failures[-1:]}",
    )


async def calibrated_system(client: httpx.AsyncClient, root_url: str, target_tokens: int) -> tuple[str, int]:
    """Header + support answers, grown one answer at a time up to `target_tokens` (the engine's tokenizer)."""
    header = (
        "You are the customer support assistant of Kestrel Bank. Answer the customer's question briefly, "
        "using only the reference document below.\n\nReference document (approved answers):\n"
    )
    text = header
    tokens = 0
    for answer in support_answers():
        candidate = text + answer + "\n"
        response = await client.post(root_url + "/tokenize", json={"content": candidate})
        response.raise_for_status()
        count = len(response.json()["tokens"])
        if count > target_tokens:
            break
        text, tokens = candidate, count
    return text, tokens


async def engine_part(per_mode: int, target_tokens: int) -> dict[str, Any]:
    from cascache.upstreams.llamacpp_engine import EngineSettings, LlamaCppEngine

    rng = random.Random(SEED + 1)
    pool = [q for q in build_questions(77, 10, rng)]
    questions = [q.split(".")[0].split("?")[0] + "?" for q in pool]  # one short sentence each
    started = time.perf_counter()
    async with LlamaCppEngine(EngineSettings(parallel=1, ctx_per_slot=4096)) as engine:
        progress(f"engine up at {engine.base_url} in {time.perf_counter() - started:.1f}s")
        async with httpx.AsyncClient(timeout=30.0) as client:
            system, system_tokens = await calibrated_system(client, engine.root_url, target_tokens)
        caches: dict[str, tuple[Cache, RecordingUpstream]] = {}
        for mode in ("on", "off"):
            overrides: dict[str, Any] = {"exact.enabled": False, "semantic.enabled": False}
            if mode == "off":
                overrides["prefix.enabled"] = False
            upstream = RecordingUpstream(HttpUpstream(engine.base_url, kind="llamacpp", timeout_s=120.0))
            caches[mode] = (
                Cache(
                    load_settings(environ={}, overrides=overrides),
                    MemoryStore(),
                    make_embedder("minilm"),
                    {"openai": upstream},
                ),
                upstream,
            )
        calls: list[EngineCall] = []
        disconnects: list[str] = []
        try:
            used = 0
            for mode in ("on", "off"):
                cache, upstream = caches[mode]
                for i in range(per_mode + 1):
                    for _attempt in range(1 + DISCONNECT_RETRIES):
                        call = await engine_stream(
                            cache, upstream, mode, i == 0, system, questions[used], engine.settings.alias
                        )
                        # llama-server now and then drops a pooled keep-alive connection right after a
                        # streamed answer; the next request on it fails before reaching the model and
                        # cascache answers 502 upstream_unavailable. Counted, then sent again (timed afresh).
                        if not (call.status == 502 and call.error and "Server disconnected" in call.error):
                            break
                        disconnects.append(f"{mode} {'warm-up' if i == 0 else i}: {call.error}")
                        progress(f"  [yellow]{mode} request {i}: 502 (keep-alive disconnect), again[/yellow]")
                    call.index = i
                    used += 1
                    calls.append(call)
                    progress(
                        f"  {mode} {'warm-up' if call.warmup else i}: ttft "
                        f"{call.ttft_s if call.ttft_s is None else round(call.ttft_s, 3)} s, "
                        f"cache_n {call.cache_n}, prompt_n {call.prompt_n}"
                        + (f", ERROR {call.status}: {call.error}" if call.error else "")
                    )
        finally:
            for cache, _ in caches.values():
                await cache.close()
    timed = {
        mode: [c for c in calls if c.mode == mode and not c.warmup and c.ttft_s is not None]
        for mode in ("on", "off")
    }
    means = {mode: sum(c.ttft_s or 0.0 for c in cs) / len(cs) if cs else None for mode, cs in timed.items()}
    ratio = means["off"] / means["on"] if means["on"] and means["off"] else None
    return {
        "calls": calls,
        "disconnects": disconnects,
        "system_tokens": system_tokens,
        "mean_ttft_on_s": means["on"],
        "mean_ttft_off_s": means["off"],
        "ratio": ratio,
    }


# --- report ---------------------------------------------------------------------------------------


def usd(value: float) -> str:
    return f"${value:,.4f}"


def print_walkthrough(w: Walkthrough) -> dict[str, Any]:
    a, b, c = w.runs["a"], w.runs["b"], w.runs["c"]
    n = len(w.sequence)
    repeats = n - len(set(w.sequence))
    table = Table(
        title=f"1. Anthropic simulator walkthrough ({MODEL}): {n} requests, {repeats} repeats, "
        f"shared system prompt {w.prefix_tokens} tokens, questions ~{w.question_tokens:.0f} tokens "
        "(simulator tokens = words)"
    )
    for column in (
        "run",
        "upstream calls",
        "T1 exact",
        "T1 semantic",
        "sim served from cache",
        "input uncached",
        "cache read",
        "cache write",
        "output",
        "total cost",
        "cut vs (a)",
    ):
        table.add_column(column, justify="right" if column != "run" else "left")
    for run in (a, b, c):
        upstream_calls = sum(1 for call in run.calls if call.raw_usage is not None)
        table.add_row(
            run.name,
            str(upstream_calls),
            str(run.count("hit-exact")),
            str(run.count("hit-semantic")),
            str(run.served_by_sim_cache),
            f"{run.uncached_input:,}",
            f"{run.total('cache_read_tokens'):,}",
            f"{run.total('cache_write_tokens'):,}",
            f"{run.total('output_tokens'):,}",
            usd(run.cost_usd),
            f"{1 - run.cost_usd / a.cost_usd:.1%}",
        )
    report.print(table)

    shaped, plain, cut = prefix_cut(b, a, w.prefix_tokens)
    price = PRICES.lookup(MODEL)
    assert price is not None
    first_write = prefix_cost_usd(b.calls[0].raw_usage or {}, w.prefix_tokens, price)
    reads_after_first = [call.usage.cache_read_tokens or 0 for call in b.calls[1:]]
    table = Table(
        title="Shared-prefix input cost, Tier 2 only (b) vs no cache (a), requests 2..N "
        "(prefix = prompt positions [0, P); each usage span priced at its own rate)"
    )
    for column in (
        "P (tokens)",
        "requests",
        "(a) prefix cost",
        "(b) prefix cost",
        "cut",
        "target",
        "(b) first request's prefix cost (the write)",
        "(b) reads of P after the first",
    ):
        table.add_column(column, justify="right")
    table.add_row(
        f"{w.prefix_tokens:,}",
        str(n - 1),
        usd(plain),
        usd(shaped),
        f"{cut:.1%}",
        f">= {TARGETS['tier2_prefix_cost_cut']:.0%}",
        usd(first_write),
        f"{sum(1 for r in reads_after_first if r >= w.prefix_tokens)}/{n - 1}",
    )
    report.print(table)

    # Cross-check: cascache's own per-request cost headers against the accounting above.
    table = Table(title="Cross-check: sum of x-cascache-cost-usd / -saved-usd headers vs the bench's pricing")
    for column in ("run", "header cost", "bench cost", "header saved", "bench saved (no-cache cost - cost)"):
        table.add_column(column, justify="right" if column != "run" else "left")
    checks = {}
    for run in (b, c):
        header_cost = sum(call.header_cost or 0.0 for call in run.calls)
        header_saved = sum(call.header_saved or 0.0 for call in run.calls)
        no_cache = sum(priced(call.raw_usage).no_cache_cost_usd for call in run.calls)
        hit_saved = 0.0
        for call in run.calls:
            if call.raw_usage is None:  # a hit saves what the original call would have cost with no cache
                original = next(
                    x for x in run.calls if x.question == call.question and x.raw_usage is not None
                )
                hit_saved += original.money.no_cache_cost_usd
        bench_saved = no_cache - run.cost_usd + hit_saved
        checks[run.name] = {
            "header_cost": header_cost,
            "header_saved": header_saved,
            "bench_saved": bench_saved,
        }
        table.add_row(run.name, usd(header_cost), usd(run.cost_usd), usd(header_saved), usd(bench_saved))
    report.print(table)
    warnings_stable = sum(1 for run in (b, c) for call in run.calls if call.warning)

    base_reads = b.total("cache_read_tokens")
    table = Table(
        title="3. Volatile prefix (Tier 2 only): 'Current time: <ISO timestamp>' at the head or the "
        "tail of the system prompt, +1 s per request",
        caption="lint estimate: the lint's own tokens_lost for one request (chars/4 tokens, from the "
        "first finding to the end of the cacheable prefix)",
    )
    for column in (
        "variant",
        "x-cascache-prefix-warning",
        "warned",
        "cache read",
        "cache write",
        "sim cache hits",
        "read tokens lost vs stable",
        "lint estimate",
        "total cost",
        "vs stable (b)",
        "vs no cache (a)",
    ):
        table.add_column(
            column, justify="right" if column not in ("variant", "x-cascache-prefix-warning") else "left"
        )
    table.add_row(
        "stable (b)",
        "-",
        f"{warnings_stable}/{2 * n} (b+c)",
        f"{base_reads:,}",
        f"{b.total('cache_write_tokens'):,}",
        str(b.served_by_sim_cache),
        "0",
        "-",
        usd(b.cost_usd),
        "-",
        f"{b.cost_usd / a.cost_usd - 1:+.1%}",
    )
    volatile_json = {}
    for where, run in w.volatile.items():
        warned = [call.warning for call in run.calls if call.warning]
        lost = base_reads - run.total("cache_read_tokens")
        table.add_row(
            where,
            warned[0] if warned else "(none)",
            f"{len(warned)}/{n}",
            f"{run.total('cache_read_tokens'):,}",
            f"{run.total('cache_write_tokens'):,}",
            str(run.served_by_sim_cache),
            f"{lost:,}",
            f"{w.volatile_lint_lost[where]:,}",
            usd(run.cost_usd),
            f"{run.cost_usd / b.cost_usd - 1:+.1%}",
            f"{run.cost_usd / a.cost_usd - 1:+.1%}",
        )
        volatile_json[where] = {
            "warning": warned[0] if warned else None,
            "warned": len(warned),
            "cache_read_tokens": run.total("cache_read_tokens"),
            "cache_write_tokens": run.total("cache_write_tokens"),
            "lost_read_tokens": lost,
            "lint_tokens_lost_per_request": w.volatile_lint_lost[where],
            "cost_usd": round(run.cost_usd, 6),
        }
    report.print(table)
    for where, text in w.volatile_example.items():
        report.print(f"  {where}: {text!r}")

    def summary(run: Run) -> dict[str, Any]:
        return {
            "cost_usd": round(run.cost_usd, 6),
            "input_uncached": run.uncached_input,
            "cache_read": run.total("cache_read_tokens"),
            "cache_write": run.total("cache_write_tokens"),
            "output": run.total("output_tokens"),
            "sim_served_from_cache": run.served_by_sim_cache,
            "tier1_exact": run.count("hit-exact"),
            "tier1_semantic": run.count("hit-semantic"),
            "upstream_calls": sum(1 for call in run.calls if call.raw_usage is not None),
            "errors": sum(1 for call in run.calls if call.status != 200),
        }

    return {
        "tier2_prefix_cost_cut": round(cut, 4),
        "tiers12_total_cost_cut": round(1 - c.cost_usd / a.cost_usd, 4),
        "tier2_total_cost_cut": round(1 - b.cost_usd / a.cost_usd, 4),
        "requests": n,
        "repeats": repeats,
        "prefix_tokens": w.prefix_tokens,
        "prefix_cost_usd": {
            "no_cache_after_first": round(plain, 6),
            "tier2_after_first": round(shaped, 6),
            "tier2_first_write": round(first_write, 6),
        },
        "runs": {"no_cache": summary(a), "tier2_only": summary(b), "tiers12": summary(c)},
        "header_check": {k: {kk: round(vv, 6) for kk, vv in v.items()} for k, v in checks.items()},
        "stable_prefix_warnings": warnings_stable,
        "volatile": volatile_json,
    }


def print_engine(result: dict[str, Any]) -> dict[str, Any]:
    calls: list[EngineCall] = result["calls"]
    table = Table(
        title=f"2. llama.cpp engine (SmolLM2-135M, 1 slot): TTFT for a repeated "
        f"{result['system_tokens']:,}-token system prompt, streamed through cascache"
    )
    for column in (
        "mode",
        "request",
        "x-cascache",
        "cache_prompt sent",
        "TTFT (s)",
        "total (s)",
        "prompt_tokens",
        "timings.cache_n",
        "timings.prompt_n",
        "prompt_ms",
        "answer",
    ):
        table.add_column(column, justify="left" if column in ("mode", "request", "answer") else "right")
    for call in calls:
        table.add_row(
            call.mode,
            "warm-up" if call.warmup else str(call.index),
            call.served,
            str(call.cache_prompt_sent),
            "-" if call.ttft_s is None else f"{call.ttft_s:.3f}",
            f"{call.total_s:.2f}",
            str(call.prompt_tokens),
            str(call.cache_n),
            str(call.prompt_n),
            "-" if call.prompt_ms is None else f"{call.prompt_ms:,.0f}",
            call.text[:40].replace("\n", " "),
        )
    report.print(table)
    on, off, ratio = result["mean_ttft_on_s"], result["mean_ttft_off_s"], result["ratio"]
    report.print(
        f"mean TTFT (after warm-up): on {on if on is None else round(on, 3)} s, "
        f"off {off if off is None else round(off, 3)} s, "
        f"off/on = {ratio if ratio is None else round(ratio, 1)}"
    )
    if result["disconnects"]:
        report.print(
            f"[yellow]{len(result['disconnects'])} request(s) got 502 upstream_unavailable "
            "(RemoteProtocolError: Server disconnected without sending a response) on a reused "
            "keep-alive connection and were sent again; see the report[/yellow]"
        )
    timed = [c for c in calls if not c.warmup]
    return {
        "llamacpp_ttft_ratio_off_on": None if ratio is None else round(ratio, 2),
        "llamacpp": {
            "prefix_tokens": result["system_tokens"],
            "mean_ttft_on_s": None if on is None else round(on, 4),
            "mean_ttft_off_s": None if off is None else round(off, 4),
            "questions_per_mode": sum(1 for c in timed if c.mode == "on"),
            "keepalive_disconnect_502s": len(result["disconnects"]),
            "errors_after_retry": sum(1 for c in calls if c.status != 200),
            "cache_n_on": [c.cache_n for c in timed if c.mode == "on"],
            "cache_n_off": [c.cache_n for c in timed if c.mode == "off"],
            "cache_prompt_sent": {
                m: sorted({str(c.cache_prompt_sent) for c in calls if c.mode == m}) for m in ("on", "off")
            },
        },
    }


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 20 requests, shorter prefixes")
    parser.add_argument("--no-engine", action="store_true", help="skip the llama.cpp part")
    args = parser.parse_args()
    n_requests, n_repeats, prefix_words = (20, 6, 1500) if args.quick else (100, 30, 4000)
    per_mode, engine_tokens = (2, 400) if args.quick else (5, 1500)
    began = time.perf_counter()

    w = await walkthrough(n_requests, n_repeats, prefix_words)
    figures = print_walkthrough(w)

    engine_figures: dict[str, Any] = {"llamacpp_ttft_ratio_off_on": None}
    if args.no_engine:
        engine_figures["llamacpp"] = {"skipped": "--no-engine"}
    else:
        progress(f"llama.cpp: {per_mode} questions per mode after a warm-up, prefix ~{engine_tokens} tokens")
        try:
            result = await asyncio.wait_for(engine_part(per_mode, engine_tokens), ENGINE_TIME_LIMIT_S)
            engine_figures = print_engine(result)
        # The walkthrough figures still count: say why the engine's are missing.
        except Exception as exc:  # noqa: BLE001
            report.print(f"[red]llama.cpp part failed: {type(exc).__name__}: {exc}[/red]")
            engine_figures["llamacpp"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}

    table = Table(title="Targets (issue 3)")
    for column in ("figure", "value", "target", "met"):
        table.add_column(column)
    for key, target in TARGETS.items():
        value = figures[key]
        table.add_row(key, f"{value:.3f}", f">= {target}", "yes" if value >= target else "NO")
    ratio = engine_figures.get("llamacpp_ttft_ratio_off_on")
    table.add_row(
        "llamacpp_ttft_ratio_off_on",
        "-" if ratio is None else f"{ratio:.1f}",
        "(no target; > 1)",
        "-" if ratio is None else ("yes" if ratio > 1 else "NO"),
    )
    report.print(table)

    out = {
        "tier2_prefix_cost_cut": figures.pop("tier2_prefix_cost_cut"),
        "tiers12_total_cost_cut": figures.pop("tiers12_total_cost_cut"),
        "llamacpp_ttft_ratio_off_on": engine_figures.pop("llamacpp_ttft_ratio_off_on"),
        **figures,
        **engine_figures,
        "quick": args.quick,
        "seed": SEED,
        "elapsed_s": round(time.perf_counter() - began, 1),
    }
    sys.stdout.flush()
    print(json.dumps(out, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
