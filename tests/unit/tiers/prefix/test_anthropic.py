"""Anthropic breakpoints: where they go, when they are skipped, and that the caller's always win."""

from __future__ import annotations

import copy
import random
from dataclasses import replace
from typing import Any

import pytest

from cascache.tiers.prefix import PrefixSettings, ShapeContext
from cascache.tiers.prefix.anthropic import (
    MAX_BREAKPOINTS,
    caller_breakpoints,
    label,
    plan_breakpoints,
    shape_anthropic,
)
from tests.unit.tiers.prefix.helpers import conversation, text, tool

CTX = ShapeContext(scope="tenant:a", settings=PrefixSettings())


def body(model: str = "claude-sonnet-4-5", **fields: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": 256, **fields}


def parallel_tool_turn(calls: int) -> list[dict[str, Any]]:
    """A question, `calls` parallel tool uses, their results, an answer, a new question."""
    return [
        {"role": "user", "content": "look these up"},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": f"toolu_{i:02d}", "name": "search", "input": {"q": str(i)}}
                for i in range(calls)
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": f"toolu_{i:02d}", "content": "ok"}
                for i in range(calls)
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "done"}]},
        {"role": "user", "content": "and now?"},
    ]


PLANS: list[tuple[str, dict[str, Any], list[tuple[str, tuple[Any, ...]]]]] = [
    (
        "long system, short tools: system and the last block before the newest user turn",
        body(tools=[tool("search")], system=text(1500), messages=conversation(1)),
        [("system", ("system",)), ("messages", ("messages", 1, "content", 0))],
    ),
    (
        "tools long enough on their own get a breakpoint too",
        body(tools=[tool("a"), tool("b", 1100)], system=text(200), messages=conversation(2)),
        [("tools", ("tools", 1)), ("system", ("system",)), ("messages", ("messages", 3, "content", 0))],
    ),
    (
        "a short prompt gets none",
        body(system="Be brief.", messages=conversation(1)),
        [],
    ),
    (
        "one user message: nothing stable before it but the system prompt",
        body(system=text(1500), messages=[{"role": "user", "content": "hi"}]),
        [("system", ("system",))],
    ),
    (
        "system as blocks: the last text block",
        body(
            system=[{"type": "text", "text": text(1200)}, {"type": "text", "text": "tail"}],
            messages=[{"role": "user", "content": "hi"}],
        ),
        [("system", ("system", 1))],
    ),
    (
        "string content of the message before the newest user turn",
        body(
            system=text(1500),
            messages=[
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a"},
                {"role": "user", "content": "q2"},
            ],
        ),
        [("system", ("system",)), ("messages", ("messages", 1, "content"))],
    ),
    (
        "thinking and empty text blocks cannot carry cache_control: the nearest earlier block does",
        body(
            system=text(1500),
            messages=[
                {"role": "user", "content": "q"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "answer"},
                        {"type": "text", "text": ""},
                        {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    ],
                },
                {"role": "user", "content": "q2"},
            ],
        ),
        [("system", ("system",)), ("messages", ("messages", 1, "content", 0))],
    ),
    (
        "more than 20 blocks since the previous turn: a bridge at the previous turn's breakpoint",
        body(tools=[tool("search", 1100)], system=text(100), messages=parallel_tool_turn(25)),
        [
            ("tools", ("tools", 0)),
            ("system", ("system",)),
            ("bridge", ("messages", 1, "content", 24)),
            ("messages", ("messages", 3, "content", 0)),
        ],
    ),
    (
        "20 blocks or fewer: the previous entry is within the lookback, no bridge",
        body(tools=[tool("search", 1100)], system=text(100), messages=parallel_tool_turn(10)),
        [("tools", ("tools", 0)), ("system", ("system",)), ("messages", ("messages", 3, "content", 0))],
    ),
    (
        "no system, no tools: only the conversation",
        body(
            messages=[
                {"role": "user", "content": text(1100)},
                {"role": "assistant", "content": "a"},
                {"role": "user", "content": "q"},
            ]
        ),
        [("messages", ("messages", 1, "content"))],
    ),
]


