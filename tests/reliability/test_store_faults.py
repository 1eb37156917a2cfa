"""Store faults on real processes: the cache breaks, the requests do not.

Each test runs `cascache serve` as its own process in front of the provider
simulator (a real HTTP server on a real socket), breaks the gateway's store
while 16 concurrent clients keep asking, and checks the fail-open contract:

- every request gets a 200 with a complete, valid answer, served from upstream
  (the simulator's call count equals the misses), with bounded delay;
- lookups that need the broken store miss, and write-backs are dropped;
- /metrics counts the failures;
- once the fault is gone the cache stores and serves again (recovery time is measured).

Faults: a Redis node SIGKILLed and restarted mid-load; the SQLite database
locked by another process; the data directory's disk full (a small tmpfs, or a
file-size limit where mounting is not allowed). Each test prints one JSON line
of figures (run with ``-s`` to see them).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import httpx
import pytest

from cascache.stores.redis_stack_server import RedisStackNotInstalled, RedisStackServer
from cascache.testing.provider_sim import ProviderSim, SimServer
from tests.integration.conftest import GatewayProcess, start_gateway
from tests.reliability.store_fault_support import (
    HITS,
    LoadMix,
    Reply,
    ask,
    failures,
    metric,
    percentile,
    run_load,
    served_counts,
    wait_until_cached,
)

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.slow]

ADMIN_TOKEN = "store-faults-admin"
#: Answers cached before each fault; asked again during it.
WARM = tuple(f"warm question {n}: what is {n} times 13?" for n in range(6))
#: Longest a request may take while the store is broken. Healthy, under this load,
#: requests take tens of milliseconds; SQLite's own 5 s lock wait on the event
#: loop (what the store did before) would stall every request in flight past it.
STALL_BOUND_S = 2.0
#: Recovery must come within the store's own retry delay (1 s) plus scheduling noise.
RECOVERY_BOUND_S = 5.0


def warm_up(url: str) -> None:
    for question in WARM:
        first = ask(url, question)
        assert first.problem is None and first.served == "miss", first
    for question in WARM:
        again = ask(url, question)
        assert again.problem is None and again.served == "hit-exact", again


def summary(replies: list[Reply]) -> dict[str, object]:
    latencies = [reply.seconds for reply in replies]
    return {"requests": len(replies), "errors": len(failures(replies)),
            "served": dict(served_counts(replies)),
            "p50_s": round(percentile(latencies, 0.5), 3), "p99_s": round(percentile(latencies, 0.99), 3),
            "max_s": round(max(latencies, default=0.0), 3)}


def store_errors(url: str, operation: str) -> float:
    """`cascache_tier_errors_total{tier="store", operation=...}` as the gateway's /metrics shows it."""
    return metric(url, "cascache_tier_errors_total", tier="store", operation=operation)


def assert_all_served(replies: list[Reply], sim: ProviderSim, upstream_calls_before: int) -> None:
    """Every reply complete and valid; every one that was not a hit came from the upstream."""
    assert replies
    assert failures(replies) == [], failures(replies)[:5]
    misses = sum(1 for reply in replies if reply.served == "miss")
    # A coalesced reply shares its leader's call; a hit makes none.
    assert len(sim.log) - upstream_calls_before == misses
    assert {reply.served for reply in replies} <= {"miss", "coalesced", *HITS}


# ---------------------------------------------------------------------------------------------
# 1. A Redis node killed and restarted mid-load
# ---------------------------------------------------------------------------------------------

LOAD_S = 7.0
KILL_AFTER_S = 1.5
DOWN_FOR_S = 2.5


