"""A provider simulator that speaks Anthropic Messages and OpenAI Chat and keeps their prompt caches.

The real APIs cannot be reached from tests or benchmarks, so this ASGI app
stands in for them: same paths, bodies, SSE event sequences, error shapes and
usage fields, and prefix caches that follow each provider's documented rules.
Every request is recorded with what it read from and wrote to the cache
(`ProviderSim.log`, `GET /_sim/log`), so a test can assert *why* a request was
cheap, not only that it was.

Anthropic prompt caching, as simulated (docs: platform.claude.com/docs/en/
build-with-claude/prompt-caching, "How prompt caching works", "Cache
limitations", "Mixing different TTLs"; Messages API reference):

- The prompt is one sequence of blocks in the order tools -> system ->
  messages. Every block boundary has a digest that chains the digest before it,
  so a prefix digest names exactly the content up to that block (and the model,
  and the organisation: caches are never shared across API keys).
- A `cache_control` breakpoint on a block (a tool definition, a system block, a
  message content block) writes the prefix ending there. A top-level
  `cache_control` ("automatic caching") places one more breakpoint on the last
  cacheable block, or reuses the breakpoint already there.
- At most 4 breakpoints; a fifth is a 400 invalid_request_error. A malformed
  `cache_control` (type not "ephemeral", ttl not "5m"/"1h", unknown keys), one on
  a thinking block or an empty text block, or a 1h breakpoint after a 5m one is
  also a 400.
- Reads: for each breakpoint the simulator checks the prefix ending there and
  the block boundaries before it, 20 positions in all (the breakpoint itself
  included; `lookback_blocks`), and reads the longest live prefix found.
  Entries exist only where some request had a breakpoint.
- A prefix shorter than the model's minimum cacheable length is silently not
  cached (no error, no cache fields > 0). The table is `ANTHROPIC_MIN_CACHEABLE`.
- TTL 5 minutes by default, 1 hour with `"ttl": "1h"`; each read refreshes the
  entry for its own TTL at no cost.
- An entry becomes readable only once the response that wrote it has started:
  the lookup happens when a request arrives, the write when its first byte
  leaves (after the configured latency). Concurrent identical requests all miss.
- Usage: `input_tokens` = tokens after the last cached/written position,
  `cache_read_input_tokens`, `cache_creation_input_tokens`, and
  `cache_creation.{ephemeral_5m,ephemeral_1h}_input_tokens`, where each written
  segment counts under the TTL of the breakpoint that ends it.

OpenAI prompt caching, as simulated (docs: developers.openai.com/api/docs/
guides/prompt-caching; cookbook "Prompt Caching 201"):

- Automatic for prompts of 1,024 tokens or more; hits come in 128-token
  increments: the cached part is the longest live prefix of length 1024 + 128k.
- The prompt is tools, then each message (one framing token for the role, then
  its content); every 1024 + 128k boundary of a served prompt is written.
- `prompt_cache_key` is combined with the prefix hash for routing; simulated as
  disjoint cache partitions per key (and per API key and model).
- Entries live `openai_ttl_s` (default 5 minutes) after their last use, or 24
  hours with `"prompt_cache_retention": "24h"`.
- `usage.prompt_tokens_details.cached_tokens` reports the cached part.

Tokens are approximated, the same way everywhere: a token is a whitespace-
separated word of the text (`count_tokens`); a non-text block (tool definition,
tool call, image...) counts the words of its JSON written with `json.dumps`'
default ", " / ": " separators. Answers are deterministic: a sentence derived
from a hash of the last user message, so equal prompts get equal answers.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

Api = Literal["anthropic", "openai"]

#: Minimum cacheable prompt length per Anthropic model family, first prefix
#: match wins. Source: Anthropic prompt caching docs, "Cache limitations", as
#: quoted verbatim in anthropics/anthropic-sdk-python#1194 (2026): 4,096 for
#: Opus 4.6, Opus 4.5 and Haiku 4.5; 1,024 for Sonnet 4.6, Sonnet 4.5, Opus 4.1,
#: Opus 4, Sonnet 4 and Sonnet 3.7; 2,048 for Haiku 3.5 and Haiku 3. Later
#: models are not in that quote and secondary sources disagree (Opus 4.7: 2,048
#: on dev.to/creeta, 4,096 on clawdemy.org; docs.orq.ai lists 2,048 for Sonnet
#: 4.6), so they fall through to their family prefix or the default; the table
#: is a constructor argument for a test that needs another figure.
ANTHROPIC_MIN_CACHEABLE: tuple[tuple[str, int], ...] = (
    ("claude-opus-4-6", 4096),
    ("claude-opus-4-5", 4096),
    ("claude-haiku-4-5", 4096),
    ("claude-3-5-haiku", 2048),
    ("claude-3-haiku", 2048),
    ("claude-sonnet-4", 1024),
    ("claude-opus-4", 1024),
    ("claude-3-7-sonnet", 1024),
    ("claude-3-5-sonnet", 1024),
    ("claude-3-opus", 1024),
)
ANTHROPIC_DEFAULT_MIN_CACHEABLE = 1024
ANTHROPIC_MAX_BREAKPOINTS = 4
ANTHROPIC_LOOKBACK_BLOCKS = 20
ANTHROPIC_TTL_S = {"5m": 300.0, "1h": 3600.0}

OPENAI_MIN_CACHED = 1024
OPENAI_INCREMENT = 128
OPENAI_RETENTION_S = {"in_memory": 300.0, "24h": 86400.0}

_ANTHROPIC_ERROR_BY_STATUS = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
    504: "timeout_error", 529: "overloaded_error",
}
_VOCABULARY = (
    "amber", "basalt", "cedar", "delta", "ember", "fjord", "granite", "harbor", "island", "juniper",
    "kestrel", "lagoon", "meadow", "nebula", "orchid", "prairie", "quartz", "river", "summit", "tundra",
    "umber", "valley", "willow", "xenon", "yarrow", "zephyr", "beacon", "canyon", "dune", "estuary",
    "forest", "glacier",
)


# ---------------------------------------------------------------------------
# clock, tokens, digests
# ---------------------------------------------------------------------------


class ManualClock:
    """A clock tests move by hand, so a TTL can expire without waiting for it."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def count_tokens(text: str) -> int:
    """The simulator's token count: whitespace-separated words (see the module docstring)."""
    return len(text.split())


