"""Semantic-cache look-up latency (embedding + search) at 10k, 100k and 1M entries.

Per size: the in-process index (exact search, what the gateway uses) is filled
with that many unit vectors in one namespace/context partition — the worst
case: every entry is a candidate — and queried with real questions embedded by
the real model (all-MiniLM-L6-v2 int8). Reported per size: p50/p99 of the
embedding alone, the search alone and both together (what a lookup adds). The
embedding of a single query is measured in the same run as the baseline.

Search cost does not depend on what the vectors are, so the bulk of the index
is random unit vectors (embedding 1M texts would take an hour here); the
queries are real text.

Target (issue #4): ≤ 10 ms p50 at 100k entries, embedding included.

    python bench/cache_lookup.py [--sizes 10000 100000 1000000] [--queries 200] [--threads 1]
"""

from __future__ import annotations

import os

# one BLAS thread: a matrix-vector product gains nothing from a second one on 2 shared cores
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics
import time
from pathlib import Path

import numpy as np

from tokenomy.embedding import MiniLMEmbedder
from tokenomy.cache.index import MemoryVectorIndex

QUESTIONS = [
    "How do I reset my password?",
    "What is the refund policy for annual plans?",
    "Can I change the email address on my account?",
    "Why was my card declined when I tried to upgrade?",
    "How do I export my data to a CSV file?",
    "What are the differences between the pro and team plans?",
    "How can I cancel my subscription before the renewal date?",
    "Is there a student discount available in Europe?",
]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads for the embedding")
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args()

    embedder = MiniLMEmbedder(threads=args.threads)
    texts = [f"{QUESTIONS[i % len(QUESTIONS)]} (variant {i})" for i in range(args.queries)]
    for text in texts[:10]:
        embedder.embed_one(text)  # warm up
    rng = np.random.default_rng(0)
    rows = []
    for size in args.sizes:
        index = MemoryVectorIndex(embedder.dim, max_per_namespace=size + 1)
        chunk = 100_000
        for start in range(0, size, chunk):
            n = min(chunk, size - start)
            block = rng.standard_normal((n, embedder.dim), dtype=np.float32)
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            index.add_many("bench", "ctx", [f"k{start + i}" for i in range(n)], block)
        embed_ms, search_ms, total_ms = [], [], []
        for text in texts:
            t0 = time.perf_counter()
            vector = embedder.embed_one(text)
            t1 = time.perf_counter()
            index.search_now("bench", "ctx", vector, 1)
            t2 = time.perf_counter()
            embed_ms.append((t1 - t0) * 1000)
            search_ms.append((t2 - t1) * 1000)
            total_ms.append((t2 - t0) * 1000)
        row = {
            "entries": size,
            "embed_p50_ms": round(statistics.median(embed_ms), 3),
            "search_p50_ms": round(statistics.median(search_ms), 3),
            "lookup_p50_ms": round(statistics.median(total_ms), 3),
            "lookup_p99_ms": round(pct(total_ms, 99), 3),
        }
        rows.append(row)
        print(
            f"{size:>9,} entries: embed p50 {row['embed_p50_ms']:.2f} ms + search p50 {row['search_p50_ms']:.2f} ms"
            f" = lookup p50 {row['lookup_p50_ms']:.2f} ms (p99 {row['lookup_p99_ms']:.2f})",
            flush=True,
        )
        del index
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
