"""`cascache.wrap` around the official OpenAI clients, against the real llama.cpp engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest

import cascache
from cascache.config import load_settings
from cascache.upstreams.llamacpp_engine import LlamaCppEngine

pytestmark = pytest.mark.integration

MODEL = "smollm2-135m-instruct"
PARAMS: dict[str, Any] = {"temperature": 0, "max_tokens": 200, "stop": ["\n"]}


def messages(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Answer in one short sentence."}, {"role": "user", "content": question}]


def test_sync_client_exact_semantic_and_streaming(engine: LlamaCppEngine, tmp_path: Path) -> None:
    settings = load_settings(overrides={"data_dir": str(tmp_path)}, environ={})
    client = cascache.wrap(openai.OpenAI(base_url=engine.base_url, api_key="sk-lib", max_retries=0), settings)
    first = client.chat.completions.with_raw_response.create(model=MODEL, messages=messages("What is ice?"), **PARAMS)
    assert first.headers["x-cascache"] == "miss"
    again = client.chat.completions.with_raw_response.create(model=MODEL, messages=messages("What is ice?"), **PARAMS)
    assert again.headers["x-cascache"] == "hit-exact"
    assert again.parse().choices[0].message.content == first.parse().choices[0].message.content
    stream = client.chat.completions.create(model=MODEL, messages=messages("What is ice?"), stream=True, **PARAMS)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert streamed == first.parse().choices[0].message.content
    # Requests that are not chat completions go straight to the provider.
    assert MODEL in [m.id for m in client.models.list()]
    client.close()


async def test_async_client_hits_and_streams(engine: LlamaCppEngine, tmp_path: Path) -> None:
    settings = load_settings(overrides={"data_dir": str(tmp_path)}, environ={})
    client = cascache.wrap(openai.AsyncOpenAI(base_url=engine.base_url, api_key="sk-lib", max_retries=0), settings)
    first = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=messages("What is a river?"), stream=True, **PARAMS)
    live = "".join([c.choices[0].delta.content or "" async for c in first.parse() if c.choices])
    assert first.headers["x-cascache"] == "miss" and live
    hit = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=messages("What's a river?"), **PARAMS)
    assert hit.headers["x-cascache"] == "hit-semantic"
    assert hit.parse().choices[0].message.content == live
    await client.close()
