"""Anthropic Messages: `cache_control` breakpoints placed for callers who placed none.

Anthropic caches a prompt prefix only up to a block marked with
`cache_control`; the prefix is rendered tools -> system -> messages, at most
4 breakpoints per request, a breakpoint finds an earlier cache entry only
within 20 blocks before it, and a prefix shorter than the model's minimum is
silently not cached (platform.claude.com/docs/en/build-with-claude/prompt-caching,
read 2026-11-24). The plan, in prompt order:

1. the last tool definition: tools change least, and are shared by every
   conversation of an application;
2. the end of the system prompt (a string system becomes one text block so it
   can carry the marker; Anthropic treats the two forms alike);
3. a *bridge*, only when the conversation grew by more than 20 blocks since
   the previous request (parallel tool calls): the block where the previous
   request put its message breakpoint, so that entry is still found;
4. the last markable block *before* the newest user turn. Not the newest user
   turn itself: a one-off question would be written at 1.25x and never read.
   The turn is written one request later, when the conversation continues.

That is 4 at most, by construction. A breakpoint is skipped when its prefix
(estimated, see `tokens.py`) is shorter than the model's minimum (`limits.py`).
Thinking blocks cannot carry `cache_control`, nor can empty text blocks; the
nearest earlier markable block is used.

The caller's own caching always wins: if the body carries any `cache_control`
(top level, tools, system, messages; valid or not, even null) nothing is
added or moved, and more than 4 are passed on for the provider to reject.

TTL: see `ttl.py` for the arithmetic. Each breakpoint's prefix is looked up
in the `ReuseTracker` by digest; the message breakpoint uses the gap since the
previous turn of the same conversation (the digest of the previous turn's
breakpoint position). Anthropic requires 1-hour entries to come before
5-minute ones, so when a breakpoint gets "1h", every earlier one does too:
earlier entries are shorter prefixes, usually already cached and so not
written again, and if written they are part of the same 1-hour prefix anyway.

Automatic mode (`PrefixSettings.anthropic_auto`): one top-level
`cache_control`, and Anthropic places the breakpoint on the last cacheable
block itself (newest user turn included) and moves it as the conversation grows.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cascache.keys import canonical_json
from cascache.tiers.prefix.lint import lint_prefix
from cascache.tiers.prefix.base import Note, ShapeContext
from cascache.tiers.prefix.limits import min_cacheable_tokens
from cascache.tiers.prefix.tokens import part_tokens
from cascache.tiers.prefix.ttl import Ttl, choose_ttl

MAX_BREAKPOINTS = 4
LOOKBACK_BLOCKS = 20
_NOT_MARKABLE = frozenset({"thinking", "redacted_thinking"})
_KEY_KIND = "anthropic-prefix/v1"

Path = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Unit:
    """One block of the rendered prompt, in Anthropic's order."""

    path: Path
    """Where it is in the body: ("tools", 2), ("system",) for a string system,
    ("system", 1), ("messages", 4, "content") for string content, ("messages", 4, "content", 0)."""
    markable: bool
    """May carry `cache_control`."""
    cumulative_tokens: int
    """Estimated tokens of the prefix up to and including this block."""
    digest: str
    """Digest of the scope, the model and the prefix up to and including this block."""


@dataclass(frozen=True, slots=True)
class Breakpoint:
    """A planned breakpoint."""

    role: str
    """"tools", "system", "bridge" or "messages"."""
    path: Path
    prefix_tokens: int
    ttl: Ttl


