"""Judges: would the cached answer have been correct for the new question, given a fresh answer?

A judge sees the new question, the cached answer's text and the fresh
upstream answer's text, and returns a `Judgement`: correct, wrong, or
undecided (`correct is None`: nothing is learnt from the candidate). The
false-hit bound of verified mode holds for what the judge calls correct, so a
judge should err towards "wrong" when unsure.

| name        | decides by                                               | good for                         |
|-------------|----------------------------------------------------------|----------------------------------|
| `exact`     | normalised text equality (case, punctuation, spacing)    | short or label-like answers      |
| `embedding` | cosine of the two answers' embeddings >= a threshold     | free text, cheap and local       |
| `llm`       | asks a model (any configured upstream) "equivalent?"     | free text where wording varies   |
| `label`     | a label carried in both answers (tests, `cascache eval`) | evaluation with labelled data    |

`make_judge(name, ...)` builds one from the registry `JUDGES`; a new judge is
one class and one line there.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import orjson

from cascache.embedders.base import Embedder
from cascache.upstreams.base import Upstream

__all__ = [
    "JUDGES",
    "EmbeddingJudge",
    "ExactJudge",
    "Judge",
    "JudgeCase",
    "JudgeDeps",
    "Judgement",
    "LLMJudge",
    "LabelJudge",
    "answer_text",
    "make_judge",
    "normalise",
    "parse_yes_no",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class JudgeCase:
    """What a judge is shown."""

    question: str
    """The new request's compared text."""
    cached: str
    """Text of the cached answer (the one that was or would have been served)."""
    fresh: str
    """Text of the fresh upstream answer to the new question."""


@dataclass(frozen=True, slots=True)
class Judgement:
    correct: bool | None
    """Would the cached answer have been correct? None: the judge could not tell."""
    detail: str = ""
    """Why, in a few words (for logs and debugging)."""
    score: float | None = None
    """The judge's raw score where it has one (e.g. the answers' cosine)."""


@runtime_checkable
class Judge(Protocol):
    name: str

    async def judge(self, case: JudgeCase) -> Judgement: ...


# --- answer text -----------------------------------------------------------------------------


def answer_text(response: Mapping[str, Any]) -> str | None:
    """The answer's text in a provider's non-streaming JSON (OpenAI Chat or Anthropic Messages).

    Tool calls count as text (their canonical JSON), so two answers that call
    the same tool with the same arguments compare equal. None when the
    response holds neither text nor tool calls.
    """
    parts: list[str] = []
    choices = response.get("choices")
    if isinstance(choices, list):  # OpenAI Chat Completions
        for choice in choices:
            message = choice.get("message") if isinstance(choice, Mapping) else None
            if not isinstance(message, Mapping):
                continue
            content = message.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts.extend(p["text"] for p in content if isinstance(p, Mapping) and isinstance(p.get("text"), str))
            for call in message.get("tool_calls") or ():
                if isinstance(call, Mapping):
                    parts.append(_canonical(call.get("function")))
    content = response.get("content")
    if isinstance(content, list):  # Anthropic Messages
        for block in content:
            if not isinstance(block, Mapping):
                continue
            if block.get("type") == "text" and isinstance(block.get("text"), str):
                parts.append(block["text"])
            elif block.get("type") == "tool_use":
                parts.append(_canonical({"name": block.get("name"), "input": block.get("input")}))
    text = "\n".join(p for p in parts if p)
    return text if text.strip() else None


def _canonical(value: object) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


# --- exact -------------------------------------------------------------------------------------


