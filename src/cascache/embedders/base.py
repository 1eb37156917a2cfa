"""The `Embedder` protocol."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from cascache._types import Vector


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors of shape (n, dim).

    `name` enters the semantic namespace, so changing the model never mixes
    vector spaces.
    """

    name: str
    dim: int

    async def embed(self, texts: Sequence[str]) -> Vector: ...

    async def close(self) -> None: ...
