"""The `cascache` command end to end on a temporary data dir."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from cascache._types import CacheEntry, Fingerprint, Namespace, Scope, Usage
from cascache.cli import app
from cascache.stores import SqliteHnswStore

runner = CliRunner()


def entry(index: int, tag: str, version: str = "v1") -> CacheEntry:
    vector = np.zeros(384, dtype=np.float32)
    vector[index] = 1.0
    return CacheEntry(id=f"e{index}", fingerprint=Fingerprint(f"fp{index}"), namespace=Namespace("ns"),
                      scope=Scope("tenant:t"), version=version, provider="openai", model="m", query=f"q{index}",
                      vector=vector, response={"choices": []}, usage=Usage(1, 1), created_at=time.time(),
                      expires_at=None, tags=(tag,))


def seed(data_dir: Path) -> None:
    async def put() -> None:
        store = SqliteHnswStore(data_dir / "store", 384)
        for i, (tag, version) in enumerate([("doc:1", "v1"), ("doc:1", "v1"), ("doc:2", "v2")]):
            await store.put(entry(i, tag, version))
        await store.close()

    asyncio.run(put())


def test_stats_and_purge_on_a_data_dir(tmp_path: Path) -> None:
    seed(tmp_path)
    shown = runner.invoke(app, ["stats", "--data-dir", str(tmp_path)])
    assert shown.exit_code == 0, shown.output
    assert "store entries" in shown.output and "3" in shown.output
    purged = runner.invoke(app, ["purge", "--tag", "doc:1", "--data-dir", str(tmp_path)])
    assert purged.exit_code == 0 and "purged 2 entries" in purged.output
    assert "purged 1 entries" in runner.invoke(app, ["purge", "--version", "v2", "--data-dir", str(tmp_path)]).output
    assert "purged 0 entries" in runner.invoke(app, ["purge", "--all", "--data-dir", str(tmp_path)]).output


def test_purge_needs_exactly_one_selector(tmp_path: Path) -> None:
    assert runner.invoke(app, ["purge", "--data-dir", str(tmp_path)]).exit_code == 2
    assert runner.invoke(app, ["purge", "--tag", "a", "--id", "b", "--data-dir", str(tmp_path)]).exit_code == 2


def test_purge_through_a_gateway_needs_a_token() -> None:
    result = runner.invoke(app, ["purge", "--all", "--url", "http://127.0.0.1:9"], env={"CASCACHE_ADMIN_TOKEN": ""})
    assert result.exit_code == 2 and "admin-token" in result.output


def test_config_check_names_the_bad_key(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[semantic]\nthreshold = 0.95\n[admin]\ntoken = "s3cret"\n')
    result = runner.invoke(app, ["config", "check", "--config", str(good)])
    assert result.exit_code == 0
    shown = json.loads(result.output)
    assert shown["semantic"]["threshold"] == 0.95 and shown["admin"]["token"] == "***"
    bad = tmp_path / "bad.toml"
    bad.write_text("[semantic]\nthreshhold = 0.95\n")
    result = runner.invoke(app, ["config", "check", "--config", str(bad)])
    assert result.exit_code == 2 and "semantic.threshhold" in result.output
    env_bad = runner.invoke(app, ["config", "check"], env={"CASCACHE_UPSTREAM_TIMEOUT_S": "-1"})
    assert env_bad.exit_code == 2 and "upstream.timeout_s" in env_bad.output
