"""prompt_cache_key: the same for requests sharing a prefix head, different across tenants and heads."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from cascache.tiers.prefix import PrefixSettings, ShapeContext
from cascache.tiers.prefix.openai import prompt_cache_key, prompt_head, shape_openai

SYSTEM = {"role": "system", "content": "You are the support assistant for Acme. " * 50}
TOOLS = [{"type": "function", "function": {"name": "lookup_order", "parameters": {"type": "object"}}}]


def chat(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": "gpt-4.1-mini", "messages": list(messages), "tools": TOOLS, **fields}


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


TURN_1 = chat(SYSTEM, user("Where is order 1?"))
TURN_2 = chat(SYSTEM, user("Where is order 1?"), assistant("In transit."), user("And order 2?"))
OTHER_CONVERSATION = chat(SYSTEM, user("Cancel my subscription"))


def key(body: dict[str, Any], scope: str = "tenant:a") -> str:
    return prompt_cache_key(body, scope)


def test_every_turn_of_a_conversation_and_every_conversation_of_an_app_share_the_key() -> None:
    assert key(TURN_1) == key(TURN_2) == key(OTHER_CONVERSATION)


@pytest.mark.parametrize(
    ("name", "other"),
    [
        ("another tenant", lambda: key(TURN_1, scope="tenant:b")),
        ("another system prompt", lambda: key(chat({"role": "system", "content": "Different."}, user("x")))),
        ("other tools", lambda: key({**TURN_1, "tools": []})),
        ("another model", lambda: key({**TURN_1, "model": "gpt-4o"})),
        (
            "a developer message added to the head",
            lambda: key(chat(SYSTEM, {"role": "developer", "content": "be terse"}, user("x"))),
        ),
    ],
)
def test_the_key_changes_when_the_prefix_head_or_tenant_does(name: str, other: Any) -> None:
    assert other() != key(TURN_1), name


def test_key_is_short_opaque_and_stable() -> None:
    value = key(TURN_1)
    assert value.startswith("cc1-") and len(value) == 28
    assert "tenant" not in value and value == key(copy.deepcopy(TURN_1))


@pytest.mark.parametrize(
    ("messages", "head"),
    [
        ([SYSTEM, user("a")], [SYSTEM]),
        (
            [SYSTEM, {"role": "developer", "content": "d"}, user("a")],
            [SYSTEM, {"role": "developer", "content": "d"}],
        ),
        ([user("first"), assistant("b"), user("c")], [user("first")]),  # no system: the first message
        ([], []),
    ],
)
def test_prompt_head(messages: list[dict[str, Any]], head: list[dict[str, Any]]) -> None:
    assert prompt_head(messages) == head


CTX = ShapeContext(scope="tenant:a", settings=PrefixSettings())


def test_shape_adds_key_and_configured_retention_without_mutating() -> None:
    ctx = ShapeContext(scope="tenant:a", settings=PrefixSettings(openai_retention="24h"))
    before = copy.deepcopy(TURN_1)
    shaped, notes = shape_openai(TURN_1, ctx)
    assert before == TURN_1
    assert shaped["prompt_cache_key"] == key(TURN_1)
    assert shaped["prompt_cache_retention"] == "24h"
    assert [n.code for n in notes] == ["openai.cache_key", "openai.retention"]


def test_no_retention_is_sent_unless_configured() -> None:
    shaped, _ = shape_openai(TURN_1, CTX)
    assert "prompt_cache_retention" not in shaped


@pytest.mark.parametrize("caller_key", ["my-own-key", "", None])
def test_a_callers_key_is_never_replaced(caller_key: str | None) -> None:
    shaped, notes = shape_openai({**TURN_1, "prompt_cache_key": caller_key}, CTX)
    assert shaped["prompt_cache_key"] == caller_key
    assert [n.code for n in notes] == ["openai.caller_cache_key"]


def test_a_callers_retention_is_never_replaced() -> None:
    ctx = ShapeContext(scope="tenant:a", settings=PrefixSettings(openai_retention="24h"))
    shaped, _ = shape_openai({**TURN_1, "prompt_cache_retention": "in_memory"}, ctx)
    assert shaped["prompt_cache_retention"] == "in_memory"
