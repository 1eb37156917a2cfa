"""Embedders: text in, L2-normalised float32 vectors out (`Embedder` protocol).

A new embedder is one new module plus one line in `EMBEDDERS`. Tiers receive an
`Embedder` and never import a concrete one; configuration picks one by kind:

    embedder = make_embedder("minilm")                       # default, offline
    embedder = make_embedder("openai", base_url=..., model="text-embedding-3-small")

Importing this package is cheap: the ONNX embedder imports onnxruntime and its
tokenizer only when it is constructed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cascache.embedders.base import Embedder
from cascache.embedders.memo import EmbeddingMemo
from cascache.embedders.onnx_minilm import OnnxMiniLMEmbedder
from cascache.embedders.openai_compatible import (
    DimensionUnknownError,
    EmbedderError,
    EmbeddingHTTPError,
    OpenAICompatibleEmbedder,
)

__all__ = [
    "EMBEDDERS",
    "DimensionUnknownError",
    "Embedder",
    "EmbedderError",
    "EmbeddingHTTPError",
    "EmbeddingMemo",
    "OnnxMiniLMEmbedder",
    "OpenAICompatibleEmbedder",
    "make_embedder",
    "resolve_dim",
]

#: Embedder kind (as written in configuration) -> factory taking that kind's options.
EMBEDDERS: dict[str, Callable[..., Embedder]] = {
    "minilm": OnnxMiniLMEmbedder,
    "openai": OpenAICompatibleEmbedder,
}


def make_embedder(kind: str, **options: Any) -> Embedder:
    """Build the embedder registered as `kind` with its own keyword options.

    Options go to that embedder's constructor unchanged, so a misspelt option
    fails here with the constructor's TypeError instead of being ignored.
    """
    try:
        factory = EMBEDDERS[kind]
    except KeyError:
        known = ", ".join(sorted(EMBEDDERS))
        raise ValueError(f"unknown embedder {kind!r}; known: {known}") from None
    return factory(**options)


async def resolve_dim(embedder: Embedder) -> int:
    """The embedder's vector dimension, embedding one probe text if it has not learned it yet.

    A store must know the dimension before the first request; an OpenAI-compatible
    embedder built without `dim=` only learns it from a response.
    """
    try:
        return embedder.dim
    except DimensionUnknownError:
        return int((await embedder.embed(["dimension probe"])).shape[1])
