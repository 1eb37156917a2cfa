"""`cascache warm` and `cascache replay` end to end on a temporary data dir."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from cascache._errors import InvalidRequest
from cascache.cache import Cache
from cascache.cli import app
from cascache.config import load_settings
from cascache.embedders import make_embedder
from cascache.replay import read_workload
from cascache.stores import SqliteHnswStore
from cascache.testing.provider_sim import ProviderSim, SimServer
from tests.fakes import FakeProvider

runner = CliRunner()


def test_warm_then_requests_hit_without_calling_upstream(tmp_path: Path) -> None:
    pairs = tmp_path / "faq.jsonl"
    pairs.write_text("\n".join(json.dumps(row) for row in [
        {"question": "How do I reset my password?", "answer": "Use the 'Forgot password' link.", "tags": ["doc:7"]},
        {"question": "What are your opening hours?", "answer": "9am to 5pm, Monday to Friday."},
    ]))
    result = runner.invoke(app, ["warm", str(pairs), "--model", "m", "--system", "You are the help desk.",
                                 "--params", '{"temperature": 0}', "--api-key-env", "TENANT_KEY",
                                 "--data-dir", str(tmp_path)], env={"TENANT_KEY": "sk-tenant"})
    assert result.exit_code == 0, result.output
    assert "warmed 2 of 2 pairs" in result.output

    async def ask(question: str, key: str = "sk-tenant") -> tuple[str, str]:
        embedder = make_embedder("minilm")
        upstream = FakeProvider(status=500)  # any upstream call would fail the request
        cache = Cache(load_settings(overrides={"data_dir": str(tmp_path)}, environ={}),
                      SqliteHnswStore(tmp_path / "store", embedder.dim), embedder, {"openai": upstream.upstream()})
        try:
            body = orjson.dumps({"model": "m", "temperature": 0, "messages": [
                {"role": "system", "content": "You are the help desk."}, {"role": "user", "content": question}]})
            outcome = await cache.chat("openai", body, {"authorization": f"Bearer {key}"})
            content = orjson.loads(outcome.body or b"{}").get("choices", [{}])[0].get("message", {}).get("content", "")
            return outcome.headers["x-cascache"], content
        finally:
            await cache.close()

    assert asyncio.run(ask("How do I reset my password?")) == ("hit-exact", "Use the 'Forgot password' link.")
    assert asyncio.run(ask("How can I reset my password?"))[0] == "hit-semantic"
    assert asyncio.run(ask("How do I reset my password?", key="sk-other"))[0] == "miss"
    purged = runner.invoke(app, ["purge", "--tag", "doc:7", "--data-dir", str(tmp_path)])
    assert "purged 1 entries" in purged.output


def test_warm_rejects_rows_without_answer(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("question,answer\nWhat is up?,\n")
    result = runner.invoke(app, ["warm", str(bad), "--model", "m", "--data-dir", str(tmp_path)])
    assert result.exit_code != 0


def test_replay_reports_per_tier_and_writes_html(tmp_path: Path) -> None:
    workload = tmp_path / "workload.jsonl"
    questions = ["What is a cache?", "What is a cache?", "Why is the sky blue?", "What is a cache?"]
    workload.write_text("\n".join(json.dumps({
        "body": {"model": "gpt-4o-mini", "temperature": 0, "messages": [{"role": "user", "content": q}]},
        "headers": {"authorization": "Bearer sk-a"}}) for q in questions))
    html = tmp_path / "report.html"
    with SimServer(ProviderSim()) as sim:
        result = runner.invoke(app, ["replay", str(workload), "--upstream-url", sim.base_url + "/v1",
                                     "--concurrency", "1", "--html", str(html), "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "hit-exact" in result.output and "miss" in result.output
    page = html.read_text()
    assert "<svg" in page and "hit-exact" in page and "50.0%" in page


def test_a_bad_workload_line_is_invalid_input_naming_its_line(tmp_path: Path) -> None:
    good = '{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
    for bad, why in (("[1]", "expected a JSON object"), ("{nope", "not JSON")):
        path = tmp_path / "workload.jsonl"
        path.write_text(f"{good}\n\n{bad}\n")
        with pytest.raises(InvalidRequest, match=rf"workload\.jsonl:3: {why}"):
            list(read_workload(path))
