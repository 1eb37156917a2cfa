"""Test tools that ship with cascache: a faithful Anthropic / OpenAI provider simulator.

Imported only by tests and benchmarks; nothing in the request path depends on it.
"""

from cascache.testing.provider_sim import (
    ANTHROPIC_MIN_CACHEABLE,
    Fault,
    ManualClock,
    ProviderSim,
    SimRecord,
    SimServer,
    count_tokens,
)

__all__ = ["ANTHROPIC_MIN_CACHEABLE", "Fault", "ManualClock", "ProviderSim", "SimRecord", "SimServer", "count_tokens"]
