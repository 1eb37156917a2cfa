"""How fast is the gateway on an exact hit, and how much latency does it add on a miss?

Question: on this machine (2 cores), through a real `cascache serve` process,
(1) how many exact hits per second does the gateway serve, at what p50/p99, and
(2) how much latency does it add to a request it has to send upstream?

Set-up, loopback only, every process started and stopped here:

- a fake OpenAI upstream (bench/_fixed_upstream.py) that answers every chat
  completion after a fixed delay (20 ms by default) with a cacheable answer;
- `cascache serve --upstream-url ...` in front of it, on a fresh data dir
  (the default SQLite + HNSW store and the local ONNX embedder; the llama.cpp
  engine is never started because an upstream URL is always given);
- a load generator in its own process (bench/_loadgen.py): a raw asyncio
  HTTP/1.1 keep-alive client on uvloop that checks status 200 and the
  `x-cascache` header of every response.

Measurements:

0. Baseline: the load generator against a trivial server (immediate canned
   replies) on the same machine, to show the client is not the bottleneck.
1. Exact hits: warm the cache with distinct requests (each must be a `miss`),
   run a short untimed hit warm-up, then send those same requests round robin
   at a fixed concurrency, bounded by a count and a time; every response must
   be `hit-exact`. Reports req/s, latency percentiles and the gateway's CPU use.
2. Added latency on a miss: never-repeated requests, sequentially (concurrency
   1), each sent both straight to the upstream (a) and through the gateway (b),
   alternating which goes first. Added latency = (b) - (a) per percentile.
   Done twice, on two gateway processes: semantic tier on (the miss embeds the
   query with the ONNX model and searches the index) and semantic tier off
   (`CASCACHE_SEMANTIC_ENABLED=false`: the "excluding embedding" figure).

Request texts are random bags of common words, so no two are paraphrases: a
semantic hit between them (which would spoil a warm-up or a miss measurement)
would need a cosine similarity far above what unrelated texts reach, and any
response with the wrong `x-cascache` is counted as an error, not timed.

Everything shares two cores with whatever else runs on the machine, so the
report shows how much CPU unrelated processes used during each run ("other
CPU", from /proc/stat) and warns when it was enough to distort the figures.

Caveat on precision: the fake upstream's delay is a timer that fires 0-1 ms
late (epoll rounds its timeout up to whole ms). That jitter hits (a) and (b)
alike, so it cancels in the difference of medians but widens p99s.

Run:    .venv/bin/python bench/gateway.py            (about a minute)
        .venv/bin/python bench/gateway.py --quick    (a few seconds, smoke run)
        .venv/bin/python bench/gateway.py --profile  (adds a cProfile'd hit run: where a hit spends time)
The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import http.client
import io
import json
import os
import pstats
import random
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from _loadgen import percentile
from rich.console import Console
from rich.table import Table

BENCH = Path(__file__).resolve().parent
PYTHON = sys.executable
CHAT_PATH = "/v1/chat/completions"
HOST = "127.0.0.1"
HIT_TARGET_RPS = 3000.0
MISS_OVERHEAD_TARGET_P50_MS = 1.0
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
#: Share of a core used by unrelated processes above which the hit figures are flagged as disturbed.
BUSY_MACHINE_SHARE = 0.25

# Wide enough for the tables when the output is piped (rich assumes 80 columns then).
console = Console(width=max(120, Console().width))

# Common, neutral words (deduplicated, order kept so a seed always gives the same texts):
# no time-sensitive ones ("today", "latest", "weather"...), which the policy bypasses,
# so every request here is cacheable.
_WORDS = list(dict.fromkeys("""
apple river mountain garden window table pencil bottle candle castle forest island
ladder mirror needle ocean pillow rabbit saddle tunnel violin wagon yellow zebra anchor
basket button carpet dragon engine feather glove hammer jacket kettle lantern magnet
napkin orchid parrot quilt rocket spider tiger umbrella velvet walnut blanket bridge
cactus desert eagle falcon glacier harbor igloo jungle kitten lemon marble nickel
oyster pepper quartz raven silver thunder valley whistle barrel cobalt dolphin ember
fossil granite hollow iron jasmine kayak lizard meadow nectar olive pebble quiver
ribbon salmon timber utensil vessel willow yarn acorn bamboo copper dune elbow fern
goblet hazel ivory juniper koala lotus maple nutmeg orbit pearl radish sapphire tulip
vanilla wheat algebra biology chemistry geometry history grammar poetry painting
sculpture theater cinema opera ballet chess soccer tennis cycling rowing archery
fencing hiking sailing skiing surfing baking brewing carving knitting pottery
welding gardening fishing camping climbing juggling printing weaving plumbing
wiring roofing tiling painting sanding polishing drilling sawing mixing folding
compass telescope microscope battery circuit keyboard monitor printer router server
database network protocol algorithm compiler library variable function pointer
vector matrix tensor gradient kernel thread process socket packet buffer cache
invoice receipt mortgage pension salary budget ledger audit tariff subsidy
cathedral monastery pyramid lighthouse windmill aqueduct fortress palace village
harvest orchard vineyard pasture stable barn silo tractor plough sickle scythe
volcano canyon lagoon prairie tundra savanna marsh delta plateau reef geyser
bicycle scooter tram ferry glider balloon submarine helicopter caravan sledge
sonata symphony ballad anthem chorus melody rhythm harmony tempo lyric verse
diamond emerald ruby topaz garnet opal amber jade onyx pearl coral crystal
""".split()))  # noqa: SIM905 (a block of words reads better than quoted strings)


@dataclass(frozen=True, slots=True)
class Plan:
    """How much of each measurement to do."""

    concurrency: int
    warm_requests: int
    """Distinct requests stored before the hit run (each must be a miss)."""
    hit_warmup: int
    """Untimed hits before the measured run (connection set-up, SQLite page cache)."""
    hit_requests: int
    hit_seconds: float
    baseline_requests: int
    baseline_seconds: float
    miss_pairs: int
    miss_warmup_pairs: int
    miss_seconds: float
    delay_ms: float


FULL = Plan(concurrency=48, warm_requests=200, hit_warmup=2_000, hit_requests=20_000, hit_seconds=15.0,
            baseline_requests=50_000, baseline_seconds=5.0, miss_pairs=300, miss_warmup_pairs=20,
            miss_seconds=60.0, delay_ms=20.0)
QUICK = Plan(concurrency=32, warm_requests=50, hit_warmup=300, hit_requests=3_000, hit_seconds=3.0,
             baseline_requests=5_000, baseline_seconds=1.5, miss_pairs=30, miss_warmup_pairs=5,
             miss_seconds=15.0, delay_ms=20.0)


# --- requests ----------------------------------------------------------------------------


class Texts:
    """Never-repeated user messages: random bags of common words (unrelated, so never paraphrases)."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self._seen: set[str] = set()

    def take(self, n: int) -> list[str]:
        out: list[str] = []
        while len(out) < n:
            words = self._rng.sample(_WORDS, self._rng.randint(7, 11))
            text = " ".join(words).capitalize() + "?"
            if text not in self._seen:
                self._seen.add(text)
                out.append(text)
        return out


