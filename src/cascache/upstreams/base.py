"""The `Upstream` protocol: one small IO boundary to the model provider."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


async def _nothing_to_close() -> None:
    return None


@dataclass(slots=True)
class UpstreamReply:
    """What the upstream said: a whole body, or (streaming, status 200) live chunks."""

    status: int
    headers: Mapping[str, str]
    """Response headers worth passing to the client (lower-case names)."""
    body: bytes | None = None
    chunks: AsyncIterator[bytes] | None = None
    close: Callable[[], Awaitable[None]] = field(default=_nothing_to_close)
    """Release the connection; safe to call more than once."""


@runtime_checkable
class Upstream(Protocol):
    """Sends a request body to the provider and returns its reply.

    Raises UpstreamTimeout / UpstreamUnavailable when no reply can be had; an
    HTTP error status is a reply, not an exception, so it reaches the client
    with its own status and body.
    """

    kind: str
    """What serves behind it, for Tier 2 shaping: "openai", "openai_compatible", "llamacpp", "vllm", "anthropic"."""

    async def post(self, path: str, body: bytes, headers: Mapping[str, str], stream: bool) -> UpstreamReply: ...

    async def get(self, path: str, headers: Mapping[str, str]) -> UpstreamReply: ...

    async def close(self) -> None: ...
