"""Labelled inputs of `cascache eval`: the JSONL formats (docs/eval.md), their readers, and stream builders.

Two kinds of labelled data:

- **pairs**: one line per pair, ``{"a": ..., "b": ..., "same_answer": bool}``
  plus an optional ``"category"`` (or ``"subtype"``) that the report groups by.
  ``a`` and ``b`` are either a string (the user's question, a single-turn chat)
  or a list of chat messages ``[{"role": ..., "content": ...}, ...]`` ending in
  the user turn that is compared. ``a`` is cached first, then ``b`` is asked.
- **streams**: one line per query, ``{"text": str, "label": str}`` plus an
  optional ``"stream"`` (queries with the same value are one stream, replayed
  in file order into a fresh cache; default: one stream per file) and an
  optional ``"context"`` (earlier chat messages, which enter the key).

Anything else on a line is ignored, so richer files (fow-cache's ``id``,
``note``, ``style``) load unchanged.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cascache.jsonl import json_objects

__all__ = [
    "LabelledPair",
    "LabelledQuery",
    "Message",
    "Stream",
    "draw_zipf_stream",
    "load_banking77",
    "read_pairs",
    "read_streams",
    "stratified_split",
    "write_streams",
]

Message = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class LabelledPair:
    """Two requests and whether one's cached answer may serve the other."""

    a: tuple[Message, ...]
    """The request cached first (its last message is the compared user turn)."""
    b: tuple[Message, ...]
    """The request asked second."""
    same_answer: bool
    category: str
    """Report group ("paraphrase", "negation", "context_swap"...); "all" when the file has none."""
    id: str | None = None


@dataclass(frozen=True, slots=True)
class LabelledQuery:
    text: str
    label: str
    context: tuple[Message, ...] = ()
    """Chat messages before the user's question (they are part of the semantic namespace)."""


@dataclass(frozen=True, slots=True)
class Stream:
    """Queries replayed in order into one fresh cache."""

    name: str
    queries: tuple[LabelledQuery, ...]


def _messages(value: Any, where: str) -> tuple[Message, ...]:
    if isinstance(value, str):
        return ({"role": "user", "content": value},)
    if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m for m in value):
        if value[-1]["role"] != "user" or not isinstance(value[-1].get("content"), str):
            raise ValueError(f"{where}: the last message must be a user message with text content")
        return tuple(value)
    raise ValueError(f"{where}: expected a string or a non-empty list of chat messages")


def read_pairs(paths: Sequence[Path]) -> list[LabelledPair]:
    """Labelled pairs from JSONL files (a directory reads every *.jsonl in it, sorted)."""
    pairs: list[LabelledPair] = []
    for path in _expand(paths):
        for number, row in json_objects(path):
            where = f"{path}:{number}"
            if not isinstance(row.get("same_answer"), bool):
                raise ValueError(f"{where}: 'same_answer' must be true or false")
            pairs.append(
                LabelledPair(
                    a=_messages(row.get("a"), f"{where}: a"),
                    b=_messages(row.get("b"), f"{where}: b"),
                    same_answer=row["same_answer"],
                    category=str(row.get("category") or row.get("subtype") or "all"),
                    id=None if row.get("id") is None else str(row["id"]),
                )
            )
    return pairs


def read_streams(paths: Sequence[Path]) -> list[Stream]:
    """Labelled query streams from JSONL files, grouped by their "stream" field (default: the file)."""
    streams: list[Stream] = []
    for path in _expand(paths):
        grouped: dict[str, list[LabelledQuery]] = defaultdict(list)
        for number, row in json_objects(path):
            where = f"{path}:{number}"
            text, label = row.get("text"), row.get("label")
            if not isinstance(text, str) or label is None:
                raise ValueError(f"{where}: a stream line needs 'text' (string) and 'label'")
            context = row.get("context") or []
            if not isinstance(context, list):
                raise ValueError(f"{where}: 'context' must be a list of chat messages")
            grouped[str(row.get("stream", path.stem))].append(LabelledQuery(text, str(label), tuple(context)))
        streams.extend(Stream(name, tuple(queries)) for name, queries in grouped.items())
    return streams


def write_streams(path: Path, streams: Sequence[Stream]) -> None:
    """The inverse of `read_streams` (one file, streams told apart by their "stream" field)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for stream in streams:
            for query in stream.queries:
                row: dict[str, Any] = {"stream": stream.name, "text": query.text, "label": query.label}
                if query.context:
                    row["context"] = list(query.context)
                f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _expand(paths: Sequence[Path]) -> list[Path]:
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(sorted(path.glob("*.jsonl")))
        elif path.is_file():
            out.append(path)
        else:
            raise FileNotFoundError(f"no such file or directory: {path}")
    return out


# --- building streams from an intent-labelled corpus (BANKING77) -------------------------


def load_banking77(csv_path: Path) -> tuple[list[str], list[str]]:
    """Texts and intents of BANKING77's `train.csv` (columns text, category)."""
    with csv_path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [r["category"] for r in rows]


def stratified_split(labels: Sequence[str], share: float, seed: int) -> tuple[list[int], list[int]]:
    """Row indices of a tuning part (`share` of every label, seeded) and the held-out rest.

    Stratified so both parts hold every intent: a held-out stream must be able
    to repeat intents, or its oracle would be empty.
    """
    if not 0 < share < 1:
        raise ValueError(f"share must be in (0, 1), got {share}")
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_label[label].append(i)
    tune: list[int] = []
    held: list[int] = []
    for label in sorted(by_label):
        rows = [int(r) for r in rng.permutation(by_label[label])]
        cut = round(len(rows) * share)
        tune.extend(rows[:cut])
        held.extend(rows[cut:])
    return sorted(tune), sorted(held)


def draw_zipf_stream(
    rows: Sequence[int], labels: Sequence[str], n: int, zipf_s: float, seed: int
) -> list[int]:
    """`n` distinct rows whose labels are drawn with popularity 1/rank**s (ranks shuffled by `seed`).

    Real traffic repeats a few intents a lot and most rarely; distinct texts
    keep the exact tier out of it, so every repeat tests the semantic tier. A
    label whose texts are used up drops out and its weight is spread over the
    rest (the head flattens a little once the top labels run dry).
    """
    rng = np.random.default_rng(seed)
    pool: dict[str, list[int]] = defaultdict(list)
    for row in rows:
        pool[labels[row]].append(int(row))
    names = sorted(pool)
    ranked = [names[i] for i in rng.permutation(len(names))]
    weight = {name: 1.0 / (rank + 1) ** zipf_s for rank, name in enumerate(ranked)}
    for name in names:
        rng.shuffle(pool[name])
    stream: list[int] = []
    while len(stream) < n:
        alive = [name for name in ranked if pool[name]]
        if not alive:
            raise ValueError(f"only {len(stream)} texts available, {n} requested")
        p = np.array([weight[name] for name in alive])
        stream.append(pool[alive[int(rng.choice(len(alive), p=p / p.sum()))]].pop())
    return stream
