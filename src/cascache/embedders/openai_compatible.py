"""Any OpenAI-compatible `/v1/embeddings` endpoint (OpenAI, vLLM, llama.cpp, TEI, Ollama...).

The IO boundary is one method, `_post_batch`; memo, batching, validation and
normalisation sit above it, so tests drive the whole class through
`httpx.MockTransport`.

Exceptions::

    EmbedderError                     anything that kept us from a valid vector
    ├── EmbeddingHTTPError            the server answered with a non-2xx status
    └── DimensionUnknownError         `dim` read before it is known (also an AttributeError)

Transport failures (connect, timeout) and malformed bodies are raised as plain
`EmbedderError` with the original exception as `__cause__`.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
import numpy as np

from cascache._types import Vector
from cascache.embedders.memo import EmbeddingMemo

__all__ = [
    "DimensionUnknownError",
    "EmbedderError",
    "EmbeddingHTTPError",
    "OpenAICompatibleEmbedder",
]

#: Inputs per request. OpenAI accepts up to 2048; self-hosted servers often
#: limit the batch by tokens, so a smaller default avoids 413s and long stalls.
DEFAULT_BATCH_SIZE = 128
_BODY_EXCERPT = 300


class EmbedderError(RuntimeError):
    """An embedder could not produce valid vectors."""


class EmbeddingHTTPError(EmbedderError):
    """The embeddings endpoint answered with an error status."""

    def __init__(self, message: str, *, status_code: int, body: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.body = body
        """The start of the response body, for logs."""


class DimensionUnknownError(EmbedderError, AttributeError):
    """`dim` was read before it was given or learned from a response.

    It is also an AttributeError so that `isinstance(obj, Embedder)` answers
    False (rather than raising) while the embedder cannot yet say its dimension.
    """


class OpenAICompatibleEmbedder:
    """Embeds through `POST {base_url}/embeddings` with `{"model", "input": [...]}`.

    - `name` is `openai-compatible/{model}`: the model enters the semantic
      namespace, the URL does not, so moving the endpoint behind a proxy or to
      another replica keeps the cache, while a different model never mixes
      vector spaces. Point one model name at two different models and you get
      what you asked for.
    - Vectors are L2-normalised here; servers disagree on whether they do it.
    - `dim`, when given, is checked against every response; when omitted it is
      learned from the first response (reading it earlier raises
      DimensionUnknownError).
    - `timeout` applies to each request, also on an injected `client`. A client
      passed in is borrowed and left open by `close`; one made here is closed.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        dim: int | None = None,
        timeout: float = 10.0,
        memo_size: int = 4096,
        client: httpx.AsyncClient | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        if dim is not None and dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.name = f"openai-compatible/{model}"
        self.model = model
        self.url = base_url.rstrip("/") + "/embeddings"
        self.timeout = timeout
        self.batch_size = batch_size
        self.memo = EmbeddingMemo(memo_size)
        self._dim = dim
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient()

    def __repr__(self) -> str:
        return f"OpenAICompatibleEmbedder(url={self.url!r}, model={self.model!r}, dim={self._dim})"

    @property
    def dim(self) -> int:
        if self._dim is None:
            raise DimensionUnknownError(
                f"{self.name}: dimension not known yet; pass dim= or embed once first"
            )
        return self._dim

    async def embed(self, texts: Sequence[str]) -> Vector:
        """Unit vectors for `texts`, one request per `batch_size` texts not in the memo."""
        if not texts:
            return np.empty((0, self._dim or 0), dtype=np.float32)
        split = self.memo.split(texts)
        batches = [
            await self._post_batch(split.missing[start : start + self.batch_size])
            for start in range(0, len(split.missing), self.batch_size)
        ]
        computed = np.concatenate(batches) if batches else np.empty((0, self.dim), np.float32)
        return self.memo.assemble(texts, split, computed)

    async def close(self) -> None:
        self.memo.clear()
        if self._owns_client:
            await self._client.aclose()

    async def _post_batch(self, texts: Sequence[str]) -> Vector:
        """One request: the only place that touches the network."""
        try:
            response = await self._client.post(
                self.url,
                json={"model": self.model, "input": list(texts)},
                headers=self._headers,
                timeout=self.timeout,
            )
        except httpx.HTTPError as exc:
            raise EmbedderError(f"{self.url}: {type(exc).__name__}: {exc}") from exc
        if response.is_error:
            body = response.text[:_BODY_EXCERPT]
            raise EmbeddingHTTPError(
                f"{self.url} answered {response.status_code}: {_error_message(response) or body}",
                status_code=response.status_code,
                body=body,
            )
        try:
            vectors = _parse_embeddings(response.json(), expected=len(texts))
        except (ValueError, KeyError, TypeError) as exc:
            raise EmbedderError(f"{self.url}: malformed embeddings response: {exc}") from exc
        self._check_dim(vectors.shape[1])
        return _normalise(vectors)

    def _check_dim(self, got: int) -> None:
        if self._dim is None:
            self._dim = got
        elif got != self._dim:
            raise EmbedderError(f"{self.name}: expected {self._dim}-dim vectors, server sent {got}")


def _parse_embeddings(payload: Any, *, expected: int) -> Vector:
    """The `data[*].embedding` rows in input order (by `index`), as float32."""
    data = payload["data"]
    if not isinstance(data, list):
        raise ValueError(f"'data' is {type(data).__name__}, not a list")
    if len(data) != expected:
        raise ValueError(f"expected {expected} embeddings, got {len(data)}")
    # The spec gives each item its input position; trust it over list order.
    items = sorted(enumerate(data), key=lambda pair: int(pair[1].get("index", pair[0])))
    rows = [_decode_row(item["embedding"]) for _, item in items]
    if len({row.shape for row in rows}) != 1 or rows[0].ndim != 1 or rows[0].size == 0:
        raise ValueError("embeddings differ in length or are empty")
    if not all(np.isfinite(row).all() for row in rows):
        raise ValueError("embeddings contain NaN or infinity")
    return np.stack(rows)


def _decode_row(embedding: Any) -> Vector:
    # Some servers send base64 little-endian float32 even when no encoding_format was asked for.
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4").astype(np.float32)
    return np.asarray(embedding, dtype=np.float32)


def _normalise(vectors: Vector) -> Vector:
    """Scale rows to unit length; an all-zero row stays zero (similar to nothing)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.clip(norms, 1e-12, None)).astype(np.float32, copy=False)


def _error_message(response: httpx.Response) -> str | None:
    """`error.message` from an OpenAI-style error body, if there is one."""
    try:
        payload = response.json()
    except ValueError:
        return None
    error = payload.get("error") if isinstance(payload, Mapping) else None
    if isinstance(error, Mapping) and isinstance(error.get("message"), str):
        return error["message"]
    if isinstance(error, str):
        return error
    return None
