"""A fake OpenAI-compatible upstream with a fixed latency, for bench/gateway.py. Loopback only.

Two modes, one process each:

- ``--delay-ms 20`` (upstream): every ``POST .../chat/completions`` is answered
  after the delay with a valid ``chat.completion`` (finish_reason "stop"), so
  the gateway caches it. Other paths get 404.
- ``--trivial``: every request is answered at once with a pre-rendered body
  carrying ``x-cascache: hit-exact``, the same header the load generator checks
  on real exact hits. It measures what the load generator alone can do.

Why a raw asyncio Protocol rather than uvicorn + starlette: the server must be
much cheaper than the gateway it stands beside (both share this machine's two
cores), and its timing must not wobble with framework work. It speaks just
enough HTTP/1.1 for keep-alive clients: a request line, headers up to CRLFCRLF,
a Content-Length body. Pipelined requests on one connection are answered in order.

Run: python bench/_fixed_upstream.py --port 0 --delay-ms 20
Prints ``listening <port>`` on stdout once it accepts connections, then serves
until SIGTERM/SIGINT or until ``--max-seconds`` have passed (a safety bound so
a forgotten process ends by itself).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import signal
import sys
import time
from typing import cast

import orjson

_ANSWER = "A fixed answer from the benchmark upstream: caches keep what is costly to recompute."


def _render(status: str, body: bytes, extra_headers: bytes = b"") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n".encode()
        + extra_headers
        + b"\r\n"
        + body
    )


_NOT_FOUND = _render("404 Not Found", b'{"error":{"message":"not found","type":"invalid_request_error"}}')
_BAD_REQUEST = _render("400 Bad Request",
                       b'{"error":{"message":"bad request","type":"invalid_request_error"}}')
# Roughly the size of a real cached reply, so the baseline moves as many bytes as a hit does.
_TRIVIAL = _render(
    "200 OK",
    orjson.dumps({"id": "chatcmpl-trivial", "object": "chat.completion", "created": 1, "model": "bench-model",
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": _ANSWER},
                               "finish_reason": "stop"}],
                  "usage": {"prompt_tokens": 12, "completion_tokens": 16, "total_tokens": 28}}),
    b"x-cascache: hit-exact\r\n",
)
_ids = itertools.count(1)


def _completion() -> bytes:
    """A fresh chat.completion: the id and time differ per call, like a real provider's."""
    body = orjson.dumps({
        "id": f"chatcmpl-bench{next(_ids)}", "object": "chat.completion", "created": int(time.time()),
        "model": "bench-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": _ANSWER}, "logprobs": None,
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 16, "total_tokens": 28},
    })
    return _render("200 OK", body, b"x-request-id: bench\r\n")


class _Http(asyncio.Protocol):
    """One keep-alive connection: parse requests from the byte stream, answer each in order."""

    def __init__(self, delay_s: float, trivial: bool) -> None:
        self._delay_s = delay_s
        self._trivial = trivial
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        # Replies are written in request order; a delayed reply holds back later ones.
        self._pending: asyncio.Future[None] | None = None
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence a cast, not an isinstance check.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._buffer[:end]).lower()
            length = 0
            marker = head.find(b"\r\ncontent-length:")
            if marker >= 0:
                stop = head.find(b"\r\n", marker + 2)
                raw = head[marker + 17 : stop if stop >= 0 else len(head)].strip()
                if not raw.isdigit():
                    self._reply(_BAD_REQUEST, 0.0)
                    self._close()
                    return
                length = int(raw)
            total = end + 4 + length
            if len(self._buffer) < total:
                return
            del self._buffer[:total]
            self._answer(head)

    def _answer(self, head: bytes) -> None:
        if self._trivial:
            self._reply(_TRIVIAL, 0.0)
            return
        request_line = head.split(b"\r\n", 1)[0]
        parts = request_line.split(b" ")
        if len(parts) >= 2 and parts[0] == b"post" and parts[1].split(b"?")[0].endswith(b"/chat/completions"):
            self._reply(_completion(), self._delay_s)
        else:
            self._reply(_NOT_FOUND, 0.0)

    def _reply(self, payload: bytes, delay_s: float) -> None:
        previous = self._pending
        done: asyncio.Future[None] = self._loop.create_future()
        self._pending = done

        def write() -> None:
            if previous is not None and not previous.done():
                # An earlier, still delayed reply on this connection goes first.
                previous.add_done_callback(lambda _: write())
                return
            if self._transport is not None:
                self._transport.write(payload)
            done.set_result(None)

        if delay_s > 0:
            self._loop.call_later(delay_s, write)
        else:
            write()

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()


async def serve(host: str, port: int, delay_s: float, trivial: bool, max_seconds: float) -> None:
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()

    def request_stop() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop)
    server = await loop.create_server(lambda: _Http(delay_s, trivial), host, port, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    print(f"listening {bound}", flush=True)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop, timeout=max_seconds)
    server.close()
    await server.wait_closed()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="latency of every chat completion")
    parser.add_argument("--trivial", action="store_true",
                        help="answer everything at once (load generator baseline)")
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="exit after this long regardless")
    args = parser.parse_args()
    if not args.host.startswith("127.") and args.host not in {"localhost", "::1"}:
        sys.exit("the benchmark upstream listens on loopback only")
    coro = serve(args.host, args.port, args.delay_ms / 1000.0, args.trivial, args.max_seconds)
    if args.trivial:
        # No timers here, only raw speed: uvloop keeps the baseline server ahead of the client.
        import uvloop

        uvloop.run(coro)
    else:
        # The selector loop for delayed replies: uvloop converts a delay to whole
        # milliseconds against a loop time cached at the start of an iteration, so a
        # reply could come up to 1 ms early; the selector loop never fires early
        # (epoll rounds its timeout up), so every reply takes delay to delay + ~1 ms.
        asyncio.run(coro)


if __name__ == "__main__":
    main()
