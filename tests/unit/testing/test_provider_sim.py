"""The simulator's caching rules, table by table, and the official SDKs reading what it sends."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import orjson
import pytest

from cascache.testing import Fault, ManualClock, ProviderSim, SimServer, count_tokens
from cascache.testing.provider_sim import ANTHROPIC_MIN_CACHEABLE, anthropic_min_cacheable

ANTHROPIC_HEADERS = {"x-api-key": "sk-ant-tenant-a", "anthropic-version": "2023-06-01"}
OPENAI_HEADERS = {"authorization": "Bearer sk-tenant-a"}
MODEL = "claude-sonnet-4-6"  # minimum cacheable prefix: 1,024 tokens


def words(n: int, tag: str = "w") -> str:
    """n tokens of distinct words (the simulator counts whitespace-separated words)."""
    return " ".join(f"{tag}{i}" for i in range(n))


def system_block(tokens: int, ttl: str | None = "5m", tag: str = "s") -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": words(tokens, tag)}
    if ttl is not None:
        block["cache_control"] = {"type": "ephemeral"} if ttl == "5m" else {"type": "ephemeral", "ttl": ttl}
    return block


def messages_body(system_tokens: int = 1100, question: str = "What is the capital of France?",
                  ttl: str | None = "5m", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 200, "system": [system_block(system_tokens, ttl)],
            "messages": [{"role": "user", "content": question}], **extra}


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def sim(clock: ManualClock) -> ProviderSim:
    return ProviderSim(clock)


@pytest.fixture
async def client(sim: ProviderSim) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim.app), base_url="http://sim") as http:
        yield http


async def messages(client: httpx.AsyncClient, body: dict[str, Any], headers: dict[str, str] | None = None,
                   status: int = 200) -> dict[str, Any]:
    response = await client.post("/v1/messages", json=body, headers=headers or ANTHROPIC_HEADERS)
    assert response.status_code == status, response.text
    result: dict[str, Any] = response.json()
    return result


def cache(usage: dict[str, Any]) -> tuple[int, int]:
    """(read, written) of an Anthropic usage, after checking that it adds up."""
    split = usage["cache_creation"]
    assert usage["cache_creation_input_tokens"] == split["ephemeral_5m_input_tokens"] + split["ephemeral_1h_input_tokens"]
    return usage["cache_read_input_tokens"], usage["cache_creation_input_tokens"]


def prompt_tokens(usage: dict[str, Any]) -> int:
    return int(usage["input_tokens"] + usage["cache_read_input_tokens"] + usage["cache_creation_input_tokens"])


# --- Anthropic ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "prefix_tokens", "cached"),
    [
        ("claude-sonnet-4-6", 1023, False),
        ("claude-sonnet-4-6", 1024, True),
        ("claude-opus-4-1-20250805", 1024, True),
        ("claude-opus-4-5-20251101", 1024, False),
        ("claude-opus-4-5-20251101", 4095, False),
        ("claude-opus-4-5-20251101", 4096, True),
        ("claude-haiku-4-5", 4095, False),
        ("claude-haiku-4-5", 4096, True),
        ("claude-3-5-haiku-20241022", 2047, False),
        ("claude-3-5-haiku-20241022", 2048, True),
    ],
)
async def test_a_prefix_below_the_model_minimum_is_silently_not_cached(
        client: httpx.AsyncClient, model: str, prefix_tokens: int, cached: bool) -> None:
    body = {**messages_body(prefix_tokens), "model": model}
    first = (await messages(client, body))["usage"]
    second = (await messages(client, body))["usage"]
    assert cache(first) == (0, prefix_tokens if cached else 0)
    assert cache(second) == (prefix_tokens if cached else 0, 0)
    assert prompt_tokens(first) == prompt_tokens(second) == prefix_tokens + count_tokens(body["messages"][0]["content"])


def test_the_minimum_table_matches_most_specific_family_first() -> None:
    assert anthropic_min_cacheable("claude-opus-4-6") == 4096
    assert anthropic_min_cacheable("claude-opus-4-20250514") == 1024
    assert anthropic_min_cacheable("some-future-model") == 1024
    assert anthropic_min_cacheable("claude-sonnet-4-6", (("claude-sonnet-4-6", 2048),)) == 2048
    prefixes = [prefix for prefix, _ in ANTHROPIC_MIN_CACHEABLE]
    for index, prefix in enumerate(prefixes):  # a shorter prefix listed first would shadow a longer one
        assert not any(prefix.startswith(earlier) for earlier in prefixes[:index]), prefix


@pytest.mark.parametrize(
    ("second", "read", "written"),
    [
        ("same request", 1100, 0),
        ("another question", 1100, 0),
        ("another system prompt", 0, 1100),
        ("another model", 0, 1100),
        ("another organisation", 0, 1100),
        ("no breakpoint", 0, 0),
    ],
)
async def test_a_repeated_prefix_is_read_and_only_that_prefix(
        client: httpx.AsyncClient, second: str, read: int, written: int) -> None:
    await messages(client, messages_body())
    body, headers = messages_body(), ANTHROPIC_HEADERS
    if second == "another question":
        body = messages_body(question="And of Spain?")
    elif second == "another system prompt":
        body["system"] = [system_block(1100, tag="t")]
    elif second == "another model":
        body["model"] = "claude-sonnet-4-5"
    elif second == "another organisation":
        headers = {**ANTHROPIC_HEADERS, "x-api-key": "sk-ant-tenant-b"}
    elif second == "no breakpoint":
        body = messages_body(ttl=None)
    usage = (await messages(client, body, headers))["usage"]
    assert cache(usage) == (read, written)
    assert usage["input_tokens"] == prompt_tokens(usage) - read - written


@pytest.mark.parametrize(
    ("ttl", "waits", "hits"),
    [
        ("5m", [299], [True]),
        ("5m", [301], [False]),
        ("5m", [299, 299, 299], [True, True, True]),  # each read refreshes: 897 s after the write, still live
        ("5m", [299, 301], [True, False]),
        ("1h", [301], [True]),
        ("1h", [3599, 3599], [True, True]),
        ("1h", [3601], [False]),
    ],
)
async def test_ttl_expires_and_a_hit_refreshes_it(client: httpx.AsyncClient, clock: ManualClock, ttl: str,
                                                  waits: list[int], hits: list[bool]) -> None:
    body = messages_body(ttl=ttl)
    first = (await messages(client, body))["usage"]
    assert first["cache_creation"][f"ephemeral_{ttl}_input_tokens"] == 1100
    for wait, hit in zip(waits, hits, strict=True):
        clock.advance(wait)
        usage = (await messages(client, body))["usage"]
        assert cache(usage) == ((1100, 0) if hit else (0, 1100)), (wait, usage)


@pytest.mark.parametrize("description_tokens", [1100, 600])
async def test_writes_are_split_by_the_ttl_of_the_breakpoint_that_ends_them(client: httpx.AsyncClient,
                                                                           description_tokens: int) -> None:
    tool = {"name": "lookup", "description": words(description_tokens, "d"), "input_schema": {"type": "object"},
            "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    body = messages_body(system_tokens=700, tools=[tool])
    tool_tokens = len(json.dumps({k: v for k, v in tool.items() if k != "cache_control"}, sort_keys=True).split())
    usage = (await messages(client, body))["usage"]
    assert prompt_tokens(usage) == tool_tokens + 700 + count_tokens(body["messages"][0]["content"])
    if tool_tokens >= 1024:
        assert usage["cache_creation"] == {"ephemeral_1h_input_tokens": tool_tokens, "ephemeral_5m_input_tokens": 700}
    else:  # the tools alone are below the minimum: the system breakpoint writes them, for 5 minutes
        assert usage["cache_creation"] == {"ephemeral_1h_input_tokens": 0, "ephemeral_5m_input_tokens": tool_tokens + 700}
    changed_system = copy.deepcopy(body)
    changed_system["system"] = [system_block(700, tag="t")]
    usage = (await messages(client, changed_system))["usage"]
    # tools come first: their own cached prefix survives a new system prompt
    assert cache(usage) == ((tool_tokens, 700) if tool_tokens >= 1024 else (0, tool_tokens + 700))


@pytest.mark.parametrize(("breakpoints", "status"), [(4, 200), (5, 400)])
async def test_at_most_four_breakpoints(client: httpx.AsyncClient, breakpoints: int, status: int) -> None:
    body = messages_body(ttl=None)
    body["messages"][0]["content"] = [{"type": "text", "text": words(300, f"b{i}"),
                                       "cache_control": {"type": "ephemeral"}} for i in range(breakpoints)]
    result = await messages(client, body, status=status)
    if status == 400:
        assert result["type"] == "error" and result["error"]["type"] == "invalid_request_error"
        assert "maximum of 4 blocks with cache_control" in result["error"]["message"]
    else:
        assert cache(result["usage"])[1] == 1100 + 4 * 300


@pytest.mark.parametrize(
    ("where", "cache_control"),
    [
        ("system", {"type": "persistent"}),
        ("system", {"type": "ephemeral", "ttl": "2h"}),
        ("system", {"type": "ephemeral", "ttl": 300}),
        ("system", {"type": "ephemeral", "scope": "global"}),
        ("system", "ephemeral"),
        ("top level", {"type": "ephemeral", "ttl": "1d"}),
        ("empty text", {"type": "ephemeral"}),
        ("thinking", {"type": "ephemeral"}),
        ("1h after 5m", {"type": "ephemeral", "ttl": "1h"}),
    ],
)
async def test_malformed_cache_control_is_a_400(client: httpx.AsyncClient, sim: ProviderSim, where: str,
                                                cache_control: Any) -> None:
    body = messages_body(ttl=None)
    if where == "system":
        body["system"][0]["cache_control"] = cache_control
    elif where == "top level":
        body["cache_control"] = cache_control
    elif where == "empty text":
        body["messages"][0]["content"] = [{"type": "text", "text": "", "cache_control": cache_control},
                                          {"type": "text", "text": "hi"}]
    elif where == "thinking":
        body["messages"] = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "s", "cache_control": cache_control},
            {"type": "text", "text": "Hello."}]}, {"role": "user", "content": "again"}]
    else:
        body = messages_body(ttl="5m")
        body["messages"][0]["content"] = [{"type": "text", "text": "q", "cache_control": cache_control}]
    result = await messages(client, body, status=400)
    assert result["error"]["type"] == "invalid_request_error"
    assert sim.log[-1].status == 400 and sim.log[-1].error == result["error"]["message"]


def conversation(blocks: int, breakpoint_at: int) -> dict[str, Any]:
    """A 1,100-token system prompt (no breakpoint) and one user turn of `blocks` small blocks."""
    body = messages_body(ttl=None)
    body["messages"][0]["content"] = [{"type": "text", "text": f"block {i}"} for i in range(blocks)]
    body["messages"][0]["content"][breakpoint_at]["cache_control"] = {"type": "ephemeral"}
    return body


@pytest.mark.parametrize(("added_blocks", "hit"), [(1, True), (5, True), (19, True), (20, False), (30, False)])
async def test_lookback_finds_an_earlier_breakpoint_within_20_blocks(
        client: httpx.AsyncClient, sim: ProviderSim, added_blocks: int, hit: bool) -> None:
    await messages(client, conversation(5, 4))  # writes the prefix through block 4
    grown = conversation(5 + added_blocks, 4 + added_blocks)  # the only breakpoint moved to the end
    usage = (await messages(client, grown))["usage"]
    through_block_4 = 1100 + 2 * 5
    assert cache(usage)[0] == (through_block_4 if hit else 0)
    assert cache(usage)[1] == prompt_tokens(usage) - cache(usage)[0] - usage["input_tokens"]
    assert sim.log[-1].read_from == ("messages.0.content.4" if hit else None)


async def test_a_read_through_lookback_refreshes_the_entry_it_read(client: httpx.AsyncClient,
                                                                   clock: ManualClock) -> None:
    await messages(client, conversation(5, 4))
    clock.advance(299)
    assert cache((await messages(client, conversation(10, 9)))["usage"])[0] == 1100 + 2 * 5
    clock.advance(299)  # 598 s after the write, 299 s after the read
    assert cache((await messages(client, conversation(5, 4)))["usage"]) == (1100 + 2 * 5, 0)


async def test_lookback_needs_an_entry_it_never_reads_past_a_change(client: httpx.AsyncClient) -> None:
    await messages(client, conversation(5, 4))
    changed = conversation(8, 7)
    changed["messages"][0]["content"][2]["text"] = "block two, edited"
    assert cache((await messages(client, changed))["usage"])[0] == 0


async def test_changing_tool_choice_keeps_tools_and_system_but_not_messages(client: httpx.AsyncClient) -> None:
    tools = [{"name": "lookup", "input_schema": {"type": "object"}}]
    body = messages_body(tools=tools)
    body["messages"][0]["content"] = [{"type": "text", "text": words(200, "m"), "cache_control": {"type": "ephemeral"}}]
    await messages(client, body)
    usage = (await messages(client, {**body, "tool_choice": {"type": "auto"}}))["usage"]
    tool_tokens = prompt_tokens(usage) - 1100 - 200
    assert cache(usage) == (tool_tokens + 1100, 200)


async def test_automatic_caching_marks_the_last_block(client: httpx.AsyncClient, sim: ProviderSim) -> None:
    first = messages_body(ttl=None, cache_control={"type": "ephemeral"})
    usage = (await messages(client, first))["usage"]
    assert cache(usage) == (0, prompt_tokens(usage)) and usage["input_tokens"] == 0
    assert sim.log[-1].breakpoints == ["messages.0.content.0"]
    follow_up = copy.deepcopy(first)
    follow_up["messages"] += [{"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And Spain?"}]
    usage = (await messages(client, follow_up))["usage"]
    assert cache(usage)[0] == 1100 + count_tokens(first["messages"][0]["content"])  # the last turn's prefix
    assert sim.log[-1].breakpoints == ["messages.2.content.0"]


async def test_an_entry_is_readable_only_once_its_response_has_started(sim: ProviderSim) -> None:
    sim.latency_s = 0.2
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim.app), base_url="http://sim") as client:
        together = await asyncio.gather(*(messages(client, messages_body()) for _ in range(3)))
        after = await messages(client, messages_body())
    assert [cache(r["usage"]) for r in together] == [(0, 1100)] * 3  # all arrived before the first byte
    assert cache(after["usage"]) == (1100, 0)


async def test_answers_are_deterministic_and_truncated_by_max_tokens(client: httpx.AsyncClient) -> None:
    first, second = await messages(client, messages_body()), await messages(client, messages_body())
    assert first["content"] == second["content"] and first["id"] != second["id"]
    assert first["stop_reason"] == "end_turn"
    other = await messages(client, messages_body(question="Something else entirely?"))
    assert other["content"] != first["content"]
    short = await messages(client, {**messages_body(), "max_tokens": 3})
    assert short["stop_reason"] == "max_tokens" and short["usage"]["output_tokens"] == 3
    assert count_tokens(short["content"][0]["text"]) == 3


async def test_the_simulator_speaks_anthropics_errors(client: httpx.AsyncClient, sim: ProviderSim) -> None:
    no_key = await client.post("/v1/messages", json=messages_body(), headers={"anthropic-version": "2023-06-01"})
    assert no_key.status_code == 401 and no_key.json()["error"]["type"] == "authentication_error"
    no_version = await client.post("/v1/messages", json=messages_body(), headers={"x-api-key": "k"})
    assert no_version.status_code == 400 and "anthropic-version" in no_version.json()["error"]["message"]
    no_max_tokens = await messages(client, {k: v for k, v in messages_body().items() if k != "max_tokens"},
                                   status=400)
    assert no_max_tokens["error"]["message"].startswith("max_tokens")
    sim.fail_next(529)
    overloaded = await messages(client, messages_body(), status=529)
    assert overloaded["error"]["type"] == "overloaded_error" and overloaded["request_id"].startswith("req_")
    assert (await client.post("/v1/messages", content=b"{not json", headers=ANTHROPIC_HEADERS)).status_code == 400
    await messages(client, messages_body())  # the fault was used up


def sse(raw: bytes) -> list[tuple[str | None, Any]]:
    out: list[tuple[str | None, Any]] = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        name = next((line[7:] for line in block.split("\n") if line.startswith("event: ")), None)
        data = next(line[6:] for line in block.split("\n") if line.startswith("data: "))
        out.append((name, data if data == "[DONE]" else orjson.loads(data)))
    return out


async def test_stream_faults_cut_or_end_with_an_error_event(client: httpx.AsyncClient, sim: ProviderSim) -> None:
    body = {**messages_body(), "stream": True}
    sim.inject(Fault(cut_stream_after=3, api="anthropic"))
    cut = sse((await client.post("/v1/messages", json=body, headers=ANTHROPIC_HEADERS)).content)
    assert [name for name, _ in cut] == ["message_start", "content_block_start", "ping"]
    sim.inject(Fault(cut_stream_after=4, stream_error_type="overloaded_error", message="Overloaded"))
    errored = sse((await client.post("/v1/messages", json=body, headers=ANTHROPIC_HEADERS)).content)
    assert errored[-1] == ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    whole = sse((await client.post("/v1/messages", json=body, headers=ANTHROPIC_HEADERS)).content)
    assert whole[-1][0] == "message_stop"


async def test_error_faults_carry_headers_and_latency_and_a_stream_can_stall(
        client: httpx.AsyncClient, sim: ProviderSim) -> None:
    sim.inject(Fault(status=429, headers={"retry-after": "3"}, latency_s=0.2, api="anthropic"))
    started = time.perf_counter()
    limited = await client.post("/v1/messages", json=messages_body(), headers=ANTHROPIC_HEADERS)
    assert limited.status_code == 429 and limited.headers["retry-after"] == "3"
    assert limited.json()["error"]["type"] == "rate_limit_error"
    assert time.perf_counter() - started >= 0.2  # slow, then failing
    sim.inject(Fault(stall_stream_after=2, stall_s=0.2, api="anthropic"))
    started = time.perf_counter()
    stalled = await client.post("/v1/messages", json={**messages_body(), "stream": True}, headers=ANTHROPIC_HEADERS)
    assert time.perf_counter() - started >= 0.2
    assert sse(stalled.content)[-1][0] == "message_stop"  # a stall delays the stream; it does not end it


def test_a_dropped_connection_breaks_the_readers_body() -> None:
    sim = ProviderSim()
    sim.inject(Fault(cut_stream_after=3, drop_connection=True, api="openai"))
    with SimServer(sim) as server, httpx.Client(base_url=server.base_url) as client, \
            client.stream("POST", "/v1/chat/completions", json={"model": "m", "stream": True,
                          "messages": [{"role": "user", "content": "hi"}]}, headers=OPENAI_HEADERS) as reply:
        assert reply.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            reply.read()


async def test_streamed_usage_matches_the_json_usage(client: httpx.AsyncClient) -> None:
    await messages(client, messages_body())
    stream = sse((await client.post("/v1/messages", json={**messages_body(), "stream": True},
                                    headers=ANTHROPIC_HEADERS)).content)
    start_usage = stream[0][1]["message"]["usage"]
    delta_usage = next(data["usage"] for name, data in stream if name == "message_delta")
    assert (start_usage["cache_read_input_tokens"], start_usage["cache_creation_input_tokens"]) == (1100, 0)
    assert start_usage["output_tokens"] == 1 and delta_usage["output_tokens"] > 1
    assert delta_usage["cache_read_input_tokens"] == 1100 and delta_usage["input_tokens"] == start_usage["input_tokens"]


# --- OpenAI -------------------------------------------------------------------------------------


def chat_body(prompt_tokens: int, **extra: Any) -> dict[str, Any]:
    """A prompt of exactly `prompt_tokens` simulator tokens (one role token + words)."""
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": words(prompt_tokens - 1)}], **extra}


async def chat(client: httpx.AsyncClient, body: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
    response = await client.post("/v1/chat/completions", json=body, headers=headers or OPENAI_HEADERS)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def cached_tokens(completion: dict[str, Any]) -> int:
    return int(completion["usage"]["prompt_tokens_details"]["cached_tokens"])


@pytest.mark.parametrize(
    ("tokens", "cached"),
    [(1023, 0), (1024, 1024), (1151, 1024), (1152, 1152), (1300, 1280), (4000, 3968)],
)
async def test_openai_caches_from_1024_tokens_in_128_token_steps(client: httpx.AsyncClient, tokens: int,
                                                                 cached: int) -> None:
    first = await chat(client, chat_body(tokens))
    second = await chat(client, chat_body(tokens))
    assert (cached_tokens(first), cached_tokens(second)) == (0, cached)
    assert second["usage"]["prompt_tokens"] == tokens
    assert second["usage"]["total_tokens"] == tokens + second["usage"]["completion_tokens"]


@pytest.mark.parametrize(("shared", "cached"), [(1100, 1024), (1200, 1152), (1000, 0)])
async def test_openai_reads_the_longest_shared_prefix(client: httpx.AsyncClient, shared: int, cached: int) -> None:
    common = words(shared - 1)
    await chat(client, {"model": "gpt-4o", "messages": [{"role": "user", "content": common + " " + words(400, "a")}]})
    other = await chat(client, {"model": "gpt-4o",
                                "messages": [{"role": "user", "content": common + " " + words(400, "b")}]})
    assert cached_tokens(other) == cached


@pytest.mark.parametrize(
    ("first_key", "second_key", "hit"),
    [(None, None, True), ("tenant-a", "tenant-a", True), ("tenant-a", "tenant-b", False), (None, "tenant-a", False)],
)
async def test_prompt_cache_key_partitions_the_cache(client: httpx.AsyncClient, first_key: str | None,
                                                     second_key: str | None, hit: bool) -> None:
    def keyed(key: str | None) -> dict[str, Any]:
        return chat_body(1500, **({"prompt_cache_key": key} if key else {}))

    await chat(client, keyed(first_key))
    assert cached_tokens(await chat(client, keyed(second_key))) == (1408 if hit else 0)


@pytest.mark.parametrize(("retention", "wait", "hit"),
                         [(None, 299, True), (None, 301, False), ("in_memory", 301, False), ("24h", 3600 * 23, True)])
async def test_openai_retention(client: httpx.AsyncClient, clock: ManualClock, retention: str | None, wait: int,
                                hit: bool) -> None:
    body = chat_body(1024, **({"prompt_cache_retention": retention} if retention else {}))
    await chat(client, body)
    clock.advance(wait)
    assert cached_tokens(await chat(client, body)) == (1024 if hit else 0)


async def test_openai_organisations_never_share(client: httpx.AsyncClient) -> None:
    await chat(client, chat_body(1500))
    assert cached_tokens(await chat(client, chat_body(1500), {"authorization": "Bearer sk-tenant-b"})) == 0


@pytest.mark.parametrize("include_usage", [True, False])
async def test_openai_stream_reports_usage_only_when_asked(client: httpx.AsyncClient, include_usage: bool) -> None:
    await chat(client, chat_body(1200))
    body = chat_body(1200, stream=True, stream_options={"include_usage": include_usage})
    events = sse((await client.post("/v1/chat/completions", json=body, headers=OPENAI_HEADERS)).content)
    assert events[-1] == (None, "[DONE]")
    chunks = [data for _, data in events[:-1]]
    assert chunks[-2 if include_usage else -1]["choices"][0]["finish_reason"] == "stop"
    if include_usage:
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] == 1152
        assert all(chunk["usage"] is None for chunk in chunks[:-1])
    else:
        assert all("usage" not in chunk for chunk in chunks)


async def test_openai_errors_and_truncation(client: httpx.AsyncClient, sim: ProviderSim) -> None:
    no_key = await client.post("/v1/chat/completions", json=chat_body(10))
    assert no_key.status_code == 401 and no_key.json()["error"]["type"] == "invalid_request_error"
    bad = await client.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": []}, headers=OPENAI_HEADERS)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages"
    sim.fail_next(503, api="openai")
    failed = await client.post("/v1/chat/completions", json=chat_body(10), headers=OPENAI_HEADERS)
    assert failed.status_code == 503 and failed.json()["error"]["type"] == "server_error"
    truncated = await chat(client, chat_body(10, max_completion_tokens=2))
    assert truncated["choices"][0]["finish_reason"] == "length" and truncated["usage"]["completion_tokens"] == 2


# --- the log --------------------------------------------------------------------------------------


async def test_the_log_says_what_was_served_from_cache(client: httpx.AsyncClient, sim: ProviderSim) -> None:
    await messages(client, messages_body())
    await messages(client, messages_body())
    await chat(client, chat_body(1100))
    records = (await client.get("/_sim/log")).json()["records"]
    assert [(r["api"], r["served_from_cache"], r["read_from"]) for r in records] == [
        ("anthropic", False, None), ("anthropic", True, "system.0"), ("openai", False, None)]
    assert records[0]["written"] == ["system.0"] and records[0]["breakpoints"] == ["system.0"]
    assert records[1]["body"] == messages_body() and records[2]["written"] == ["1024"]
    assert [r.seq for r in sim.log] == [1, 2, 3]
    await client.post("/_sim/reset")
    assert sim.log == []
    assert cache((await messages(client, messages_body()))["usage"]) == (0, 1100)  # the cache went too


# --- the official SDKs, in process and over a real port ------------------------------------------


async def test_the_async_anthropic_sdk_reads_answers_and_streams(sim: ProviderSim) -> None:
    transport = httpx2.ASGITransport(app=sim.app)
    sdk = anthropic.AsyncAnthropic(api_key="sk-ant-tenant-a", base_url="http://sim", max_retries=0,
                                   http_client=httpx2.AsyncClient(transport=transport))
    system: Any = [system_block(1100)]
    created = await sdk.messages.create(model=MODEL, max_tokens=100, system=system,
                                        messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert created.stop_reason == "end_turn" and created.content[0].type == "text"
    assert created.usage.cache_creation_input_tokens == 1100 and created.usage.cache_creation is not None
    assert created.usage.cache_creation.ephemeral_5m_input_tokens == 1100
    async with sdk.messages.stream(model=MODEL, max_tokens=100, system=system,
                                   messages=[{"role": "user", "content": "What is the capital of France?"}]) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text == created.content[0].text == final.content[0].text  # type: ignore[union-attr]
    assert final.usage.cache_read_input_tokens == 1100 and final.usage.cache_creation_input_tokens == 0
    assert final.usage.output_tokens == created.usage.output_tokens
    tool = {"name": "get_weather", "description": "Weather for a city",
            "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}}}
    async with sdk.messages.stream(model=MODEL, max_tokens=100, tools=[tool],  # type: ignore[list-item]
                                   tool_choice={"type": "tool", "name": "get_weather"},
                                   messages=[{"role": "user", "content": "Weather in Paris?"}]) as stream:
        called = await stream.get_final_message()
    assert called.stop_reason == "tool_use"
    assert called.content[0].type == "tool_use" and called.content[0].input == {"query": "Weather in Paris?"}


def test_the_sdks_talk_to_the_simulator_on_a_port() -> None:
    clock = ManualClock()
    with SimServer(ProviderSim(clock)) as server:
        claude = anthropic.Anthropic(api_key="sk-ant-a", base_url=server.base_url, max_retries=0)
        system: Any = [system_block(1100)]
        for expected_read in (0, 1100):
            with claude.messages.stream(model=MODEL, max_tokens=50, system=system,
                                        messages=[{"role": "user", "content": "Hi"}]) as stream:
                assert stream.get_final_message().usage.cache_read_input_tokens == expected_read
        httpx.post(server.base_url + "/_sim/advance", json={"seconds": 301}).raise_for_status()
        expired = claude.messages.create(model=MODEL, max_tokens=50, system=system,
                                         messages=[{"role": "user", "content": "Hi"}])
        assert expired.usage.cache_read_input_tokens == 0 and expired.usage.cache_creation_input_tokens == 1100
        gpt = openai.OpenAI(api_key="sk-a", base_url=server.base_url + "/v1", max_retries=0)
        prompt = [{"role": "user", "content": words(1299)}]
        gpt.chat.completions.create(model="gpt-4o", messages=prompt)  # type: ignore[arg-type]
        chunks = list(gpt.chat.completions.create(model="gpt-4o", messages=prompt,  # type: ignore[arg-type]
                                                  stream=True, stream_options={"include_usage": True}))
        assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens_details is not None
        assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 1280
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).startswith("Answer:")
        log = httpx.get(server.base_url + "/_sim/log").json()["records"]
        assert [r["served_from_cache"] for r in log] == [False, True, False, False, True]
