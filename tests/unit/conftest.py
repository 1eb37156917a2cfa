from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from cascache.config import load_settings
from cascache.gateway import create_app
from tests.unit.gateway_harness import Harness


@pytest.fixture
def harness() -> Harness:
    return Harness(load_settings(overrides={"semantic.threshold": 0.8, "server.max_body_bytes": 4096}, environ={}))


@pytest.fixture
def client(harness: Harness) -> Iterator[TestClient]:
    app = create_app(harness.settings, cache_factory=harness.factory)
    with TestClient(app, headers={"authorization": "Bearer sk-tenant-a"}) as test_client:
        yield test_client
