"""Pre-warming: write known question/answer pairs into Tier 1 under the keys real requests will have.

A warmed entry is keyed exactly as the request that would ask the question
(same model, system prompt, parameters, tenant, version), so it is found by
both the exact and the semantic tier. Input rows (JSONL or CSV):

    {"question": "...", "answer": "...", "tags": ["doc:1"]}        # tags optional

The request around each question comes from a template body (model, system
prompt, parameters) given by the caller.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cascache._errors import InvalidRequest
from cascache._types import CacheEntry
from cascache.cache import Cache
from cascache.keys import make_scope, request_keys
from cascache.pipeline import caller_key
from cascache.policy import decide
from cascache.providers import PROVIDERS


@dataclass(frozen=True, slots=True)
class WarmPair:
    question: str
    answer: str
    tags: tuple[str, ...] = ()


def read_pairs(path: Path) -> Iterator[WarmPair]:
    """Rows of a .jsonl or .csv file with `question` and `answer` (and optional `tags`)."""
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                yield _pair(row, path)
        return
    with path.open() as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InvalidRequest(f"{path}:{number}: not JSON: {exc}") from None
                yield _pair(row, path)


def _pair(row: Mapping[str, Any], path: Path) -> WarmPair:
    question, answer = row.get("question"), row.get("answer")
    if not isinstance(question, str) or not question.strip() or not isinstance(answer, str) or not answer.strip():
        raise InvalidRequest(f"{path}: every row needs a non-empty question and answer, got {dict(row)!r}")
    tags = row.get("tags") or ()
    if isinstance(tags, str):
        tags = [t for t in tags.split(",") if t.strip()]
    return WarmPair(question.strip(), answer.strip(), tuple(sorted({str(t).strip() for t in tags})))


def openai_answer(model: str, text: str) -> dict[str, Any]:
    """A complete Chat Completions answer carrying `text` (what a warmed entry replays)."""
    return {
        "id": f"chatcmpl-warm{uuid.uuid4().hex[:20]}", "object": "chat.completion", "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }


async def warm_pair(cache: Cache, template: Mapping[str, Any], pair: WarmPair,
                    headers: Mapping[str, str]) -> CacheEntry | None:
    """Store one pair as the answer to `template` + the question; `headers` carry tenant, version, TTL."""
    provider = PROVIDERS["openai"]
    body = {**template, "messages": [*template.get("messages", []), {"role": "user", "content": pair.question}]}
    request = provider.parse(body)
    decision = decide(request, headers, cache.settings.policy)
    # Warming is an explicit write: header tags and the row's tags both apply.
    decision = dataclasses.replace(decision, store=True, tags=tuple(sorted({*decision.tags, *pair.tags})))
    scope = make_scope(caller_key(headers), request.user)
    keys = request_keys(request, scope, decision.version, cache.embedder.name)
    vector = await cache.pipeline.semantic.embed(pair.question) if keys.namespace is not None else None
    response = openai_answer(request.model, pair.answer)
    return await cache.pipeline.writeback.write(request, keys, decision, response, provider.usage(response),
                                                vector, cache.pipeline.clock())