def chat_body(text: str) -> str:
    """A typical small chat request: system prompt, one user turn, deterministic sampling."""
    return json.dumps({
        "model": "bench-model",
        "messages": [{"role": "system", "content": "You are a concise assistant."},
                     {"role": "user", "content": text}],
        "temperature": 0,
        "max_tokens": 64,
    }, separators=(",", ":"))


# Sent on every request: a Bearer key gives the requests a tenant scope, as real traffic has.
REQUEST_HEADERS = {"authorization": "Bearer bench-tenant-key"}


# --- processes ---------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM it when this script dies, even by SIGKILL.

    `finally` blocks stop the children on any normal exit or SIGTERM; this covers the rest,
    so no gateway is ever left listening after the benchmark is gone.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Service:
    """A child process we started; `stop` ends exactly it (SIGTERM, then SIGKILL)."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None,
                 log: Path | None = None, capture_stdout: bool = False) -> None:
        self.name = name
        self.log = log
        self._log_file = log.open("wb") if log is not None else None
        self.proc = subprocess.Popen(
            list(argv), env=dict(env) if env is not None else None, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture_stdout else self._log_file or subprocess.DEVNULL,
            stderr=self._log_file or subprocess.DEVNULL,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 (this script starts no threads)
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, grace_s: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self._log_file is not None:
            self._log_file.close()

    def log_tail(self, lines: int = 30) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def free_port() -> int:
    # The kernel picks a free port; the tiny window before the gateway binds it is acceptable here.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def start_fixed_upstream(stack: contextlib.ExitStack, *, trivial: bool, delay_ms: float,
                         max_s: float) -> tuple[Service, int]:
    """Start bench/_fixed_upstream.py; return it and the port it printed."""
    argv = [PYTHON, str(BENCH / "_fixed_upstream.py"), "--host", HOST, "--port", "0",
            "--delay-ms", str(delay_ms), "--max-seconds", str(max_s)]
    if trivial:
        argv.append("--trivial")
    service = Service("trivial server" if trivial else "fixed upstream", argv, capture_stdout=True)
    stack.callback(service.stop)
    assert service.proc.stdout is not None
    ready, _, _ = select.select([service.proc.stdout], [], [], 15.0)
    line = service.proc.stdout.readline().decode() if ready else ""
    if not line.startswith("listening "):
        raise RuntimeError(f"{service.name} did not start (got {line!r})")
    return service, int(line.split()[1])


def gateway_env(semantic: bool) -> dict[str, str]:
    # Only our settings reach the gateway: a CASCACHE_* variable from the caller's
    # shell would silently change what is measured.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASCACHE_")}
    env["CASCACHE_SEMANTIC_ENABLED"] = "true" if semantic else "false"
    return env


# The gateway under cProfile, profiling only between SIGUSR1 (start) and SIGUSR2 (stop and
# write the file), so start-up, model loading and warm-up stay out of the figures.
# (`python -m cProfile` would also be wrong at exit: after its graceful shutdown uvicorn
# re-raises SIGTERM with the default handler, killing the process before the file is written.)
_PROFILED_SERVE = """
import cProfile, os, signal, sys
from cascache.cli import main
out = sys.argv[1]
sys.argv = ["cascache", *sys.argv[2:]]
profiler = cProfile.Profile()
def start(signum, frame):
    profiler.enable()
