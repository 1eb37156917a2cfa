"""The 1-hour TTL is chosen exactly where its 2x write pays for itself, per scope, in a valid order."""

from __future__ import annotations

from typing import Any

import pytest

from cascache.tiers.prefix import PrefixSettings, ReuseTracker, ShapeContext, shape
from cascache.tiers.prefix.anthropic import plan_breakpoints
from cascache.tiers.prefix.ttl import choose_ttl
from tests.unit.tiers.prefix.helpers import text

MINUTE = 60.0


@pytest.mark.parametrize(
    ("interval", "ttl"),
    [
        (None, "5m"),  # first sighting
        (0.0, "5m"),
        (4 * MINUTE, "5m"),  # the 5-minute entry is still alive: 1h would only add 0.75x
        (5 * MINUTE, "5m"),
        (5 * MINUTE + 1, "1h"),  # the 5m entry expired: 1.25x per use against 2x once, then 0.1x
        (30 * MINUTE, "1h"),
        (60 * MINUTE - 1, "1h"),
        (60 * MINUTE, "5m"),  # both expire: 1.25x < 2x
        (3 * 60 * MINUTE, "5m"),
    ],
)
def test_choose_ttl(interval: float | None, ttl: str) -> None:
    assert choose_ttl(interval) == ttl


def test_one_reuse_within_the_hour_already_pays_for_the_1h_write() -> None:
    """The arithmetic in ttl.py: two uses 10 minutes apart, in units of P*b."""
    five_minute = 1.25 + 1.25  # the 5m entry expired: written twice
    one_hour = 2.0 + 0.1  # written once, then read
    assert one_hour < five_minute
    assert choose_ttl(10 * MINUTE) == "1h"


def test_tracker_reports_the_interval_since_the_last_sighting() -> None:
    tracker = ReuseTracker()
    assert tracker.observe("a", 100.0) is None
    assert tracker.observe("a", 400.0) == 300.0
    assert tracker.observe("a", 450.0) == 50.0
    assert tracker.observe("a", 440.0) == 0.0  # a clock that steps back never gives a negative interval


def test_tracker_forgets_the_least_recently_seen_first() -> None:
    tracker = ReuseTracker(capacity=2)
    tracker.observe("a", 1.0)
    tracker.observe("b", 2.0)
    tracker.observe("a", 3.0)  # a is now the most recent
    tracker.observe("c", 4.0)  # evicts b
    assert "b" not in tracker and "a" in tracker and "c" in tracker
    assert len(tracker) == 2


def test_tracker_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ReuseTracker(capacity=0)


SYSTEM = text(1500)


def request(*messages: dict[str, Any]) -> dict[str, Any]:
    return {"model": "claude-sonnet-4-5", "system": SYSTEM, "messages": list(messages)}


def ttls(
    body: dict[str, Any],
    tracker: ReuseTracker,
    now: float,
    scope: str = "tenant:a",
    settings: PrefixSettings | None = None,
) -> list[tuple[str, str]]:
    ctx = ShapeContext(scope=scope, settings=settings or PrefixSettings(), tracker=tracker, now=now)
    plan, _ = plan_breakpoints(body, ctx)
    return [(point.role, point.ttl) for point in plan]


Q1 = {"role": "user", "content": "first question"}


@pytest.mark.parametrize(
    ("second_after", "ttl"),
    [(1 * MINUTE, "5m"), (10 * MINUTE, "1h"), (59 * MINUTE, "1h"), (90 * MINUTE, "5m")],
)
def test_system_prefix_ttl_follows_its_observed_reuse(second_after: float, ttl: str) -> None:
    tracker = ReuseTracker()
    assert ttls(request(Q1), tracker, now=0.0) == [("system", "5m")]
    assert ttls(request({"role": "user", "content": "another"}), tracker, now=second_after) == [
        ("system", ttl)
    ]


def test_reuse_is_tracked_per_scope() -> None:
    tracker = ReuseTracker()
    ttls(request(Q1), tracker, now=0.0, scope="tenant:a")
    assert ttls(request(Q1), tracker, now=10 * MINUTE, scope="tenant:b") == [("system", "5m")]
    assert ttls(request(Q1), tracker, now=10 * MINUTE, scope="tenant:a") == [("system", "1h")]


def test_one_hour_ttl_can_be_switched_off() -> None:
    tracker = ReuseTracker()
    off = PrefixSettings(one_hour_ttl=False)
    ttls(request(Q1), tracker, now=0.0, settings=off)
    assert ttls(request(Q1), tracker, now=10 * MINUTE, settings=off) == [("system", "5m")]


def test_a_slow_conversation_gets_1h_and_so_does_every_breakpoint_before_it() -> None:
    """The system prompt is hot (seen every minute by other conversations) so on its own it stays 5m; the
    conversation's turns come 20 minutes apart, so its breakpoint is 1h, and Anthropic requires 1h entries
    before 5m ones: the system breakpoint is promoted, not the conversation's demoted."""
    tracker = ReuseTracker()
    turn_1 = request(
        Q1, {"role": "assistant", "content": "answer 1"}, {"role": "user", "content": "second question"}
    )
    assert ttls(turn_1, tracker, now=0.0) == [("system", "5m"), ("messages", "5m")]
    for minute in range(1, 20):  # other conversations keep the system prompt hot
        ttls(request({"role": "user", "content": f"other {minute}"}), tracker, now=minute * MINUTE)
    turn_2 = request(
        *turn_1["messages"],
        {"role": "assistant", "content": "answer 2"},
        {"role": "user", "content": "third question"},
    )
    assert ttls(turn_2, tracker, now=20 * MINUTE) == [("system", "1h"), ("messages", "1h")]


def test_a_fast_conversation_stays_5m() -> None:
    tracker = ReuseTracker()
    turn_1 = request(
        Q1, {"role": "assistant", "content": "answer 1"}, {"role": "user", "content": "second question"}
    )
    ttls(turn_1, tracker, now=0.0)
    turn_2 = request(
        *turn_1["messages"],
        {"role": "assistant", "content": "answer 2"},
        {"role": "user", "content": "third question"},
    )
    assert ttls(turn_2, tracker, now=30.0) == [("system", "5m"), ("messages", "5m")]


def test_shaped_markers_carry_the_ttl() -> None:
    tracker = ReuseTracker()
    shape("anthropic", request(Q1), scope="tenant:a", tracker=tracker, now=0.0)
    shaped = shape("anthropic", request(Q1), scope="tenant:a", tracker=tracker, now=10 * MINUTE)
    assert shaped.body["system"][0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
