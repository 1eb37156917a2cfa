"""Bounds on a request's head that uvicorn lacks: how long it may take to arrive, and how large it may be.

The ASGI app only sees a request once its headers are complete, so these must live in the HTTP
protocol. Measured on uvicorn 0.54 with httptools (what `uvicorn[standard]` picks): a client that
connects and sends nothing, or drips header bytes, holds its connection for ever (the keep-alive
timer runs only *between* requests); a 1 MiB header, or 20,000 small ones, are read and served.
(h11, the pure-Python fallback, refuses heads over 16 KiB but has no time bound either.)

`limit_request_head` wraps whichever protocol class uvicorn would use. While a request's head is
awaited, from the connection's first moment or from the first byte after the previous response,
it counts the bytes and runs a timer. The head is complete when the protocol starts a new request
cycle (`self.cycle` changes: both uvicorn protocols create one when the headers are parsed). A head
over `max_bytes` gets 431, one not complete in `timeout_s` gets 408; both close the connection.
The body is the app's business (`server.body_read_timeout_s`, `server.max_body_bytes`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from cascache.providers import PROVIDERS

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}
#: How much of a head is kept to tell which API it was for (the request line is enough).
_REQUEST_LINE_BYTES = 256


def refusal_body(head_start: bytes, status: int, message: str) -> bytes:
    """The error in the shape of the API the request line names: the head was never parsed, but a
    client of /v1/messages still deserves Anthropic's shape, and everyone else OpenAI's."""
    request_line = head_start.split(b"\r\n", 1)[0]
    provider = "anthropic" if b" /v1/messages" in request_line else "openai"
    return orjson.dumps(PROVIDERS[provider].error_body(status, message, "invalid_request_error"))


def limit_request_head(timeout_s: float, max_bytes: int, base: type[Any] = AutoHTTPProtocol) -> type[asyncio.Protocol]:
    """A subclass of uvicorn's HTTP protocol `base` that bounds each request head in time and size."""

    class LimitedHead(base):  # type: ignore[misc, valid-type]
        _head_timer: asyncio.TimerHandle | None = None
        _head_bytes = 0
        _head_start = b""
        _cycle_before_head: Any = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._await_head()

        def data_received(self, data: bytes) -> None:
            if self._head_timer is None and self.cycle is not None and self.cycle.response_complete:
                self._await_head()  # the first bytes of the next request on a kept-alive connection
            if self._head_timer is not None:
                if len(self._head_start) < _REQUEST_LINE_BYTES:
                    self._head_start += data[:_REQUEST_LINE_BYTES]
                self._head_bytes += len(data)
            super().data_received(data)
            if self._head_timer is None:
                return
            if self.cycle is not self._cycle_before_head:
                self._stop_awaiting_head()  # the head was parsed: a new request cycle began
            elif self._head_bytes > max_bytes:
                self._refuse(431, f"request head over {max_bytes} bytes")

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_awaiting_head()
            super().connection_lost(exc)

        def _await_head(self) -> None:
            self._cycle_before_head = self.cycle
            self._head_bytes = 0
            self._head_start = b""
            self._head_timer = self.loop.call_later(timeout_s, self._head_timed_out)

        def _stop_awaiting_head(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self.cycle is self._cycle_before_head:
                self._refuse(408, f"request head not received within {timeout_s:g} s")

        def _refuse(self, status: int, message: str) -> None:
            # No response is in flight (the head of a new request is pending), so answering here
            # cannot interleave with the app's own bytes.
            self._stop_awaiting_head()
            if self.transport.is_closing():
                return
            self.logger.warning("refused a request: %s", message)
            body = refusal_body(self._head_start, status, message)
            self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                                 % (status, _REASONS[status], len(body), body))
            self.transport.close()

    LimitedHead.__name__ = LimitedHead.__qualname__ = f"LimitedHead{base.__name__}"
    return LimitedHead
