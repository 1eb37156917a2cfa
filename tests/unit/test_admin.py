"""Admin API: auth first, then every purge selector, listing and stats."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from cascache._errors import StoreUnavailable
from cascache.config import load_settings
from cascache.gateway import create_app
from tests.unit.gateway_harness import Harness, body, post

TOKEN = "admin-secret-token"


@pytest.fixture
def admin_client() -> Iterator[tuple[TestClient, Harness]]:
    harness = Harness(load_settings(overrides={"semantic.threshold": 0.8, "admin.token": TOKEN}, environ={}))
    with TestClient(create_app(harness.settings, cache_factory=harness.factory),
                    headers={"authorization": "Bearer sk-tenant-a"}) as client:
        yield client, harness


def admin(client: TestClient, method: str, path: str, token: str | None = TOKEN, **kwargs: Any) -> Any:
    headers = {"authorization": f"Bearer {token}"} if token is not None else {"authorization": ""}
    return client.request(method, path, headers=headers, **kwargs)


@pytest.mark.parametrize("path", ["/admin/entries", "/admin/stats"])
def test_admin_needs_the_right_token(admin_client: tuple[TestClient, Harness], path: str) -> None:
    client, _ = admin_client
    assert admin(client, "GET", path, token=None).status_code == 401
    assert admin(client, "GET", path, token="wrong").status_code == 401
    assert admin(client, "GET", path, token="sk-tenant-a").status_code == 401
    assert admin(client, "GET", path).status_code == 200
    assert admin(client, "POST", "/admin/purge", token="wrong", json={"all": True}).status_code == 401
    # The scheme is case-insensitive (RFC 9110), the token is not; nor is another scheme accepted.
    assert client.get(path, headers={"authorization": f"bearer {TOKEN}"}).status_code == 200
    assert client.get(path, headers={"authorization": f"Bearer {TOKEN.upper()}x"}).status_code == 401
    assert client.get(path, headers={"authorization": f"Basic {TOKEN}"}).status_code == 401
    assert client.get(path, headers={"authorization": f"Bearer  {TOKEN}"}).status_code == 401


def test_no_token_configured_means_no_admin_route(harness: Harness) -> None:
    with TestClient(create_app(harness.settings, cache_factory=harness.factory)) as client:
        assert admin(client, "GET", "/admin/stats", token="").status_code == 404
        assert admin(client, "POST", "/admin/purge", token="anything", json={"all": True}).status_code == 404


def fill(client: TestClient) -> list[dict[str, Any]]:
    post(client, body("What is the capital of France?"), **{"x-cascache-tags": "doc:1"})
    post(client, body("How tall is Mount Everest?"), **{"x-cascache-tags": "doc:2", "x-cascache-version": "v2"})
    post(client, body("Who wrote Hamlet?", user="alice"))
    return admin(client, "GET", "/admin/entries").json()["entries"]


@pytest.mark.parametrize(
    ("selector", "removed_queries"),
    [
        (lambda e: {"tag": "doc:1"}, {"What is the capital of France?"}),
        (lambda e: {"version": "v2"}, {"How tall is Mount Everest?"}),
        (lambda e: {"id": e["Who wrote Hamlet?"]["id"]}, {"Who wrote Hamlet?"}),
        (lambda e: {"namespace": e["Who wrote Hamlet?"]["namespace"]}, {"Who wrote Hamlet?"}),
        (lambda e: {"scope": e["Who wrote Hamlet?"]["scope"]}, {"Who wrote Hamlet?"}),
        (lambda e: {"all": True}, {"What is the capital of France?", "How tall is Mount Everest?",
                                   "Who wrote Hamlet?"}),
    ],
)
def test_each_purge_selector_removes_exactly_its_entries(admin_client: tuple[TestClient, Harness], selector: Any,
                                                         removed_queries: set[str]) -> None:
    client, _ = admin_client
    listed = {e["query"]: e for e in fill(client)}
    assert len(listed) == 3
    reply = admin(client, "POST", "/admin/purge", json=selector(listed))
    assert reply.status_code == 200 and reply.json() == {"purged": len(removed_queries)}
    left = {e["query"] for e in admin(client, "GET", "/admin/entries").json()["entries"]}
    assert left == set(listed) - removed_queries


def test_purged_entry_is_no_longer_served(admin_client: tuple[TestClient, Harness]) -> None:
    client, _ = admin_client
    fill(client)
    assert post(client, body("What is the capital of France?")).headers["x-cascache"] == "hit-exact"
    admin(client, "POST", "/admin/purge", json={"tag": "doc:1"})
    assert post(client, body("What is the capital of France?")).headers["x-cascache"] == "miss"


@pytest.mark.parametrize("bad", [{}, {"all": False}, {"tag": ""}, {"tag": "a", "id": "b"}, {"colour": "red"}, [1]])
def test_bad_purge_bodies_are_400(admin_client: tuple[TestClient, Harness], bad: Any) -> None:
    client, _ = admin_client
    assert admin(client, "POST", "/admin/purge", json=bad).status_code == 400


def test_entries_paging_and_stats(admin_client: tuple[TestClient, Harness]) -> None:
    client, _ = admin_client
    fill(client)
    page = admin(client, "GET", "/admin/entries?offset=1&limit=1").json()
    assert len(page["entries"]) == 1 and page["offset"] == 1
    entry = page["entries"][0]
    assert {"query", "hits", "age_s", "ttl_remaining_s", "tags", "scope"} <= set(entry)
    assert "sk-tenant-a" not in str(page)
    assert admin(client, "GET", "/admin/entries?limit=0").status_code == 400
    stats = admin(client, "GET", "/admin/stats").json()
    assert stats["store"]["entries"] == 3 and stats["requests"]["miss"] == 3
    # Three finished misses, each its own flight: none in progress, nobody followed; tasks >= this request's.
    assert stats["runtime"]["flights_in_progress"] == 0 and stats["runtime"]["followers_joined"] == 0
    assert stats["runtime"]["tasks"] >= 1


def test_a_store_that_is_down_gets_a_503_not_a_500(admin_client: tuple[TestClient, Harness],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    client, harness = admin_client

    async def locked(*args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("cache.db is locked by another process")

    for method in ("purge", "list_entries", "stats"):
        monkeypatch.setattr(harness.store, method, locked)
    for method, path, payload in (("POST", "/admin/purge", {"all": True}), ("GET", "/admin/entries", None),
                                  ("GET", "/admin/stats", None)):
        reply = admin(client, method, path, json=payload)
        assert reply.status_code == 503, (path, reply.text)
        assert reply.json()["error"]["type"] == "admin_error"
        assert "locked by another process" in reply.json()["error"]["message"]
