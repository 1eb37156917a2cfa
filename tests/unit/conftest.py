from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from cascache.config import load_settings
from cascache.gateway import create_app
from tests.unit.gateway_harness import Harness


@pytest.fixture
def harness() -> Harness:
    # No off-path verification samples: unit tests count upstream calls exactly.
    return Harness(load_settings(overrides={"semantic.threshold": 0.8, "server.max_body_bytes": 4096,
                                            "verification.sample_share": 0.0}, environ={}))


@pytest.fixture
def client(harness: Harness) -> Iterator[TestClient]:
    app = create_app(harness.settings, cache_factory=harness.factory)
    with TestClient(app, headers={"authorization": "Bearer sk-tenant-a"}) as test_client:
        yield test_client
