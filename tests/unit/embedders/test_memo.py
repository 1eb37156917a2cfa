"""The LRU memo shared by every embedder."""

from __future__ import annotations

import numpy as np
import pytest

from cascache.embedders.memo import EmbeddingMemo


def rows(*values: float) -> np.ndarray:
    return np.array([[v, 0.0] for v in values], dtype=np.float32)


def test_split_reports_known_and_distinct_missing() -> None:
    memo = EmbeddingMemo(4)
    memo.store(["a"], rows(1.0))
    split = memo.split(["b", "a", "b", "c"])
    assert split.missing == ("b", "c")
    assert split.known[0] is None and split.known[2] is None
    np.testing.assert_array_equal(split.known[1], [1.0, 0.0])
    assert (memo.hits, memo.misses) == (1, 3)


def test_assemble_orders_rows_like_the_input_and_remembers_them() -> None:
    memo = EmbeddingMemo(4)
    memo.store(["a"], rows(1.0))
    texts = ["b", "a", "b"]
    split = memo.split(texts)
    out = memo.assemble(texts, split, rows(2.0))
    np.testing.assert_array_equal(out[:, 0], [2.0, 1.0, 2.0])
    assert out.dtype == np.float32
    assert memo.split(["b"]).missing == ()


def test_assemble_with_nothing_missing() -> None:
    memo = EmbeddingMemo(4)
    memo.store(["a", "b"], rows(1.0, 2.0))
    split = memo.split(["b", "a"])
    out = memo.assemble(["b", "a"], split, np.empty((0, 2), dtype=np.float32))
    np.testing.assert_array_equal(out[:, 0], [2.0, 1.0])


def test_least_recently_used_is_evicted() -> None:
    memo = EmbeddingMemo(2)
    memo.store(["a", "b"], rows(1.0, 2.0))
    memo.split(["a"])  # touch a, so b is now the oldest
    memo.store(["c"], rows(3.0))
    assert len(memo) == 2
    assert memo.split(["a", "b", "c"]).missing == ("b",)


def test_stored_rows_are_private_copies() -> None:
    memo = EmbeddingMemo(2)
    batch = rows(1.0)
    memo.store(["a"], batch)
    batch[0, 0] = 99.0
    (known,) = memo.split(["a"]).known
    assert known is not None
    assert known[0] == 1.0
    with pytest.raises(ValueError):
        known[0] = 5.0  # read-only: nobody can corrupt the memo through a lookup


def test_size_zero_remembers_nothing() -> None:
    memo = EmbeddingMemo(0)
    memo.store(["a"], rows(1.0))
    assert len(memo) == 0
    assert memo.split(["a"]).missing == ("a",)


def test_negative_size_is_rejected() -> None:
    with pytest.raises(ValueError):
        EmbeddingMemo(-1)
