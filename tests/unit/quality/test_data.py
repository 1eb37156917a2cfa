"""The JSONL formats of `cascache eval` and the seeded stream builders."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from cascache.quality.data import (
    LabelledQuery,
    Stream,
    draw_zipf_stream,
    read_pairs,
    read_streams,
    stratified_split,
    write_streams,
)


def _write(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    return path


def test_pairs_accept_strings_and_chats_and_keep_categories(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "p.jsonl",
        [
            {
                "a": "Open on Sunday?",
                "b": "Open on Saturday?",
                "same_answer": False,
                "category": "number_date",
                "id": 7,
            },
            {
                "a": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "yes"},
                    {"role": "user", "content": "cancel it"},
                ],
                "b": [{"role": "user", "content": "cancel it"}],
                "same_answer": False,
                "subtype": "context_swap",
            },
            {"a": "x", "b": "y", "same_answer": True},
        ],
    )
    first, chat, plain = read_pairs([path])
    assert first.a == ({"role": "user", "content": "Open on Sunday?"},) and first.id == "7"
    assert first.category == "number_date" and not first.same_answer
    assert len(chat.a) == 3 and chat.category == "context_swap"
    assert plain.category == "all"


@pytest.mark.parametrize(
    "row",
    [
        {"a": "x", "b": "y", "same_answer": "yes"},
        {"a": "x", "same_answer": True},
        {
            "a": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
            "b": "z",
            "same_answer": True,
        },
    ],
)
def test_malformed_pairs_name_the_line(tmp_path: Path, row: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"p\.jsonl:1"):
        read_pairs([_write(tmp_path / "p.jsonl", [row])])


def test_streams_group_by_their_field_and_round_trip(tmp_path: Path) -> None:
    _write(
        tmp_path / "s.jsonl",
        [
            {"stream": "one", "text": "a", "label": "x"},
            {"stream": "two", "text": "b", "label": 3},
            {"stream": "one", "text": "c", "label": "y", "context": [{"role": "system", "content": "s"}]},
        ],
    )
    streams = read_streams([tmp_path])  # a directory reads its *.jsonl
    assert [s.name for s in streams] == ["one", "two"]
    assert [q.text for q in streams[0].queries] == ["a", "c"] and streams[1].queries[0].label == "3"
    write_streams(tmp_path / "out" / "copy.jsonl", streams)
    assert read_streams([tmp_path / "out" / "copy.jsonl"]) == streams
    plain = _write(tmp_path / "plain.jsonl", [{"text": "a", "label": "x"}])
    assert read_streams([plain]) == [Stream("plain", (LabelledQuery("a", "x"),))]


def test_split_is_stratified_seeded_and_disjoint() -> None:
    labels = ["a"] * 10 + ["b"] * 20
    tune, held = stratified_split(labels, 0.7, seed=1)
    assert set(tune).isdisjoint(held) and len(tune) + len(held) == 30
    assert Counter(labels[i] for i in tune) == {"a": 7, "b": 14}
    assert stratified_split(labels, 0.7, seed=1) == (tune, held)
    assert stratified_split(labels, 0.7, seed=2) != (tune, held)


def test_zipf_stream_uses_each_row_once_and_favours_the_head() -> None:
    labels = [f"l{i // 50}" for i in range(20 * 50)]
    stream = draw_zipf_stream(range(len(labels)), labels, 400, zipf_s=1.1, seed=5)
    assert len(set(stream)) == 400
    counts = Counter(labels[r] for r in stream).most_common()
    assert counts[0][1] >= 4 * counts[-1][1]
    assert draw_zipf_stream(range(len(labels)), labels, 400, zipf_s=1.1, seed=5) == stream
    with pytest.raises(ValueError, match="only 1000"):
        draw_zipf_stream(range(len(labels)), labels, 1001, zipf_s=1.1, seed=5)