@pytest.mark.parametrize(("request_body", "expected"), [c[1:] for c in PLANS], ids=[c[0] for c in PLANS])
def test_plan(request_body: dict[str, Any], expected: list[tuple[str, tuple[Any, ...]]]) -> None:
    plan, _ = plan_breakpoints(request_body, CTX)
    assert [(point.role, point.path) for point in plan] == expected
    assert all(point.ttl == "5m" for point in plan)  # no tracker: never 1h


@pytest.mark.parametrize(
    ("model", "system_tokens", "placed"),
    [
        ("claude-sonnet-4-5", 1000, False),
        ("claude-sonnet-4-5", 1030, True),
        ("claude-haiku-4-5-20251001", 4000, False),
        ("claude-haiku-4-5-20251001", 4100, True),
        ("claude-opus-4-7", 2000, False),
        ("claude-opus-4-7", 2100, True),
        ("claude-opus-5", 520, True),
        ("claude-some-future-model", 1030, True),  # unknown: the common 1024
    ],
)
def test_minimum_cacheable_length_per_model(model: str, system_tokens: int, placed: bool) -> None:
    plan, notes = plan_breakpoints(
        body(model, system=text(system_tokens), messages=[{"role": "user", "content": "q"}]), CTX
    )
    assert bool(plan) is placed
    assert any(note.code == "anthropic.below_minimum" for note in notes) is not placed


def test_configured_minimum_overrides_the_table() -> None:
    request = body(system=text(1500), messages=[{"role": "user", "content": "q"}])
    settings = replace(CTX.settings, min_tokens={"claude-sonnet-4-5": 2048})
    assert plan_breakpoints(request, replace(CTX, settings=settings))[0] == []


def test_shape_marks_the_planned_blocks_and_turns_strings_into_text_blocks() -> None:
    request = body(
        system=text(1500),
        messages=[
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a"},
            {"role": "user", "content": "q2"},
        ],
    )
    before = copy.deepcopy(request)
    shaped, notes = shape_anthropic(request, CTX)
    assert request == before  # the input is never mutated
    assert shaped["system"] == [{"type": "text", "text": text(1500), "cache_control": {"type": "ephemeral"}}]
    assert shaped["messages"][1]["content"] == [
        {"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}}
    ]
    assert shaped["messages"][2] == {"role": "user", "content": "q2"}  # the newest user turn is never marked
    assert [note.code for note in notes] == ["anthropic.breakpoint", "anthropic.breakpoint"]


CALLER_MARKED: list[tuple[str, dict[str, Any], int]] = [
    (
        "one on a system block",
        body(
            system=[{"type": "text", "text": text(2000), "cache_control": {"type": "ephemeral"}}],
            messages=conversation(1),
        ),
        1,
    ),
    (
        "top-level automatic",
        body(cache_control={"type": "ephemeral"}, system=text(2000), messages=conversation(1)),
        1,
    ),
    (
        "malformed: passed through, never fixed",
        body(
            system=text(2000),
            tools=[{**tool("a"), "cache_control": {"type": "bogus", "ttl": 7}}],
            messages=conversation(1),
        ),
        1,
    ),
    (
        "null counts as the caller's choice",
        body(system=[{"type": "text", "text": text(2000), "cache_control": None}], messages=conversation(1)),
        1,
    ),
    (
        "inside a tool_result",
        body(
            system=text(2000),
            messages=[
                {"role": "user", "content": "q"},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "toolu_1", "name": "a", "input": {}}],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_1",
                            "content": [
                                {"type": "text", "text": "r", "cache_control": {"type": "ephemeral"}}
                            ],
                        }
                    ],
                },
            ],
        ),
        1,
    ),
    (
        "five: over the limit, the provider's 400 comes back",
        body(
            tools=[{**tool(n), "cache_control": {"type": "ephemeral"}} for n in "abc"],
            system=[{"type": "text", "text": text(2000), "cache_control": {"type": "ephemeral"}}],
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "q", "cache_control": {"type": "ephemeral"}}],
                }
            ],
        ),
        5,
    ),
]


