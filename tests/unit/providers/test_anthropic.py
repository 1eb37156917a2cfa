from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import httpx2
import orjson
import pytest

from cascache._errors import InvalidRequest
from cascache.keys import make_scope, request_keys
from cascache.providers import PROVIDERS
from cascache.providers.anthropic import (
    AnthropicMessages,
    StreamAssembler,
    error_body,
    is_complete,
    parse,
    replay_json,
    replay_sse,
    stream_error_event,
    usage,
)
from cascache.testing import ProviderSim

HEADERS = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}


def body(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 256,
        "system": "You answer questions about geography.",
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
    }
    base.update(changes)
    return base


def answer(content: list[dict[str, Any]] | None = None, stop_reason: str = "end_turn", **extra: Any) -> dict[str, Any]:
    return {
        "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-6",
        "content": [{"type": "text", "text": "Paris is the capital of France."}] if content is None else content,
        "stop_reason": stop_reason, "stop_sequence": None,
        "usage": {"input_tokens": 21, "cache_creation_input_tokens": 1200, "cache_read_input_tokens": 3000,
                  "cache_creation": {"ephemeral_5m_input_tokens": 200, "ephemeral_1h_input_tokens": 1000},
                  "output_tokens": 9, "service_tier": "standard"},
        **extra,
    }


TOOL_USE = {"type": "tool_use", "id": "toolu_01", "name": "get_weather",
            "input": {"city": "Paris", "units": "celsius", "days": [1, 2, 3], "cache_control": "user data"}}


# --- parse --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_body", "param"),
    [
        ([], None),
        (body(model=None), "model"),
        (body(model=""), "model"),
        (body(max_tokens=None), "max_tokens"),
        (body(max_tokens="100"), "max_tokens"),
        (body(max_tokens=True), "max_tokens"),
        (body(max_tokens=0), "max_tokens"),
        (body(messages=None), "messages"),
        (body(messages=[]), "messages"),
        (body(messages=["hi"]), "messages.0"),
        (body(messages=[{"role": "system", "content": "x"}]), "messages.0.role"),
        (body(messages=[{"role": "user"}]), "messages.0.content"),
        (body(messages=[{"role": "user", "content": 3}]), "messages.0.content"),
        (body(messages=[{"role": "user", "content": [{"text": "no type"}]}]), "messages.0.content.0"),
        (body(system=7), "system"),
        (body(system=[{"text": "no type"}]), "system.0"),
        (body(stream="yes"), "stream"),
    ],
)
def test_parse_rejects_what_is_not_a_messages_request(request_body: Any, param: str | None) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse(request_body)
    assert caught.value.param == param


def test_parse_puts_system_first_and_keeps_the_body_untouched() -> None:
    original = body(
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}]},
            {"role": "assistant", "content": [TOOL_USE]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01",
                                          "content": [{"type": "text", "text": "18C",
                                                       "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}]},
        ],
        stream=True, metadata={"user_id": "u-42"}, service_tier="auto", cache_control={"type": "ephemeral"},
        temperature=0.2, some_future_field={"x": 1},
        tools=[{"name": "get_weather", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}}],
    )
    snapshot = copy.deepcopy(original)
    request = parse(original)
    assert original == snapshot and request.body is original
    assert [m["role"] for m in request.messages] == ["system", "user", "assistant", "user"]
    assert request.messages[0]["content"] == "Be brief."  # one text block, breakpoint dropped: a string
    assert request.messages[1]["content"] == "Hi"
    assert request.messages[2]["content"] == [TOOL_USE]  # the tool input's own "cache_control" is data: kept
    assert request.messages[3]["content"][0]["content"] == [{"type": "text", "text": "18C"}]
    assert request.params == {"max_tokens": 256, "temperature": 0.2, "some_future_field": {"x": 1},
                              "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}]}
    assert request.stream and not request.include_usage and request.user == "u-42"
    assert request.semantic_text is None  # the last user turn is a tool result, not plain text


@pytest.mark.parametrize(
    ("content", "semantic_text"),
    [
        ("What is the capital of France?", "What is the capital of France?"),
        ([{"type": "text", "text": "Capital of France?"}], "Capital of France?"),
        ([{"type": "text", "text": "Capital?", "cache_control": {"type": "ephemeral"}}], "Capital?"),
        ([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], None),
        ([{"type": "image", "source": {"type": "url", "url": "http://x/y.png"}}], None),
    ],
)
def test_semantic_text_is_the_last_user_text(content: Any, semantic_text: str | None) -> None:
    assert parse(body(messages=[{"role": "user", "content": content}])).semantic_text == semantic_text


def test_no_system_prompt_is_no_system_message() -> None:
    for system in (None, "", []):
        assert [m["role"] for m in parse(body(system=system)).messages] == ["user"]


# --- keys ---------------------------------------------------------------------------------------

SCOPE = make_scope("sk-ant-test", None)


def keys_of(request_body: dict[str, Any]) -> tuple[str, str | None]:
    keys = request_keys(parse(request_body), SCOPE, "v1", "embedder")
    return keys.fingerprint, keys.namespace


def with_breakpoints(b: dict[str, Any]) -> dict[str, Any]:
    b = copy.deepcopy(b)
    b["system"] = [{"type": "text", "text": b["system"], "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    b["messages"][-1]["content"] = [{"type": "text", "text": b["messages"][-1]["content"],
                                     "cache_control": {"type": "ephemeral"}}]
    b["cache_control"] = {"type": "ephemeral"}
    return b


TOOLS = [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}]


