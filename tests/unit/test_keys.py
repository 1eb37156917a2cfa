"""Keys are the security boundary of the cache: every answer-changing input must move them."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from cascache.keys import canonical_json, make_scope, request_keys, tenant_id
from cascache.providers.openai import parse

BASE: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is the capital of France?"},
    ],
    "temperature": 0,
}


def keys_for(body: dict[str, Any], api_key: str = "sk-a", user: str | None = None, version: str = "v1",
             embedder: str = "emb"):
    request = parse(body)
    return request_keys(request, make_scope(api_key, user), version, embedder)


def variant(**changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(BASE)
    body.update(changes)
    return body


def test_canonical_json_ignores_key_order() -> None:
    assert canonical_json({"b": 1, "a": [1, {"d": 2, "c": 3}]}) == canonical_json({"a": [1, {"c": 3, "d": 2}], "b": 1})


def test_same_request_same_keys_and_key_order_does_not_matter() -> None:
    reordered = {"temperature": 0, "messages": BASE["messages"], "model": "gpt-4o-mini"}
    assert keys_for(BASE) == keys_for(reordered)


def test_stream_and_user_metadata_do_not_change_the_fingerprint() -> None:
    assert keys_for(BASE).fingerprint == keys_for(variant(stream=True, stream_options={"include_usage": True},
                                                          metadata={"a": "b"})).fingerprint


@pytest.mark.parametrize(
    "change",
    [
        {"model": "gpt-4o"},
        {"temperature": 0.7},
        {"top_p": 0.5},
        {"max_tokens": 10},
        {"max_completion_tokens": 10},
        {"stop": ["\n"]},
        {"seed": 7},
        {"n": 2},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
        {"tool_choice": "none"},
        {"response_format": {"type": "json_object"}},
        {"some_future_parameter": True},
    ],
)
def test_every_answer_changing_parameter_moves_both_keys(change: dict[str, Any]) -> None:
    base, changed = keys_for(BASE), keys_for(variant(**change))
    assert base.fingerprint != changed.fingerprint
    assert base.namespace != changed.namespace


def test_system_prompt_moves_both_keys() -> None:
    other = variant(messages=[{"role": "system", "content": "You are verbose."}, BASE["messages"][1]])
    assert keys_for(BASE).fingerprint != keys_for(other).fingerprint
    assert keys_for(BASE).namespace != keys_for(other).namespace


def test_last_user_message_moves_fingerprint_but_not_namespace() -> None:
    other = variant(messages=[BASE["messages"][0], {"role": "user", "content": "Capital city of France?"}])
    assert keys_for(BASE).fingerprint != keys_for(other).fingerprint
    assert keys_for(BASE).namespace == keys_for(other).namespace


def test_earlier_turns_move_the_namespace() -> None:
    history = [BASE["messages"][0], {"role": "user", "content": "Talk about Spain."},
               {"role": "assistant", "content": "Spain is..."}, BASE["messages"][1]]
    assert keys_for(BASE).namespace != keys_for(variant(messages=history)).namespace


def test_text_shifted_between_messages_never_collides() -> None:
    a = variant(messages=[{"role": "user", "content": "ab"}, {"role": "assistant", "content": "c"},
                          {"role": "user", "content": "d"}])
    b = variant(messages=[{"role": "user", "content": "a"}, {"role": "assistant", "content": "bc"},
                          {"role": "user", "content": "d"}])
    assert keys_for(a).fingerprint != keys_for(b).fingerprint
    assert keys_for(a).namespace != keys_for(b).namespace


def test_single_text_part_equals_plain_string() -> None:
    parts = variant(messages=[BASE["messages"][0],
                              {"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}]}])
    assert keys_for(BASE) == keys_for(parts)


def test_scope_separates_tenants_and_users() -> None:
    assert keys_for(BASE, api_key="sk-a").fingerprint != keys_for(BASE, api_key="sk-b").fingerprint
    assert keys_for(BASE, api_key="sk-a").namespace != keys_for(BASE, api_key="sk-b").namespace
    assert keys_for(BASE, user="alice").namespace != keys_for(BASE, user="bob").namespace
    assert keys_for(BASE, user="alice").fingerprint != keys_for(BASE).fingerprint


def test_same_user_name_under_two_tenants_is_two_scopes() -> None:
    assert make_scope("sk-a", "alice") != make_scope("sk-b", "alice")


def test_scope_never_contains_the_api_key() -> None:
    scope = make_scope("sk-secret-123", "alice")
    assert "sk-secret-123" not in scope and "alice" not in scope
    assert tenant_id(None) == "anonymous"


def test_version_and_embedder_move_the_keys() -> None:
    assert keys_for(BASE, version="v1").fingerprint != keys_for(BASE, version="v2").fingerprint
    assert keys_for(BASE, version="v1").namespace != keys_for(BASE, version="v2").namespace
    assert keys_for(BASE, embedder="a").namespace != keys_for(BASE, embedder="b").namespace


def test_no_namespace_when_last_message_is_not_plain_user_text() -> None:
    tool_turn = variant(messages=[BASE["messages"][1],
                                  {"role": "assistant", "tool_calls": [{"id": "1", "type": "function",
                                                                        "function": {"name": "f", "arguments": "{}"}}]},
                                  {"role": "tool", "tool_call_id": "1", "content": "42"}])
    assert keys_for(tool_turn).namespace is None
    image = variant(messages=[{"role": "user", "content": [{"type": "text", "text": "what is this"},
                                                           {"type": "image_url", "image_url": {"url": "x"}}]}])
    assert keys_for(image).namespace is None
