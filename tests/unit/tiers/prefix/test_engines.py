"""Self-hosted engines: llama.cpp reuses its KV cache; vLLM salts it per tenant."""

from __future__ import annotations

from typing import Any

import pytest

from cascache.keys import make_scope
from cascache.tiers.prefix import PrefixSettings, ShapeContext
from cascache.tiers.prefix.engines import cache_salt, shape_llamacpp, shape_vllm

BODY = {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}]}
TENANT_A = make_scope("sk-tenant-a", None)
TENANT_B = make_scope("sk-tenant-b", None)


def ctx(scope: str = TENANT_A) -> ShapeContext:
    return ShapeContext(scope=scope, settings=PrefixSettings())


def test_llamacpp_asks_for_prompt_cache_reuse() -> None:
    shaped, notes = shape_llamacpp(BODY, ctx())
    assert shaped["cache_prompt"] is True
    assert "cache_prompt" not in BODY
    assert [n.code for n in notes] == ["llamacpp.cache_prompt"]


@pytest.mark.parametrize("value", [False, True, None])
def test_llamacpp_keeps_the_callers_choice(value: Any) -> None:
    shaped, notes = shape_llamacpp({**BODY, "cache_prompt": value}, ctx())
    assert shaped["cache_prompt"] is value
    assert [n.code for n in notes] == ["llamacpp.caller_cache_prompt"]


def test_vllm_salt_separates_tenants_and_is_stable_within_one() -> None:
    a, _ = shape_vllm(BODY, ctx(TENANT_A))
    again, _ = shape_vllm(BODY, ctx(TENANT_A))
    b, _ = shape_vllm(BODY, ctx(TENANT_B))
    assert a["cache_salt"] == again["cache_salt"] == cache_salt(TENANT_A)
    assert a["cache_salt"] != b["cache_salt"]
    assert "cache_salt" not in BODY


def test_vllm_salt_separates_users_of_a_personalised_scope() -> None:
    assert cache_salt(make_scope("sk-tenant-a", "alice")) != cache_salt(make_scope("sk-tenant-a", "bob"))


def test_vllm_salt_is_a_non_empty_hash_that_does_not_reveal_the_scope() -> None:
    salt = cache_salt(TENANT_A)
    assert salt and TENANT_A not in salt and all(c in "0123456789abcdef" for c in salt)


def test_vllm_keeps_the_callers_salt() -> None:
    shaped, notes = shape_vllm({**BODY, "cache_salt": "team-42"}, ctx())
    assert shaped["cache_salt"] == "team-42"
    assert [n.code for n in notes] == ["vllm.caller_cache_salt"]
