"""Redis Stack for the test suites: one local server per test session, started on first use.

The contract suite builds its stores from plain functions (no fixtures), so the
session's server is reached through `session_redis()` rather than a fixture;
the integration suites use the same server. It is stopped when the test
process exits. Each store gets a prefix of its own, so tests never see each
other's keys and need no flushing.
"""

from __future__ import annotations

import atexit
import uuid
from typing import Any

from cascache.stores.redis import RedisStore
from cascache.stores.redis_stack_server import RedisStackServer

__all__ = ["fresh_prefix", "fresh_redis_store", "session_redis"]

_server: RedisStackServer | None = None


def session_redis() -> RedisStackServer:
    """The session's Redis Stack server (restarted if a test stopped it)."""
    global _server
    if _server is None:
        _server = RedisStackServer()
        atexit.register(_server.close)
    if not _server.running:
        _server.start()
    return _server


def fresh_prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}:"


def fresh_redis_store(dim: int, **options: Any) -> RedisStore:
    """A `RedisStore` on the session server under a prefix no other store uses."""
    return RedisStore(session_redis().url, dim, prefix=fresh_prefix(), **options)
