"""The `Provider` protocol: everything the pipeline needs to know about one API shape."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from cascache._types import ChatRequest, Usage


class StreamAssembler(Protocol):
    """Rebuilds a complete answer from a live SSE stream."""

    def feed_bytes(self, data: bytes) -> None: ...

    @property
    def ended_cleanly(self) -> bool:
        """The stream reached its proper end (e.g. `[DONE]`, `message_stop`)."""
        ...

    def response(self) -> dict[str, Any]: ...


class Provider(Protocol):
    name: str
    chat_path: str
    """Path of the chat endpoint below the upstream's base URL."""

    def parse(self, body: Any) -> ChatRequest: ...

    def usage(self, response: Mapping[str, Any]) -> Usage: ...

    def is_complete(self, response: Mapping[str, Any]) -> bool: ...

    def replay_json(self, response: Mapping[str, Any]) -> dict[str, Any]: ...

    def replay_sse(self, response: Mapping[str, Any], include_usage: bool) -> Iterator[bytes]: ...

    def assembler(self) -> StreamAssembler: ...

    def upstream_body(self, request: ChatRequest, raw_body: bytes) -> bytes:
        """The body to send upstream (the caller's, adjusted only where accounting needs it)."""
        ...

    def client_event(self, event: bytes, request: ChatRequest) -> bytes | None:
        """One upstream SSE event as the client should see it; None drops it."""
        ...

    def error_body(self, status: int, message: str, error_type: str, param: str | None = None) -> dict[str, Any]: ...

    def stream_error_event(self, message: str, error_type: str) -> bytes: ...
