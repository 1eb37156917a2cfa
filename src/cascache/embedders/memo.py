"""An LRU memo of recent embeddings, shared by every embedder.

Chat traffic repeats itself: the same question arrives again within minutes, and
the semantic tier embeds it before it knows whether the exact tier would have
answered. Remembering the last few thousand vectors by their exact text makes a
repeat cost a dictionary lookup instead of a model run or an HTTP call.

What is deliberately left out: the memo is not a coalescer. Two concurrent calls
that miss on the same text both compute it; the second `store` simply refreshes
the entry. Coalescing belongs to the request path (Tier 3a), not here.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cascache._types import Vector


@dataclass(frozen=True, slots=True)
class MemoSplit:
    """The outcome of looking a batch of texts up in the memo."""

    known: tuple[Vector | None, ...]
    """One slot per input text: its remembered vector, or None when it must be computed."""
    missing: tuple[str, ...]
    """The texts to compute, each once, in order of first appearance."""


class EmbeddingMemo:
    """Least-recently-used map from exact text to its embedding row.

    Invariants: at most `maxsize` rows are held; stored rows are private,
    read-only copies, so a caller that edits the array it got back can never
    corrupt the memo (and a remembered row never pins a whole batch array in
    memory). `maxsize=0` turns the memo off: every text is reported missing.

    A lock guards the map because the ONNX embedder computes batches on a worker
    thread while the event loop thread serves single queries; an `OrderedDict`
    reordered from two threads at once can lose entries or raise.
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 0:
            raise ValueError(f"memo size must be >= 0, got {maxsize}")
        self.maxsize = maxsize
        self.hits = 0
        """Texts answered from the memo since creation."""
        self.misses = 0
        """Texts not found (a text repeated inside one call counts each time) since creation."""
        self._rows: OrderedDict[str, Vector] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._rows)

    def split(self, texts: Sequence[str]) -> MemoSplit:
        """Look every text up; list the distinct ones that still need a vector."""
        known: list[Vector | None] = []
        missing: dict[str, None] = {}  # an ordered set: duplicates are computed once
        with self._lock:
            for text in texts:
                row = self._rows.get(text)
                if row is None:
                    missing.setdefault(text)
                    self.misses += 1
                else:
                    self._rows.move_to_end(text)
                    self.hits += 1
                known.append(row)
        return MemoSplit(known=tuple(known), missing=tuple(missing))

    def store(self, texts: Sequence[str], vectors: Vector) -> None:
        """Remember `vectors[i]` as the embedding of `texts[i]`, evicting the oldest."""
        if self.maxsize == 0:
            return
        with self._lock:
            for text, vector in zip(texts, vectors, strict=True):
                row = vector.copy()
                row.flags.writeable = False
                self._rows[text] = row
                self._rows.move_to_end(text)
            while len(self._rows) > self.maxsize:
                self._rows.popitem(last=False)

    def assemble(self, texts: Sequence[str], split: MemoSplit, computed: Vector) -> Vector:
        """Build the (n, dim) answer for `texts` from the memo and the rows just computed.

        `computed[j]` is the vector of `split.missing[j]` (an empty array when
        nothing was missing). The computed rows are also stored, so the next
        call finds them. `texts` must not be empty.
        """
        self.store(split.missing, computed)
        fresh = dict(zip(split.missing, computed, strict=True))
        rows = [
            row if row is not None else fresh[text]
            for text, row in zip(texts, split.known, strict=True)
        ]
        return np.stack(rows).astype(np.float32, copy=False)

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()