def test_redis_node_killed_and_restarted_mid_load(tmp_path: Path) -> None:
    try:
        redis = RedisStackServer(data_dir=tmp_path / "redis")
        redis.start()
    except RedisStackNotInstalled as exc:
        pytest.skip(str(exc))
    gateway: GatewayProcess | None = None
    try:
        with SimServer(ProviderSim()) as server:
            gateway = start_gateway(tmp_path, "--store", redis.url, "--upstream-url", server.base_url + "/v1")
            warm_up(gateway.url)
            calls_before = len(server.sim.log)
            moments: dict[str, float] = {}

            async def kill_and_restart_under_load() -> list[Reply]:
                assert gateway is not None
                load = asyncio.create_task(run_load(gateway.url, LOAD_S, LoadMix(WARM, tag="redis")))
                await asyncio.sleep(KILL_AFTER_S)
                await asyncio.to_thread(redis.kill)  # SIGKILL: no shutdown, connections just drop
                moments["killed"] = time.monotonic()
                await asyncio.sleep(DOWN_FOR_S)
                await asyncio.to_thread(redis.start)  # same port, empty: no persistence
                moments["restarted"] = time.monotonic()
                return await load

            replies = asyncio.run(kill_and_restart_under_load())

            assert_all_served(replies, server.sim, calls_before)
            killed, restarted = moments["killed"], moments["restarted"]
            while_down = [r for r in replies if r.started >= killed and r.ended <= restarted]
            assert len(while_down) >= 16, "the load did not run while the node was down"
            assert not [r for r in while_down if r.hit], "a lookup was served from a dead node"
            # Write-backs while down were dropped: a new question asked twice in a row missed twice.
            assert sum(1 for r in while_down if r.served == "miss") >= 2
            hits_after = [r for r in replies if r.started >= restarted and r.hit]
            assert hits_after, "nothing was cached again after the restart"
            first_hit_after_restart_s = min(r.ended for r in hits_after) - restarted
            assert first_hit_after_restart_s < RECOVERY_BOUND_S
            # The failures are visible where operators look: /metrics.
            lookup_errors = store_errors(gateway.url, "lookup")
            write_errors = store_errors(gateway.url, "write")
            assert lookup_errors >= 1 and write_errors >= 1
            # And once the load is over, the restarted node stores and serves as before.
            recovery_s, _ = wait_until_cached(gateway.url, "redis")
            ask(gateway.url, WARM[0])
            assert ask(gateway.url, WARM[0]).served == "hit-exact"
            print(json.dumps({"fault": "redis_kill_restart", **summary(replies),
                              "while_down": summary(while_down),
                              "tier_errors_lookup": lookup_errors, "tier_errors_write": write_errors,
                              "first_hit_after_restart_s": round(first_hit_after_restart_s, 3),
                              "sequential_recovery_check_s": round(recovery_s, 3)}))
    finally:
        if gateway is not None:
            gateway.stop()
        redis.close()


# ---------------------------------------------------------------------------------------------
# 2. The SQLite database locked by another process
# ---------------------------------------------------------------------------------------------

LOCKED_LOAD_S = 3.0

_LOCKER = textwrap.dedent("""
    import sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
    conn.execute("BEGIN EXCLUSIVE")   # in WAL mode: the write lock; readers go on
    print("locked", flush=True)
    sys.stdin.readline()              # until the test says so, or dies (EOF)
    conn.execute("COMMIT")
    print("released", flush=True)
""")