@pytest.mark.parametrize(
    ("name", "change", "fingerprint_moves", "namespace_moves"),
    [
        ("system prompt", lambda b: {**b, "system": "You answer questions about history."}, True, True),
        ("tools", lambda b: {**b, "tools": TOOLS}, True, True),
        ("tool_choice", lambda b: {**b, "tools": TOOLS, "tool_choice": {"type": "any"}}, True, True),
        ("temperature", lambda b: {**b, "temperature": 0.0}, True, True),
        ("max_tokens", lambda b: {**b, "max_tokens": 10}, True, True),
        ("model", lambda b: {**b, "model": "claude-opus-4-5"}, True, True),
        ("unknown field", lambda b: {**b, "top_k": 5}, True, True),
        ("question", lambda b: {**b, "messages": [{"role": "user", "content": "Capital of Spain?"}]}, True, False),
        ("cache_control everywhere", with_breakpoints, False, False),
        ("cache_control on a tool", lambda b: ({**b, "tools": [{**TOOLS[0], "cache_control": {"type": "ephemeral"}}]}),
         True, True),  # compared with no tools at all: tools moved, not the breakpoint
        ("stream", lambda b: {**b, "stream": True}, False, False),
        ("metadata", lambda b: {**b, "metadata": {"user_id": "u-1"}}, False, False),
        ("service_tier", lambda b: {**b, "service_tier": "standard_only"}, False, False),
        ("single text block", lambda b: {**b, "system": [{"type": "text", "text": b["system"]}]}, False, False),
    ],
)
def test_what_moves_the_keys(name: str, change: Callable[[dict[str, Any]], dict[str, Any]],
                             fingerprint_moves: bool, namespace_moves: bool) -> None:
    before, after = keys_of(body()), keys_of(change(body()))
    assert (before[0] != after[0]) is fingerprint_moves, name
    assert (before[1] != after[1]) is namespace_moves, name


def test_a_breakpoint_on_a_tool_does_not_move_the_keys() -> None:
    plain = body(tools=TOOLS)
    marked = body(tools=[{**TOOLS[0], "cache_control": {"type": "ephemeral", "ttl": "1h"}}])
    assert keys_of(plain) == keys_of(marked)


def test_anthropic_and_openai_keys_never_meet() -> None:
    openai_request = PROVIDERS["openai"].parse({"model": "claude-sonnet-4-6", "max_tokens": 256, "messages": [
        {"role": "system", "content": "You answer questions about geography."},
        {"role": "user", "content": "What is the capital of France?"}]})
    keys = request_keys(openai_request, SCOPE, "v1", "embedder")
    assert (keys.fingerprint, keys.namespace) != keys_of(body())


# --- completeness and usage -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "complete"),
    [
        (answer(), True),
        (answer(stop_reason="stop_sequence", stop_sequence="END"), True),
        (answer(content=[TOOL_USE], stop_reason="tool_use"), True),
        (answer(content=[{"type": "text", "text": "Let me check."}, TOOL_USE], stop_reason="tool_use"), True),
        (answer(stop_reason="max_tokens"), False),
        (answer(stop_reason="refusal"), False),
        (answer(stop_reason="pause_turn"), False),
        (answer(stop_reason="model_context_window_exceeded"), False),
        (answer(stop_reason=None), False),
        (answer(content=[]), False),
        (answer(content=[{"type": "text", "text": "  \n"}]), False),
        (answer(content=[{"type": "thinking", "thinking": "hmm", "signature": "s"}]), False),
        ({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, False),
        ({}, False),
    ],
)
def test_only_complete_answers_are_cacheable(response: dict[str, Any], complete: bool) -> None:
    assert is_complete(response) is complete


def test_usage_counts_the_whole_prompt_and_both_ttls() -> None:
    got = usage(answer())
    assert got.input_tokens == 21 + 1200 + 3000
    assert (got.output_tokens, got.cache_read_tokens, got.cache_write_tokens) == (9, 3000, 1200)
    assert (got.cache_write_5m_tokens, got.cache_write_1h_tokens) == (200, 1000)


