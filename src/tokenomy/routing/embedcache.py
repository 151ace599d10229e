"""Embeddings of training prompts, cached on disk (embedding thousands of prompts takes minutes)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from tokenomy.routing.embedder import VERSION, MiniLMEmbedder


def embed_cached(
    embedder: MiniLMEmbedder, texts: list[str], cache_dir: Path | None, batch_size: int = 32, progress=None
) -> np.ndarray:
    """Embed ``texts`` (batched), reusing ``cache_dir/<hash>.npy`` when the same texts were embedded before."""
    digest = hashlib.sha256(VERSION.encode())
    for text in texts:
        digest.update(text.encode("utf-8", "replace") + b"\x00")
    file = cache_dir / f"{digest.hexdigest()[:24]}.npy" if cache_dir is not None else None
    if file is not None and file.exists():
        return np.load(file)
    # sort by length so batches pad little
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), embedder.dimension), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        out[idx] = embedder.embed_batch([texts[i] for i in idx])
        if progress is not None:
            progress(len(idx))
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        np.save(file, out)
    return out
