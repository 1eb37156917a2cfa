"""Token estimates for prompt parts, without a tokenizer.

Used only to compare a prefix with a provider's minimum cacheable length and to
size lint reports, so an estimate is enough. The default counts one token per
four characters, rounded up: OpenAI's rule of thumb for English text ("1 token
is about 4 characters or 0.75 words", developers.openai.com/api/docs/concepts,
read 2026-11-24), roughly right for Claude's tokenizer on English as well.
Code, CJK text and numbers have more tokens per character (DeepSeek's docs say
~0.3 token per English character), so the estimate errs low there; a
breakpoint skipped for being "too short" only forgoes a saving, it never costs.
Pass a real counter as `count` where one is available.

Images: a flat 1,600 tokens. Anthropic scales an image down until it is
within ~1,600 tokens (1.15 megapixels, 1568 px on the long edge;
platform.claude.com/docs/en/build-with-claude/vision, read 2026-11-24), so
this is the usual cost of a photo. Base64 payloads of other blocks (documents)
are left out of the count, so those err low as well.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson

TextTokens = Callable[[str], int]
IMAGE_TOKENS = 1_600
_IMAGE_TYPES = frozenset({"image", "image_url", "input_image"})


def approx_text_tokens(text: str) -> int:
    """About four characters per token, rounded up."""
    return (len(text) + 3) // 4


def _without_payloads(value: Any) -> Any:
    """`value` with base64 payloads emptied: they are not text the model reads token by token."""
    if isinstance(value, Mapping):
        return {
            key: "" if key == "data" and isinstance(item, str) else _without_payloads(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_without_payloads(item) for item in value]
    if isinstance(value, str) and value.startswith("data:") and ";base64," in value:
        return ""
    return value


def part_tokens(part: Any, count: TextTokens = approx_text_tokens) -> int:
    """Estimated tokens of one prompt part: a string, a content block, a tool definition."""
    if isinstance(part, str):
        return count(part)
    if isinstance(part, Mapping):
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            return count(part["text"])
        if isinstance(kind, str) and kind in _IMAGE_TYPES:  # a client's list or object `type` is unhashable
            return IMAGE_TOKENS
    if isinstance(part, list):
        return sum(part_tokens(item, count) for item in part)
    return count(orjson.dumps(_without_payloads(part), default=str).decode())
