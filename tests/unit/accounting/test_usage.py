"""Every provider's usage report becomes one `Usage`; unreported cache counts stay None."""

from __future__ import annotations

from typing import Any

import pytest

from cascache._types import Usage
from cascache.accounting import PARSERS, detect_kind, parse_usage

ANTHROPIC_WRITE = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [{"type": "text", "text": "Hello!"}],
    "stop_reason": "end_turn",
    "usage": {
        "input_tokens": 21,
        "cache_creation_input_tokens": 188086,
        "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 188086, "ephemeral_1h_input_tokens": 0},
        "output_tokens": 393,
        "service_tier": "standard",
    },
}

CASES: list[tuple[str, str, dict[str, Any], Usage]] = [
    (
        "anthropic write, with the 5m/1h split",
        "anthropic",
        ANTHROPIC_WRITE,
        Usage(
            input_tokens=21 + 188086,
            output_tokens=393,
            cache_read_tokens=0,
            cache_write_tokens=188086,
            cache_write_5m_tokens=188086,
            cache_write_1h_tokens=0,
        ),
    ),
    (
        "anthropic read, mixed TTL write",
        "anthropic",
        {
            "type": "message",
            "usage": {
                "input_tokens": 50,
                "cache_read_input_tokens": 4000,
                "cache_creation_input_tokens": 1500,
                "cache_creation": {"ephemeral_5m_input_tokens": 500, "ephemeral_1h_input_tokens": 1000},
                "output_tokens": 12,
            },
        },
        Usage(
            input_tokens=5550,
            output_tokens=12,
            cache_read_tokens=4000,
            cache_write_tokens=1500,
            cache_write_5m_tokens=500,
            cache_write_1h_tokens=1000,
        ),
    ),
    (
        "anthropic before the split existed: total only",
        "anthropic",
        {
            "usage": {
                "input_tokens": 10,
                "cache_creation_input_tokens": 2000,
                "cache_read_input_tokens": 0,
                "output_tokens": 5,
            }
        },
        Usage(input_tokens=2010, output_tokens=5, cache_read_tokens=0, cache_write_tokens=2000),
    ),
    (
        "anthropic split without the total",
        "anthropic",
        {
            "usage": {
                "input_tokens": 10,
                "cache_creation": {"ephemeral_1h_input_tokens": 300},
                "output_tokens": 1,
            }
        },
        Usage(
            input_tokens=310,
            output_tokens=1,
            cache_read_tokens=None,
            cache_write_tokens=300,
            cache_write_5m_tokens=None,
            cache_write_1h_tokens=300,
        ),
    ),
    (
        "anthropic with caching never used: cache fields absent",
        "anthropic",
        {"usage": {"input_tokens": 12, "output_tokens": 3}},
        Usage(input_tokens=12, output_tokens=3),
    ),
    (
        "openai chat, cached prefix",
        "openai",
        {
            "object": "chat.completion",
            "model": "gpt-4o-2024-08-06",
            "usage": {
                "prompt_tokens": 2006,
                "completion_tokens": 300,
                "total_tokens": 2306,
                "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0},
            },
        },
        Usage(input_tokens=2006, output_tokens=300, cache_read_tokens=1920),
    ),
    (
        "openai chat, GPT-5.6 style cache write",
        "openai",
        {
            "usage": {
                "prompt_tokens": 5000,
                "completion_tokens": 10,
                "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 4864},
            }
        },
        Usage(input_tokens=5000, output_tokens=10, cache_read_tokens=0, cache_write_tokens=4864),
    ),
    (
        "openai responses",
        "openai_responses",
        {
            "object": "response",
            "usage": {
                "input_tokens": 1500,
                "input_tokens_details": {"cached_tokens": 1280},
                "output_tokens": 40,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 1540,
            },
        },
        Usage(input_tokens=1500, output_tokens=40, cache_read_tokens=1280),
    ),
    (
        "deepseek hit and miss",
        "deepseek",
        {
            "model": "deepseek-chat",
            "usage": {
                "prompt_tokens": 2200,
                "completion_tokens": 80,
                "total_tokens": 2280,
                "prompt_cache_hit_tokens": 1920,
                "prompt_cache_miss_tokens": 280,
            },
        },
        Usage(input_tokens=2200, output_tokens=80, cache_read_tokens=1920),
    ),
    (
        "deepseek without prompt_tokens: hit + miss",
        "deepseek",
        {"usage": {"completion_tokens": 1, "prompt_cache_hit_tokens": 64, "prompt_cache_miss_tokens": 36}},
        Usage(input_tokens=100, output_tokens=1, cache_read_tokens=64),
    ),
    (
        "vllm without --enable-prompt-tokens-details: unknown, not 0",
        "vllm",
        {
            "object": "chat.completion",
            "usage": {
                "prompt_tokens": 900,
                "completion_tokens": 20,
                "total_tokens": 920,
                "prompt_tokens_details": None,
            },
        },
        Usage(input_tokens=900, output_tokens=20, cache_read_tokens=None),
    ),
    (
        "vllm with details",
        "vllm",
        {
            "usage": {
                "prompt_tokens": 900,
                "completion_tokens": 20,
                "prompt_tokens_details": {"cached_tokens": 864},
            }
        },
        Usage(input_tokens=900, output_tokens=20, cache_read_tokens=864),
    ),
    (
        "llama.cpp timings",
        "llamacpp",
        {
            "object": "chat.completion",
            "usage": {"prompt_tokens": 1530, "completion_tokens": 32, "total_tokens": 1562},
            "timings": {
                "cache_n": 1498,
                "prompt_n": 32,
                "prompt_ms": 41.2,
                "predicted_n": 32,
                "predicted_ms": 380.0,
            },
        },
        Usage(input_tokens=1530, output_tokens=32, cache_read_tokens=1498),
    ),
    (
        "llama.cpp timings without usage",
        "llamacpp",
        {"timings": {"cache_n": 0, "prompt_n": 1530, "predicted_n": 7}},
        Usage(input_tokens=1530, output_tokens=7, cache_read_tokens=0),
    ),
    (
        "llama.cpp stream assembled without timings: the details field",
        "llamacpp",
        {
            "usage": {
                "prompt_tokens": 1530,
                "completion_tokens": 32,
                "prompt_tokens_details": {"cached_tokens": 1498},
            }
        },
        Usage(input_tokens=1530, output_tokens=32, cache_read_tokens=1498),
    ),
    (
        "malformed counts are not reported",
        "openai",
        {
            "usage": {
                "prompt_tokens": -3,
                "completion_tokens": True,
                "prompt_tokens_details": {"cached_tokens": "12"},
            }
        },
        Usage(input_tokens=0, output_tokens=0, cache_read_tokens=None),
    ),
    ("no usage at all", "openai", {"choices": []}, Usage()),
]