def test_usage_leaves_unreported_fields_unknown() -> None:
    got = usage({"usage": {"input_tokens": 12, "output_tokens": 3}})
    assert (got.input_tokens, got.output_tokens) == (12, 3)
    assert got.cache_read_tokens is None and got.cache_write_tokens is None
    assert got.cache_write_5m_tokens is None and got.cache_write_1h_tokens is None
    assert usage({}).input_tokens == 0


def test_replay_json_gets_a_fresh_id_and_the_same_content() -> None:
    first, second = replay_json(answer()), replay_json(answer())
    assert first["id"].startswith("msg_") and len({first["id"], second["id"], "msg_01"}) == 3
    assert {k: v for k, v in first.items() if k != "id"} == {k: v for k, v in answer().items() if k != "id"}


# --- replayed streams ---------------------------------------------------------------------------

THINKING = {"type": "thinking", "thinking": "The user wants the weather in Paris; I should call the tool.",
            "signature": "EqQBCkYIARgCKkA"}
ANSWERS = {
    "text": answer(content=[{"type": "text", "text": "Paris is the capital of France, on the Seine. " * 4}]),
    "tool_use": answer(content=[{"type": "text", "text": "Let me look that up."}, TOOL_USE], stop_reason="tool_use"),
    "thinking": answer(content=[THINKING, {"type": "text", "text": "It is sunny."}]),
}


def sse_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """A strict reading of the stream: every event has exactly one `event:` and one `data:` line, and they agree."""
    out = []
    assert raw.endswith(b"\n\n")
    for block in raw.decode().split("\n\n")[:-1]:
        lines = block.split("\n")
        assert len(lines) == 2 and lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        name, data = lines[0][7:], orjson.loads(lines[1][6:])
        assert data["type"] == name
        out.append((name, data))
    return out


@pytest.mark.parametrize("kind", sorted(ANSWERS))
def test_replayed_stream_follows_the_documented_event_sequence(kind: str) -> None:
    response = ANSWERS[kind]
    names = [name for name, _ in sse_events(b"".join(replay_sse(response, False)))]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    body_names = [n for n in names[1:-2] if n != "ping"]
    for index in range(len(response["content"])):
        start, stop = body_names.index("content_block_start"), body_names.index("content_block_stop")
        assert set(body_names[start + 1:stop]) <= {"content_block_delta"}, f"block {index} is not contiguous"
        body_names = body_names[stop + 1:]
    assert body_names == []


@pytest.mark.parametrize("kind", sorted(ANSWERS))
@pytest.mark.parametrize("split", [1, 7, 4096])
def test_replayed_stream_reassembles_to_the_same_answer(kind: str, split: int) -> None:
    response = ANSWERS[kind]
    raw = b"".join(replay_sse(response, True))
    assembler = AnthropicMessages.assembler()
    for start in range(0, len(raw), split):  # arbitrary splits, as a network would deliver
        assembler.feed_bytes(raw[start:start + split])
    assert assembler.ended_cleanly
    rebuilt = assembler.response()
    assert rebuilt["id"] != response["id"]
    assert {k: v for k, v in rebuilt.items() if k != "id"} == {k: v for k, v in response.items() if k != "id"}
    assert is_complete(rebuilt) is is_complete(response)


def sdk_client(respond: Callable[[httpx2.Request], httpx2.Response]) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key="sk-ant-test", base_url="http://upstream.test", max_retries=0,
                               http_client=httpx2.Client(transport=httpx2.MockTransport(respond)))


