"""Judges: exact, embedding, LLM (through httpx.MockTransport), label; answer texts; the registry."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from cascache.upstreams.http import HttpUpstream
from cascache.verification.judges import (
    JUDGES,
    EmbeddingJudge,
    ExactJudge,
    JudgeCase,
    JudgeDeps,
    LabelJudge,
    LLMJudge,
    answer_text,
    make_judge,
    normalise,
    parse_yes_no,
)
from tests.fakes import KeywordEmbedder, chat_answer


def case(cached: str, fresh: str, question: str = "How do I reset my PIN?") -> JudgeCase:
    return JudgeCase(question=question, cached=cached, fresh=fresh)


# --- answer text -----------------------------------------------------------------------------


def test_answer_text_of_an_openai_answer() -> None:
    assert answer_text(chat_answer("Go to Settings.")) == "Go to Settings."


def test_answer_text_includes_tool_calls_canonically() -> None:
    def call(arguments: str) -> dict[str, Any]:
        return {"choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [
            {"id": "x1", "type": "function", "function": {"name": "pin", "arguments": arguments}}]}}]}

    a = answer_text(call('{"card": 1}'))
    assert a is not None and '"name":"pin"' in a
    assert a == answer_text({"choices": [{"message": {"tool_calls": [
        {"id": "other-id", "function": {"arguments": '{"card": 1}', "name": "pin"}}]}}]})


def test_answer_text_of_an_anthropic_answer() -> None:
    response = {"content": [{"type": "text", "text": "Hello"}, {"type": "tool_use", "name": "pin",
                                                                   "input": {"card": 1}}]}
    text = answer_text(response)
    assert text is not None and text.startswith("Hello\n") and '"input":{"card":1}' in text


@pytest.mark.parametrize("response", [{}, {"choices": []}, {"choices": [{"message": {"content": "  "}}]},
                                      {"content": [{"type": "image"}]}, {"choices": "junk"}])
def test_answer_text_without_text_is_none(response: dict[str, Any]) -> None:
    assert answer_text(response) is None


# --- exact -----------------------------------------------------------------------------------


def test_normalise_ignores_case_punctuation_and_spacing_but_not_symbols() -> None:
    assert normalise("  Hello,\tWORLD!! ") == "hello world"
    assert normalise("Ｆｕｌｌ－width") == normalise("full width")
    assert normalise("$5") != normalise("€5")


async def test_exact_judge() -> None:
    judge = ExactJudge()
    assert (await judge.judge(case("Go to Settings.", "go to   settings"))).correct is True
    assert (await judge.judge(case("Go to Settings.", "Go to Profile."))).correct is False
    assert (await judge.judge(case("...", "Go to Settings."))).correct is None


# --- embedding -------------------------------------------------------------------------------


async def test_embedding_judge_compares_the_answers_cosine_with_its_threshold() -> None:
    judge = EmbeddingJudge(KeywordEmbedder(), threshold=0.9)
    same = await judge.judge(case("open the app then settings", "settings then open the app"))
    assert same.correct is True and same.score == pytest.approx(1.0, abs=1e-6)
    different = await judge.judge(case("open the app then settings", "call the bank on monday"))
    assert different.correct is False and different.score is not None and different.score < 0.9


async def test_embedding_judge_failure_is_undecided() -> None:
    embedder = KeywordEmbedder()
    embedder.fail = True
    judgement = await EmbeddingJudge(embedder).judge(case("a", "a"))
    assert judgement.correct is None and "RuntimeError" in judgement.detail


def test_embedding_judge_threshold_is_validated() -> None:
    with pytest.raises(ValueError):
        EmbeddingJudge(KeywordEmbedder(), threshold=0.0)


# --- LLM ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("Yes", True),
        ("no.", False),
        ("**Yes** - both say settings", True),
        ("Answer: NO", False),
        ("<think>yes, they look alike... but the amount differs</think>\nNo", False),
        ("Yes or no? Yes.", True),
        ("yesterday nobody knew", None),
        ("maybe", None),
        ("", None),
    ],
)
def test_parse_yes_no(reply: str, verdict: bool | None) -> None:
    assert parse_yes_no(reply) is verdict


class JudgeModel:
    """An upstream serving a judge model: records requests, answers with `reply` (or a status/junk)."""

    def __init__(self, reply: str = "yes", status: int = 200, raw: bytes | None = None,
                 api: str = "openai") -> None:
        self.reply, self.status, self.raw, self.api = reply, status, raw, api
        self.requests: list[tuple[str, dict[str, Any], dict[str, str]]] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.url.path, orjson.loads(request.content), dict(request.headers)))
        if self.status != 200:
            return httpx.Response(self.status, json={"error": {"message": "overloaded"}})
        if self.raw is not None:
            return httpx.Response(200, content=self.raw)
        if self.api == "anthropic":
            return httpx.Response(200, json={"type": "message", "content": [{"type": "text", "text": self.reply}]})
        return httpx.Response(200, json=chat_answer(self.reply))

    def upstream(self) -> HttpUpstream:
        return HttpUpstream("http://judge.test/v1", api_key="sk-judge",
                            client=httpx.AsyncClient(transport=httpx.MockTransport(self.handler)))


async def test_llm_judge_asks_an_openai_shaped_model_and_parses_its_verdict() -> None:
    model = JudgeModel(reply="Yes.")
    judge = LLMJudge(model.upstream(), model="judge-1")
    judgement = await judge.judge(case("Open Settings > Security.", "Go to Security in Settings."))
    assert judgement.correct is True
    path, body, headers = model.requests[0]
    assert path == "/v1/chat/completions"
    assert body["model"] == "judge-1" and body["temperature"] == 0 and body["stream"] is False
    assert body["messages"][0]["role"] == "system"
    prompt = body["messages"][1]["content"]
    assert "How do I reset my PIN?" in prompt and "Open Settings > Security." in prompt
    assert "Go to Security in Settings." in prompt
    assert headers["authorization"] == "Bearer sk-judge"


async def test_llm_judge_speaks_anthropic_messages() -> None:
    model = JudgeModel(reply="No", api="anthropic")
    judge = LLMJudge(model.upstream(), model="claude-judge", api="anthropic")
    assert (await judge.judge(case("a", "b"))).correct is False
    path, body, _ = model.requests[0]
    assert path == "/v1/messages" and "system" in body and body["messages"][0]["role"] == "user"


@pytest.mark.parametrize(
    "model",
    [JudgeModel(status=503), JudgeModel(raw=b"not json"), JudgeModel(raw=b'{"choices": []}'),
     JudgeModel(reply="I cannot tell")],
    ids=["error status", "not json", "no text", "no verdict"],
)
async def test_llm_judge_is_undecided_on_junk(model: JudgeModel) -> None:
    judgement = await LLMJudge(model.upstream(), model="judge-1").judge(case("a", "b"))
    assert judgement.correct is None


async def test_llm_judge_cuts_long_answers() -> None:
    model = JudgeModel()
    await LLMJudge(model.upstream(), model="judge-1", max_chars=10).judge(case("x" * 100, "y" * 100))
    prompt = model.requests[0][1]["messages"][1]["content"]
    assert "x" * 10 in prompt and "x" * 11 not in prompt


# --- label -----------------------------------------------------------------------------------


async def test_label_judge_with_labels_as_answers() -> None:
    judge = LabelJudge()
    assert (await judge.judge(case("card_arrival", "Card_Arrival"))).correct is True
    assert (await judge.judge(case("card_arrival", "card_delivery_estimate"))).correct is False


async def test_label_judge_with_a_pattern() -> None:
    judge = LabelJudge(pattern=r"\[label:([^\]]+)\]")
    assert (await judge.judge(case("Sure. [label:top_up]", "[label:top_up] Here you go"))).correct is True
    assert (await judge.judge(case("Sure. [label:top_up]", "[label:refund]"))).correct is False
    assert (await judge.judge(case("Sure.", "[label:refund]"))).correct is None


def test_label_pattern_needs_a_group() -> None:
    with pytest.raises(ValueError, match="group"):
        LabelJudge(pattern=r"label:\w+")


# --- registry ----------------------------------------------------------------------------------


def test_registry_builds_every_judge_by_name() -> None:
    deps = JudgeDeps(embedder=KeywordEmbedder(), upstream=JudgeModel().upstream(), model="judge-1")
    built = {name: make_judge(name, deps) for name in JUDGES}
    assert {name: judge.name for name, judge in built.items()} == {name: name for name in JUDGES}
    assert isinstance(make_judge("embedding", deps, threshold=0.8), EmbeddingJudge)
    assert make_judge("embedding", deps, threshold=0.8).threshold == 0.8  # type: ignore[attr-defined]


@pytest.mark.parametrize(("name", "message"), [("nope", "unknown judge"), ("embedding", "embedder"),
                                               ("llm", "upstream")])
def test_registry_errors_name_what_is_missing(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_judge(name)
