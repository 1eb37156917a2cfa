"""Cutting a cached answer's text into stream-sized pieces, shared by every provider's SSE replay."""

from __future__ import annotations

from collections.abc import Iterator


def text_pieces(text: str, size: int = 48) -> Iterator[str]:
    """Split text at whitespace into chunks of at most `size` characters, so a replayed stream looks live."""
    start = 0
    while start < len(text):
        end = min(len(text), start + size)
        if end < len(text):
            space = text.rfind(" ", start + 1, end)
            if space > start:
                end = space
        yield text[start:end]
        start = end
