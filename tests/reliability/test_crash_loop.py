"""Issue 8, part 3: a `cascache serve` process killed with SIGKILL, again and again, on one data dir.

A real gateway on the default embedded store (SQLite in WAL mode + per-namespace vector indexes)
in front of the provider simulator. Each cycle starts the gateway on the same store directory,
drives concurrent writes (new questions, streamed and not), and SIGKILLs it at a seeded random
moment. After every kill the SQLite file is opened directly: `PRAGMA integrity_check` is `ok`
and every entry is a whole, finished answer to its own question. After every restart the gateway
serves exact hits for what was stored before the kill, semantic hits from its rebuilt or
verified index, and sends misses upstream.

The second test grows one namespace past the exact-search limit so it gets an HNSW graph, kills
the gateway while that graph's files are being saved, and leaves truncated graph, torn and lost
manifest files behind: the gateway must start, report what it did with the index (store stats,
log), and answer paraphrases from an index that matches SQLite, never from a broken one.

Seeded (CASCACHE_CRASH_SEED); the summary of each run is printed (`pytest -s`).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import random
import sqlite3
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np
import pytest

from cascache._types import CacheEntry, Fingerprint, Namespace, Scope, Usage
from cascache.stores.sqlite_hnsw import SqliteHnswStore
from cascache.testing.provider_sim import ProviderSim, SimServer, answer_text
from tests.integration.conftest import GatewayProcess, start_gateway

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.slow]

SEED = int(os.environ.get("CASCACHE_CRASH_SEED", "20261123"))
ADMIN_TOKEN = "crash-loop-admin"
CALLER_KEY = "sk-crash-loop-tenant"
OPENAI_MODEL = "gpt-4o-mini"
ANTHROPIC_MODEL = "claude-sonnet-4-6"
SYSTEM = "Be brief."
DIM = 384  # the default MiniLM embedder's width
WRITERS = 6
#: Filler entries added to the OpenAI namespace so that it is past `exact_search_below` (2,048)
#: and gets an HNSW graph; its files (~5 MB) then take a few milliseconds to save.
FILLERS = 4_000
FILLER_PREFIX = "filler question"

Api = Literal["openai", "anthropic"]

# Questions are "effect of A on B in F" with each unordered {A, B} used once per F: measured with
# the MiniLM embedder, two such questions stay below cosine 0.962 (no accidental semantic hits),
# while the "What's ..." paraphrase of one is at >= 0.99 to it and nearest to it.
NOUNS = ("rain", "salt", "iron", "copper", "sugar", "wind", "ice", "sand", "clay", "oil", "steel", "glass",
         "coffee", "tea", "rice", "wheat", "cotton", "wool", "gold", "silver", "honey", "milk", "pepper",
         "garlic", "paper", "rubber", "marble", "bamboo", "coral", "moss")
FIELDS = ("farming", "cooking", "shipping", "medicine", "architecture", "painting", "mining", "gardening",
          "baking", "weaving")


def question_stream(rng: random.Random) -> Iterator[str]:
    """Unique questions in a seeded order (4,350 in all)."""
    combos = [(a, b, f) for f in FIELDS for a, b in itertools.combinations(NOUNS, 2)]
    rng.shuffle(combos)
    for a, b, f in combos:
        yield f"What is the effect of {a} on {b} in {f}?"


def paraphrase(question: str) -> str:
    return question.replace("What is ", "What's ", 1)


# ---------------------------------------------------------------------------
# Talking to the gateway
# ---------------------------------------------------------------------------


def request_for(api: Api, question: str, stream: bool) -> tuple[str, dict[str, Any], dict[str, str]]:
    """Path, JSON body and headers of one question in the API's own shape."""
    if api == "openai":
        body = {"model": OPENAI_MODEL, "temperature": 0, "stream": stream,
                "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]}
        return "/v1/chat/completions", body, {"authorization": f"Bearer {CALLER_KEY}"}
    body = {"model": ANTHROPIC_MODEL, "max_tokens": 256, "temperature": 0, "stream": stream, "system": SYSTEM,
            "messages": [{"role": "user", "content": question}]}
    return "/v1/messages", body, {"x-api-key": CALLER_KEY, "anthropic-version": "2023-06-01"}


@dataclass
class Reply:
    status: int
    served: str | None
    """The x-cascache header: hit-exact, hit-semantic, miss..."""
    entry_id: str | None
    text: str


def ask(client: httpx.Client, api: Api, question: str, stream: bool = False) -> Reply:
    path, body, headers = request_for(api, question, stream)
    if not stream:
        response = client.post(path, json=body, headers=headers)
        text = response.text
    else:
        with client.stream("POST", path, json=body, headers=headers) as response:
            text = "".join(response.iter_text())
    return Reply(response.status_code, response.headers.get("x-cascache"),
                 response.headers.get("x-cascache-entry"), text)


def answer_of(api: Api, reply: Reply, stream: bool) -> str | None:
    """The whole answer a reply carries; None when it is not one (an SSE stream cut before its end)."""
    if not stream:
        body = json.loads(reply.text)
        return str(body["choices"][0]["message"]["content"] if api == "openai"
                   else body["content"][0]["text"])
    ended = "data: [DONE]" in reply.text if api == "openai" else "event: message_stop" in reply.text
    if not ended:
        return None
    parts: list[str] = []
    for line in reply.text.splitlines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        event = json.loads(line.removeprefix("data: "))
        if api == "openai":
            parts.extend(str(choice.get("delta", {}).get("content") or "")
                         for choice in event.get("choices", []))
        elif event.get("type") == "content_block_delta":
            parts.append(str(event["delta"].get("text", "")))
    return "".join(parts)


def admin(gateway: GatewayProcess, method: str, path: str, body: Any = None) -> dict[str, Any]:
    reply = httpx.request(method, gateway.url + path, json=body, timeout=60,
                          headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def store_stats(gateway: GatewayProcess) -> dict[str, Any]:
    return dict(admin(gateway, "GET", "/admin/stats")["store"])


# ---------------------------------------------------------------------------
# Concurrent writers and the kill
# ---------------------------------------------------------------------------


@dataclass
class Asked:
    api: Api
    question: str
    stream: bool
    answered: bool
    """The client got a 200 with the whole answer (JSON, or an SSE stream that ended properly)."""


@dataclass
class WriteRound:
    """WRITERS threads sending new questions until told to stop; what they asked and got."""

    gateway: GatewayProcess
    next_question: Callable[[], str]
    anthropic_share: float
    rng: random.Random
    asked: list[Asked] = field(default_factory=list)
    _in_flight: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for number in range(WRITERS):
            choices = random.Random(self.rng.random())  # each writer's API and stream picks, seeded
            thread = threading.Thread(target=self._write, args=(choices,), name=f"writer-{number}",
                                      daemon=True)
            self._threads.append(thread)
            thread.start()

    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    def finish(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
            assert not thread.is_alive(), "a writer is stuck after the gateway died"

    def _write(self, choices: random.Random) -> None:
        with httpx.Client(base_url=self.gateway.url, timeout=20) as client:
            while not self._stop.is_set():
                with self._lock:
                    question = self.next_question()
                    self._in_flight += 1
                api: Api = "anthropic" if choices.random() < self.anthropic_share else "openai"
                stream = choices.random() < 0.5
                answered = False
                try:
                    reply = ask(client, api, question, stream)
                    answered = reply.status == 200 and answer_of(api, reply, stream) == answer_text(question)
                except httpx.HTTPError:
                    pass  # the gateway was killed under this request
                finally:
                    with self._lock:
                        self._in_flight -= 1
                        self.asked.append(Asked(api, question, stream, answered))
                if not answered and self.gateway.process.poll() is not None:
                    return


def kill(gateway: GatewayProcess) -> None:
    gateway.process.kill()  # SIGKILL: no shutdown hook, no index save, no WAL checkpoint
    gateway.process.wait(timeout=30)


def kill_at_random_moment(round_: WriteRound, rng: random.Random) -> int:
    """Let the writers run for a seeded random time, then SIGKILL; returns the requests in flight."""
    time.sleep(rng.uniform(0.4, 1.4))
    in_flight = round_.in_flight()
    kill(round_.gateway)
    return in_flight


def kill_during_index_save(round_: WriteRound, index_dir: Path, timeout_s: float = 30) -> list[str]:
    """SIGKILL as soon as index files are being written (a temporary name exists); returns what is left.

    A manifest seen first means the poll missed the save: the kill then comes just after it.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            names = os.listdir(index_dir)
        except FileNotFoundError:
            names = []
        if any(name.endswith((".tmp", ".json")) for name in names):
            kill(round_.gateway)
            return sorted(os.listdir(index_dir))
        time.sleep(0.0002)
    kill(round_.gateway)
    pytest.fail("the gateway never started saving an index file")


# ---------------------------------------------------------------------------
# The store, read directly after a kill
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredEntry:
    label: int
    id: str
    namespace: str
    scope: str
    provider: str
    query: str
    answer: str


def stored_answer(provider: str, response: dict[str, Any]) -> str:
    """The finished answer in an entry's stored response (stream or not, it is stored whole)."""
    if provider == "openai":
        assert response.get("object") == "chat.completion", response
        (choice,) = response["choices"]
        assert choice["finish_reason"] == "stop", response
        return str(choice["message"]["content"])
    assert response.get("type") == "message" and response.get("stop_reason") == "end_turn", response
    return str(response["content"][0]["text"])


def inspect_store(db_path: Path) -> dict[str, StoredEntry]:
    """Integrity check, then every entry: a complete answer to its own question, a sane vector. By query."""
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows = conn.execute("SELECT label, id, namespace, scope, provider, query, response, usage, "
                            "has_vector, vector FROM entries").fetchall()
        sequence = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'entries'").fetchone()
        orphan_tags = conn.execute(
            "SELECT count(*) FROM entry_tags WHERE label NOT IN (SELECT label FROM entries)").fetchone()[0]
    assert orphan_tags == 0
    entries: dict[str, StoredEntry] = {}
    for label, entry_id, namespace, scope, provider, query, response, usage, has_vector, vector in rows:
        assert query is not None, f"entry {entry_id} has no query"
        answer = stored_answer(provider, json.loads(response))
        # The simulator's answer is a function of the question: a cut-off or mixed-up answer differs.
        assert answer == answer_text(query), (query, answer)
        assert isinstance(json.loads(usage), dict)
        assert has_vector == 1 and vector is not None and len(vector) == DIM * 4, entry_id
        norm = float(np.linalg.norm(np.frombuffer(vector, dtype=np.float32)))
        assert abs(norm - 1.0) < 1e-3, (entry_id, norm)
        assert query not in entries, f"two entries for {query!r}"
        entries[query] = StoredEntry(label, entry_id, namespace, scope, provider, query, answer)
    # AUTOINCREMENT's counter never falls behind, so no label is handed out twice across crashes.
    assert not entries or (sequence is not None and sequence[0] >= max(e.label for e in entries.values()))
    return entries


@dataclass
class CrashLog:
    """What the loops saw, for the report (printed with `pytest -s`)."""

    cycles: int = 0
    entries_checked: int = 0
    integrity_ok: int = 0
    exact_hits: int = 0
    semantic_hits: int = 0
    misses_upstream: int = 0
    in_flight_at_kill: list[int] = field(default_factory=list)
    answered_streams_not_cached: int = 0
    """Streams a client read to the end whose write-back the kill beat (allowed: it runs after the
    last event is sent)."""
    index_events: list[str] = field(default_factory=list)


def check_after_kill(db_path: Path, round_: WriteRound, known: dict[str, StoredEntry],
                     side_questions: set[str], log: CrashLog) -> dict[str, StoredEntry]:
    """The store after a kill: consistent, complete, nothing lost that a client got, nothing invented."""
    entries = inspect_store(db_path)
    log.integrity_ok += 1
    log.entries_checked += len(entries)
    asked = {item.question for item in round_.asked} | side_questions
    invented = [query for query in entries if query not in asked and query not in known]
    assert not invented, f"entries for questions nobody asked: {invented[:3]}"
    # A non-streamed answer is written back before it is sent, and a commit survives a process
    # crash (WAL, synchronous=NORMAL): every one a client received must be there.
    lost = [item for item in round_.asked
            if item.answered and not item.stream and item.question not in entries]
    assert not lost, f"answered questions lost in the crash: {lost[:3]}"
    log.answered_streams_not_cached += sum(
        1 for item in round_.asked if item.answered and item.stream and item.question not in entries)
    # What was stored before this cycle survives it (nothing here deletes entries).
    assert set(known) <= set(entries), sorted(set(known) - set(entries))[:5]
    # New labels are above every label from before this cycle (never reused).
    old_top = max((entry.label for entry in known.values()), default=0)
    assert all(entry.label > old_top for query, entry in entries.items() if query not in known)
    return entries


# ---------------------------------------------------------------------------
# The restarted gateway serves
# ---------------------------------------------------------------------------


def check_exact_hits(gateway: GatewayProcess, entries: list[StoredEntry], rng: random.Random, log: CrashLog,
                     sample: int = 12) -> None:
    """Stored before the kill -> an exact hit now, by that entry, with its answer (streamed or not)."""
    with httpx.Client(base_url=gateway.url, timeout=20) as client:
        for entry in rng.sample(entries, min(sample, len(entries))):
            api: Api = "openai" if entry.provider == "openai" else "anthropic"
            stream = rng.random() < 0.5
            reply = ask(client, api, entry.query, stream)
            assert reply.status == 200 and reply.served == "hit-exact", (entry.query, reply.served,
                                                                         reply.text[:300])
            assert reply.entry_id == entry.id
            assert answer_of(api, reply, stream) == entry.answer
            log.exact_hits += 1


def check_semantic_hits(gateway: GatewayProcess, entries: list[StoredEntry], log: CrashLog) -> None:
    """A paraphrase of a stored question is served from the index, by the very entry it paraphrases."""
    assert entries
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        for entry in entries:
            api: Api = "openai" if entry.provider == "openai" else "anthropic"
            reply = ask(client, api, paraphrase(entry.query))
            assert reply.status == 200 and reply.served == "hit-semantic", (entry.query, reply.served)
            assert reply.entry_id == entry.id, (entry.query, reply.entry_id, entry.id)
            assert answer_of(api, reply, stream=False) == entry.answer
            log.semantic_hits += 1


def check_miss_goes_upstream(gateway: GatewayProcess, sim: ProviderSim, question: str, log: CrashLog) -> None:
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        reply = ask(client, "openai", question)
    assert reply.status == 200 and reply.served == "miss", reply.served
    assert answer_of("openai", reply, stream=False) == answer_text(question)
    assert any(last_user_text(record.body) == question for record in sim.log[-20:]), "upstream never saw it"
    log.misses_upstream += 1


def last_user_text(body: Any) -> str | None:
    if not isinstance(body, dict):
        return None
    users = [message.get("content") for message in body.get("messages", [])
             if isinstance(message, dict) and message.get("role") == "user"]
    return users[-1] if users and isinstance(users[-1], str) else None


# ---------------------------------------------------------------------------
# Index files
# ---------------------------------------------------------------------------


def manifests(index_dir: Path) -> list[Path]:
    return sorted(index_dir.glob("*.json")) if index_dir.exists() else []


def saved_labels(manifest_path: Path) -> set[int]:
    labels = np.load(manifest_path.with_name(manifest_path.stem + ".labels.npy"), allow_pickle=False)
    return set(labels.tolist())


def index_files_consistent(manifest_path: Path) -> bool:
    """Our own check of what a manifest promises: graph size and CRC32, label count and CRC32."""
    manifest = json.loads(manifest_path.read_text())
    graph = manifest_path.with_name(manifest_path.stem + ".hnsw")
    labels = np.sort(np.fromiter(saved_labels(manifest_path), dtype=np.int64))
    return (graph.stat().st_size == manifest["graph_bytes"]
            and zlib.crc32(graph.read_bytes()) == manifest["graph_crc32"]
            and len(labels) == manifest["count"]
            and zlib.crc32(labels.astype("<i8").tobytes()) == manifest["labels_crc32"])


def wait_for_manifest(index_dir: Path, timeout_s: float = 30) -> Path:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := manifests(index_dir):
            return found[0]
        time.sleep(0.05)
    pytest.fail("no index manifest was written")


def seed_fillers(store_dir: Path, namespace: str, scope: str, count: int, seed: int) -> set[str]:
    """Grow a namespace past the exact-search limit with complete entries under random vectors.

    Written through the store's own `put` while no gateway runs (the directory lock admits one
    process). Random unit vectors sit at cosine ~0 to any question, so they never answer one;
    through the gateway, 4,000 writes would cost a minute of this test's budget.
    """
    vectors = np.random.default_rng(seed).standard_normal((count, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = [f"{FILLER_PREFIX} {number} about nothing in particular" for number in range(count)]

    async def put_all() -> None:
        store = SqliteHnswStore(store_dir, DIM)
        try:
            for query, vector in zip(queries, vectors, strict=True):
                await store.put(CacheEntry(
                    id=uuid.uuid4().hex, fingerprint=Fingerprint(uuid.uuid4().hex),
                    namespace=Namespace(namespace), scope=Scope(scope), version="", provider="openai",
                    model=OPENAI_MODEL, query=query, vector=vector, created_at=time.time(), expires_at=None,
                    response=filler_completion(answer_text(query)),
                    usage=Usage(input_tokens=10, output_tokens=10)))
        finally:
            await store.close()

    asyncio.run(put_all())
    return set(queries)


def filler_completion(text: str) -> dict[str, Any]:
    message = {"role": "assistant", "content": text}
    return {"id": "chatcmpl-filler", "object": "chat.completion", "created": int(time.time()),
            "model": OPENAI_MODEL, "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}}


def index_event(when: str, stats: dict[str, Any]) -> str:
    keys = ("index_files_verified", "index_files_rejected", "index_reconciles", "index_rebuilds",
            "index_saves")
    return f"{when}: " + ", ".join(f"{key}={stats.get(key)}" for key in keys)


# ---------------------------------------------------------------------------
# The rig: one simulator, one store directory, the gateways started on it in turn
# ---------------------------------------------------------------------------


@dataclass
class Rig:
    tmp: Path
    sim_server: SimServer
    rng: random.Random
    questions: Iterator[str]
    log: CrashLog = field(default_factory=CrashLog)
    side_questions: set[str] = field(default_factory=set)
    """Questions stored outside the write rounds (restart checks' misses, fillers)."""
    gateways: list[GatewayProcess] = field(default_factory=list)

    @property
    def store_dir(self) -> Path:
        return self.tmp / "store"

    @property
    def db_path(self) -> Path:
        return self.store_dir / "cache.db"

    @property
    def index_dir(self) -> Path:
        return self.store_dir / "index"

    def start(self) -> GatewayProcess:
        url = self.sim_server.base_url + "/v1"
        env = {"CASCACHE_ADMIN_TOKEN": ADMIN_TOKEN, "CASCACHE_UPSTREAM_ANTHROPIC_URL": url,
               # No background re-asks of semantic hits: the simulator's log then holds only real misses.
               "CASCACHE_VERIFICATION_SAMPLE_SHARE": "0"}
        gateway = start_gateway(self.tmp, "--upstream-url", url, "--store", str(self.store_dir), env=env,
                                timeout_s=60)
        self.gateways.append(gateway)
        return gateway

    def writers(self, gateway: GatewayProcess, anthropic_share: float) -> WriteRound:
        round_ = WriteRound(gateway, lambda: next(self.questions), anthropic_share,
                            random.Random(self.rng.random()))
        round_.start()
        return round_

    def random_kill_cycle(self, gateway: GatewayProcess, known: dict[str, StoredEntry],
                          anthropic_share: float = 0.0) -> dict[str, StoredEntry]:
        """Concurrent writers, SIGKILL at a seeded random moment, then the store checked directly."""
        round_ = self.writers(gateway, anthropic_share)
        self.log.in_flight_at_kill.append(kill_at_random_moment(round_, self.rng))
        round_.finish()
        entries = check_after_kill(self.db_path, round_, known, self.side_questions, self.log)
        assert len(entries) > len(known), "no write reached the store"
        self.log.cycles += 1
        return entries

    def restart_checks(self, gateway: GatewayProcess, known: dict[str, StoredEntry]) -> None:
        """A restarted gateway counts what is stored, exact-hits it, and sends a new question upstream."""
        assert store_stats(gateway)["entries"] == len(known)
        check_exact_hits(gateway, real_entries(known), self.rng, self.log)
        question = next(self.questions)
        self.side_questions.add(question)
        check_miss_goes_upstream(gateway, self.sim_server.sim, question, self.log)

    def stop_all(self) -> None:
        for gateway in self.gateways:
            if gateway.process.poll() is None:
                kill(gateway)


def real_entries(entries: dict[str, StoredEntry], provider: str | None = None) -> list[StoredEntry]:
    """Entries the gateway wrote (not fillers), oldest first."""
    return sorted((e for e in entries.values() if not e.query.startswith(FILLER_PREFIX)
                   and provider in (None, e.provider)), key=lambda e: e.label)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rng = random.Random(SEED)
    # Latency and paced streams keep requests in flight, so kills land mid-answer and mid-write.
    with SimServer(ProviderSim(latency_s=0.005, stream_delay_s=0.01)) as sim_server:
        rig = Rig(tmp_path, sim_server, rng, question_stream(random.Random(rng.random())))
        try:
            yield rig
        finally:
            rig.stop_all()
            print(f"crash loop (seed {SEED}):", json.dumps(rig.log.__dict__))


# ---------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------


def test_random_kills_mid_write_leave_a_consistent_serving_store(rig: Rig) -> None:
    """Six gateways on one store, each SIGKILLed at a seeded random moment under concurrent writes."""
    known: dict[str, StoredEntry] = {}
    for _ in range(6):
        gateway = rig.start()
        if known:
            rig.restart_checks(gateway, known)
            # Small namespaces: searched exactly, their index built from SQLite on first use.
            paraphrased = real_entries(known, "openai")[:2] + real_entries(known, "anthropic")[:1]
            check_semantic_hits(gateway, paraphrased, rig.log)
        known = rig.random_kill_cycle(gateway, known, anthropic_share=0.25)
    # The kills really landed mid-write: requests were in flight at (nearly) every one.
    assert sum(1 for n in rig.log.in_flight_at_kill if n > 0) >= 5, rig.log.in_flight_at_kill


def test_hnsw_index_survives_kill_during_save_and_torn_files(rig: Rig) -> None:
    """A namespace big enough for HNSW: killed while its files are saved, restarted over torn files.

    Each restart must say what it did with the persisted index (store stats, log) and answer a
    paraphrase by the entry it paraphrases, i.e. from an index that matches SQLite.
    """
    log = rig.log

    # Cycle 1: real questions in one OpenAI namespace, SIGKILL at a random moment; then fillers.
    known = rig.random_kill_cycle(rig.start(), {})
    first = real_entries(known)[0]
    namespace, scope = first.namespace, first.scope
    rig.side_questions |= seed_fillers(rig.store_dir, namespace, scope, FILLERS, SEED)
    known = inspect_store(rig.db_path)
    assert not manifests(rig.index_dir)

    # Cycle 2: the first miss makes the store build the namespace's HNSW graph (no files yet) and
    # save it; SIGKILL as soon as the save has begun. Exact hits come first: they never load an index.
    gateway = rig.start()
    check_exact_hits(gateway, real_entries(known), rig.rng, log, sample=6)
    round_ = rig.writers(gateway, anthropic_share=0.0)
    left = kill_during_index_save(round_, rig.index_dir)
    round_.finish()
    known = check_after_kill(rig.db_path, round_, known, rig.side_questions, log)
    survived = manifests(rig.index_dir)
    # The save is ordered so that a manifest, when present, describes exactly the files beside it.
    assert all(index_files_consistent(path) for path in survived), left
    log.index_events.append(f"killed during save, files left: {left}")
    log.cycles += 1

    # Cycle 3: no manifest -> rebuilt from SQLite and saved at once; a complete one -> verified, used.
    gateway = rig.start()
    rig.restart_checks(gateway, known)
    check_semantic_hits(gateway, rig.rng.sample(real_entries(known), 3), log)
    stats = store_stats(gateway)
    assert stats["hnsw_indexes"] == 1, stats
    if survived:
        assert stats["index_files_verified"] == 1 and stats["index_rebuilds"] == 0, stats
    else:
        assert stats["index_rebuilds"] == 1 and stats["index_files_verified"] == 0, stats
        assert stats["index_files_rejected"] == 0, stats  # leftover temporaries are no claim
    log.index_events.append(index_event("restart after kill during save", stats))
    manifest = wait_for_manifest(rig.index_dir)
    assert index_files_consistent(manifest)
    assert not [p.name for p in rig.index_dir.iterdir() if p.name.endswith(".tmp")], "temporaries left"
    in_saved_index = saved_labels(manifest)
    if not survived:  # rebuilt from SQLite as it was at the restart: every vector, nothing else
        assert in_saved_index == {e.label for e in known.values() if e.provider == "openai"}
    known = rig.random_kill_cycle(gateway, known)

    # Cycle 4: intact files, but behind SQLite (cycle 3 wrote after saving): verified, then patched.
    gateway = rig.start()
    rig.restart_checks(gateway, known)
    behind = [e for e in real_entries(known) if e.label not in in_saved_index]
    assert len(behind) >= 2
    check_semantic_hits(gateway, behind[:2] + rig.rng.sample(real_entries(known), 1), log)
    stats = store_stats(gateway)
    assert stats["index_files_verified"] == 1 and stats["index_reconciles"] == 1, stats
    assert stats["index_rebuilds"] == 0 and stats["index_files_rejected"] == 0, stats
    log.index_events.append(index_event("files behind SQLite", stats))
    known = rig.random_kill_cycle(gateway, known)

    # Cycle 5: a torn graph file (its second half gone) -> refused by its checksum, rebuilt.
    graph = next(rig.index_dir.glob("*.hnsw"))
    os.truncate(graph, graph.stat().st_size // 2)
    gateway = rig.start()
    rig.restart_checks(gateway, known)
    check_semantic_hits(gateway, rig.rng.sample(real_entries(known), 3), log)
    stats = store_stats(gateway)
    assert stats["index_files_rejected"] == 1 and stats["index_rebuilds"] == 1, stats
    assert "is damaged (checksum); rebuilding" in gateway.log()
    log.index_events.append(index_event("truncated graph", stats))
    assert index_files_consistent(wait_for_manifest(rig.index_dir))
    known = rig.random_kill_cycle(gateway, known)

    # Cycle 6: a torn manifest (cut mid-JSON) -> unreadable, rebuilt. Then a clean stop (SIGTERM):
    # the store closes and saves the index with every change since the rebuild.
    manifest = manifests(rig.index_dir)[0]
    manifest.write_bytes(manifest.read_bytes()[: manifest.stat().st_size // 2])
    gateway = rig.start()
    rig.restart_checks(gateway, known)
    check_semantic_hits(gateway, rig.rng.sample(real_entries(known), 3), log)
    stats = store_stats(gateway)
    assert stats["index_files_rejected"] == 1 and stats["index_rebuilds"] == 1, stats
    assert "unreadable" in gateway.log()
    log.index_events.append(index_event("torn manifest", stats))
    gateway.stop()
    log.cycles += 1
    known = inspect_store(rig.db_path)
    log.integrity_ok += 1
    log.entries_checked += len(known)
    (manifest,) = manifests(rig.index_dir)
    assert index_files_consistent(manifest)
    assert saved_labels(manifest) == {e.label for e in known.values() if e.provider == "openai"}

    # Cycle 7: manifest lost, rebuild, SIGKILL during its save again; then purge the namespace. A save
    # cut short leaves temporary files as big as the graph: once the namespace is gone, none may stay.
    manifest.unlink()
    gateway = rig.start()
    round_ = rig.writers(gateway, anthropic_share=0.0)
    left = kill_during_index_save(round_, rig.index_dir)
    round_.finish()
    known = check_after_kill(rig.db_path, round_, known, rig.side_questions, log)
    log.index_events.append(f"killed during save, files left: {left}")
    log.cycles += 1
    gateway = rig.start()
    purged = admin(gateway, "POST", "/admin/purge", {"namespace": namespace})["purged"]
    assert purged == sum(e.namespace == namespace for e in known.values())
    stem = hashlib.blake2b(namespace.encode(), digest_size=16).hexdigest()
    assert not [p.name for p in rig.index_dir.iterdir() if p.name.startswith(stem)], left
    gateway.stop()
    assert not [e for e in inspect_store(rig.db_path).values() if e.namespace == namespace]