def _json_words(value: Any) -> int:
    return count_tokens(json.dumps(value, sort_keys=True, ensure_ascii=False))


def _digest(*parts: Any) -> str:
    return hashlib.blake2b(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS), digest_size=16).hexdigest()


class SimError(Exception):
    """A request the real API would refuse; rendered in the API's own error shape."""

    def __init__(self, status: int, message: str, error_type: str | None = None, param: str | None = None,
                 headers: Mapping[str, str] | None = None, delay_s: float = 0.0) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.param = param
        self.headers = dict(headers or {})
        """Extra response headers (an injected fault's `retry-after`)."""
        self.delay_s = delay_s
        """Seconds to wait before answering (an injected fault's latency: slow, then failing)."""


class SimulatedConnectionDrop(Exception):
    """Raised inside a streaming response to make the server drop the connection (`Fault.drop_connection`)."""


@dataclass(slots=True)
class _Entry:
    """One cached prefix: how long it lives after each use, and until when."""

    ttl_s: float
    expires_at: float

    def live(self, now: float) -> bool:
        return now < self.expires_at


# ---------------------------------------------------------------------------
# Anthropic: the prompt as blocks, breakpoints, the cache plan
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PromptBlock:
    """One block of an Anthropic prompt, in cache order (tools -> system -> messages)."""

    path: str
    """Where the block is in the body, e.g. "tools.2", "system.0", "messages.3.content.1"."""
    digest: str
    """Digest of the whole prefix ending with this block (chained)."""
    tokens: int
    end: int
    """Tokens from the start of the prompt through this block."""
    ttl: str | None
    """"5m" or "1h" when a breakpoint ends here, else None."""


def anthropic_min_cacheable(model: str, table: Sequence[tuple[str, int]] = ANTHROPIC_MIN_CACHEABLE) -> int:
    for prefix, minimum in table:
        if model.startswith(prefix):
            return minimum
    return ANTHROPIC_DEFAULT_MIN_CACHEABLE


def _breakpoint_ttl(value: Any, path: str) -> str:
    """The TTL of a well-formed `cache_control`; a 400 for anything else, as the API answers."""
    if not isinstance(value, Mapping):
        raise SimError(400, f"{path}: Input should be a valid dictionary")
    if value.get("type") != "ephemeral":
        raise SimError(400, f"{path}.type: Input should be 'ephemeral'")
    extra = sorted(set(value) - {"type", "ttl"})
    if extra:
        raise SimError(400, f"{path}.{extra[0]}: Extra inputs are not permitted")
    ttl = value.get("ttl", "5m")
    if ttl not in ANTHROPIC_TTL_S:
        raise SimError(400, f"{path}.ttl: Input should be '5m' or '1h'")
    return str(ttl)


def _block_tokens(block: Mapping[str, Any]) -> int:
    if block.get("type") == "text":
        return count_tokens(str(block.get("text") or ""))
    return _json_words({k: v for k, v in block.items() if k != "cache_control"})


def _block_ttl(block: Mapping[str, Any], path: str) -> str | None:
    """The breakpoint on a content block, including one inside a tool_result (it ends the same block)."""
    ttl = None
    if "cache_control" in block and block["cache_control"] is not None:
        ttl = _breakpoint_ttl(block["cache_control"], f"{path}.cache_control")
        if block.get("type") in ("thinking", "redacted_thinking"):
            raise SimError(400, f"{path}.cache_control: cache_control cannot be set on thinking blocks")
        if block.get("type") == "text" and not str(block.get("text") or "").strip():
            raise SimError(400, f"{path}.cache_control: cache_control cannot be set for empty text blocks")
    inner = block.get("content") if block.get("type") == "tool_result" else None
    for index, part in enumerate(inner if isinstance(inner, list) else []):
        if isinstance(part, Mapping) and part.get("cache_control") is not None:
            inner_ttl = _breakpoint_ttl(part["cache_control"], f"{path}.content.{index}.cache_control")
            ttl = ttl or inner_ttl
    return ttl


