"""The shared store contract, run again on a `ShardedStore` over two Redis Stack nodes.

Entries are routed by namespace and exact lookups go through fingerprint
locators on another node, so this checks that sharding keeps every promise of
the `Store` protocol. Excluded: the LRU test, because `max_entries` is a bound
per node (a sharded cache's capacity is the sum of its nodes').
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio

from cascache.stores.base import Store
from cascache.stores.redis import RedisStore
from cascache.stores.redis_stack_server import RedisStackServer
from cascache.stores.sharded import ShardedStore
from tests.contract import test_store_contract as contract
from tests.redis_support import fresh_prefix, session_redis

pytestmark = pytest.mark.integration

EXCLUDED = {"test_lru_eviction_keeps_recently_used_entries", "test_open_store_maps_urls_to_backends"}
globals().update(
    {name: test for name, test in vars(contract).items() if name.startswith("test_") and name not in EXCLUDED}
)
store = contract.store


@pytest.fixture(scope="module")
def second_node() -> Iterator[RedisStackServer]:
    with RedisStackServer() as server:
        yield server


@pytest_asyncio.fixture
async def make_store(second_node: RedisStackServer) -> AsyncIterator[contract.StoreMaker]:
    opened: list[Store] = []

    def make(**options: Any) -> Store:
        prefix = fresh_prefix()
        nodes = [RedisStore(url, contract.DIM, prefix=prefix, **options) for url in (session_redis().url, second_node.url)]
        sharded = ShardedStore(nodes)
        opened.append(sharded)
        return sharded

    yield make
    for opened_store in opened:
        await opened_store.close()