@pytest.mark.parametrize(
    ("request_body", "count"), [c[1:] for c in CALLER_MARKED], ids=[c[0] for c in CALLER_MARKED]
)
def test_caller_breakpoints_are_respected_and_nothing_is_added(
    request_body: dict[str, Any], count: int
) -> None:
    assert caller_breakpoints(request_body) == count
    shaped, notes = shape_anthropic(request_body, CTX)
    assert shaped == request_body
    expected = "anthropic.caller_over_limit" if count > MAX_BREAKPOINTS else "anthropic.caller_breakpoints"
    assert [note.code for note in notes] == [expected]


def test_automatic_mode_uses_the_top_level_marker_only() -> None:
    auto = replace(CTX, settings=replace(CTX.settings, anthropic_auto=True))
    shaped, notes = shape_anthropic(body(system=text(1500), messages=conversation(1)), auto)
    assert shaped["cache_control"] == {"type": "ephemeral"}
    assert caller_breakpoints(shaped) == 1
    assert [note.code for note in notes] == ["anthropic.automatic"]
    short, notes = shape_anthropic(body(system="hi", messages=conversation(1)), auto)
    assert "cache_control" not in short
    assert [note.code for note in notes] == ["anthropic.below_minimum"]


def test_breakpoints_off_adds_nothing() -> None:
    off = replace(CTX, settings=replace(CTX.settings, anthropic_breakpoints=False))
    request = body(system=text(1500), messages=conversation(1))
    assert shape_anthropic(request, off) == (request, [])


@pytest.mark.parametrize(
    ("path", "text_label"),
    [
        (("tools", 2), "tools[2]"),
        (("system",), "system"),
        (("messages", 4, "content", 0), "messages[4].content[0]"),
    ],
)
def test_label(path: tuple[Any, ...], text_label: str) -> None:
    assert label(path) == text_label


def _markers(value: Any) -> int:
    if isinstance(value, dict):
        return ("cache_control" in value) + sum(_markers(item) for item in value.values())
    if isinstance(value, list):
        return sum(_markers(item) for item in value)
    return 0


def _random_body(rng: random.Random) -> dict[str, Any]:
    def block() -> dict[str, Any]:
        return rng.choice(
            [
                {"type": "text", "text": text(rng.randint(0, 400))},
                {"type": "text", "text": ""},
                {"type": "thinking", "thinking": "t", "signature": "s"},
                {"type": "tool_use", "id": "toolu_x", "name": "a", "input": {}},
                {"type": "tool_result", "tool_use_id": "toolu_x", "content": text(rng.randint(0, 50))},
            ]
        )

    messages: list[dict[str, Any]] = []
    for _ in range(rng.randint(0, 12)):
        content: Any = (
            text(rng.randint(1, 300)) if rng.random() < 0.3 else [block() for _ in range(rng.randint(1, 30))]
        )
        messages.append({"role": rng.choice(["user", "assistant"]), "content": content})
    return body(
        rng.choice(["claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-5"]),
        tools=[tool(f"t{i}", rng.randint(0, 900)) for i in range(rng.randint(0, 4))],
        system=rng.choice(
            [text(rng.randint(0, 3000)), [{"type": "text", "text": text(rng.randint(0, 3000))}]]
        ),
        messages=messages,
    )


def test_never_more_than_four_never_on_an_unmarkable_block_never_on_the_newest_user_turn() -> None:
    rng = random.Random(20261124)
    most = 0
    for _ in range(400):
        shaped, _ = shape_anthropic(_random_body(rng), CTX)
        count = _markers(shaped)
        most = max(most, count)
        assert count <= MAX_BREAKPOINTS
        users = [i for i, m in enumerate(shaped["messages"]) if m["role"] == "user"]
        for i, message in enumerate(shaped["messages"]):
            if users and i >= users[-1]:
                assert _markers(message) == 0
            for block in message["content"] if isinstance(message["content"], list) else []:
                if "cache_control" in block:
                    assert block["type"] != "thinking" and block.get("text", "x") != ""
    assert most == MAX_BREAKPOINTS  # the generator does reach the limit, so the bound is really tested