@pytest.mark.parametrize("kind", sorted(ANSWERS))
def test_the_anthropic_sdk_parses_a_replayed_stream(kind: str) -> None:
    response = ANSWERS[kind]
    raw = b"".join(replay_sse(response, False))
    client = sdk_client(lambda request: httpx2.Response(200, content=raw,
                                                        headers={"content-type": "text/event-stream"}))
    with client.messages.stream(model="claude-sonnet-4-6", max_tokens=256,
                                messages=[{"role": "user", "content": "hi"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "".join(b.get("text", "") for b in response["content"] if b["type"] == "text")
    assert final.model_dump(exclude_none=True, exclude={"id"}) == {
        k: v for k, v in response.items() if k != "id" and v is not None}


def test_cut_or_failed_streams_are_not_clean() -> None:
    raw = b"".join(replay_sse(ANSWERS["tool_use"], False))
    cut = StreamAssembler()
    cut.feed_bytes(raw[: len(raw) // 2])
    assert not cut.ended_cleanly
    no_stop = StreamAssembler()
    no_stop.feed_bytes(raw.replace(b'event: message_stop\ndata: {"type":"message_stop"}\n\n', b""))
    assert not no_stop.ended_cleanly
    errored = StreamAssembler()
    without_end = raw.split(b"event: message_delta")[0]
    errored.feed_bytes(without_end + stream_error_event("Overloaded", "overloaded_error"))
    errored.feed_bytes(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    assert not errored.ended_cleanly
    broken_json = StreamAssembler()
    broken_json.feed_bytes(raw.replace(b'"partial_json":"{\\"city', b'"partial_json":"{{\\"city'))
    assert not broken_json.ended_cleanly


def test_message_delta_usage_replaces_the_start_usage() -> None:
    assembler = StreamAssembler()
    events = [
        {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
                                              "content": [], "stop_reason": None, "stop_sequence": None,
                                              "usage": {"input_tokens": 5, "cache_read_input_tokens": 100,
                                                        "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi."}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
         "usage": {"output_tokens": 4, "input_tokens": None}},
        {"type": "message_stop"},
    ]
    for event in events:
        assembler.feed_bytes(b"event: x\r\ndata: " + orjson.dumps(event) + b"\r\n\r\n")  # CRLF framing, too
    assert assembler.ended_cleanly
    assert assembler.response()["usage"] == {"input_tokens": 5, "cache_read_input_tokens": 100, "output_tokens": 4}
    assert assembler.response()["stop_reason"] == "end_turn"


async def test_the_assembler_rebuilds_a_live_simulated_stream() -> None:
    """Cross-check with an independent emitter: the simulator's stream rebuilds to its JSON answer."""
    sim = ProviderSim()
    request = body(tools=TOOLS)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim.app), base_url="http://sim") as client:
        for tool_choice in (None, {"type": "tool", "name": "get_weather"}):
            sent = {**request, "tool_choice": tool_choice} if tool_choice else request
            whole = (await client.post("/v1/messages", json=sent, headers=HEADERS)).json()
            streamed = await client.post("/v1/messages", json={**sent, "stream": True}, headers=HEADERS)
            assembler = StreamAssembler()
            assembler.feed_bytes(streamed.content)
            assert assembler.ended_cleanly
            rebuilt = assembler.response()
            assert rebuilt["content"] == whole["content"] and rebuilt["stop_reason"] == whole["stop_reason"]
            assert usage(rebuilt) == usage(whole)


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "cascache_type", "anthropic_type"),
    [
        (400, "invalid_request_error", "invalid_request_error"),
        (404, "not_found", "not_found_error"),
        (413, "invalid_request_error", "request_too_large"),  # BodyTooLarge: the status decides
        (409, "conflict_error", "invalid_request_error"),
        (422, "rate_limit_error", "rate_limit_error"),  # no row for 422: an Anthropic name is kept
        (429, "rate_limited", "rate_limit_error"),
        (500, "cascache_error", "api_error"),
        (502, "upstream_unavailable", "api_error"),
        (503, "store_unavailable", "overloaded_error"),
        (504, "timeout", "timeout_error"),
        (529, "overloaded_error", "overloaded_error"),
        (418, "teapot", "invalid_request_error"),
        (599, "odd", "api_error"),
    ],
)
def test_errors_use_anthropic_types(status: int, cascache_type: str, anthropic_type: str) -> None:
    rendered = error_body(status, "something went wrong", cascache_type)
    assert rendered == {"type": "error", "error": {"type": anthropic_type, "message": "something went wrong"}}


def test_the_sdk_reads_our_error_bodies() -> None:
    rendered = error_body(400, "must be a positive integer", "invalid_request_error", param="max_tokens")
    client = sdk_client(lambda request: httpx2.Response(400, json=rendered))
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model="m", max_tokens=1, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.body == {"type": "error", "error": {
        "type": "invalid_request_error", "message": "max_tokens: must be a positive integer"}}


def test_an_in_stream_error_reaches_the_sdk_as_an_api_error() -> None:
    raw = b"".join(replay_sse(ANSWERS["text"], False)).split(b"event: content_block_stop")[0]
    raw += stream_error_event("upstream dropped the connection", "upstream_unavailable")
    assert sse_events(raw)[-1] == ("error", {"type": "error", "error": {
        "type": "api_error", "message": "upstream dropped the connection"}})
    client = sdk_client(lambda request: httpx2.Response(200, content=raw,
                                                        headers={"content-type": "text/event-stream"}))
    with pytest.raises(anthropic.APIStatusError), client.messages.stream(
            model="m", max_tokens=1, messages=[{"role": "user", "content": "hi"}]) as stream:
        stream.until_done()


def test_the_upstream_gets_the_callers_bytes_and_every_event() -> None:
    raw = orjson.dumps(body(stream=True))
    request = parse(orjson.loads(raw))
    provider = PROVIDERS["anthropic"]
    assert provider.name == "anthropic" and provider.chat_path == "/messages"
    assert provider.upstream_body(request, raw) is raw
    event = b'event: ping\ndata: {"type":"ping"}\n\n'
    assert provider.client_event(event, request) is event
