"""`shape`: dispatch by provider kind, canonical tools, lint, and the input left untouched."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from cascache.tiers.prefix import SHAPERS, PrefixSettings, shape
from cascache.tiers.prefix.tokens import part_tokens
from tests.unit.tiers.prefix.helpers import text

TOOL_UNSORTED = {
    "type": "function",
    "function": {"parameters": {"type": "object", "properties": {}}, "name": "f"},
}

BODIES: dict[str, dict[str, Any]] = {
    "anthropic": {
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "system": "Current date: 2026-11-24. " + text(1500),
        "tools": [{"name": "f", "input_schema": {"type": "object"}, "description": "d"}],
        "messages": [{"role": "user", "content": "q"}],
    },
    "openai": {
        "model": "gpt-4o",
        "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
        "tools": [TOOL_UNSORTED],
    },
    "openai_compatible": {"model": "deepseek-chat", "messages": [{"role": "user", "content": "q"}]},
    "llamacpp": {"model": "smollm2", "messages": [{"role": "user", "content": "q"}]},
    "vllm": {"model": "qwen", "messages": [{"role": "user", "content": "q"}]},
}

ADDED: dict[str, set[str]] = {
    "anthropic": set(),  # markers go inside blocks
    "openai": {"prompt_cache_key"},
    "openai_compatible": set(),
    "llamacpp": {"cache_prompt"},
    "vllm": {"cache_salt"},
}


def test_every_registered_kind_has_a_test_body() -> None:
    assert set(SHAPERS) == set(BODIES) == set(ADDED)


@pytest.mark.parametrize("provider", sorted(BODIES))
def test_each_kind_adds_its_fields_and_never_mutates_the_input(provider: str) -> None:
    body = BODIES[provider]
    before = orjson.dumps(body)
    shaped = shape(provider, body, scope="tenant:a")
    assert orjson.dumps(body) == before
    assert set(shaped.body) - set(body) == ADDED[provider]
    assert shaped.lint is not None


def test_anthropic_end_to_end() -> None:
    shaped = shape("anthropic", BODIES["anthropic"], scope="tenant:a")
    # The system prompt carries a date, so its prefix changes daily: a breakpoint there would be
    # written (at 1.25x) and never read. None is placed; the lint reports why.
    assert shaped.body["system"] == BODIES["anthropic"]["system"]
    assert [n.code for n in shaped.notes] == [
        "tools.canonical",
        "anthropic.below_minimum",
        "anthropic.volatile_prefix",
    ]
    assert shaped.lint is not None and shaped.lint.header_value() == "date@system[0]"
    # Anthropic caches whole blocks: everything from the start of the dated block on is lost.
    assert shaped.lint.tokens_lost == shaped.lint.prefix_tokens - part_tokens(shaped.body["tools"][0])


def test_anthropic_stable_system_prompt_gets_its_breakpoint() -> None:
    stable = {**BODIES["anthropic"], "system": text(1500)}
    shaped = shape("anthropic", stable, scope="tenant:a")
    assert shaped.body["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert "anthropic.breakpoint" in [n.code for n in shaped.notes]


def test_canonical_tools_apply_to_every_kind_and_are_noted_only_when_order_changed() -> None:
    shaped = shape("openai", BODIES["openai"], scope="tenant:a")
    assert orjson.dumps(shaped.body["tools"]) == orjson.dumps(
        [{"function": {"name": "f", "parameters": {"properties": {}, "type": "object"}}, "type": "function"}]
    )
    assert "tools.canonical" in [n.code for n in shaped.notes]
    again = shape("openai", shaped.body, scope="tenant:a")
    assert "tools.canonical" not in [n.code for n in again.notes]


def test_canonical_tools_can_be_switched_off() -> None:
    shaped = shape(
        "openai", BODIES["openai"], scope="tenant:a", settings=PrefixSettings(canonical_tools=False)
    )
    assert orjson.dumps(shaped.body["tools"]) == orjson.dumps(BODIES["openai"]["tools"])


def test_disabled_shaping_returns_an_equal_copy_but_still_lints() -> None:
    body = BODIES["anthropic"]
    shaped = shape("anthropic", body, scope="tenant:a", settings=PrefixSettings(enabled=False))
    assert shaped.body == body and shaped.body is not body
    assert shaped.notes == ()
    assert shaped.lint is not None and shaped.lint.findings


def test_lint_off() -> None:
    assert shape("vllm", BODIES["vllm"], scope="t", settings=PrefixSettings(lint=False)).lint is None


def test_unknown_provider_kind_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown provider kind 'gemini'"):
        shape("gemini", {}, scope="t")


def test_malformed_bodies_are_passed_on_for_the_provider_to_reject() -> None:
    odd: dict[str, Any] = {
        "model": 7,
        "system": 3,
        "tools": "none",
        "messages": [None, "x", {"role": "user"}],
    }
    for provider in SHAPERS:
        shaped = shape(provider, copy.deepcopy(odd), scope="t")
        assert {k: v for k, v in shaped.body.items() if k in odd} == odd
