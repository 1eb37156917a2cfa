"""What `RedisStore` decides without a server: tag escaping, URL parsing, native expiry.

Everything that talks to Redis is in tests/integration/test_redis_store.py and
in the shared contract suite.
"""

from __future__ import annotations

import time

import pytest

from cascache._types import Namespace, PurgeSelector, Scope
from cascache.stores import open_store
from cascache.stores.redis import RedisStore, _native_expiry_ms, _purge_query, escape_tag
from cascache.stores.sharded import ShardedStore


@pytest.mark.parametrize(
    ("value", "escaped"),
    [
        ("abc_123", "abc_123"),
        ("tenant:ab12/user:9f", r"tenant\:ab12\/user\:9f"),
        ("doc-1", r"doc\-1"),
        ("a b|c}{", r"a\ b\|c\}\{"),
        ("é", r"\é"),
        ("", '""'),
    ],
)
def test_escape_tag_makes_every_punctuation_literal(value: str, escaped: str) -> None:
    assert escape_tag(value) == escaped


def test_purge_queries_name_one_tag_field() -> None:
    assert _purge_query(PurgeSelector(scope=Scope("tenant:a"))) == r"@scope:{tenant\:a}"
    assert _purge_query(PurgeSelector(namespace=Namespace("ns"))) == "@namespace:{ns}"
    assert _purge_query(PurgeSelector(version="v1.2")) == r"@version:{v1\.2}"
    assert _purge_query(PurgeSelector(tag="doc 7")) == r"@tags:{doc\ 7}"
    assert _purge_query(PurgeSelector(all=True)) == "*"


def test_native_expiry_only_for_moments_still_ahead_on_the_wall_clock() -> None:
    ahead = time.time() + 60
    assert _native_expiry_ms(None) is None
    assert _native_expiry_ms(2_000.0) is None  # a test clock in 1970: left to sweep(now)
    assert _native_expiry_ms(ahead) == pytest.approx(ahead * 1000, abs=1)


async def test_open_store_builds_one_redis_store_per_node_behind_a_sharded_store() -> None:
    store = open_store(
        "redis://user:secret@r1:7000,r2:7001/2?prefix=app:&timeout=0.1&ef_runtime=50&retry_interval=3",
        dim=384,
        max_entries=1_001,
    )
    try:
        assert isinstance(store, ShardedStore)
        nodes = store.shards
        assert all(isinstance(node, RedisStore) for node in nodes)
        assert [node.node_name for node in nodes] == ["r1:7000/2", "r2:7001/2"]
        redis_nodes = [node for node in nodes if isinstance(node, RedisStore)]
        assert [node.url for node in redis_nodes] == ["redis://user:secret@r1:7000/2", "redis://user:secret@r2:7001/2"]
        assert {(node.prefix, node.max_entries, node.ef_runtime, node.dim) for node in redis_nodes} == {
            ("app:", 501, 50, 384)
        }
        assert redis_nodes[0]._pool.connection_kwargs["socket_timeout"] == 0.1
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [("redis://", "at least one host"), ("redis://r1:6379?colour=blue", "unknown redis:// option 'colour'")],
)
def test_open_store_rejects_bad_redis_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        open_store(url, dim=8)


def test_redis_store_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="prefix"):
        RedisStore("redis://r1", 8, prefix="cc*")
    with pytest.raises(ValueError, match="max_entries"):
        RedisStore("redis://r1", 8, max_entries=0)
