"""Token and cost accounting: usage of every provider -> one `Usage`; usage x prices -> cost and saving.

- `usage`:   provider responses -> `cascache._types.Usage` (`parse_usage`, one parser per kind)
- `pricing`: `ModelPrice`, `PriceTable` (prefix match on model names), config overrides
- `prices`:  the default table, each entry with its source and the date it was read
- `cost`:    `cost` (an upstream call) and `hit_cost` (a Tier 1 replay) -> `CostBreakdown`
"""

from cascache.accounting.cost import CostBreakdown, cost, hit_cost
from cascache.accounting.prices import DEFAULT_PRICES, default_price_table
from cascache.accounting.pricing import (
    FREE,
    ModelPrice,
    PriceTable,
    match_model,
    normalize_model,
    price_from_config,
)
from cascache.accounting.usage import PARSERS, detect_kind, parse_usage

__all__ = [
    "DEFAULT_PRICES",
    "FREE",
    "PARSERS",
    "CostBreakdown",
    "ModelPrice",
    "PriceTable",
    "cost",
    "default_price_table",
    "detect_kind",
    "hit_cost",
    "match_model",
    "normalize_model",
    "parse_usage",
    "price_from_config",
]
