"""Prefix lint: volatile content inside the part of a prompt that providers cache.

Provider prefix caches match byte-exact prefixes, so one timestamp near the
top of a system prompt makes everything after it a cache miss on every
request. The lint looks for values that typically change per request --
timestamps, dates, times, UUIDs, request ids, long hex ids, unix epochs -- in
the cacheable prefix: tools, system prompt, and every message before the
newest user turn. It reports what it found and where, and estimates the
tokens that can no longer be cached (all prefix tokens from the first
finding on). It never rewrites anything: only the caller knows whether a
value is volatile.

Findings in earlier *messages* are weaker evidence than findings in tools or
the system prompt: history is replayed verbatim turn after turn, so a date a
user typed three turns ago does not break the cache; one re-rendered on every
turn does. `where` says which is which.

The patterns favour recall over precision (a Bible verse "3:16" reads as a
time): a finding is a warning for a person, never a decision.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from cascache.tiers.prefix.tokens import TextTokens, approx_text_tokens, part_tokens

Where = Literal["tools", "system", "messages"]
Layout = Literal["anthropic", "chat"]
"""`anthropic`: top-level `system`, content blocks. `chat` (OpenAI shape):
system and developer messages inside `messages`."""

_MONTH = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?"
    r"|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
)

#: In priority order: an ISO timestamp is reported once, not also as a date and a time.
PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "timestamp",
        re.compile(r"\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?"),
    ),
    ("uuid", re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b")),
    (
        "request_id",
        re.compile(
            r"\b(?:req|request|trace|span|sess|session|corr|txn|chatcmpl|run|job|evt)[-_]"
            r"(?=[A-Za-z]*\d)[A-Za-z0-9]{6,}\b"
            r"|\brequest[ _-]?id\s*[:=]\s*[\w-]{4,}",
            re.IGNORECASE,
        ),
    ),
    (
        "date",
        re.compile(
            r"\b\d{4}[-/]\d{2}[-/]\d{2}\b"
            r"|\b\d{1,2}/\d{1,2}/\d{2,4}\b"
            r"|\b\d{1,2}\.\d{1,2}\.\d{4}\b"
            rf"|\b{_MONTH}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}\b"
            rf"|\b\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTH}\.?,?\s+\d{{4}}\b",
            re.IGNORECASE,
        ),
    ),
    (
        "time",
        re.compile(r"\b(?:[01]?\d|2[0-3]):[0-5]\d(?::[0-5]\d(?:\.\d+)?)?(?:\s?[AaPp]\.?[Mm]\.?)?(?![\d:])"),
    ),
    ("epoch", re.compile(r"\b1\d{9}(?:\d{3})?\b")),
    ("hex_id", re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{16,}\b", re.IGNORECASE)),
)
_EXCERPT_CHARS = 40


@dataclass(frozen=True, slots=True)
class LintFinding:
    kind: str
    """"timestamp", "uuid", "request_id", "date", "time", "epoch" or "hex_id"."""
    where: Where
    index: int
    """Tool index, system block index, or message index."""
    excerpt: str
    """The matched text, cut to 40 characters."""


@dataclass(frozen=True, slots=True)
class LintReport:
    findings: tuple[LintFinding, ...]
    prefix_tokens: int
    """Estimated tokens of the cacheable prefix."""
    tokens_lost: int
    """Estimated prefix tokens from the first finding on: what can never be read from cache."""

    def header_value(self, limit: int = 3) -> str:
        """For `x-cascache-prefix-warning`, e.g. `timestamp@system[0], uuid@messages[2] (+1 more)`;
        "" when clean."""
        shown = ", ".join(f"{f.kind}@{f.where}[{f.index}]" for f in self.findings[:limit])
        extra = len(self.findings) - limit
        return f"{shown} (+{extra} more)" if extra > 0 else shown


@dataclass(frozen=True, slots=True)
class _Segment:
    where: Where
    index: int
    text: str
    tokens: int


def _strings(value: Any) -> Iterator[str]:
    """Every string inside a JSON value (a tool definition), `cache_control` aside."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if key != "cache_control":
                yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _texts(content: Any) -> Iterator[str]:
    """The text a model reads in a message's content (ids and payloads are not text)."""
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for block in content:
            if isinstance(block, str):
                yield block
            elif isinstance(block, Mapping):
                if isinstance(block.get("text"), str):
                    yield block["text"]
                if block.get("type") == "tool_result":
                    yield from _texts(block.get("content"))


def _segments(body: Mapping[str, Any], layout: Layout, count: TextTokens) -> list[_Segment]:
    """The cacheable prefix in render order: tools, system, messages before the newest user turn."""
    segments: list[_Segment] = []
    tools = body.get("tools")
    for i, tool in enumerate(tools if isinstance(tools, list) else []):
        segments.append(_Segment("tools", i, "\n".join(_strings(tool)), part_tokens(tool, count)))
    if layout == "anthropic":
        system = body.get("system")
        blocks = [system] if isinstance(system, str) else (system if isinstance(system, list) else [])
        for i, block in enumerate(blocks):
            segments.append(_Segment("system", i, "\n".join(_texts([block])), part_tokens(block, count)))
    messages = body.get("messages")
    messages = messages if isinstance(messages, list) else []
    users = [i for i, m in enumerate(messages) if isinstance(m, Mapping) and m.get("role") == "user"]
    end = users[-1] if users else len(messages)
    for i, message in enumerate(messages[:end]):
        if not isinstance(message, Mapping):
            continue
        content = message.get("content")
        where: Where = (
            "system" if layout == "chat" and message.get("role") in ("system", "developer") else "messages"
        )
        segments.append(_Segment(where, i, "\n".join(_texts(content)), part_tokens(content or "", count)))
    return segments


def _matches(text: str) -> list[tuple[int, str, str]]:
    """(offset, kind, matched text) in text order, each span claimed by the first pattern that matches it."""
    claimed: list[tuple[int, int]] = []
    found: list[tuple[int, str, str]] = []
    for kind, pattern in PATTERNS:
        for match in pattern.finditer(text):
            start, end = match.span()
            if any(start < c_end and c_start < end for c_start, c_end in claimed):
                continue
            claimed.append((start, end))
            found.append((start, kind, match.group()))
    return sorted(found)


def lint_prefix(
    body: Mapping[str, Any], layout: Layout, count: TextTokens = approx_text_tokens
) -> LintReport:
    """Volatile values in the cacheable prefix of `body`, and the tokens they cost."""
    findings: list[LintFinding] = []
    before = 0
    first_at: int | None = None
    for segment in _segments(body, layout, count):
        for offset, kind, text in _matches(segment.text):
            findings.append(LintFinding(kind, segment.where, segment.index, text[:_EXCERPT_CHARS]))
            if first_at is None:
                # Anthropic caches whole blocks: a volatile value anywhere in a block spoils all of it.
                # OpenAI caches by token prefix: only what follows the value is lost.
                within = 0 if layout == "anthropic" else min(segment.tokens, count(segment.text[:offset]))
                first_at = before + within
        before += segment.tokens
    lost = 0 if first_at is None else before - first_at
    return LintReport(tuple(findings), prefix_tokens=before, tokens_lost=lost)


def layout_of(provider: str) -> Layout:
    return "anthropic" if provider == "anthropic" else "chat"


def summarize(findings: Sequence[LintFinding]) -> dict[str, int]:
    """Count of findings per kind (for the metric)."""
    counts: dict[str, int] = {}
    for finding in findings:
        counts[finding.kind] = counts.get(finding.kind, 0) + 1
    return counts
