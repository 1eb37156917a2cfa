"""When to pay for Anthropic's 1-hour cache TTL instead of the default 5 minutes.

Prices, as multiples of the model's base input price b per prefix token
(platform.claude.com/docs/en/about-claude/pricing, read 2026-11-24): a 5-minute
write costs 1.25b, a 1-hour write 2b, a read 0.1b whatever the TTL, and a
read refreshes the entry's TTL. For a prefix of P tokens reused n times at a
steady interval g:

- g <= 5 min: both TTLs stay alive between uses. 5m costs P*b*(1.25 + 0.1(n-1)),
  1h costs P*b*(2 + 0.1(n-1)): the 5-minute TTL is cheaper by 0.75*P*b.
- 5 min < g < 60 min: a 5-minute entry is gone before each reuse, so every use
  writes again: P*b*1.25n. A 1-hour entry is written once and then read (each
  read refreshing it): P*b*(2 + 0.1(n-1)). One reuse already pays for it:
  n = 2 gives 2.1 against 2.5, and the gap widens by 1.15*P*b per further use.
- g >= 60 min: both entries expire; every use writes, and 1.25 < 2: 5 minutes.

So the rule is: choose "1h" when the last observed reuse interval of the
prefix lies strictly between 5 and 60 minutes; otherwise, and for a prefix
seen for the first time, keep the default. The last interval is the predictor:
it reacts to a change of pace within one request, and a wrong guess costs at
most 0.75*P*b once.

`ReuseTracker` holds when each prefix was last seen, keyed by a digest that
includes the scope, so one tenant's traffic never sets another's TTL. It is
bounded (LRU) and takes `now` as an argument, so the decision is testable.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

FIVE_MINUTES_S = 300.0
ONE_HOUR_S = 3600.0

Ttl = Literal["5m", "1h"]


def choose_ttl(reuse_interval_s: float | None) -> Ttl:
    """The cheaper TTL for a prefix last reused `reuse_interval_s` seconds apart (None: never seen)."""
    if reuse_interval_s is not None and FIVE_MINUTES_S < reuse_interval_s < ONE_HOUR_S:
        return "1h"
    return "5m"


class ReuseTracker:
    """When each prefix digest was last seen; the least recently seen are forgotten first.

    Not thread-safe: one tracker per event loop (the gateway's), which is all
    an asyncio server needs.
    """

    def __init__(self, capacity: int = 10_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._last_seen: OrderedDict[str, float] = OrderedDict()

    def observe(self, digest: str, now: float) -> float | None:
        """Record a sighting at `now`; the seconds since the previous one, or None for the first."""
        previous = self._last_seen.pop(digest, None)
        self._last_seen[digest] = now
        if len(self._last_seen) > self.capacity:
            self._last_seen.popitem(last=False)
        return None if previous is None else max(0.0, now - previous)

    def __len__(self) -> int:
        return len(self._last_seen)

    def __contains__(self, digest: object) -> bool:
        return digest in self._last_seen