@contextmanager
def write_lock_held_by_another_process(database: Path) -> Iterator[None]:
    """A separate Python process holds `BEGIN EXCLUSIVE` on `database` until the block ends."""
    locker = subprocess.Popen([sys.executable, "-c", _LOCKER, str(database)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert locker.stdout is not None and locker.stdin is not None
        assert locker.stdout.readline().strip() == "locked"
        yield
        locker.stdin.write("\n")
        locker.stdin.flush()
        assert locker.stdout.readline().strip() == "released"
        assert locker.wait(timeout=10) == 0
    finally:
        if locker.poll() is None:
            locker.kill()
            locker.wait()


def test_sqlite_locked_by_another_process(tmp_path: Path) -> None:
    with SimServer(ProviderSim()) as server:
        gateway = start_gateway(tmp_path, "--upstream-url", server.base_url + "/v1")
        try:
            warm_up(gateway.url)
            calls_before = len(server.sim.log)

            with write_lock_held_by_another_process(gateway.data_dir / "store" / "cache.db"):
                replies = asyncio.run(run_load(gateway.url, LOCKED_LOAD_S, LoadMix(WARM, tag="locked")))
                released_at = time.monotonic()

            assert_all_served(replies, server.sim, calls_before)
            # Bounded delay: the store waits a few ms for the lock, not SQLite's 5 s on the event loop.
            assert max(r.seconds for r in replies) < STALL_BOUND_S, summary(replies)
            # Writes were dropped: no new question was ever served from the cache...
            assert not [r for r in replies if r.question not in WARM and r.hit]
            # ...while reads went on: in WAL mode a writer's lock never blocks readers.
            warm = [r for r in replies if r.question in WARM]
            assert warm and {r.served for r in warm} == {"hit-exact"}
            dropped = metric(gateway.url, "cascache_writebacks_total", result="error")
            hit_counts_lost = store_errors(gateway.url, "record_hit")
            assert dropped >= 1 and hit_counts_lost >= 1
            assert metric(gateway.url, "cascache_writebacks_total", result="stored") == len(WARM)

            recovery_s, _ = wait_until_cached(gateway.url, "unlocked")
            assert recovery_s < RECOVERY_BOUND_S
            print(json.dumps({"fault": "sqlite_locked", **summary(replies), "writebacks_dropped": dropped,
                              "record_hit_errors": hit_counts_lost,
                              "recovery_after_release_s": round(time.monotonic() - released_at, 3),
                              "recovery_probe_s": round(recovery_s, 3)}))
        finally:
            gateway.stop()


# ---------------------------------------------------------------------------------------------
# 3. Disk full for the data directory
# ---------------------------------------------------------------------------------------------

FULL_LOAD_S = 3.0
TMPFS_MB = 16


class TmpfsDisk:
    """The data directory on a small tmpfs of its own; full = a filler file takes every free block."""

    kind = "tmpfs"

    def __init__(self, mount_point: Path) -> None:
        self.mount_point = mount_point
        self.data_dir = mount_point / "data"
        self._filler = mount_point / "filler"
        self._mounted = False

    def mount(self) -> None:
        self.mount_point.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m", "tmpfs", str(self.mount_point)],
                       check=True, capture_output=True, timeout=10)
        self._mounted = True

    def attach(self, pid: int) -> None:
        """The gateway's process needs nothing."""

    def fill(self) -> None:
        chunk = b"\0" * (1 << 16)
        with self._filler.open("wb") as file:
            try:
                while True:
                    file.write(chunk)
                    file.flush()
            except OSError:  # ENOSPC: that is the point
                pass
        assert shutil.disk_usage(self.mount_point).free < 8192

    def free(self) -> None:
        self._filler.unlink()

    def release(self) -> None:
        if self._mounted:
            # Lazy unmount as the last resort: a test must never leave a mount behind.
            unmounted = subprocess.run(["umount", str(self.mount_point)], check=False, capture_output=True,
                                       timeout=30)
            if unmounted.returncode:
                subprocess.run(["umount", "-l", str(self.mount_point)], check=False, capture_output=True,
                               timeout=30)
            self._mounted = False


class FileSizeLimit:
    """Where mounting is not allowed: full = the gateway's RLIMIT_FSIZE lowered to what its files hold now.

    Any write past the limit then fails with EFBIG, as a full disk fails with
    ENOSPC. The gateway must ignore SIGXFSZ, or the kernel would kill it instead
    of failing the write: it inherits the disposition from this process (an
    ignored signal survives exec), which ignores it while starting gateways.
    """

    kind = "rlimit_fsize"

    def __init__(self, root: Path) -> None:
        self.data_dir = root / "data"
        self._pid: int | None = None

    def mount(self) -> None:
        if not hasattr(resource, "prlimit"):
            pytest.skip("disk full: cannot mount a tmpfs here and resource.prlimit is not available")

    def attach(self, pid: int) -> None:
        self._pid = pid

    def fill(self) -> None:
        assert self._pid is not None
        largest = max(path.stat().st_size for path in self.data_dir.rglob("*") if path.is_file())
        resource.prlimit(self._pid, resource.RLIMIT_FSIZE, (largest, resource.RLIM_INFINITY))

    def free(self) -> None:
        assert self._pid is not None
        resource.prlimit(self._pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

    def release(self) -> None:
        """Nothing to undo: the limit dies with the process."""


@contextmanager
def small_disk(tmp_path: Path) -> Iterator[TmpfsDisk | FileSizeLimit]:
    """A tmpfs when mount works (root, as here and in CI), else a file-size limit.

    CASCACHE_TEST_FULL_DISK=rlimit forces the fallback, to test it where mount works.
    """
    disk: TmpfsDisk | FileSizeLimit = TmpfsDisk(tmp_path / "tmpfs")
    try:
        if os.environ.get("CASCACHE_TEST_FULL_DISK") == "rlimit":
            raise PermissionError("fallback forced by CASCACHE_TEST_FULL_DISK=rlimit")
        disk.mount()
    except (OSError, subprocess.SubprocessError):
        disk = FileSizeLimit(tmp_path)
        disk.mount()  # skips the test if the fallback is not possible either
    try:
        yield disk
    finally:
        disk.release()


def start_on(tmp_path: Path, disk: TmpfsDisk | FileSizeLimit, upstream: str) -> GatewayProcess:
    # SIGXFSZ ignored here while the child starts, and not reset by Popen: the child inherits it
    # (needed by FileSizeLimit; harmless on a tmpfs). No preexec_fn: unsafe with the simulator's thread.
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        gateway = start_gateway(tmp_path, "--upstream-url", upstream, data_dir=disk.data_dir,
                                restore_signals=False, env={"CASCACHE_ADMIN_TOKEN": ADMIN_TOKEN})
    finally:
        signal.signal(signal.SIGXFSZ, previous)
    disk.attach(gateway.process.pid)
    return gateway


def store_entries(url: str) -> int:
    stats = httpx.get(url + "/admin/stats", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)
    assert stats.status_code == 200, stats.text
    return int(stats.json()["store"]["entries"])


def integrity(database: Path) -> tuple[str, int]:
    """`PRAGMA integrity_check` and the row count, read with a plain SQLite connection (gateway stopped)."""
    with closing(sqlite3.connect(database)) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0], conn.execute(
            "SELECT count(*) FROM entries").fetchone()[0]


def test_disk_full_for_the_data_dir(tmp_path: Path) -> None:
    stop: list[Callable[[], None]] = []
    with small_disk(tmp_path) as disk, SimServer(ProviderSim()) as server:
        try:
            gateway = start_on(tmp_path, disk, server.base_url + "/v1")
            stop.append(gateway.stop)
            warm_up(gateway.url)
            calls_before = len(server.sim.log)

            disk.fill()
            replies = asyncio.run(run_load(gateway.url, FULL_LOAD_S, LoadMix(WARM, tag="full")))

            assert_all_served(replies, server.sim, calls_before)
            assert max(r.seconds for r in replies) < STALL_BOUND_S, summary(replies)
            assert not [r for r in replies if r.question not in WARM and r.hit]
            assert {r.served for r in replies if r.question in WARM} == {"hit-exact"}
            dropped = metric(gateway.url, "cascache_writebacks_total", result="error")
            assert dropped >= 1
            assert store_errors(gateway.url, "record_hit") >= 1
            # Failed commits left nothing behind, not even in the store's own entry count
            # (which drives eviction: a count ahead of the table would evict live entries).
            assert store_entries(gateway.url) == len(WARM)

            disk.free()
            freed_at = time.monotonic()
            recovery_s, probes = wait_until_cached(gateway.url, "freed")
            recovered_after_free_s = time.monotonic() - freed_at
            assert recovery_s < RECOVERY_BOUND_S
            stored_after = store_entries(gateway.url)
            assert len(WARM) < stored_after <= len(WARM) + probes

            gateway.stop()
            check, rows = integrity(disk.data_dir / "store" / "cache.db")
            assert (check, rows) == ("ok", stored_after)

            # The same data dir opens cleanly and serves what was written before and after the fault.
            again = start_on(tmp_path, disk, server.base_url + "/v1")
            stop.append(again.stop)
            for question in (*WARM, f"freed recovery probe {probes}: what is {probes} plus 11?"):
                reply = ask(again.url, question)
                assert reply.problem is None and reply.served == "hit-exact", reply
            print(json.dumps({"fault": f"disk_full_{disk.kind}", **summary(replies),
                              "writebacks_dropped": dropped,
                              "recovery_after_free_s": round(recovered_after_free_s, 3),
                              "entries_after_recovery": stored_after, "integrity": check}))
        finally:
            for stop_gateway in reversed(stop):
                stop_gateway()