def stop(signum, frame):
    profiler.disable()
    profiler.dump_stats(out + ".part")
    os.replace(out + ".part", out)
signal.signal(signal.SIGUSR1, start)
signal.signal(signal.SIGUSR2, stop)
main()
"""


def start_gateway(stack: contextlib.ExitStack, workdir: Path, name: str, upstream_port: int, *,
                  semantic: bool, profile_to: Path | None = None) -> tuple[Service, int]:
    """Start `cascache serve` on a fresh data dir; return it and its port once /healthz answers."""
    port = free_port()
    data_dir = workdir / f"data-{name}"
    serve = ["serve", "--host", HOST, "--port", str(port), "--data-dir", str(data_dir),
             "--upstream-url", f"http://{HOST}:{upstream_port}/v1", "--log-level", "warning"]
    if profile_to is None:
        argv = [PYTHON, "-m", "cascache.cli", *serve]
    else:
        argv = [PYTHON, "-c", _PROFILED_SERVE, str(profile_to), *serve]
    service = Service(f"gateway ({name})", argv, env=gateway_env(semantic),
                      log=workdir / f"gateway-{name}.log")
    stack.callback(service.stop)
    deadline = time.monotonic() + 120.0  # loading the ONNX model is the slow part
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            raise RuntimeError(f"{service.name} exited with {service.proc.returncode}:\n{service.log_tail()}")
        if http_get(port, "/healthz")[0] == 200:
            return service, port
        time.sleep(0.2)
    raise RuntimeError(f"{service.name} did not answer /healthz within 120 s:\n{service.log_tail()}")


def http_get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection(HOST, port, timeout=5.0)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    except OSError:
        return 0, ""
    finally:
        conn.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # Fields after the command name start at field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (everything but idle and iowait), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def run_loadgen(job: dict[str, Any], bound_s: float) -> dict[str, Any]:
    """Run one load generator job in its own process and return its JSON result."""
    done = subprocess.run([PYTHON, str(BENCH / "_loadgen.py")], input=json.dumps(job).encode(),
                          capture_output=True, timeout=bound_s + 120.0, check=False)
    if done.returncode != 0:
        stderr = done.stderr.decode(errors="replace")
        raise RuntimeError(f"load generator failed ({done.returncode}):\n{stderr}")
    result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result


def target(port: int, expect: str | None) -> dict[str, Any]:
    return {"host": HOST, "port": port, "path": CHAT_PATH, "expect": expect}


def hammer(port: int, bodies: list[str], expect: str | None, concurrency: int, requests: int,
           seconds: float) -> dict[str, Any]:
    job = {"mode": "hammer", "target": target(port, expect), "bodies": bodies, "headers": REQUEST_HEADERS,
           "concurrency": concurrency, "max_requests": requests, "max_seconds": seconds}
    return run_loadgen(job, seconds)


def require_clean(what: str, result: Mapping[str, Any], service: Service | None = None) -> None:
    """Stop the benchmark when responses failed their checks: such figures would mean nothing."""
    if result["errors"]:
        tail = f"\ngateway log:\n{service.log_tail()}" if service is not None else ""
        raise RuntimeError(f"{what}: {result['errors']} bad responses, e.g. {result['error_samples']}{tail}")


# --- measurements -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HitRun:
    result: dict[str, Any]
    gateway_cpu_s: float
    others_cpu_s: float
    """CPU used by every other process on the machine during the run (the load generator's excluded)."""

    @property
    def gateway_core_share(self) -> float:
        return self.gateway_cpu_s / float(self.result["elapsed_s"])

    @property
    def others_core_share(self) -> float:
        return self.others_cpu_s / float(self.result["elapsed_s"])

    @property
    def cpu_us_per_hit(self) -> float:
        """Gateway CPU per hit: unlike req/s, barely moved by other load, so the figure to optimise."""
        return self.gateway_cpu_s / max(1, int(self.result["ok"])) * 1e6


@dataclass(frozen=True, slots=True)
class MissRun:
    label: str
    direct_ms: list[float]
    gateway_ms: list[float]
    stages: dict[str, float]
    """Mean seconds per observation of the gateway's own stage histograms (embed, search, upstream)."""
    others_core_share: float
    """Share of a core used by unrelated processes meanwhile (their wake-ups delay ours)."""

    @property
    def pairs(self) -> int:
        return min(len(self.direct_ms), len(self.gateway_ms))

    def added(self, q: float) -> float:
        return percentile(self.gateway_ms, q) - percentile(self.direct_ms, q)


def measure_baseline(stack: contextlib.ExitStack, plan: Plan) -> dict[str, Any]:
    _, port = start_fixed_upstream(stack, trivial=True, delay_ms=0.0, max_s=plan.baseline_seconds + 120.0)
    result = hammer(port, [chat_body("baseline request")], "hit-exact", plan.concurrency,
                    plan.baseline_requests, plan.baseline_seconds)
    require_clean("baseline", result)
    return result


def measure_hits(gateway: Service, port: int, texts: Texts, plan: Plan) -> HitRun:
    bodies = [chat_body(t) for t in texts.take(plan.warm_requests)]
    # Store each distinct request once; each must be a miss, so the hit run below hits real entries.
    warm = hammer(port, bodies, "miss", min(16, plan.concurrency), len(bodies), 60.0)
    require_clean("warming the cache", warm, gateway)
    warm_hits = hammer(port, bodies, "hit-exact", plan.concurrency, plan.hit_warmup, 30.0)
    require_clean("hit warm-up", warm_hits, gateway)
    cpu_before, busy_before = cpu_seconds(gateway.pid), machine_busy_seconds()
    result = hammer(port, bodies, "hit-exact", plan.concurrency, plan.hit_requests, plan.hit_seconds)
    cpu, busy = cpu_seconds(gateway.pid) - cpu_before, machine_busy_seconds() - busy_before
    require_clean("exact-hit run", result, gateway)
    # Whatever else ran meanwhile (other jobs on this machine) took cores from the gateway.
    others = max(0.0, busy - cpu - result["cpu_s"])
    return HitRun(result, cpu, others)


_STAGE = re.compile(r'^cascache_stage_seconds_(sum|count)\{stage="([a-z]+)"\} ([0-9.e+-]+)$', re.MULTILINE)


def stage_totals(port: int) -> dict[str, tuple[float, float]]:
    """(sum of seconds, count) per stage from the gateway's /metrics (what the gateway itself timed)."""
    status, text = http_get(port, "/metrics")
    if status != 200:
        return {}
    totals: dict[str, dict[str, float]] = {}
    for kind, stage, value in _STAGE.findall(text):
        totals.setdefault(stage, {})[kind] = float(value)
    return {stage: (t.get("sum", 0.0), t.get("count", 0.0)) for stage, t in totals.items()}


def stage_means(before: dict[str, tuple[float, float]],
                after: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Mean seconds per stage over the requests between two snapshots (earlier phases left out)."""
    means: dict[str, float] = {}
    for stage, (total, count) in after.items():
        total0, count0 = before.get(stage, (0.0, 0.0))
        # A disabled tier still observes 0 s per request; leaving those out keeps the line honest.
        if count > count0 and total > total0:
            means[stage] = (total - total0) / (count - count0)
    return means


def measure_misses(label: str, gateway: Service, port: int, upstream: Service, upstream_port: int,
                   texts: Texts, plan: Plan) -> MissRun:
    total = plan.miss_warmup_pairs + plan.miss_pairs
    job = {"mode": "pairs", "a": target(upstream_port, None), "b": target(port, "miss"),
           "bodies": [chat_body(t) for t in texts.take(total)], "headers": REQUEST_HEADERS,
           "warmup": plan.miss_warmup_pairs, "max_seconds": plan.miss_seconds}
    before = stage_totals(port)
    ours_before = cpu_seconds(gateway.pid) + cpu_seconds(upstream.pid)
    busy_before, started = machine_busy_seconds(), time.perf_counter()
    result = run_loadgen(job, plan.miss_seconds)
    elapsed = time.perf_counter() - started
    ours = cpu_seconds(gateway.pid) + cpu_seconds(upstream.pid) - ours_before + result["cpu_s"]
    others = max(0.0, machine_busy_seconds() - busy_before - ours)
    after = stage_totals(port)
    require_clean(f"misses ({label}), direct", result["a"])
    require_clean(f"misses ({label}), through the gateway", result["b"], gateway)
    return MissRun(label, result["a"]["latencies_ms"], result["b"]["latencies_ms"],
                   stage_means(before, after), others / elapsed)


def profile_hits(stack: contextlib.ExitStack, workdir: Path, upstream_port: int, texts: Texts,
                 plan: Plan) -> str:
    """Serve exact hits from a gateway running under cProfile; the top functions by own time.

    cProfile slows every Python call (C code, SQLite and syscalls much less), so
    the req/s of this run mean nothing and Python-heavy code looks costlier than
    it is; the shares of own time still show where a hit goes.
    """
    out = workdir / "gateway.prof"
    gateway, port = start_gateway(stack, workdir, "profiled", upstream_port, semantic=True, profile_to=out)
    bodies = [chat_body(t) for t in texts.take(plan.warm_requests)]
    require_clean("warming the profiled cache", hammer(port, bodies, "miss", 16, len(bodies), 60.0), gateway)
    warm_hits = hammer(port, bodies, "hit-exact", plan.concurrency, plan.hit_warmup, 30.0)
    require_clean("profiled hit warm-up", warm_hits, gateway)
    gateway.proc.send_signal(signal.SIGUSR1)
    result = hammer(port, bodies, "hit-exact", plan.concurrency, plan.hit_requests // 2, plan.hit_seconds)
    gateway.proc.send_signal(signal.SIGUSR2)
    require_clean("profiled hit run", result, gateway)
    deadline = time.monotonic() + 15.0
    while not out.exists() and time.monotonic() < deadline and gateway.proc.poll() is None:
        time.sleep(0.1)
    if not out.exists():
        return f"(no profile written; gateway log:\n{gateway.log_tail()})"
    text = io.StringIO()
    text.write(f"{result['ok']} hits profiled (~{result['rps']:.0f} req/s under cProfile)\n")
    stats = pstats.Stats(str(out), stream=text)
    stats.strip_dirs().sort_stats("tottime").print_stats(30)
    return text.getvalue()


# --- report ------------------------------------------------------------------------------


def _ms(value: float) -> str:
    return f"{value:.3f}"


def report(plan: Plan, baseline: dict[str, Any], hits: HitRun, misses: list[MissRun]) -> dict[str, Any]:
    table = Table(title="Load generator alone (trivial server, same machine)")
    for column in ("requests", "req/s", "p50 ms", "p99 ms", "client CPU"):
        table.add_column(column, justify="right")
    table.add_row(str(baseline["ok"]), f"{baseline['rps']:,.0f}", _ms(baseline["p50_ms"]),
                  _ms(baseline["p99_ms"]),
                  f"{baseline['cpu_s'] / baseline['elapsed_s']:.0%}")
    console.print(table)

    r = hits.result
    table = Table(title=f"Exact hits through `cascache serve` (concurrency {plan.concurrency}, "
                        f"{plan.warm_requests} distinct requests)")
    for column in ("hits", "errors", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "gateway CPU",
                   "µs CPU/hit", "client CPU", "other CPU", f">= {HIT_TARGET_RPS:,.0f}/s"):
        table.add_column(column, justify="right")
    table.add_row(str(r["ok"]), str(r["errors"]), f"{r['rps']:,.0f}", _ms(r["p50_ms"]), _ms(r["p90_ms"]),
                  _ms(r["p99_ms"]), _ms(r["max_ms"]), f"{hits.gateway_core_share:.0%}",
                  f"{hits.cpu_us_per_hit:.0f}", f"{r['cpu_s'] / r['elapsed_s']:.0%}",
                  f"{hits.others_core_share:.0%}", "yes" if r["rps"] >= HIT_TARGET_RPS else "NO")
    console.print(table)
    console.print("  CPU columns are shares of one core. The gateway is one process with one event loop, so "
                  "~100% gateway CPU means it is CPU-bound; 'other' is every other process on the machine, "
                  "which competes for the two cores. With a whole core, the gateway would serve about "
                  f"{1e6 / hits.cpu_us_per_hit:,.0f} hits/s (1 s / CPU per hit).")
    if hits.others_core_share > BUSY_MACHINE_SHARE:
        console.print(f"  [bold red]warning[/]: other processes used {hits.others_core_share:.0%} of a core "
                      "during the hit run; the gateway was short of CPU, so req/s are low and tails wide. "
                      "Re-run on a quiet machine for figures to compare.")

    table = Table(title="Added latency on a miss (sequential, unique requests, "
                        f"upstream fixed at {plan.delay_ms:g} ms)")
    for column in ("semantic tier", "pairs", "other CPU", "pct", "direct ms", "via gateway ms", "added ms"):
        table.add_column(column, justify="right")
    for run in misses:
        for q in (50, 90, 99):
            first = q == 50
            table.add_row(run.label if first else "", str(run.pairs) if first else "",
                          f"{run.others_core_share:.0%}" if first else "", f"p{q}",
                          _ms(percentile(run.direct_ms, q)), _ms(percentile(run.gateway_ms, q)),
                          _ms(run.added(q)))
    console.print(table)
    for run in misses:
        stages = ", ".join(f"{stage} {seconds * 1000:.3f} ms"
                           for stage, seconds in sorted(run.stages.items()))
        console.print(f"  gateway's own stage means, semantic {run.label}: {stages or 'n/a'}")

    disturbed = [run.label for run in misses if run.others_core_share > BUSY_MACHINE_SHARE]
    if disturbed:
        console.print(f"  [bold red]warning[/]: other processes were busy during the miss runs "
                      f"(semantic {', '.join(disturbed)}); added latencies are inflated.")
    with_embedding = next(run for run in misses if run.label == "on")
    without = next(run for run in misses if run.label == "off")
    console.print(f"  target: added p50 excluding embedding <= {MISS_OVERHEAD_TARGET_P50_MS:g} ms: "
                  f"{'yes' if without.added(50) <= MISS_OVERHEAD_TARGET_P50_MS else 'NO'}")
    return {
        "exact_hit_rps": round(r["rps"], 1),
        "exact_hit_p50_ms": round(r["p50_ms"], 3),
        "exact_hit_p99_ms": round(r["p99_ms"], 3),
        "exact_hit_requests": r["ok"],
        "exact_hit_concurrency": plan.concurrency,
        "exact_hit_gateway_cpu_share": round(hits.gateway_core_share, 3),
        "exact_hit_gateway_cpu_us_per_hit": round(hits.cpu_us_per_hit, 1),
        "exact_hit_other_processes_cpu_share": round(hits.others_core_share, 3),
        "miss_overhead_p50_ms": round(without.added(50), 3),
        "miss_overhead_p99_ms": round(without.added(99), 3),
        "miss_overhead_with_embedding_p50_ms": round(with_embedding.added(50), 3),
        "miss_overhead_with_embedding_p99_ms": round(with_embedding.added(99), 3),
        "miss_direct_p50_ms": round(percentile(without.direct_ms, 50), 3),
        "miss_pairs": min(with_embedding.pairs, without.pairs),
        "miss_other_processes_cpu_share": round(max(run.others_core_share for run in misses), 3),
        "upstream_delay_ms": plan.delay_ms,
        "loadgen_baseline_rps": round(baseline["rps"], 1),
        "target_exact_hit_rps_met": r["rps"] >= HIT_TARGET_RPS,
        "target_miss_overhead_p50_met": without.added(50) <= MISS_OVERHEAD_TARGET_P50_MS,
    }


# --- main --------------------------------------------------------------------------------


@contextlib.contextmanager
def terminate_cleanly() -> Iterator[None]:
    """Turn SIGTERM into SystemExit so `finally` blocks stop every child we started."""
    def raise_exit(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, raise_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Gateway throughput on exact hits and added latency on misses (loopback only).")
    parser.add_argument("--quick", action="store_true", help="a few seconds: a smoke run with small counts")
    parser.add_argument("--profile", action="store_true",
                        help="also serve hits from a cProfile'd gateway and print where the time goes")
    parser.add_argument("--concurrency", type=int, help="connections for the hit run")
    parser.add_argument("--delay-ms", type=float, help="the fake upstream's fixed latency")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    if args.concurrency is not None:
        plan = dataclasses.replace(plan, concurrency=args.concurrency)
    if args.delay_ms is not None:
        plan = dataclasses.replace(plan, delay_ms=args.delay_ms)
    texts = Texts(args.seed)
    started = time.perf_counter()
    with terminate_cleanly(), tempfile.TemporaryDirectory(prefix="cascache-bench-") as tmp, \
            contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        # Everything here shares two cores with whatever else runs: a busy machine lowers the
        # hit rate and widens tails, so say how busy it was.
        load_1m = os.getloadavg()[0]
        console.print(f"[bold]bench/gateway.py[/] {'quick' if args.quick else 'full'} run, "
                      f"{os.cpu_count()} cores, load average {load_1m:.2f} at start")
        with contextlib.ExitStack() as baseline_stack:  # the trivial server must not share the cores later
            baseline = measure_baseline(baseline_stack, plan)
        upstream, upstream_port = start_fixed_upstream(stack, trivial=False, delay_ms=plan.delay_ms,
                                                       max_s=1800.0)

        with contextlib.ExitStack() as gw:
            gateway, port = start_gateway(gw, workdir, "semantic-on", upstream_port, semantic=True)
            hits = measure_hits(gateway, port, texts, plan)
            miss_on = measure_misses("on", gateway, port, upstream, upstream_port, texts, plan)
        with contextlib.ExitStack() as gw:
            gateway, port = start_gateway(gw, workdir, "semantic-off", upstream_port, semantic=False)
            miss_off = measure_misses("off", gateway, port, upstream, upstream_port, texts, plan)

        profile = None
        if args.profile:
            with contextlib.ExitStack() as gw:
                profile = profile_hits(gw, workdir, upstream_port, texts, plan)

        figures = report(plan, baseline, hits, [miss_on, miss_off])
        figures["loadavg_1m_at_start"] = round(load_1m, 2)
        if profile is not None:
            console.rule("cProfile of the gateway serving exact hits (own time, top 30)")
            console.print(profile, markup=False, highlight=False)
    console.print(f"done in {time.perf_counter() - started:.1f} s")
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
