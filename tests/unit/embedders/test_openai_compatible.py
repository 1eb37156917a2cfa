"""OpenAI-compatible embeddings client, driven end to end through `httpx.MockTransport`."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import httpx
import numpy as np
import pytest

from cascache.embedders import (
    DimensionUnknownError,
    Embedder,
    EmbedderError,
    EmbeddingHTTPError,
    OpenAICompatibleEmbedder,
    make_embedder,
    resolve_dim,
)

Handler = Callable[[httpx.Request], httpx.Response]


class FakeServer:
    """Answers `/embeddings` with a fixed vector per text and records every request."""

    def __init__(self, vectors: dict[str, list[float]], *, reverse: bool = False) -> None:
        self.vectors = vectors
        self.reverse = reverse
        """Send `data` items in reverse order (with correct `index`), as some servers do."""
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        inputs = json.loads(request.content)["input"]
        data = [
            {"object": "embedding", "index": i, "embedding": self.vectors[text]}
            for i, text in enumerate(inputs)
        ]
        if self.reverse:
            data.reverse()
        return httpx.Response(200, json={"object": "list", "data": data, "model": "m"})

    def inputs(self) -> list[list[str]]:
        return [json.loads(r.content)["input"] for r in self.requests]


def make(handler: Handler, **options: object) -> OpenAICompatibleEmbedder:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return OpenAICompatibleEmbedder(
        base_url="http://embed.test/v1/", model="text-embedding-3-small", client=client, **options
    )


VECTORS = {"a": [3.0, 4.0, 0.0], "b": [0.0, 0.0, 2.0], "c": [1.0, 1.0, 1.0]}


@pytest.mark.asyncio
async def test_request_shape() -> None:
    server = FakeServer(VECTORS)
    embedder = make(server, api_key="sk-test")
    await embedder.embed(["a", "b"])

    (request,) = server.requests
    assert request.method == "POST"
    assert str(request.url) == "http://embed.test/v1/embeddings"
    assert json.loads(request.content) == {"model": "text-embedding-3-small", "input": ["a", "b"]}
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.headers["content-type"] == "application/json"


@pytest.mark.asyncio
async def test_no_auth_header_without_key() -> None:
    server = FakeServer(VECTORS)
    await make(server).embed(["a"])
    assert "authorization" not in server.requests[0].headers


@pytest.mark.asyncio
async def test_vectors_are_normalised_float32_in_input_order() -> None:
    embedder = make(FakeServer(VECTORS, reverse=True))
    vectors = await embedder.embed(["a", "b", "c"])
    assert vectors.dtype == np.float32
    assert vectors.shape == (3, 3)
    np.testing.assert_allclose(vectors[0], [0.6, 0.8, 0.0], atol=1e-6)
    np.testing.assert_allclose(vectors[1], [0.0, 0.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


@pytest.mark.asyncio
async def test_base64_embeddings_are_decoded() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        encoded = base64.b64encode(np.array([0.0, 5.0], dtype="<f4").tobytes()).decode()
        return httpx.Response(200, json={"data": [{"index": 0, "embedding": encoded}]})

    vectors = await make(handler).embed(["x"])
    np.testing.assert_allclose(vectors, [[0.0, 1.0]], atol=1e-6)


@pytest.mark.asyncio
async def test_dim_is_learned_from_the_first_response() -> None:
    embedder = make(FakeServer(VECTORS))
    with pytest.raises(DimensionUnknownError):
        _ = embedder.dim
    assert not isinstance(embedder, Embedder)  # incomplete until the dimension is known

    await embedder.embed(["a"])
    assert embedder.dim == 3
    assert isinstance(embedder, Embedder)
    assert embedder.name == "openai-compatible/text-embedding-3-small"


@pytest.mark.asyncio
async def test_resolve_dim_probes_only_when_needed() -> None:
    server = FakeServer({"dimension probe": [1.0, 2.0, 3.0, 4.0, 5.0]})
    assert await resolve_dim(make(server)) == 5
    assert len(server.requests) == 1

    known = FakeServer({})
    assert await resolve_dim(make(known, dim=7)) == 7
    assert known.requests == []


@pytest.mark.asyncio
async def test_given_dim_is_enforced() -> None:
    embedder = make(FakeServer(VECTORS), dim=4)
    assert embedder.dim == 4
    with pytest.raises(EmbedderError, match="expected 4-dim"):
        await embedder.embed(["a"])


@pytest.mark.asyncio
async def test_server_error_raises_with_status_and_message() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, json={"error": {"message": "model overloaded", "type": "server"}})

    with pytest.raises(EmbeddingHTTPError, match="answered 500: model overloaded") as caught:
        await make(handler).embed(["a"])
    assert caught.value.status_code == 500
    assert "overloaded" in caught.value.body


@pytest.mark.asyncio
async def test_non_json_error_body_is_quoted() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, text="bad key")

    with pytest.raises(EmbeddingHTTPError, match="answered 401: bad key"):
        await make(handler).embed(["a"])


@pytest.mark.asyncio
async def test_transport_failure_is_wrapped() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(EmbedderError, match="ConnectError") as caught:
        await make(handler).embed(["a"])
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


@pytest.mark.parametrize(
    "body",
    [
        {"data": []},  # fewer rows than inputs
        {"data": [{"index": 0, "embedding": [1.0]}, {"index": 1, "embedding": [1.0, 2.0]}]},
        {"data": [{"index": 0, "embedding": [float("nan"), 1.0]}, {"index": 1, "embedding": [1.0, 2.0]}]},
        {"result": "ok"},
    ],
)
@pytest.mark.asyncio
async def test_malformed_response_is_an_embedder_error(body: dict[str, object]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=json.dumps(body).encode())

    with pytest.raises(EmbedderError, match="malformed"):
        await make(handler).embed(["a", "b"])


@pytest.mark.asyncio
async def test_memo_and_batching() -> None:
    server = FakeServer({text: [float(i + 1), 1.0] for i, text in enumerate("abcde")})
    embedder = make(server, batch_size=2)

    first = await embedder.embed(["a", "b", "c", "a", "d", "e"])
    assert server.inputs() == [["a", "b"], ["c", "d"], ["e"]]  # duplicates sent once
    np.testing.assert_array_equal(first[0], first[3])

    again = await embedder.embed(["e", "a"])
    assert len(server.requests) == 3  # answered from the memo
    np.testing.assert_array_equal(again, first[[5, 0]])


@pytest.mark.asyncio
async def test_memo_off_always_asks() -> None:
    server = FakeServer(VECTORS)
    embedder = make(server, memo_size=0)
    await embedder.embed(["a"])
    await embedder.embed(["a"])
    assert len(server.requests) == 2


@pytest.mark.asyncio
async def test_close_leaves_a_borrowed_client_open() -> None:
    client = httpx.AsyncClient(transport=httpx.MockTransport(FakeServer(VECTORS)))
    borrowed = OpenAICompatibleEmbedder("http://embed.test/v1", "m", client=client)
    await borrowed.close()
    assert not client.is_closed
    await client.aclose()

    owned = OpenAICompatibleEmbedder("http://embed.test/v1", "m")
    await owned.close()
    assert owned._client.is_closed


@pytest.mark.asyncio
async def test_registry() -> None:
    embedder = make_embedder("openai", base_url="http://embed.test/v1", model="m", dim=8)
    assert isinstance(embedder, OpenAICompatibleEmbedder)
    assert embedder.dim == 8
    await embedder.close()
    with pytest.raises(ValueError, match="known: minilm, openai"):
        make_embedder("word2vec")