def _as_blocks(content: Any) -> list[Mapping[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return [b if isinstance(b, Mapping) else {"type": "text", "text": str(b)} for b in content]
    raise SimError(400, "content: Input should be a valid string or list")


def anthropic_blocks(body: Mapping[str, Any], partition: str) -> list[PromptBlock]:
    """The prompt of a Messages body as chained blocks with their breakpoints; 400 on bad cache_control."""
    raw: list[tuple[str, tuple[Any, ...], int, str | None]] = []  # path, hashed identity, tokens, ttl
    for index, tool in enumerate(body.get("tools") or []):
        if not isinstance(tool, Mapping):
            raise SimError(400, f"tools.{index}: Input should be a valid dictionary")
        ttl = None
        if tool.get("cache_control") is not None:
            ttl = _breakpoint_ttl(tool["cache_control"], f"tools.{index}.cache_control")
        clean = {k: v for k, v in tool.items() if k != "cache_control"}
        raw.append((f"tools.{index}", ("tool", clean), _json_words(clean), ttl))
    system = body.get("system")
    if system:
        for index, block in enumerate(_as_blocks(system)):
            path = f"system.{index}"
            clean = {k: v for k, v in block.items() if k != "cache_control"}
            raw.append((path, ("system", clean), _block_tokens(block), _block_ttl(block, path)))
    # A change of tool_choice or of the thinking settings invalidates the cached
    # messages but not tools or system (docs: "What invalidates the cache").
    header: tuple[Any, ...] | None = ("messages", body.get("tool_choice"), body.get("thinking"))
    for m_index, message in enumerate(body.get("messages") or []):
        role = message.get("role")
        for b_index, block in enumerate(_as_blocks(message.get("content"))):
            path = f"messages.{m_index}.content.{b_index}"
            identity = (header, m_index, role, _strip_cache_control(block))
            header = None  # hashed once, into the first message block; the chain carries it on
            raw.append((path, identity, _block_tokens(block), _block_ttl(block, path)))
    automatic = body.get("cache_control")
    if automatic is not None:
        ttl = _breakpoint_ttl(automatic, "cache_control")
        last = _last_cacheable(body, raw)
        if last is not None and raw[last][3] is None:
            path, identity, tokens, _ = raw[last]
            raw[last] = (path, identity, tokens, ttl)
    breakpoints = [r for r in raw if r[3] is not None]
    if len(breakpoints) > ANTHROPIC_MAX_BREAKPOINTS:
        raise SimError(400, f"A maximum of {ANTHROPIC_MAX_BREAKPOINTS} blocks with cache_control may be provided. "
                            f"Found {len(breakpoints)}.")
    seen_5m = False
    for path, _, _, ttl in breakpoints:
        if ttl == "1h" and seen_5m:
            raise SimError(400, f"{path}.cache_control.ttl: a ttl='1h' cache_control block must not come after "
                                "a ttl='5m' cache_control block")
        seen_5m = seen_5m or ttl == "5m"
    blocks: list[PromptBlock] = []
    digest = _digest("anthropic-sim/v1", partition, body.get("model"))
    end = 0
    for path, identity, tokens, ttl in raw:
        digest = _digest(digest, identity)
        end += tokens
        blocks.append(PromptBlock(path=path, digest=digest, tokens=tokens, end=end, ttl=ttl))
    return blocks


def _strip_cache_control(block: Mapping[str, Any]) -> dict[str, Any]:
    clean = {k: v for k, v in block.items() if k != "cache_control"}
    if clean.get("type") == "tool_result" and isinstance(clean.get("content"), list):
        clean["content"] = [
            {k: v for k, v in part.items() if k != "cache_control"} if isinstance(part, Mapping) else part
            for part in clean["content"]
        ]
    return clean


def _last_cacheable(body: Mapping[str, Any], raw: list[tuple[str, tuple[Any, ...], int, str | None]]) -> int | None:
    """Index of the last block automatic caching may mark (not thinking, not empty text)."""
    for index in range(len(raw) - 1, -1, -1):
        path = raw[index][0]
        block = _lookup_path(body, path)
        if block.get("type") in ("thinking", "redacted_thinking"):
            continue
        if block.get("type") == "text" and not str(block.get("text") or "").strip():
            continue
        return index
    return None


def _lookup_path(body: Mapping[str, Any], path: str) -> Mapping[str, Any]:
    parts = path.split(".")
    if parts[0] == "tools":
        return body["tools"][int(parts[1])]  # type: ignore[no-any-return]
    if parts[0] == "system":
        return _as_blocks(body["system"])[int(parts[1])]
    return _as_blocks(body["messages"][int(parts[1])]["content"])[int(parts[3])]


@dataclass(frozen=True, slots=True)
class AnthropicCachePlan:
    """What one request reads and writes, decided when it arrives."""

    read_block: int | None
    """Index of the block whose prefix was read from the cache, or None."""
    read_tokens: int
    write_blocks: tuple[int, ...]
    """Breakpoints long enough to be cached (written, or refreshed if present)."""
    write_5m_tokens: int
    write_1h_tokens: int
    input_tokens: int
    """Tokens neither read nor written: those after the last cached position."""


def plan_anthropic(blocks: Sequence[PromptBlock], entries: Mapping[str, _Entry], now: float, min_tokens: int,
                   lookback: int = ANTHROPIC_LOOKBACK_BLOCKS) -> AnthropicCachePlan:
    """Pure: the longest cached prefix reachable from any breakpoint, and what the breakpoints write.

    Invariant: read + written (5m + 1h) + input = total prompt tokens.
    """
    breakpoints = [i for i, block in enumerate(blocks) if block.ttl is not None]
    read_block: int | None = None
    for bp in breakpoints:
        for position in range(bp, max(-1, bp - lookback), -1):
            entry = entries.get(blocks[position].digest)
            if entry is not None and entry.live(now):
                if read_block is None or position > read_block:
                    read_block = position
                break
    read_tokens = blocks[read_block].end if read_block is not None else 0
    cacheable = tuple(bp for bp in breakpoints if blocks[bp].end >= min_tokens)
    written = {"5m": 0, "1h": 0}
    position_end = read_tokens
    for bp in cacheable:
        if blocks[bp].end <= position_end:
            continue
        ttl = blocks[bp].ttl
        assert ttl is not None
        written[ttl] += blocks[bp].end - position_end
        position_end = blocks[bp].end
    total = blocks[-1].end if blocks else 0
    return AnthropicCachePlan(
        read_block=read_block, read_tokens=read_tokens, write_blocks=cacheable,
        write_5m_tokens=written["5m"], write_1h_tokens=written["1h"], input_tokens=total - position_end,
    )


# ---------------------------------------------------------------------------
# OpenAI: the prompt as tokens, prefixes at 1024 + 128k
# ---------------------------------------------------------------------------


def openai_tokens(body: Mapping[str, Any]) -> list[str]:
    """The prompt as the simulator's tokens: tools, then per message a role token and its words."""
    tokens: list[str] = []
    if body.get("tools"):
        tokens += json.dumps(body["tools"], sort_keys=True, ensure_ascii=False).split()
    for message in body.get("messages") or []:
        tokens.append(f"<|{message.get('role')}|>")
        content = message.get("content")
        if isinstance(content, str):
            tokens += content.split()
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, Mapping) and part.get("type") == "text":
                    tokens += str(part.get("text") or "").split()
                else:
                    tokens += json.dumps(part, sort_keys=True, ensure_ascii=False).split()
        if message.get("tool_calls"):
            tokens += json.dumps(message["tool_calls"], sort_keys=True, ensure_ascii=False).split()
    return tokens


def openai_prefix_digests(tokens: Sequence[str], root: str) -> list[tuple[int, str]]:
    """(length, digest) of every cacheable prefix: 1024, 1152, 1280... tokens, chained chunk by chunk."""
    out: list[tuple[int, str]] = []
    if len(tokens) < OPENAI_MIN_CACHED:
        return out
    digest = _digest(root, list(tokens[:OPENAI_MIN_CACHED]))
    out.append((OPENAI_MIN_CACHED, digest))
    length = OPENAI_MIN_CACHED
    while length + OPENAI_INCREMENT <= len(tokens):
        digest = _digest(digest, list(tokens[length:length + OPENAI_INCREMENT]))
        length += OPENAI_INCREMENT
        out.append((length, digest))
    return out


# ---------------------------------------------------------------------------
# answers
# ---------------------------------------------------------------------------


def answer_text(seed: str) -> str:
    """A deterministic sentence for a question: equal questions, equal answers."""
    raw = hashlib.blake2b(seed.encode(), digest_size=12).digest()
    return "Answer: " + " ".join(_VOCABULARY[b % len(_VOCABULARY)] for b in raw[:10]) + "."


def _truncate(text: str, limit: int | None) -> tuple[str, bool]:
    words = text.split(" ")
    if limit is None or len(words) <= limit:
        return text, False
    return " ".join(words[:limit]), True


def _last_user_text(messages: Sequence[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                texts = []
                for part in content:
                    if isinstance(part, Mapping):
                        texts.append(str(part.get("text") or part.get("content") or ""))
                return " ".join(texts)
    return ""


def _forced_tool(body: Mapping[str, Any]) -> str | None:
    """The tool a request forces the model to call ({"type": "tool"} / {"type": "any"}, Anthropic or OpenAI)."""
    tools = body.get("tools") or []
    choice = body.get("tool_choice")
    if not tools or not isinstance(tools[0], Mapping):
        return None
    first = tools[0].get("name") or (tools[0].get("function") or {}).get("name")
    if choice == "required":  # OpenAI: some tool must be called
        return str(first)
    if not isinstance(choice, Mapping):
        return None
    if choice.get("type") == "tool":
        return str(choice.get("name"))
    if choice.get("type") == "function":
        return str((choice.get("function") or {}).get("name"))
    if choice.get("type") == "any":
        return str(first)
    return None


# ---------------------------------------------------------------------------
# the simulator
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected failure, consumed by the next request it applies to."""

    status: int | None = None
    """Answer with this HTTP error instead of a completion."""
    error_type: str | None = None
    """The provider's error type; by default the one its docs give for `status`."""
    message: str = "simulated failure"
    latency_s: float = 0.0
    """Extra seconds before the first byte (on top of `ProviderSim.latency_s`), error answers included."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Extra headers on the `status` error answer, e.g. {"retry-after": "7"} on a 429."""
    cut_stream_after: int | None = None
    """Streams only: close the connection after this many events, without the proper end."""
    stream_error_type: str | None = None
    """Streams only: with `cut_stream_after`, send an in-stream `error` event of this type before closing."""
    drop_connection: bool = False
    """Streams only: with `cut_stream_after`, drop the connection mid-body (the reader sees an incomplete
    chunked read, as when a provider's server dies) instead of ending the body early but well-formed."""
    stall_stream_after: int | None = None
    """Streams only: after this many events, send nothing for `stall_s` seconds (a hung upstream), then go on."""
    stall_s: float = 0.0
    api: Api | None = None
    """Which endpoint the fault waits for; None: the next request of either."""


@dataclass(slots=True)
class SimRecord:
    """What the simulator did with one request: the inspectable log."""

    seq: int
    at: float
    api: Api
    model: str | None
    stream: bool
    status: int
    body: Any
    usage: dict[str, Any] | None = None
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    read_from: str | None = None
    """Anthropic: path of the block whose prefix was read; OpenAI: the cached length."""
    breakpoints: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    """Anthropic: paths of the breakpoints written or refreshed; OpenAI: the prefix lengths."""
    error: str | None = None

    @property
    def served_from_cache(self) -> bool:
        return self.cache_read_tokens > 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "served_from_cache": self.served_from_cache}


@dataclass(slots=True)
class _Served:
    """A request accepted for answering: its usage is fixed, its cache write waits for the first byte."""

    record: SimRecord
    commit: Callable[[], None]
    payload: dict[str, Any]
    fault: Fault | None


class ProviderSim:
    """The simulated provider: an ASGI app (`.app`) plus its caches, log and failure knobs.

    `clock` decides TTLs (inject a `ManualClock` to expire entries without
    waiting); `latency_s` is real time before each response's first byte, which
    is also when its cache writes become visible.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        *,
        latency_s: float = 0.0,
        stream_delay_s: float = 0.0,
        anthropic_min_cacheable: Sequence[tuple[str, int]] = ANTHROPIC_MIN_CACHEABLE,
        lookback_blocks: int = ANTHROPIC_LOOKBACK_BLOCKS,
        openai_ttl_s: float = OPENAI_RETENTION_S["in_memory"],
        require_auth: bool = True,
        require_anthropic_version: bool = True,
    ) -> None:
        self.clock = clock
        self.latency_s = latency_s
        self.stream_delay_s = stream_delay_s
        self.anthropic_min_cacheable = tuple(anthropic_min_cacheable)
        self.lookback_blocks = lookback_blocks
        self.openai_ttl_s = openai_ttl_s
        self.require_auth = require_auth
        self.require_anthropic_version = require_anthropic_version
        self._lock = threading.Lock()
        self._anthropic_cache: dict[str, _Entry] = {}
        self._openai_cache: dict[str, _Entry] = {}
        self._faults: list[Fault] = []
        self._log: list[SimRecord] = []
        self.app = Starlette(routes=[
            Route("/v1/messages", self._anthropic_route, methods=["POST"]),
            Route("/v1/chat/completions", self._openai_route, methods=["POST"]),
            Route("/_sim/log", self._log_route, methods=["GET"]),
            Route("/_sim/reset", self._reset_route, methods=["POST"]),
            Route("/_sim/advance", self._advance_route, methods=["POST"]),
        ])

    # -- knobs and inspection ------------------------------------------------

    @property
    def log(self) -> list[SimRecord]:
        with self._lock:
            return list(self._log)

    def inject(self, fault: Fault, times: int = 1) -> None:
        """Queue `fault` for the next `times` requests it applies to."""
        with self._lock:
            self._faults.extend([fault] * times)

    def fail_next(self, status: int, times: int = 1, api: Api | None = None, message: str = "simulated failure") -> None:
        self.inject(Fault(status=status, api=api, message=message), times)

    def reset(self) -> None:
        """Forget caches, log and pending faults."""
        with self._lock:
            self._anthropic_cache.clear()
            self._openai_cache.clear()
            self._faults.clear()
            self._log.clear()

    def _take_fault(self, api: Api) -> Fault | None:
        """The next fault queued for `api`. One with a status is raised at once, as that error
        (answered after its latency); the others shape the answer being served."""
        with self._lock:
            index = next((i for i, queued in enumerate(self._faults) if queued.api in (None, api)), None)
            fault = None if index is None else self._faults.pop(index)
        if fault is not None and fault.status is not None:
            raise SimError(fault.status, fault.message, fault.error_type, headers=fault.headers,
                           delay_s=self.latency_s + fault.latency_s)
        return fault

    def _record(self, record: SimRecord) -> SimRecord:
        with self._lock:
            record.seq = len(self._log) + 1
            self._log.append(record)
        return record

    # -- Anthropic -----------------------------------------------------------

    async def _anthropic_route(self, request: Request) -> Response:
        body: Any = None
        try:
            body = await _json_body(request)
            self._check_anthropic_headers(request)
            fault = self._take_fault("anthropic")
            served = self._serve_anthropic(body, _partition(request), fault)
        except SimError as exc:
            await asyncio.sleep(exc.delay_s)
            return self._anthropic_error(exc, body)
        await asyncio.sleep(self.latency_s + (served.fault.latency_s if served.fault else 0.0))
        served.commit()  # the response starts now: from here on its prefix is readable
        headers = {"request-id": f"req_sim{served.record.seq:06d}"}
        if not served.record.stream:
            return Response(orjson.dumps(served.payload), media_type="application/json", headers=headers)
        return StreamingResponse(self._paced(anthropic_events(served.payload), served.fault, "anthropic"),
                                 media_type="text/event-stream", headers=headers)

    def _check_anthropic_headers(self, request: Request) -> None:
        if self.require_auth and not (request.headers.get("x-api-key") or request.headers.get("authorization")):
            raise SimError(401, "x-api-key header is required")
        if self.require_anthropic_version and not request.headers.get("anthropic-version"):
            raise SimError(400, "anthropic-version: header is required")

    def _serve_anthropic(self, body: Any, partition: str, fault: Fault | None) -> _Served:
        _validate_anthropic(body)
        model = str(body["model"])
        blocks = anthropic_blocks(body, partition)
        now = self.clock()
        with self._lock:
            plan = plan_anthropic(blocks, self._anthropic_cache, now,
                                  anthropic_min_cacheable(model, self.anthropic_min_cacheable), self.lookback_blocks)
        content, stop_reason, output_tokens = _anthropic_content(body)
        usage = {
            "input_tokens": plan.input_tokens,
            "cache_creation_input_tokens": plan.write_5m_tokens + plan.write_1h_tokens,
            "cache_read_input_tokens": plan.read_tokens,
            "cache_creation": {"ephemeral_5m_input_tokens": plan.write_5m_tokens,
                               "ephemeral_1h_input_tokens": plan.write_1h_tokens},
            "output_tokens": output_tokens,
            "service_tier": "standard",
        }
        record = self._record(SimRecord(
            seq=0, at=now, api="anthropic", model=model, stream=bool(body.get("stream")), status=200, body=body,
            usage=usage, cache_read_tokens=plan.read_tokens,
            cache_write_tokens=plan.write_5m_tokens + plan.write_1h_tokens,
            read_from=blocks[plan.read_block].path if plan.read_block is not None else None,
            breakpoints=[b.path for b in blocks if b.ttl is not None],
            written=[blocks[i].path for i in plan.write_blocks],
        ))
        payload = {
            "id": f"msg_sim{record.seq:020d}", "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop_reason, "stop_sequence": None, "usage": usage,
        }

        def commit() -> None:
            written_at = self.clock()
            with self._lock:
                hit = self._anthropic_cache.get(blocks[plan.read_block].digest) if plan.read_block is not None \
                    else None
                if hit is not None:
                    hit.expires_at = max(hit.expires_at, written_at + hit.ttl_s)  # a read refreshes for free
                for index in plan.write_blocks:
                    ttl_s = ANTHROPIC_TTL_S[str(blocks[index].ttl)]
                    entry = self._anthropic_cache.get(blocks[index].digest)
                    if entry is not None and entry.live(written_at):
                        entry.ttl_s = max(entry.ttl_s, ttl_s)
                        entry.expires_at = max(entry.expires_at, written_at + entry.ttl_s)
                    else:
                        self._anthropic_cache[blocks[index].digest] = _Entry(ttl_s, written_at + ttl_s)

        return _Served(record=record, commit=commit, payload=payload, fault=fault)

    def _anthropic_error(self, exc: SimError, body: Any) -> Response:
        error_type = exc.error_type or _ANTHROPIC_ERROR_BY_STATUS.get(
            exc.status, "invalid_request_error" if exc.status < 500 else "api_error")
        record = self._record(SimRecord(seq=0, at=self.clock(), api="anthropic", model=_model_of(body),
                                        stream=_stream_of(body), status=exc.status, body=body, error=exc.message))
        return JSONResponse({"type": "error", "error": {"type": error_type, "message": exc.message},
                             "request_id": f"req_sim{record.seq:06d}"}, status_code=exc.status, headers=exc.headers)

    # -- OpenAI --------------------------------------------------------------

    async def _openai_route(self, request: Request) -> Response:
        body: Any = None
        try:
            body = await _json_body(request)
            if self.require_auth and not request.headers.get("authorization", "").lower().startswith("bearer "):
                raise SimError(401, "You didn't provide an API key. You need to provide your API key in an "
                                    "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
            fault = self._take_fault("openai")
            served = self._serve_openai(body, _partition(request), fault)
        except SimError as exc:
            await asyncio.sleep(exc.delay_s)
            return self._openai_error(exc, body)
        await asyncio.sleep(self.latency_s + (served.fault.latency_s if served.fault else 0.0))
        served.commit()
        headers = {"x-request-id": f"req_sim{served.record.seq:06d}"}
        if not served.record.stream:
            return Response(orjson.dumps(served.payload), media_type="application/json", headers=headers)
        options = body.get("stream_options") or {}
        events = openai_events(served.payload, include_usage=bool(options.get("include_usage")))
        return StreamingResponse(self._paced(events, served.fault, "openai"), media_type="text/event-stream",
                                 headers=headers)

    def _serve_openai(self, body: Any, partition: str, fault: Fault | None) -> _Served:
        _validate_openai(body)
        model = str(body["model"])
        retention = body.get("prompt_cache_retention") or "in_memory"
        if retention not in OPENAI_RETENTION_S:
            raise SimError(400, "Invalid value for 'prompt_cache_retention': expected 'in_memory' or '24h'.",
                           param="prompt_cache_retention")
        ttl_s = self.openai_ttl_s if retention == "in_memory" else OPENAI_RETENTION_S[retention]
        tokens = openai_tokens(body)
        prefixes = openai_prefix_digests(tokens, _digest("openai-sim/v1", partition, model, body.get("prompt_cache_key")))
        now = self.clock()
        with self._lock:
            cached = max((length for length, d in prefixes
                          if d in self._openai_cache and self._openai_cache[d].live(now)), default=0)
        text, finish, completion_tokens, tool_calls = _openai_answer(body)
        usage = {
            "prompt_tokens": len(tokens), "completion_tokens": completion_tokens,
            "total_tokens": len(tokens) + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
        }
        record = self._record(SimRecord(
            seq=0, at=now, api="openai", model=model, stream=bool(body.get("stream")), status=200, body=body,
            usage=usage, cache_read_tokens=cached, cache_write_tokens=0,
            read_from=str(cached) if cached else None, written=[str(length) for length, _ in prefixes],
        ))
        n = body.get("n") or 1
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None, "annotations": []}
        if tool_calls:
            message["tool_calls"] = tool_calls
        payload = {
            "id": f"chatcmpl-sim{record.seq:020d}", "object": "chat.completion", "created": int(now), "model": model,
            "choices": [{"index": i, "message": message, "logprobs": None, "finish_reason": finish}
                        for i in range(int(n))],
            "usage": usage, "service_tier": "default", "system_fingerprint": "fp_sim",
        }

        def commit() -> None:
            written_at = self.clock()
            with self._lock:
                for _, digest in prefixes:
                    entry = self._openai_cache.get(digest)
                    keep = max(entry.ttl_s, ttl_s) if entry is not None and entry.live(written_at) else ttl_s
                    self._openai_cache[digest] = _Entry(keep, written_at + keep)

        return _Served(record=record, commit=commit, payload=payload, fault=fault)

    def _openai_error(self, exc: SimError, body: Any) -> Response:
        error_type = exc.error_type or ("invalid_request_error" if exc.status < 500 else "server_error")
        self._record(SimRecord(seq=0, at=self.clock(), api="openai", model=_model_of(body), stream=_stream_of(body),
                               status=exc.status, body=body, error=exc.message))
        return JSONResponse({"error": {"message": exc.message, "type": error_type, "param": exc.param, "code": None}},
                            status_code=exc.status, headers=exc.headers)

    # -- streaming and admin -------------------------------------------------

    async def _paced(self, events: Iterator[bytes], fault: Fault | None, api: Api) -> AsyncIterator[bytes]:
        """Send events with the configured pacing; a fault may stall the stream, cut it or end it with an error."""
        for count, event in enumerate(events):
            if fault is not None and fault.cut_stream_after is not None and count >= fault.cut_stream_after:
                if fault.stream_error_type is not None:
                    yield _stream_error(api, fault.stream_error_type, fault.message)
                if fault.drop_connection:
                    # An ASGI app cannot reset its connection; raising after the response
                    # started makes the server close it without the chunked terminator.
                    raise SimulatedConnectionDrop("the provider simulator dropped the connection mid-stream")
                return
            if fault is not None and fault.stall_stream_after == count:
                await asyncio.sleep(fault.stall_s)
            if self.stream_delay_s:
                await asyncio.sleep(self.stream_delay_s)
            yield event

    async def _log_route(self, request: Request) -> Response:
        return Response(orjson.dumps({"records": [r.to_dict() for r in self.log]}), media_type="application/json")

    async def _reset_route(self, request: Request) -> Response:
        self.reset()
        return JSONResponse({"ok": True})

    async def _advance_route(self, request: Request) -> Response:
        if not isinstance(self.clock, ManualClock):
            return JSONResponse({"error": "the simulator runs on a real clock"}, status_code=409)
        body = await _json_body(request)
        self.clock.advance(float(body.get("seconds", 0)))
        return JSONResponse({"now": self.clock()})


# ---------------------------------------------------------------------------
# request validation and answers (the parts of the real APIs' checks tests rely on)
# ---------------------------------------------------------------------------


async def _json_body(request: Request) -> Any:
    try:
        return orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise SimError(400, f"There was an error parsing the body: {exc}") from exc


def _partition(request: Request) -> str:
    """The organisation a request bills to: caches are never shared across API keys."""
    key = request.headers.get("x-api-key") or request.headers.get("authorization") or ""
    return hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


def _model_of(body: Any) -> str | None:
    return body.get("model") if isinstance(body, Mapping) and isinstance(body.get("model"), str) else None


def _stream_of(body: Any) -> bool:
    return bool(body.get("stream")) if isinstance(body, Mapping) else False


def _validate_anthropic(body: Any) -> None:
    if not isinstance(body, Mapping):
        raise SimError(400, "body: Input should be a valid dictionary")
    if not isinstance(body.get("model"), str):
        raise SimError(400, "model: Field required")
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise SimError(400, "max_tokens: Field required")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise SimError(400, "messages: at least one message is required")
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or message.get("role") not in ("user", "assistant"):
            raise SimError(400, f"messages.{index}.role: Input should be 'user' or 'assistant'")
        if not isinstance(message.get("content"), str | list):
            raise SimError(400, f"messages.{index}.content: Field required")
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        raise SimError(400, "system: Input should be a valid string or list")


def _validate_openai(body: Any) -> None:
    if not isinstance(body, Mapping):
        raise SimError(400, "The request body must be a JSON object.")
    if not isinstance(body.get("model"), str):
        raise SimError(400, "you must provide a model parameter", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise SimError(400, "Invalid 'messages': empty array.", param="messages")
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise SimError(400, f"Invalid 'messages[{index}]'.", param=f"messages.[{index}]")


def _anthropic_content(body: Mapping[str, Any]) -> tuple[list[dict[str, Any]], str, int]:
    """The answer's content blocks, stop_reason and output tokens."""
    question = _last_user_text(body["messages"])
    tool = _forced_tool(body)
    if tool is not None:
        tool_input = {"query": " ".join(question.split()[:10])}
        block = {"type": "tool_use", "id": "toolu_sim" + hashlib.blake2b(question.encode(), digest_size=8).hexdigest(),
                 "name": tool, "input": tool_input}
        return [block], "tool_use", _json_words(tool_input)
    text, truncated = _truncate(answer_text(question), int(body["max_tokens"]))
    return [{"type": "text", "text": text}], "max_tokens" if truncated else "end_turn", count_tokens(text)


def _openai_answer(body: Mapping[str, Any]) -> tuple[str | None, str, int, list[dict[str, Any]] | None]:
    """The answer's content, finish_reason, completion tokens and tool calls."""
    question = _last_user_text(body["messages"])
    tool = _forced_tool(body)
    if tool is not None:
        arguments = json.dumps({"query": " ".join(question.split()[:10])})
        call = {"id": "call_sim" + hashlib.blake2b(question.encode(), digest_size=8).hexdigest(), "type": "function",
                "function": {"name": tool, "arguments": arguments}}
        return None, "tool_calls", count_tokens(arguments), [call]
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    text, truncated = _truncate(answer_text(question), int(limit) if isinstance(limit, int) else None)
    return text, "length" if truncated else "stop", count_tokens(text), None


# ---------------------------------------------------------------------------
# SSE, written independently of cascache's own replay code so each checks the other
# ---------------------------------------------------------------------------


def _sse(event: str | None, data: Any) -> bytes:
    line = b"data: " + (data.encode() if isinstance(data, str) else orjson.dumps(data)) + b"\n\n"
    return (b"event: " + event.encode() + b"\n" + line) if event else line


def _words(text: str, per_chunk: int = 3) -> Iterator[str]:
    words = text.split(" ")
    for start in range(0, len(words), per_chunk):
        chunk = " ".join(words[start:start + per_chunk])
        yield chunk if start == 0 else " " + chunk


def anthropic_events(message: Mapping[str, Any]) -> Iterator[bytes]:
    """The Messages SSE sequence for a finished message, as the API sends it."""
    usage = dict(message["usage"])
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": {**usage, "output_tokens": 1}}
    yield _sse("message_start", {"type": "message_start", "message": start})
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            yield _sse("content_block_start", {"type": "content_block_start", "index": index,
                                               "content_block": {"type": "text", "text": ""}})
            if index == 0:
                yield _sse("ping", {"type": "ping"})
            for piece in _words(block["text"]):
                yield _sse("content_block_delta", {"type": "content_block_delta", "index": index,
                                                   "delta": {"type": "text_delta", "text": piece}})
        else:
            yield _sse("content_block_start", {"type": "content_block_start", "index": index,
                                               "content_block": {**block, "input": {}}})
            if index == 0:
                yield _sse("ping", {"type": "ping"})
            arguments = json.dumps(block["input"])
            yield _sse("content_block_delta", {"type": "content_block_delta", "index": index,
                                               "delta": {"type": "input_json_delta", "partial_json": ""}})
            for cut in range(0, len(arguments), 16):
                yield _sse("content_block_delta", {"type": "content_block_delta", "index": index,
                                                   "delta": {"type": "input_json_delta",
                                                             "partial_json": arguments[cut:cut + 16]}})
        yield _sse("content_block_stop", {"type": "content_block_stop", "index": index})
    final_usage = {k: usage[k] for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens",
                                         "output_tokens")}
    yield _sse("message_delta", {"type": "message_delta",
                                 "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                                 "usage": final_usage})
    yield _sse("message_stop", {"type": "message_stop"})


def openai_events(completion: Mapping[str, Any], include_usage: bool) -> Iterator[bytes]:
    """The Chat Completions SSE sequence for a finished completion, with the usage chunk when asked."""
    base: dict[str, Any] = {"id": completion["id"], "object": "chat.completion.chunk", "created": completion["created"],
                            "model": completion["model"], "service_tier": "default", "system_fingerprint": "fp_sim"}
    if include_usage:
        base["usage"] = None
    for choice in completion["choices"]:
        index, message = choice["index"], choice["message"]
        yield _sse(None, {**base, "choices": [{"index": index, "delta": {"role": "assistant", "content": "",
                                                                          "refusal": None},
                                              "logprobs": None, "finish_reason": None}]})
        for piece in _words(message["content"] or ""):
            if piece:
                yield _sse(None, {**base, "choices": [{"index": index, "delta": {"content": piece},
                                                      "logprobs": None, "finish_reason": None}]})
        for position, call in enumerate(message.get("tool_calls") or []):
            yield _sse(None, {**base, "choices": [{"index": index, "delta": {"tool_calls": [{"index": position,
                                                                                             **call}]},
                                                  "logprobs": None, "finish_reason": None}]})
        yield _sse(None, {**base, "choices": [{"index": index, "delta": {}, "logprobs": None,
                                              "finish_reason": choice["finish_reason"]}]})
    if include_usage:
        yield _sse(None, {**base, "choices": [], "usage": completion["usage"]})
    yield _sse(None, "[DONE]")


def _stream_error(api: Api, error_type: str, message: str) -> bytes:
    if api == "anthropic":
        return _sse("error", {"type": "error", "error": {"type": error_type, "message": message}})
    return _sse(None, {"error": {"message": message, "type": error_type, "param": None, "code": None}})


# ---------------------------------------------------------------------------
# running on a loopback port
# ---------------------------------------------------------------------------


class SimServer:
    """Runs a `ProviderSim` with uvicorn on a loopback port in a background thread.

        with SimServer(ProviderSim()) as server:
            client = anthropic.Anthropic(base_url=server.base_url, api_key="k")

    For clients that cannot be given an ASGI transport (other processes, the
    gateway's own upstream client, benchmarks). Port 0 picks a free port.
    """

    def __init__(self, sim: ProviderSim, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sim = sim
        self.host = host
        self.port = port
        self._server = uvicorn.Server(uvicorn.Config(sim.app, host=host, port=port, log_level="warning",
                                                     lifespan="off", access_log=False))
        self._thread = threading.Thread(target=self._server.run, name="provider-sim", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> SimServer:
        self._thread.start()
        deadline = time.monotonic() + 10.0
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the provider simulator did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10.0)
