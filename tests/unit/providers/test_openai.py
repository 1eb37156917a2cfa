from __future__ import annotations

from typing import Any

import orjson
import pytest

from cascache._errors import InvalidRequest
from cascache.providers.openai import StreamAssembler, is_complete, parse, replay_json, replay_sse, usage


def answer(content: str | None = "Paris.", finish: str = "stop", **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content, **extra},
                     "finish_reason": finish}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15,
                  "prompt_tokens_details": {"cached_tokens": 8}},
    }


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ([], None),
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "m"}, "messages"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": ["hi"]}, "messages.[0]"),
        ({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, "messages.[0].role"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 0}, "n"),
    ],
)
def test_parse_rejects_what_is_not_a_chat_request(body: Any, param: str | None) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse(body)
    assert caught.value.param == param


def test_parse_extracts_semantic_text_and_stream_options() -> None:
    request = parse({"model": "m", "messages": [{"role": "user", "content": "hello"}], "stream": True,
                     "stream_options": {"include_usage": True}, "user": "u1"})
    assert request.semantic_text == "hello" and request.stream and request.include_usage and request.user == "u1"
    assert "stream" not in request.params and "user" not in request.params


@pytest.mark.parametrize(
    ("response", "complete"),
    [
        (answer(), True),
        (answer(finish="length"), False),
        (answer(finish="content_filter"), False),
        (answer(content=""), False),
        (answer(content="   "), False),
        (answer(content=None, finish="tool_calls",
                tool_calls=[{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]), True),
        ({"choices": []}, False),
        ({"error": {"message": "boom"}}, False),
    ],
)
def test_only_complete_answers_are_cacheable(response: dict[str, Any], complete: bool) -> None:
    assert is_complete(response) is complete


def test_usage_reads_cached_tokens() -> None:
    got = usage(answer())
    assert (got.input_tokens, got.output_tokens, got.cache_read_tokens) == (12, 3, 8)
    assert usage({"usage": {"prompt_tokens": 5, "completion_tokens": 1}}).cache_read_tokens is None
    assert usage({"usage": {"prompt_tokens": 5, "prompt_cache_hit_tokens": 4}}).cache_read_tokens == 4


def test_replay_json_gets_fresh_id_and_same_content() -> None:
    replayed = replay_json(answer())
    assert replayed["id"] != "chatcmpl-1" and replayed["choices"] == answer()["choices"]


def events(stream: bytes) -> list[Any]:
    out = []
    for block in stream.decode().split("\n\n"):
        if block.startswith("data: "):
            payload = block[6:]
            out.append(payload if payload == "[DONE]" else orjson.loads(payload))
    return out


@pytest.mark.parametrize("include_usage", [True, False])
def test_replayed_stream_is_valid_and_reassembles_to_the_answer(include_usage: bool) -> None:
    long_answer = answer(content="The capital of France is Paris, a city on the Seine with many museums. " * 3)
    raw = b"".join(replay_sse(long_answer, include_usage))
    parsed = events(raw)
    assert parsed[-1] == "[DONE]"
    chunks = parsed[:-1]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    if include_usage:
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] == 12
    else:
        assert all("usage" not in c for c in chunks)
    assembler = StreamAssembler()
    for i in range(0, len(raw), 7):  # arbitrary splits, as a network would deliver
        assembler.feed_bytes(raw[i:i + 7])
    assert assembler.ended_cleanly
    rebuilt = assembler.response()
    assert rebuilt["choices"][0]["message"]["content"] == long_answer["choices"][0]["message"]["content"]
    assert rebuilt["choices"][0]["finish_reason"] == "stop"


def test_tool_call_stream_reassembles() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\": 1}"}}
    raw = b"".join(replay_sse(answer(content=None, finish="tool_calls", tool_calls=[call]), False))
    assembler = StreamAssembler()
    assembler.feed_bytes(raw)
    rebuilt = assembler.response()
    assert rebuilt["choices"][0]["message"]["tool_calls"] == [call]
    assert is_complete(rebuilt)


def test_cut_stream_is_not_clean() -> None:
    raw = b"".join(replay_sse(answer(), False))
    assembler = StreamAssembler()
    assembler.feed_bytes(raw[: len(raw) // 2])
    assert not assembler.ended_cleanly
    no_done = StreamAssembler()
    no_done.feed_bytes(raw.replace(b"data: [DONE]\n\n", b""))
    assert not no_done.ended_cleanly
