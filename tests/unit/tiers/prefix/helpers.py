"""Bodies for the shaping tests: text whose token estimate is exact (4 characters per token)."""

from __future__ import annotations

from typing import Any


def text(tokens: int, fill: str = "x") -> str:
    """A string the default estimator counts as exactly `tokens` tokens."""
    return fill * (4 * tokens)


def tool(name: str, tokens: int = 0) -> dict[str, Any]:
    return {
        "name": name,
        "description": text(tokens) if tokens else f"the {name} tool",
        "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
    }


def conversation(turns: int, tokens_per_message: int = 10) -> list[dict[str, Any]]:
    """`turns` user/assistant pairs, then a newest user turn."""
    messages: list[dict[str, Any]] = []
    for i in range(turns):
        messages.append({"role": "user", "content": f"question {i} " + text(tokens_per_message)})
        messages.append(
            {
                "role": "assistant",
                "content": [{"type": "text", "text": f"answer {i} " + text(tokens_per_message)}],
            }
        )
    messages.append({"role": "user", "content": "the newest question"})
    return messages
