"""Prefix lint: volatile values in the cacheable prefix are found, located and costed; nothing else is."""

from __future__ import annotations

from typing import Any

import pytest

from cascache.tiers.prefix.lint import LintFinding, lint_prefix, summarize
from tests.unit.tiers.prefix.helpers import text

NEWEST = {"role": "user", "content": "What changed?"}


def system_findings(system_text: str) -> list[str]:
    report = lint_prefix({"system": system_text, "messages": [NEWEST]}, "anthropic")
    return [finding.kind for finding in report.findings]


@pytest.mark.parametrize(
    ("system_text", "kinds"),
    [
        ("Current time: 2026-11-24T06:12:18Z.", ["timestamp"]),
        ("Now: 2026-11-24 06:12:18.123+01:00", ["timestamp"]),
        ("Today is 2026-11-24.", ["date"]),
        ("Date: 11/24/2026", ["date"]),
        ("Heute ist der 24.11.2026.", ["date"]),
        ("Today is November 24, 2026.", ["date"]),
        ("Today is 24th Nov 2026.", ["date"]),
        ("It is 14:05 now.", ["time"]),
        ("Meeting at 9:30 PM", ["time"]),
        ("Date: Tue, 24 Nov 2026 06:12:18 GMT", ["date", "time"]),
        ("Session 3f2b5c1e-8a4d-4b7e-9c2a-1d0e5f6a7b8c active", ["uuid"]),
        ("Request req_011CUxYz9kP2 failed", ["request_id"]),
        ("Last id chatcmpl-AbC123xyz789", ["request_id"]),
        ("request-id: 7f3a9e", ["request_id"]),
        ("trace 4bf92f3577b34da6a3ce929d0e0e4736", ["hex_id"]),
        ("Generated at 1763964738.", ["epoch"]),
        ("ts=1763964738123", ["epoch"]),
        ("Run 2026-11-24 with id 3f2b5c1e-8a4d-4b7e-9c2a-1d0e5f6a7b8c", ["date", "uuid"]),
    ],
)
def test_volatile_values_are_found(system_text: str, kinds: list[str]) -> None:
    assert system_findings(system_text) == kinds


@pytest.mark.parametrize(
    "system_text",
    [
        "You are a helpful assistant. Answer in 3 sentences or fewer.",
        "Use API version 2.4.1 and a 16:9 aspect ratio.",
        "Call 555-1234 for support. The year 2026 is a leap-free year.",
        "Hash prefixes like deadbeef are fine; so is the runner_up and run-fast.",
        "Prices: $1,000,000,000 budget, 42 items, version 10.2.",
    ],
)
def test_stable_text_is_clean(system_text: str) -> None:
    assert system_findings(system_text) == []


def test_findings_say_where_they_are() -> None:
    body = {
        "tools": [
            {"name": "report", "description": "Data as of 2026-11-01", "input_schema": {"type": "object"}}
        ],
        "system": [{"type": "text", "text": "Stable."}, {"type": "text", "text": "Now: 12:30"}],
        "messages": [
            {"role": "user", "content": "start"},
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "tool_use",
                        "id": "toolu_01A09q90qw90lq917835lq9",
                        "name": "report",
                        "input": {},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_01A09q90qw90lq917835lq9",
                        "content": [
                            {"type": "text", "text": "job 3f2b5c1e-8a4d-4b7e-9c2a-1d0e5f6a7b8c done"}
                        ],
                    },
                ],
            },
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "and at 2026-11-24T06:12:18Z?"},  # the newest turn: not in the prefix
        ],
    }
    assert lint_prefix(body, "anthropic").findings == (
        LintFinding("date", "tools", 0, "2026-11-01"),
        LintFinding("time", "system", 1, "12:30"),
        LintFinding("uuid", "messages", 2, "3f2b5c1e-8a4d-4b7e-9c2a-1d0e5f6a7b8c"),
    )


def test_chat_layout_reports_system_and_developer_messages_as_system() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "Today is 2026-11-24."},
            {"role": "developer", "content": [{"type": "text", "text": "Build 1763964738"}]},
            {"role": "user", "content": "hi"},
        ]
    }
    assert [(f.kind, f.where, f.index) for f in lint_prefix(body, "chat").findings] == [
        ("date", "system", 0),
        ("epoch", "system", 1),
    ]


def test_ids_in_structured_fields_are_not_text() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "q"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_4bf92f3577b34da6a3ce929d",
                        "type": "function",
                        "function": {"name": "f", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_4bf92f3577b34da6a3ce929d", "content": "42"},
            {"role": "user", "content": "next"},
        ]
    }
    assert lint_prefix(body, "chat").findings == ()


def test_tokens_lost_anthropic_lose_the_whole_block_holding_the_finding() -> None:
    volatile = "now: 2026-11-24T06:12:18Z " + "x" * 2000  # 2,026 characters: 507 tokens
    body = {
        "system": [{"type": "text", "text": text(1000)}, {"type": "text", "text": volatile}],
        "messages": [NEWEST],
    }
    report = lint_prefix(body, "anthropic")
    assert report.prefix_tokens == 1000 + 507
    assert report.tokens_lost == 507  # Anthropic caches whole blocks: the second block is lost entirely


def test_tokens_lost_chat_count_the_prefix_from_the_first_finding_on() -> None:
    volatile = "now: 2026-11-24T06:12:18Z " + "x" * 2000
    body = {"messages": [{"role": "system", "content": text(1000)}, {"role": "system", "content": volatile},
                         NEWEST]}
    report = lint_prefix(body, "chat")
    assert report.tokens_lost == report.prefix_tokens - (1000 + 2)  # "now: " is 2 tokens before the timestamp


def test_a_clean_prefix_loses_nothing() -> None:
    report = lint_prefix({"system": text(500), "messages": [NEWEST]}, "anthropic")
    assert (report.findings, report.prefix_tokens, report.tokens_lost) == ((), 500, 0)


def test_header_value_and_summary() -> None:
    body: dict[str, Any] = {
        "system": "2026-11-24 and 2026-11-25 at 10:00, id 3f2b5c1e-8a4d-4b7e-9c2a-1d0e5f6a7b8c",
        "messages": [NEWEST],
    }
    report = lint_prefix(body, "anthropic")
    assert report.header_value() == "date@system[0], date@system[0], time@system[0] (+1 more)"
    assert summarize(report.findings) == {"date": 2, "time": 1, "uuid": 1}
    assert lint_prefix({"messages": [NEWEST]}, "anthropic").header_value() == ""


def test_long_matches_are_cut() -> None:
    hex_id = "a1" * 40
    (finding,) = lint_prefix({"system": f"id {hex_id}", "messages": [NEWEST]}, "anthropic").findings
    assert finding.excerpt == hex_id[:40]
