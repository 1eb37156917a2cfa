"""Canonical tool JSON: stable key order, same meaning, ordered data untouched."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from cascache.tiers.prefix.canonical import canonical_tool, canonical_tools, canonical_value

WEATHER_A = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "required": ["unit", "city"],
            "properties": {
                "unit": {"enum": ["celsius", "fahrenheit"], "type": "string"},
                "city": {"type": "string", "description": "City name"},
            },
            "additionalProperties": False,
        },
        "description": "Current weather",
        "strict": True,
    },
}
WEATHER_B = {  # the same tool built with keys in another order
    "function": {
        "strict": True,
        "description": "Current weather",
        "parameters": {
            "additionalProperties": False,
            "properties": {
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "city": {"description": "City name", "type": "string"},
            },
            "type": "object",
            "required": ["unit", "city"],
        },
        "name": "get_weather",
    },
    "type": "function",
}


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)  # keeps key order, like a provider or a chat template would


def test_the_same_tool_built_in_different_key_orders_serialises_identically() -> None:
    assert dumps(WEATHER_A) != dumps(WEATHER_B)
    assert dumps(canonical_tool(WEATHER_A)) == dumps(canonical_tool(WEATHER_B))


def test_meaning_is_unchanged() -> None:
    assert canonical_tool(WEATHER_A) == WEATHER_A  # dict equality ignores order: same JSON value


@pytest.mark.parametrize(
    ("value", "expected_order"),
    [
        ({"required": ["b", "a"]}, ["b", "a"]),
        ({"enum": ["z", "a", "m"]}, ["z", "a", "m"]),
        ({"anyOf": [{"type": "string"}, {"type": "integer"}]}, [{"type": "string"}, {"type": "integer"}]),
        ({"examples": [3, 1, 2]}, [3, 1, 2]),
    ],
)
def test_arrays_keep_their_order(value: dict[str, Any], expected_order: list[Any]) -> None:
    (key,) = value
    assert canonical_value(value)[key] == expected_order


def test_property_names_keep_the_callers_order_unless_asked() -> None:
    params = WEATHER_A["function"]["parameters"]  # type: ignore[index]
    assert list(canonical_value(params)["properties"]) == ["unit", "city"]
    assert list(canonical_value(params, sort_properties=True)["properties"]) == ["city", "unit"]
    # each property's own schema is canonicalised either way
    assert list(canonical_value(params)["properties"]["unit"]) == ["enum", "type"]


def test_keys_are_sorted_at_every_depth() -> None:
    nested = {"b": {"d": 1, "c": {"f": 2, "e": 3}}, "a": [{"y": 1, "x": 2}]}
    out = canonical_value(nested)
    assert list(out) == ["a", "b"]
    assert list(out["b"]) == ["c", "d"] and list(out["b"]["c"]) == ["e", "f"]
    assert list(out["a"][0]) == ["x", "y"]


def test_a_callers_cache_control_is_copied_as_is() -> None:
    marker = {"ttl": "1h", "type": "ephemeral", "zzz": [2, 1]}
    tool = {"name": "t", "input_schema": {"type": "object"}, "cache_control": marker}
    out = canonical_tool(tool)
    assert list(out["cache_control"]) == ["ttl", "type", "zzz"]
    assert out["cache_control"] == marker


def test_tool_list_order_is_kept_and_input_is_not_mutated() -> None:
    tools = [copy.deepcopy(WEATHER_B), {"name": "b", "input_schema": {}}, "not-a-tool"]
    before = copy.deepcopy(tools)
    out = canonical_tools(tools)
    assert tools == before and dumps(tools) == dumps(before)
    assert [t["function"]["name"] if "function" in t else t for t in out[:1]] == ["get_weather"]
    assert out[1] == {"input_schema": {}, "name": "b"} and out[2] == "not-a-tool"
