"""Every provider's usage report, read into one `Usage` record. Pure: no IO.

The record's conventions (`cascache._types.Usage`):
- `input_tokens` is the *whole* prompt, cached tokens included;
- a cache field the provider did not report is None ("unknown"), never 0: a
  vLLM server started without `--enable-prompt-tokens-details` says nothing
  about its prefix cache, and that is not the same as "nothing was cached";
- malformed counts (negative, boolean, non-integer) are treated as not reported.

Where each provider puts its counts (in the response's `usage` unless stated):
- Anthropic Messages: prompt = `input_tokens` + `cache_read_input_tokens` +
  `cache_creation_input_tokens` (`input_tokens` excludes both); writes split in
  `cache_creation.ephemeral_5m_input_tokens` / `ephemeral_1h_input_tokens`.
- OpenAI Chat: `prompt_tokens`; reads `prompt_tokens_details.cached_tokens`;
  writes `prompt_tokens_details.cache_write_tokens` (GPT-5.6 and later).
- OpenAI Responses: `input_tokens`; `input_tokens_details.cached_tokens` and
  `.cache_write_tokens`.
- DeepSeek: `prompt_tokens` = `prompt_cache_hit_tokens` + `prompt_cache_miss_tokens`;
  no writes (misses are billed as input).
- vLLM: OpenAI's fields; `prompt_tokens_details` only when the server enables it.
- llama.cpp server: `prompt_tokens` = `timings.cache_n` + `timings.prompt_n`,
  reads = top-level `timings.cache_n`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from cascache._types import Usage

UsageParser = Callable[[Mapping[str, Any]], Usage]


def _count(value: Any) -> int | None:
    """A token count, or None when absent or malformed."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _usage_of(response: Mapping[str, Any]) -> Mapping[str, Any]:
    return _mapping(response.get("usage"))


def anthropic(response: Mapping[str, Any]) -> Usage:
    """A Messages response (or the `message` of a `message_start` event)."""
    raw = _usage_of(response)
    uncached = _count(raw.get("input_tokens")) or 0
    read = _count(raw.get("cache_read_input_tokens"))
    split = _mapping(raw.get("cache_creation"))
    write_5m = _count(split.get("ephemeral_5m_input_tokens"))
    write_1h = _count(split.get("ephemeral_1h_input_tokens"))
    written = _count(raw.get("cache_creation_input_tokens"))
    if written is None and (write_5m is not None or write_1h is not None):
        written = (write_5m or 0) + (write_1h or 0)
    return Usage(
        input_tokens=uncached + (read or 0) + (written or 0),
        output_tokens=_count(raw.get("output_tokens")) or 0,
        cache_read_tokens=read,
        cache_write_tokens=written,
        cache_write_5m_tokens=write_5m,
        cache_write_1h_tokens=write_1h,
    )


def openai_chat(response: Mapping[str, Any]) -> Usage:
    """OpenAI Chat Completions, and servers that copy its fields exactly (vLLM, SGLang)."""
    raw = _usage_of(response)
    details = _mapping(raw.get("prompt_tokens_details"))
    return Usage(
        input_tokens=_count(raw.get("prompt_tokens")) or 0,
        output_tokens=_count(raw.get("completion_tokens")) or 0,
        cache_read_tokens=_count(details.get("cached_tokens")),
        cache_write_tokens=_count(details.get("cache_write_tokens")),
    )


def openai_responses(response: Mapping[str, Any]) -> Usage:
    """OpenAI Responses API (`/v1/responses`)."""
    raw = _usage_of(response)
    details = _mapping(raw.get("input_tokens_details"))
    return Usage(
        input_tokens=_count(raw.get("input_tokens")) or 0,
        output_tokens=_count(raw.get("output_tokens")) or 0,
        cache_read_tokens=_count(details.get("cached_tokens")),
        cache_write_tokens=_count(details.get("cache_write_tokens")),
    )


def deepseek(response: Mapping[str, Any]) -> Usage:
    """DeepSeek: hits and misses are reported separately and add up to the prompt."""
    raw = _usage_of(response)
    hit = _count(raw.get("prompt_cache_hit_tokens"))
    miss = _count(raw.get("prompt_cache_miss_tokens"))
    prompt = _count(raw.get("prompt_tokens"))
    if prompt is None and (hit is not None or miss is not None):
        prompt = (hit or 0) + (miss or 0)
    if hit is None:  # an older server, or a DeepSeek-compatible one: fall back to the OpenAI field
        hit = _count(_mapping(raw.get("prompt_tokens_details")).get("cached_tokens"))
    return Usage(
        input_tokens=prompt or 0,
        output_tokens=_count(raw.get("completion_tokens")) or 0,
        cache_read_tokens=hit,
        cache_write_tokens=None,
    )


def llamacpp(response: Mapping[str, Any]) -> Usage:
    """llama.cpp server: `timings.cache_n` tokens came from the slot's KV cache,
    `timings.prompt_n` were evaluated. Newer servers also fill
    `prompt_tokens_details.cached_tokens`, used when `timings` is absent (a
    stream assembled without its final `timings`)."""
    raw = _usage_of(response)
    timings = _mapping(response.get("timings"))
    cached = _count(timings.get("cache_n"))
    evaluated = _count(timings.get("prompt_n"))
    if cached is None:
        cached = _count(_mapping(raw.get("prompt_tokens_details")).get("cached_tokens"))
    prompt = _count(raw.get("prompt_tokens"))
    if prompt is None and evaluated is not None:
        prompt = evaluated + (cached or 0)
    output = _count(raw.get("completion_tokens"))
    if output is None:
        output = _count(timings.get("predicted_n"))
    return Usage(
        input_tokens=prompt or 0,
        output_tokens=output or 0,
        cache_read_tokens=cached,
        cache_write_tokens=None,
    )


#: Usage parser per upstream kind. vLLM reports exactly OpenAI's fields, and
#: `openai_chat` already keeps a missing `prompt_tokens_details` as unknown.
PARSERS: Mapping[str, UsageParser] = MappingProxyType(
    {
        "anthropic": anthropic,
        "openai": openai_chat,
        "openai_responses": openai_responses,
        "deepseek": deepseek,
        "vllm": openai_chat,
        "llamacpp": llamacpp,
    }
)


def detect_kind(response: Mapping[str, Any]) -> str:
    """Which parser fits a response, from the fields it carries (for an
    OpenAI-compatible upstream whose exact kind is not configured)."""
    raw = _usage_of(response)
    if (
        response.get("type") == "message"
        or "cache_read_input_tokens" in raw
        or "cache_creation_input_tokens" in raw
    ):
        return "anthropic"
    if isinstance(response.get("timings"), Mapping):
        return "llamacpp"
    if "prompt_cache_hit_tokens" in raw or "prompt_cache_miss_tokens" in raw:
        return "deepseek"
    if response.get("object") == "response" or "input_tokens_details" in raw:
        return "openai_responses"
    return "openai"


def parse_usage(response: Mapping[str, Any], kind: str | None = None) -> Usage:
    """`response`'s usage, read with the parser for `kind` (detected when None)."""
    chosen = kind if kind is not None else detect_kind(response)
    try:
        parser = PARSERS[chosen]
    except KeyError:
        raise ValueError(f"unknown usage kind {chosen!r}; known: {sorted(PARSERS)}") from None
    return parser(response)