def normalise(text: str) -> str:
    """Casefolded NFKC text without punctuation, single-spaced (symbols such as $ or € stay)."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    kept = "".join(" " if unicodedata.category(ch)[0] in "PZC" else ch for ch in folded)
    return " ".join(kept.split())


class ExactJudge:
    """Correct iff the two answers are equal after `normalise` (case, punctuation, spacing)."""

    name = "exact"

    async def judge(self, case: JudgeCase) -> Judgement:
        cached, fresh = normalise(case.cached), normalise(case.fresh)
        if not cached or not fresh:
            return Judgement(None, "empty answer")
        same = cached == fresh
        return Judgement(same, "equal" if same else "different")


# --- embedding ---------------------------------------------------------------------------------


class EmbeddingJudge:
    """Correct iff the cosine of the two answers' embeddings is >= `threshold`.

    Cheap and local; blind to what embeddings are blind to (a changed number
    or a negation moves the cosine little), so keep the threshold high.
    An embedder failure is undecided, never "correct".
    """

    name = "embedding"

    def __init__(self, embedder: Embedder, threshold: float = 0.92) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError("threshold must be in (0, 1]")
        self.embedder = embedder
        self.threshold = threshold

    async def judge(self, case: JudgeCase) -> Judgement:
        try:
            vectors = await self.embedder.embed([case.cached, case.fresh])
        except Exception as exc:  # noqa: BLE001 - any embedder failure means "cannot tell", never "correct"
            log.warning("embedding judge failed: %s", exc)
            return Judgement(None, f"embedder failed: {type(exc).__name__}")
        cosine = float(np.dot(vectors[0], vectors[1]))
        return Judgement(cosine >= self.threshold, f"cosine {cosine:.4f}", score=cosine)


# --- LLM ---------------------------------------------------------------------------------------

_SYSTEM = (
    "You check a cache of answers. Given a question, a cached answer and a reference answer, "
    "say whether the cached answer is an equally correct answer to the question: same facts, "
    "numbers, entities and conclusion; wording may differ. Reply with one word: yes or no."
)
_YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)
_THINK = re.compile(r"<think>.*?</think>", re.IGNORECASE | re.DOTALL)
_ECHO = re.compile(r"\byes\s*(?:or|/)\s*no\b", re.IGNORECASE)


def parse_yes_no(text: str) -> bool | None:
    """The verdict in a judge model's reply: the first standalone yes/no; None if there is none.

    Reasoning blocks (<think>...</think>) are skipped, and so is the wording
    of the question when the model echoes it ("yes or no" with both words).
    """
    visible = _ECHO.sub(" ", _THINK.sub(" ", text))
    match = _YES_NO.search(visible)
    return None if match is None else match.group(1).lower() == "yes"


class LLMJudge:
    """Asks a model whether the cached answer is as correct as the fresh one; parses yes/no.

    `upstream` is any configured upstream; `api` says which request shape it
    takes ("openai": /chat/completions, "anthropic": /messages). `headers` are
    sent with every call (e.g. the gateway's own credential when the upstream
    does not hold one). A non-200 reply, an unreadable body or a reply without
    a yes/no is undecided. Answers are cut to `max_chars` each.
    """

    name = "llm"

    def __init__(
        self,
        upstream: Upstream,
        model: str,
        api: Literal["openai", "anthropic"] = "openai",
        headers: Mapping[str, str] | None = None,
        max_chars: int = 4000,
        max_tokens: int = 16,
    ) -> None:
        self.upstream = upstream
        self.model = model
        self.api = api
        self.headers = dict(headers or {})
        self.max_chars = max_chars
        self.max_tokens = max_tokens

    def _prompt(self, case: JudgeCase) -> str:
        cut = self.max_chars
        return (
            f"Question:\n{case.question[:cut]}\n\n"
            f"Cached answer:\n{case.cached[:cut]}\n\n"
            f"Reference answer:\n{case.fresh[:cut]}\n\n"
            "Is the cached answer an equally correct answer to the question? Reply yes or no."
        )

    def _request(self, case: JudgeCase) -> tuple[str, bytes]:
        user = {"role": "user", "content": self._prompt(case)}
        if self.api == "anthropic":
            body: dict[str, Any] = {"model": self.model, "system": _SYSTEM, "messages": [user],
                                    "max_tokens": self.max_tokens, "temperature": 0}
            return "/messages", orjson.dumps(body)
        body = {"model": self.model, "messages": [{"role": "system", "content": _SYSTEM}, user],
                "max_tokens": self.max_tokens, "temperature": 0, "stream": False}
        return "/chat/completions", orjson.dumps(body)

    async def judge(self, case: JudgeCase) -> Judgement:
        path, body = self._request(case)
        reply = await self.upstream.post(path, body, self.headers, stream=False)
        try:
            if reply.status != 200 or not reply.body:
                return Judgement(None, f"judge model answered {reply.status}")
            try:
                response = orjson.loads(reply.body)
            except orjson.JSONDecodeError:
                return Judgement(None, "judge reply is not JSON")
        finally:
            await reply.close()
        text = answer_text(response) if isinstance(response, Mapping) else None
        if text is None:
            return Judgement(None, "judge reply has no text")
        verdict = parse_yes_no(text)
        return Judgement(verdict, f"judge said {text.strip()[:40]!r}")


# --- label -------------------------------------------------------------------------------------


class LabelJudge:
    """Correct iff both answers carry the same label (evaluation with labelled data).

    The label is the first group of `pattern` (searched in the answer), or the
    whole normalised answer when no pattern is given, so an upstream that
    answers with the label itself needs no configuration. An answer without a
    label is undecided.
    """

    name = "label"

    def __init__(self, pattern: str | None = None) -> None:
        self.pattern = re.compile(pattern) if pattern is not None else None
        if self.pattern is not None and self.pattern.groups < 1:
            raise ValueError("a label pattern needs one capturing group")

    def label(self, text: str) -> str | None:
        if self.pattern is None:
            return normalise(text) or None
        found = self.pattern.search(text)
        return found.group(1).strip() if found and found.group(1).strip() else None

    async def judge(self, case: JudgeCase) -> Judgement:
        cached, fresh = self.label(case.cached), self.label(case.fresh)
        if cached is None or fresh is None:
            return Judgement(None, "no label")
        return Judgement(cached == fresh, f"{cached} vs {fresh}")


# --- registry ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JudgeDeps:
    """What judges may need from the running cache."""

    embedder: Embedder | None = None
    upstream: Upstream | None = None
    model: str | None = None
    """Model name for the LLM judge."""


def _embedding(deps: JudgeDeps, options: Mapping[str, Any]) -> Judge:
    if deps.embedder is None:
        raise ValueError("the embedding judge needs an embedder")
    return EmbeddingJudge(deps.embedder, **options)


def _llm(deps: JudgeDeps, options: Mapping[str, Any]) -> Judge:
    if deps.upstream is None or not deps.model:
        raise ValueError("the llm judge needs an upstream and a model name")
    return LLMJudge(deps.upstream, deps.model, **options)


#: name -> builder(deps, options). One line per judge.
JUDGES: dict[str, Callable[[JudgeDeps, Mapping[str, Any]], Judge]] = {
    "exact": lambda deps, options: ExactJudge(**options),
    "embedding": _embedding,
    "llm": _llm,
    "label": lambda deps, options: LabelJudge(**options),
}


def make_judge(name: str, deps: JudgeDeps | None = None, **options: Any) -> Judge:
    """The judge registered as `name`, built with `deps` and its own `options`."""
    try:
        build = JUDGES[name]
    except KeyError:
        raise ValueError(f"unknown judge {name!r}; known: {', '.join(sorted(JUDGES))}") from None
    return build(deps or JudgeDeps(), options)
