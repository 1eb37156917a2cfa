from __future__ import annotations

import pytest

from cascache._errors import InvalidRequest
from cascache.config import PolicySettings
from cascache.policy import decide
from cascache.providers.openai import parse

SETTINGS = PolicySettings()


def request(text: str = "How do I reset my password?", **extra: object):
    return parse({"model": "m", "messages": [{"role": "user", "content": text}], **extra})


def test_plain_request_is_cacheable_with_default_ttl_and_version() -> None:
    decision = decide(request(), {}, SETTINGS)
    assert decision.lookup and decision.store and decision.reason is None
    assert decision.ttl_s == SETTINGS.ttl_s and decision.version == "v1"


@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_bypass_header(value: str) -> None:
    decision = decide(request(), {"x-cascache-bypass": value}, SETTINGS)
    assert not decision.lookup and not decision.store and decision.reason == "header"


def test_no_cache_skips_lookup_but_stores() -> None:
    decision = decide(request(), {"cache-control": "no-cache"}, SETTINGS)
    assert not decision.lookup and decision.store


def test_no_store_looks_up_but_never_stores() -> None:
    decision = decide(request(), {"cache-control": "max-age=0, no-store"}, SETTINGS)
    assert decision.lookup and not decision.store


def test_n_greater_than_one_bypasses() -> None:
    decision = decide(request(n=3), {}, SETTINGS)
    assert decision.bypass and not decision.store and decision.reason == "n>1"


@pytest.mark.parametrize("text", ["What's the weather today?", "What is the latest version of Python?",
                                  "current price of bitcoin", "What is happening right now in Paris?",
                                  "WHAT TIME IS IT"])
def test_time_sensitive_questions_bypass(text: str) -> None:
    decision = decide(request(text), {}, SETTINGS)
    assert decision.bypass and decision.reason == "time-sensitive"


@pytest.mark.parametrize("text", ["How do I know my balance?", "What is the capital of Peru?",
                                  "Explain the history of the stock market"])
def test_ordinary_questions_do_not_bypass(text: str) -> None:
    assert not decide(request(text), {}, SETTINGS).bypass


def test_time_sensitive_patterns_are_configurable() -> None:
    settings = PolicySettings(time_sensitive_patterns=(r"\bpassword\b",))
    assert decide(request(), {}, settings).bypass
    assert not decide(request("weather today"), {}, settings).bypass


def test_ttl_header_overrides_and_is_validated() -> None:
    assert decide(request(), {"x-cascache-ttl": "60"}, SETTINGS).ttl_s == 60
    for bad in ["abc", "0", "-5", str(10**12)]:
        with pytest.raises(InvalidRequest):
            decide(request(), {"x-cascache-ttl": bad}, SETTINGS)


def test_version_header_overrides_config() -> None:
    assert decide(request(), {"x-cascache-version": "kb-2026-11"}, SETTINGS).version == "kb-2026-11"
    with pytest.raises(InvalidRequest):
        decide(request(), {"x-cascache-version": "x" * 500}, SETTINGS)


def test_tags_are_parsed_sorted_and_deduplicated() -> None:
    decision = decide(request(), {"x-cascache-tags": "doc:2, doc:1,doc:2,"}, SETTINGS)
    assert decision.tags == ("doc:1", "doc:2")


def test_temperature_rule_when_configured() -> None:
    settings = PolicySettings(cache_temperature_above_zero=False)
    assert decide(request(temperature=0.8), {}, settings).bypass
    assert not decide(request(temperature=0), {}, settings).bypass