@pytest.mark.parametrize(("kind", "response", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_parse_usage(kind: str, response: dict[str, Any], expected: Usage) -> None:
    assert parse_usage(response, kind) == expected


@pytest.mark.parametrize(
    ("response", "kind"),
    [
        (ANTHROPIC_WRITE, "anthropic"),
        ({"usage": {"input_tokens": 1, "cache_read_input_tokens": 0}}, "anthropic"),
        ({"usage": {"prompt_tokens": 1}, "timings": {"cache_n": 0}}, "llamacpp"),
        ({"usage": {"prompt_tokens": 1, "prompt_cache_hit_tokens": 0}}, "deepseek"),
        ({"object": "response", "usage": {"input_tokens": 1}}, "openai_responses"),
        ({"usage": {"prompt_tokens": 1}}, "openai"),
        ({}, "openai"),
    ],
)
def test_detect_kind(response: dict[str, Any], kind: str) -> None:
    assert detect_kind(response) == kind


def test_parse_usage_detects_when_no_kind_is_given() -> None:
    assert parse_usage(ANTHROPIC_WRITE).cache_write_5m_tokens == 188086


def test_unknown_kind_is_an_error_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown usage kind 'gemini'"):
        parse_usage({}, "gemini")


def test_every_registered_parser_reads_a_usage_free_response() -> None:
    for kind, parser in PARSERS.items():
        assert parser({}).input_tokens == 0, kind
