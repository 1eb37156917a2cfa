"""Load, in CI: `bench/load.py --quick` against a real gateway and provider-simulator process.

The full figure (2 x 20,000 requests) is the benchmark's; CI runs the same generator, the same
request mix and the same checks at 3 x 2,000 so the suite stays inside its time budget. The
generator validates every response itself (status 200, a complete `chat.completion` or an SSE
stream ending in `[DONE]`); this test reads its JSON line and holds it to the issue's pass rule.

Memory: at this small scale the second run still warms up (SQLite's page cache and mmap reach
pages the first run only wrote: +2.4 to +5.3 MB measured), so flatness is judged between the
second and third identical runs (+0.1 to +0.2 MB measured); a leak grows with every run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
REQUESTS_PER_RUN = 2_000
RUNS = 3
# Same bound as bench/load.py's verdict: a second identical run may not grow the gateway's RSS.
RSS_FLAT_MB = 5.0


def test_mixed_load_has_no_errors_and_flat_memory() -> None:
    completed = subprocess.run(
        [sys.executable, str(REPO / "bench" / "load.py"), "--quick", "--runs", str(RUNS), "--max-seconds", "240"],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    assert lines, f"bench/load.py printed no JSON line (exit {completed.returncode}):\n" \
                  f"{completed.stdout[-4000:]}\n{completed.stderr[-4000:]}"
    figures = json.loads(lines[-1])

    assert figures["requests"] == RUNS * REQUESTS_PER_RUN
    assert figures["errors"] == 0, figures["error_samples"]
    rss = figures["rss_after_each_run_mb"]
    assert rss[-1] - rss[-2] <= RSS_FLAT_MB, rss
    # The mix really exercised every path: exact and semantic hits, misses and streams.
    served = figures["served_run1"]
    for kind in ("hit-exact", "hit-semantic", "miss"):
        assert served.get(kind, 0) > 0, served
    assert "stream" in figures["served_by_kind_run1"], figures["served_by_kind_run1"]
