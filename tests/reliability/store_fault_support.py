"""Client side of the store-fault tests: a checked chat call, a concurrent load, /metrics readings.

Every reply is checked, not just its status: the provider simulator answers a
question with `answer_text(question)`, so a reply is complete and valid when it
is a 200 whose content is exactly that text (JSON), or an SSE stream that
spells it and ends in ``[DONE]``. Semantic hits may legitimately carry a
neighbour's answer, so for them only completeness is checked.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import httpx
import orjson

from cascache.testing.provider_sim import answer_text

MODEL = "gpt-4o-mini"
AUTH = {"authorization": "Bearer sk-store-faults"}
HITS = frozenset({"hit-exact", "hit-semantic"})


@dataclass(frozen=True, slots=True)
class Reply:
    question: str
    stream: bool
    started: float
    """time.monotonic() when the request was sent."""
    ended: float
    status: int | None
    """None: no HTTP answer at all (connection error, timeout)."""
    served: str | None
    """The x-cascache header: hit-exact, hit-semantic, miss, coalesced, bypass."""
    problem: str | None
    """Why the reply is not a complete, valid answer; None when it is."""

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    @property
    def hit(self) -> bool:
        return self.served in HITS


def chat_body(question: str, stream: bool) -> dict[str, object]:
    return {"model": MODEL, "temperature": 0, "stream": stream,
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}]}


def problem_with(question: str, stream: bool, status: int, served: str | None, text: str) -> str | None:
    """None if `text` is a complete answer to `question`; else what is wrong with it."""
    if status != 200:
        return f"status {status}: {text[:200]}"
    if served is None:
        return "no x-cascache header"
    content = _sse_content(text) if stream else _json_content(text)
    if content is None:
        return f"incomplete or malformed {'stream' if stream else 'body'}: {text[-200:]!r}"
    if served != "hit-semantic" and content != answer_text(question):
        return f"answer of another question: {content!r}"
    return None


def _json_content(text: str) -> str | None:
    try:
        choice = orjson.loads(text)["choices"][0]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return None
    return choice["message"]["content"] if choice.get("finish_reason") == "stop" else None


def _sse_content(text: str) -> str | None:
    events = [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]
    if not events or events[-1] != "[DONE]":
        return None
    parts, finished = [], False
    for event in events[:-1]:
        for choice in orjson.loads(event).get("choices") or []:
            parts.append(choice.get("delta", {}).get("content") or "")
            finished = finished or choice.get("finish_reason") == "stop"
    return "".join(parts) if finished else None


async def ask_async(client: httpx.AsyncClient, url: str, question: str, stream: bool = False) -> Reply:
    started = time.monotonic()
    try:
        response = await client.post(url + "/v1/chat/completions", json=chat_body(question, stream),
                                     headers=AUTH)
    except httpx.HTTPError as exc:
        return Reply(question, stream, started, time.monotonic(), None, None, f"{type(exc).__name__}: {exc}")
    served = response.headers.get("x-cascache")
    return Reply(question, stream, started, time.monotonic(), response.status_code, served,
                 problem_with(question, stream, response.status_code, served, response.text))


def ask(url: str, question: str, stream: bool = False) -> Reply:
    """One checked request, from synchronous test code."""

    async def once() -> Reply:
        async with httpx.AsyncClient(timeout=30) as client:
            return await ask_async(client, url, question, stream)

    return asyncio.run(once())


@dataclass(slots=True)
class LoadMix:
    """What the load's clients send: repeats of `repeated` questions, and new ones each asked twice in a row.

    Asking a new question twice from the same client shows directly whether
    its answer was written: the second ask hits if and only if the write-back
    stored it.
    """

    repeated: tuple[str, ...]
    repeat_share: float = 0.5
    stream_share: float = 0.25
    seed: int = 7
    tag: str = "load"
    _counter: Iterator[int] = field(default_factory=itertools.count)

    def new_question(self, client: int) -> str:
        # A distinct number per question: the semantic tier's number guard keeps them apart.
        number = next(self._counter)
        return f"{self.tag} question {number} from client {client}: what is {client * 7 + 3} squared?"


async def run_load(url: str, seconds: float, mix: LoadMix, clients: int = 16) -> list[Reply]:
    """`clients` concurrent clients, closed loop, for `seconds`; every reply recorded and checked."""
    replies: list[Reply] = []
    deadline = time.monotonic() + seconds

    async def client_loop(client: int, http: httpx.AsyncClient) -> None:
        rng = random.Random(mix.seed * 1_000 + client)
        while time.monotonic() < deadline:
            stream = rng.random() < mix.stream_share
            if mix.repeated and rng.random() < mix.repeat_share:
                replies.append(await ask_async(http, url, rng.choice(mix.repeated), stream))
                continue
            question = mix.new_question(client)
            replies.append(await ask_async(http, url, question, stream))
            replies.append(await ask_async(http, url, question, not stream))

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:
        await asyncio.gather(*(client_loop(client, http) for client in range(clients)))
    return replies


def failures(replies: Iterable[Reply]) -> list[Reply]:
    return [reply for reply in replies if reply.problem is not None]


def served_counts(replies: Iterable[Reply]) -> Counter[str | None]:
    return Counter(reply.served for reply in replies)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def metric(url: str, name: str, **labels: str) -> float:
    """Sum of the /metrics samples called `name` whose labels include `labels` (0 if none yet)."""
    total = 0.0
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        sample, _, label_text = series.partition("{")
        if sample != name:
            continue
        found = dict(part.split("=", 1) for part in label_text.rstrip("}").split(",") if part)
        if all(found.get(key) == f'"{wanted}"' for key, wanted in labels.items()):
            total += float(value)
    return total


def wait_until_cached(url: str, tag: str, timeout_s: float = 15.0) -> tuple[float, int]:
    """Ask new questions twice until the second ask is an exact hit: (seconds it took, questions asked).

    Measures recovery: the first moment a write-back is stored and served again.
    """
    started = time.monotonic()
    for attempt in itertools.count(1):
        question = f"{tag} recovery probe {attempt}: what is {attempt} plus 11?"
        first, second = ask(url, question), ask(url, question)
        assert first.problem is None and second.problem is None, (first, second)
        if second.served == "hit-exact":
            return time.monotonic() - started, attempt
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"no write-back was stored within {timeout_s}s (last: {first}, {second})")
        time.sleep(0.05)
    raise AssertionError("unreachable")
