"""A minimal HTTP/1.1 keep-alive load generator for bench/gateway.py. Loopback only.

Why not httpx: its per-request Python overhead caps a client near 1-2k req/s,
below the gateway we want to measure. This client pre-renders every request,
and per request does one write, reads the head up to CRLFCRLF and then exactly
Content-Length body bytes, on uvloop. It runs in its own process (started by
bench/gateway.py) so it never competes with the orchestrator's event loop.

Every response is checked: status 200 and, when the job names one, the
``x-cascache`` header value (``hit-exact`` during the hammer, ``miss`` while
warming or measuring misses). A failed check is counted as an error and
sampled in the result, never silently timed.

Jobs come as one JSON object on stdin; the result is one JSON object on stdout.

- ``hammer``: ``concurrency`` connections to one target send ``bodies`` round
  robin (request i carries body i mod len), closed loop, until ``max_requests``
  are done or ``max_seconds`` have passed. Result: counts, elapsed, req/s,
  latency percentiles, this process's CPU time.
- ``pairs``: one connection to each of two targets (A, B); body i goes to A
  then B for even i and B then A for odd i, so drift and order effects hit both
  alike. The first ``warmup`` pairs are sent but not timed. Result: the raw
  latencies of each side, in ms.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TypedDict

import uvloop


class Target(TypedDict):
    host: str
    port: int
    path: str
    expect: str | None
    """Required value of the x-cascache response header, or None for no check."""


class CheckFailed(Exception):
    """A response arrived but was not the one expected (status or x-cascache)."""


@dataclass(slots=True)
class Tally:
    ok: int = 0
    errors: int = 0
    samples: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)

    def fail(self, what: str) -> None:
        self.errors += 1
        if len(self.samples) < 5:
            self.samples.append(what)


def render(target: Target, body: str, headers: dict[str, str]) -> bytes:
    payload = body.encode()
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return (
        f"POST {target['path']} HTTP/1.1\r\nhost: {target['host']}:{target['port']}\r\n"
        f"content-type: application/json\r\n{extra}content-length: {len(payload)}\r\n\r\n"
    ).encode() + payload


def _header(head_lower: bytes, name: bytes) -> bytes | None:
    """The value of header `name` (lower-case, no colon) in a lower-cased head, or None."""
    at = head_lower.find(b"\r\n" + name + b":")
    if at < 0:
        return None
    start = at + len(name) + 3
    stop = head_lower.find(b"\r\n", start)
    return head_lower[start : stop if stop >= 0 else len(head_lower)].strip()


class Connection:
    """One keep-alive connection; `send` returns the latency of one request in seconds."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._expect = None if target["expect"] is None else target["expect"].lower().encode()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(
            self.target["host"], self.target["port"], limit=1 << 20
        )

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass
        self._reader = self._writer = None

    async def send(self, request: bytes) -> float:
        if self._writer is None:
            await self.open()
        assert self._reader is not None and self._writer is not None
        started = time.perf_counter()
        self._writer.write(request)
        head = await self._reader.readuntil(b"\r\n\r\n")
        lower = head.lower()
        length = _header(lower, b"content-length")
        if length is None or not length.isdigit():
            raise ConnectionError(f"response without a usable content-length: {head[:200]!r}")
        body = await self._reader.readexactly(int(length))
        elapsed = time.perf_counter() - started
        status = head[9:12]
        served = _header(lower, b"x-cascache")
        if status != b"200" or (self._expect is not None and served != self._expect):
            shown = status.decode(errors="replace")
            raise CheckFailed(f"status {shown}, x-cascache {served!r}: {body[:160]!r}")
        return elapsed


