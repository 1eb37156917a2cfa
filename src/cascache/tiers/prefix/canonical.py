"""Tool definitions with a stable key order, meaning unchanged.

Why: providers and chat templates render tool definitions in the order their
keys arrive, so a client that builds the same tool with keys in a different
order (merging dicts, generating from sets) renders different tokens and
loses the whole cached prefix after the tools. Sorting object keys fixes that.

What is never changed, because it is ordered data:
- arrays keep their order: `required`, `enum`, `anyOf`, `prefixItems`,
  `examples`... and the list of tools itself;
- the names inside `properties` keep the caller's order unless
  `sort_properties` is set. JSON Schema gives property order no meaning, but
  the model reads properties in that order, and OpenAI's Structured Outputs
  produce keys in the order of the schema's keys (OpenAI's structured-outputs
  guide, as quoted in spring-projects/spring-ai#1335, read 2026-11-24), so
  sorting them could reorder the keys of an answer. The schema of each
  property is still canonicalised;
- a tool's `cache_control` object is copied as is: a caller's cache markers
  are never touched, malformed or not.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_OPAQUE_TOOL_KEYS = frozenset({"cache_control"})


def canonical_value(value: Any, *, sort_properties: bool = False) -> Any:
    """`value` with object keys sorted at every depth, arrays in their order,
    and `properties` maps in the caller's order unless `sort_properties`."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key in sorted(value):
            item = value[key]
            if key == "properties" and isinstance(item, Mapping) and not sort_properties:
                out[key] = {
                    name: canonical_value(schema, sort_properties=False) for name, schema in item.items()
                }
            else:
                out[key] = canonical_value(item, sort_properties=sort_properties)
        return out
    if isinstance(value, list):
        return [canonical_value(item, sort_properties=sort_properties) for item in value]
    return value


def canonical_tool(tool: Any, *, sort_properties: bool = False) -> Any:
    """One tool definition (OpenAI `{"type": "function", "function": {...}}` or
    Anthropic `{"name", "description", "input_schema"}`), canonicalised."""
    if not isinstance(tool, Mapping):
        return tool
    return {
        key: tool[key]
        if key in _OPAQUE_TOOL_KEYS
        else canonical_value(tool[key], sort_properties=sort_properties)
        for key in sorted(tool)
    }


def canonical_tools(tools: list[Any], *, sort_properties: bool = False) -> list[Any]:
    """The tool list, each definition canonicalised, in the caller's order."""
    return [canonical_tool(tool, sort_properties=sort_properties) for tool in tools]
