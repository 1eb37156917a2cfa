"""Embeddings kept on disk between evaluation and benchmark runs, never stale.

Embedding a data set costs minutes; its vectors are kept in `<dir>/emb-<tag>-<hash>.npy`, the hash
taken over the model's name and every text in order. A changed model, data set or order gets a
new file instead of stale vectors. `cascache eval`, the verified-mode simulation and the
benchmarks all name their files this way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = ["cached_vectors", "save_vectors", "vector_file"]

Matrix = npt.NDArray[np.float32]


def vector_file(directory: Path, tag: str, model_name: str, texts: Sequence[str]) -> Path:
    """The file that holds (or will hold) `model_name`'s vectors of `texts`."""
    digest = hashlib.sha256(model_name.encode())
    for text in texts:
        digest.update(b"\0" + text.encode())
    return directory / f"emb-{tag}-{digest.hexdigest()[:16]}.npy"


def cached_vectors(directory: Path, tag: str, model_name: str, texts: Sequence[str],
                   embed: Callable[[list[str]], Matrix]) -> Matrix:
    """The vectors of `texts` from their file, or from `embed` (then saved for the next run)."""
    path = vector_file(directory, tag, model_name, texts)
    if path.exists():
        loaded: Matrix = np.load(path)
        return loaded
    vectors = embed(list(texts))
    save_vectors(path, vectors)
    return vectors


def save_vectors(path: Path, vectors: Matrix) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