async def _send_counted(conn: Connection, request: bytes, tally: Tally) -> None:
    try:
        tally.latencies_ms.append(await conn.send(request) * 1000.0)
        tally.ok += 1
    except CheckFailed as exc:
        tally.fail(str(exc))
    except (OSError, EOFError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        # The connection is in an unknown state: drop it; the next send reconnects.
        tally.fail(f"{type(exc).__name__}: {exc}")
        await conn.close()


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between closest ranks; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


async def hammer(job: dict[str, Any]) -> dict[str, Any]:
    target: Target = job["target"]
    requests = [render(target, body, job.get("headers", {})) for body in job["bodies"]]
    limit: int = job["max_requests"]
    tally = Tally()
    connections = [Connection(target) for _ in range(job["concurrency"])]
    # Connect first so the clock measures requests, not handshakes.
    await asyncio.gather(*(conn.open() for conn in connections))
    counter = itertools.count()
    cpu_started = time.process_time()
    started = time.perf_counter()
    deadline = started + job["max_seconds"]

    async def worker(conn: Connection) -> None:
        for i in counter:
            if i >= limit or time.perf_counter() >= deadline:
                return
            await _send_counted(conn, requests[i % len(requests)], tally)

    await asyncio.gather(*(worker(conn) for conn in connections))
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    await asyncio.gather(*(conn.close() for conn in connections))
    lat = tally.latencies_ms
    return {
        "ok": tally.ok, "errors": tally.errors, "error_samples": tally.samples,
        "elapsed_s": elapsed, "rps": tally.ok / elapsed if elapsed > 0 else 0.0,
        "p50_ms": percentile(lat, 50), "p90_ms": percentile(lat, 90), "p99_ms": percentile(lat, 99),
        "max_ms": max(lat) if lat else float("nan"), "cpu_s": cpu,
    }


async def pairs(job: dict[str, Any]) -> dict[str, Any]:
    a: Target = job["a"]
    b: Target = job["b"]
    headers = job.get("headers", {})
    warmup: int = job["warmup"]
    deadline = time.perf_counter() + job["max_seconds"]
    conn_a, conn_b = Connection(a), Connection(b)
    await asyncio.gather(conn_a.open(), conn_b.open())
    cpu_started = time.process_time()
    tally_a, tally_b = Tally(), Tally()
    scratch_a, scratch_b = Tally(), Tally()  # warm-up pairs: checked, not timed
    for i, body in enumerate(job["bodies"]):
        if time.perf_counter() >= deadline:
            break
        side_a, side_b = (tally_a, tally_b) if i >= warmup else (scratch_a, scratch_b)
        first = [(conn_a, render(a, body, headers), side_a), (conn_b, render(b, body, headers), side_b)]
        if i % 2:
            first.reverse()
        for conn, request, tally in first:
            await _send_counted(conn, request, tally)
    cpu = time.process_time() - cpu_started
    await asyncio.gather(conn_a.close(), conn_b.close())
    return {
        "cpu_s": cpu,
        "a": {"ok": tally_a.ok, "errors": tally_a.errors + scratch_a.errors,
              "error_samples": scratch_a.samples + tally_a.samples, "latencies_ms": tally_a.latencies_ms},
        "b": {"ok": tally_b.ok, "errors": tally_b.errors + scratch_b.errors,
              "error_samples": scratch_b.samples + tally_b.samples, "latencies_ms": tally_b.latencies_ms},
    }


async def _read_body(reader: asyncio.StreamReader, lower_head: bytes) -> bytes:
    """The whole response body: by Content-Length, chunked transfer coding, or up to EOF."""
    length = _header(lower_head, b"content-length")
    if length is not None:
        if not length.isdigit():
            raise ConnectionError(f"bad content-length: {lower_head[:200]!r}")
        return await reader.readexactly(int(length))
    encoding = _header(lower_head, b"transfer-encoding")
    if encoding is not None and b"chunked" in encoding:
        parts: list[bytes] = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                # Trailers (none expected) end with an empty line.
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            if await reader.readexactly(2) != b"\r\n":
                raise ConnectionError("chunk not followed by CRLF")
    return await reader.read()  # connection: close framing


def _check_json(body: bytes) -> str | None:
    try:
        doc = json.loads(body)
        content = doc["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        return f"invalid JSON completion ({type(exc).__name__}): {body[:160]!r}"
    if doc.get("object") != "chat.completion" or not isinstance(content, str):
        return f"not a chat.completion: {body[:160]!r}"
    return None


def _check_sse(body: bytes) -> str | None:
    payloads = [line[5:].strip() for line in body.replace(b"\r\n", b"\n").split(b"\n")
                if line.startswith(b"data:")]
    if not payloads or payloads[-1] != b"[DONE]":
        return f"stream does not end with data: [DONE]: ...{body[-160:]!r}"
    chunks = 0
    for payload in payloads[:-1]:
        try:
            doc = json.loads(payload)
        except ValueError:
            return f"stream event is not JSON: {payload[:160]!r}"
        if isinstance(doc, dict) and "error" in doc:
            return f"error event in stream: {payload[:160]!r}"
        chunks += 1
    if chunks == 0:
        return "stream without any chunk before [DONE]"
    return None


async def mix(job: dict[str, Any]) -> dict[str, Any]:
    target: Target = job["target"]
    headers = job.get("headers", {})
    items = [(render(target, item["body"], headers), bool(item["stream"]), str(item["kind"]))
             for item in job["items"]]
    limit = min(job["max_requests"], len(items))
    counts: dict[str, dict[str, int]] = {}
    tally = Tally()
    conns = [Connection(target) for _ in range(job["concurrency"])]
    await asyncio.gather(*(conn.open() for conn in conns))
    counter = itertools.count()
    cpu_started = time.process_time()
    started = time.perf_counter()
    deadline = started + job["max_seconds"]
    sent = 0

    async def one(conn: Connection, request: bytes, stream: bool, kind: str) -> None:
        if conn._writer is None:
            await conn.open()
        assert conn._reader is not None and conn._writer is not None
        t0 = time.perf_counter()
        conn._writer.write(request)
        head = await conn._reader.readuntil(b"\r\n\r\n")
        lower = head.lower()
        body = await _read_body(conn._reader, lower)
        elapsed = time.perf_counter() - t0
        served = (_header(lower, b"x-cascache") or b"(none)").decode(errors="replace")
        status = head[9:12]
        by_kind = counts.setdefault(kind, {})
        by_kind[served] = by_kind.get(served, 0) + 1
        if status != b"200":
            raise CheckFailed(f"{kind}: status {status.decode(errors='replace')}, x-cascache {served}: "
                              f"{body[:160]!r}")
        if stream:
            ctype = _header(lower, b"content-type") or b""
            problem = (None if ctype.startswith(b"text/event-stream") else f"content-type {ctype!r}") \
                or _check_sse(body)
        else:
            problem = _check_json(body)
        if problem is not None:
            raise CheckFailed(f"{kind} (x-cascache {served}): {problem}")
        if _header(lower, b"connection") == b"close":
            await conn.close()
        tally.latencies_ms.append(elapsed * 1000.0)
        tally.ok += 1

    async def worker(conn: Connection) -> None:
        nonlocal sent
        for i in counter:
            if i >= limit or time.perf_counter() >= deadline:
                return
            sent += 1
            request, stream, kind = items[i]
            try:
                await one(conn, request, stream, kind)
            except CheckFailed as exc:
                tally.fail(str(exc))
            except (OSError, EOFError, ValueError, asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError) as exc:
                tally.fail(f"{kind}: {type(exc).__name__}: {exc}")
                await conn.close()

    await asyncio.gather(*(worker(conn) for conn in conns))
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    await asyncio.gather(*(conn.close() for conn in conns))
    lat = tally.latencies_ms
    return {
        "sent": sent, "ok": tally.ok, "errors": tally.errors, "error_samples": tally.samples,
        "counts": counts, "elapsed_s": elapsed, "rps": sent / elapsed if elapsed > 0 else 0.0,
        "p50_ms": percentile(lat, 50), "p90_ms": percentile(lat, 90), "p99_ms": percentile(lat, 99),
        "max_ms": max(lat) if lat else float("nan"), "cpu_s": cpu,
    }


def main() -> None:
    job = json.loads(sys.stdin.read())
    for target in (job.get("target"), job.get("a"), job.get("b")):
        if target is not None and not str(target["host"]).startswith("127."):
            sys.exit("the load generator targets loopback addresses only")
    runner = {"hammer": hammer, "pairs": pairs, "mix": mix}[job["mode"]]
    # A hard stop on top of the job's own bounds, in case a peer stops answering.
    result = uvloop.run(asyncio.wait_for(runner(job), timeout=job["max_seconds"] + 60.0))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
