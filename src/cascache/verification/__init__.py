"""Verification of semantic hits: judges, the off-path verifier, the false-hit monitor, simulation.

The decision itself (verified acceptance: EXPLOIT or EXPLORE) is pure and lives
with the tiers, in `cascache.tiers.verify`. This package holds what needs IO or
runs in the background: judges that compare a cached answer with a fresh one,
the `Verifier` that runs them off the critical path, and the
`FalseHitMonitor` that turns sampled verifications into a false-hit rate with
a confidence interval; `build_verification` assembles them from settings.
`simulate` replays labelled streams offline.
"""

from cascache.verification.judges import (
    JUDGES,
    EmbeddingJudge,
    ExactJudge,
    Judge,
    JudgeCase,
    JudgeDeps,
    Judgement,
    LabelJudge,
    LLMJudge,
    answer_text,
    make_judge,
)
from cascache.verification.monitor import (
    FalseHitEstimate,
    FalseHitMonitor,
    verification_stats,
    wilson_interval,
)
from cascache.verification.setup import Verification, build_verification
from cascache.verification.verifier import Verifier, fetch_fresh

__all__ = [
    "JUDGES",
    "EmbeddingJudge",
    "ExactJudge",
    "FalseHitEstimate",
    "FalseHitMonitor",
    "Judge",
    "JudgeCase",
    "JudgeDeps",
    "Judgement",
    "LLMJudge",
    "LabelJudge",
    "Verification",
    "Verifier",
    "answer_text",
    "build_verification",
    "fetch_fresh",
    "make_judge",
    "verification_stats",
    "wilson_interval",
]