def label(path: Path) -> str:
    """`("messages", 4, "content", 0)` -> `messages[4].content[0]`."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def caller_breakpoints(body: Mapping[str, Any]) -> int:
    """How many `cache_control` keys the caller put anywhere they are allowed (values not checked)."""
    count = 1 if "cache_control" in body else 0
    tools = body.get("tools")
    if isinstance(tools, list):
        count += sum(1 for tool in tools if isinstance(tool, Mapping) and "cache_control" in tool)
    system = body.get("system")
    if isinstance(system, list):
        count += _marked_blocks(system)
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, Mapping) and isinstance(message.get("content"), list):
                count += _marked_blocks(message["content"])
    return count


def _marked_blocks(blocks: Sequence[Any]) -> int:
    count = 0
    for block in blocks:
        if isinstance(block, Mapping):
            count += "cache_control" in block
            if block.get("type") == "tool_result" and isinstance(block.get("content"), list):
                count += _marked_blocks(block["content"])
    return count


def _markable_block(block: Any) -> bool:
    if isinstance(block, str):
        return block != ""
    if not isinstance(block, Mapping) or not isinstance(block.get("type"), str) or block["type"] in _NOT_MARKABLE:
        return False
    return not (block.get("type") == "text" and not block.get("text"))


def prompt_units(body: Mapping[str, Any], ctx: ShapeContext) -> list[Unit]:
    """Every block of the prompt in render order, with running token counts and digests."""
    running = hashlib.blake2b(canonical_json((_KEY_KIND, ctx.scope, body.get("model"))), digest_size=16)
    units: list[Unit] = []
    total = 0

    def add(path: Path, part: Any, markable: bool, tag: tuple[Any, ...]) -> None:
        nonlocal total
        running.update(canonical_json((*tag, part)))
        total += part_tokens(part, ctx.count_tokens)
        units.append(Unit(path, markable, total, running.copy().hexdigest()))

    tools = body.get("tools")
    for i, tool in enumerate(tools if isinstance(tools, list) else []):
        add(("tools", i), tool, isinstance(tool, Mapping), ("tool",))
    system = body.get("system")
    if isinstance(system, str) and system:
        add(("system",), system, True, ("system",))
    elif isinstance(system, list):
        for i, block in enumerate(system):
            add(("system", i), block, _markable_block(block) and _is_text(block), ("system",))
    messages = body.get("messages")
    for i, message in enumerate(messages if isinstance(messages, list) else []):
        if not isinstance(message, Mapping):
            continue
        role = message.get("role")
        content = message.get("content")
        if isinstance(content, str):
            add(("messages", i, "content"), content, _markable_block(content), ("message", role))
        elif isinstance(content, list):
            for j, block in enumerate(content):
                add(("messages", i, "content", j), block, _markable_block(block), ("message", role, j))
    return units


def _is_text(block: Any) -> bool:
    return isinstance(block, Mapping) and block.get("type") == "text"


def _user_turns(body: Mapping[str, Any]) -> list[int]:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return []
    return [i for i, m in enumerate(messages) if isinstance(m, Mapping) and m.get("role") == "user"]


def _last_markable(units: Sequence[Unit], section: str, before_message: int | None = None) -> int | None:
    """Position in `units` of the last markable block of `section`; for messages,
    only blocks of messages before `before_message`."""
    for pos in range(len(units) - 1, -1, -1):
        unit = units[pos]
        if unit.path[0] != section or not unit.markable:
            continue
        if before_message is not None:
            index = unit.path[1]
            if not isinstance(index, int) or index >= before_message:
                continue
        return pos
    return None


def plan_breakpoints(body: Mapping[str, Any], ctx: ShapeContext) -> tuple[list[Breakpoint], list[Note]]:
    """Where breakpoints go and with which TTL (records reuse in `ctx.tracker`)."""
    units = prompt_units(body, ctx)
    minimum = min_cacheable_tokens(str(body.get("model", "")), ctx.settings.min_tokens)
    users = _user_turns(body)
    candidates: list[tuple[str, int]] = []
    for role, pos in (("tools", _last_markable(units, "tools")), ("system", _last_markable(units, "system"))):
        if pos is not None:
            candidates.append((role, pos))
    message_pos = previous_pos = None
    if users and users[-1] > 0:
        message_pos = _last_markable(units, "messages", before_message=users[-1])
        earlier_users = [u for u in users[:-1] if u > 0]
        if earlier_users:
            previous_pos = _last_markable(units, "messages", before_message=earlier_users[-1])
    if message_pos is not None:
        if previous_pos is not None and message_pos - previous_pos > LOOKBACK_BLOCKS:
            candidates.append(("bridge", previous_pos))
        candidates.append(("messages", message_pos))

    notes: list[Note] = []
    placed: list[tuple[str, Unit]] = []
    volatile_from = _first_volatile_unit(body, units, ctx)
    for role, pos in candidates:
        unit = units[pos]
        if volatile_from is not None and pos >= volatile_from:
            # The prefix up to here changes on every request: a write here would never be read,
            # and writes cost 1.25x (2x for 1h). Better no breakpoint than a paid, useless one.
            notes.append(Note("anthropic.volatile_prefix",
                              f"{role} at {label(unit.path)}: prefix holds volatile content; not marked"))
        elif unit.cumulative_tokens < minimum:
            notes.append(
                Note(
                    "anthropic.below_minimum",
                    f"{role} at {label(unit.path)}: ~{unit.cumulative_tokens} "
                    f"tokens < {minimum} for {body.get('model')}",
                )
            )
        else:
            placed.append((role, unit))
    ttls = _choose_ttls(placed, units[previous_pos] if previous_pos is not None else None, ctx)
    plan = [
        Breakpoint(role, unit.path, unit.cumulative_tokens, ttl)
        for (role, unit), ttl in zip(placed, ttls, strict=True)
    ]
    return plan, notes


def _first_volatile_unit(body: Mapping[str, Any], units: Sequence[Unit], ctx: ShapeContext) -> int | None:
    """Position of the first prompt block holding a timestamp, UUID, request id... (the lint's findings)."""
    findings = lint_prefix(body, "anthropic", ctx.count_tokens).findings
    first: int | None = None
    for finding in findings:
        for pos, unit in enumerate(units):
            section = unit.path[0]
            same_block = section == finding.where and (
                len(unit.path) == 1 or unit.path[1] == finding.index)
            if same_block:
                first = pos if first is None else min(first, pos)
                break
    return first


def _choose_ttls(
    placed: Sequence[tuple[str, Unit]], previous_turn: Unit | None, ctx: ShapeContext
) -> list[Ttl]:
    """One TTL per placed breakpoint; "1h" spreads to every earlier one (1h entries must come first)."""
    tracker = ctx.tracker
    if tracker is None or not ctx.settings.one_hour_ttl:
        return ["5m"] * len(placed)
    seen: dict[str, float | None] = {}

    def interval(digest: str) -> float | None:
        if digest not in seen:
            seen[digest] = tracker.observe(digest, ctx.now)
        return seen[digest]

    ttls: list[Ttl] = []
    for role, unit in placed:
        if role == "messages" and previous_turn is not None:
            gap = interval(previous_turn.digest)  # the conversation's pace: time since its previous turn
            interval(unit.digest)  # and remember this turn for the next one
        else:
            gap = interval(unit.digest)
        ttls.append(choose_ttl(gap))
    if "1h" in ttls:
        last_hour = max(i for i, ttl in enumerate(ttls) if ttl == "1h")
        ttls[: last_hour + 1] = ["1h"] * (last_hour + 1)
    return ttls


def cache_control(ttl: Ttl) -> dict[str, str]:
    return {"type": "ephemeral"} if ttl == "5m" else {"type": "ephemeral", "ttl": ttl}


def _mark(body: dict[str, Any], path: Path, marker: dict[str, str]) -> None:
    """Attach `marker` to the block at `path`, turning a string into one text block first."""
    parent: Any = body
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    target = parent[last]
    if isinstance(target, str):
        parent[last] = [{"type": "text", "text": target, "cache_control": marker}]
    else:
        target["cache_control"] = marker


def shape_anthropic(body: Mapping[str, Any], ctx: ShapeContext) -> tuple[dict[str, Any], list[Note]]:
    """A copy of `body` with breakpoints (or the top-level automatic marker) added, and what was done."""
    shaped = copy.deepcopy(dict(body))
    settings = ctx.settings
    if not (settings.anthropic_breakpoints or settings.anthropic_auto):
        return shaped, []
    existing = caller_breakpoints(shaped)
    if existing > MAX_BREAKPOINTS:
        return shaped, [
            Note(
                "anthropic.caller_over_limit",
                f"caller placed {existing} cache_control markers "
                f"(limit {MAX_BREAKPOINTS}): passed on unchanged",
            )
        ]
    if existing:
        return shaped, [Note("anthropic.caller_breakpoints", f"caller placed {existing}: none added")]
    if settings.anthropic_auto:
        return _automatic(shaped, ctx)
    plan, notes = plan_breakpoints(shaped, ctx)
    for point in plan:
        _mark(shaped, point.path, cache_control(point.ttl))
        notes.append(
            Note(
                "anthropic.breakpoint",
                f"{point.role} at {label(point.path)} (~{point.prefix_tokens} tokens, {point.ttl})",
            )
        )
    return shaped, notes


def _automatic(shaped: dict[str, Any], ctx: ShapeContext) -> tuple[dict[str, Any], list[Note]]:
    units = prompt_units(shaped, ctx)
    total = units[-1].cumulative_tokens if units else 0
    minimum = min_cacheable_tokens(str(shaped.get("model", "")), ctx.settings.min_tokens)
    if total < minimum:
        return shaped, [Note("anthropic.below_minimum", f"automatic: ~{total} tokens < {minimum}")]
    shaped["cache_control"] = cache_control("5m")
    return shaped, [Note("anthropic.automatic", f"top-level cache_control (~{total} tokens)")]
