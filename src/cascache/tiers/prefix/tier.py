"""Tier 2 as the pipeline meets it: shape the body, remember reuse, count what was done."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import orjson

from cascache._types import ChatRequest, Scope
from cascache.config import PrefixConfig
from cascache.metrics import Metrics
from cascache.tiers.prefix import ReuseTracker, ShapedRequest, shape
from cascache.tiers.prefix.lint import summarize

PREFIX_WARNING_HEADER = "x-cascache-prefix-warning"


class PrefixTier:
    """Shapes every request that reaches a provider for that provider's prefix cache.

    Runs after the keys are made, so shaping never moves a fingerprint; it
    never changes what the model is asked, so it is always on unless config
    turns it off. Volatile content in the cacheable prefix is reported (header,
    metric), never rewritten.
    """

    def __init__(self, config: PrefixConfig, metrics: Metrics, clock: Callable[[], float]) -> None:
        self._settings = config.to_settings()
        self._tracker = ReuseTracker(config.tracker_size)
        self._metrics = metrics
        self._clock = clock

    def shape(self, kind: str, request: ChatRequest, scope: Scope) -> tuple[ChatRequest, bytes, ShapedRequest]:
        """The request with its shaped body, that body as bytes, and what shaping did."""
        shaped = shape(kind, request.body, scope=scope, settings=self._settings, tracker=self._tracker,
                       now=self._clock())
        for note in shaped.notes:
            self._metrics.prefix_notes.labels(note.code).inc()
        if shaped.lint is not None and shaped.lint.findings:
            for finding_kind, count in summarize(shaped.lint.findings).items():
                self._metrics.prefix_lint_findings.labels(finding_kind).inc(count)
            self._metrics.prefix_tokens_lost.inc(shaped.lint.tokens_lost)
        return dataclasses.replace(request, body=shaped.body), orjson.dumps(shaped.body), shaped

    @staticmethod
    def warning(shaped: ShapedRequest) -> str | None:
        if shaped.lint is None or not shaped.lint.findings:
            return None
        return shaped.lint.header_value()
