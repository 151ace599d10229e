"""Semantic-cache look-up latency (embedding + search) and recall at 10k, 100k and 1M entries.

Per size, the in-process index (what the gateway uses) is filled with that many
vectors in one namespace/context partition — the worst case: every entry is a
candidate — and queried with real questions embedded by the real model
(all-MiniLM-L6-v2 int8). Reported per size: p50/p99 of the embedding alone,
the search alone and both together (what a look-up adds); the exact search's
p50 (the baseline, same run); recall@1 of the search against exact search;
the time to load and build the index, its memory and the load average.

Vectors: the Quora question pairs (``--corpus``; DESIGN.md §6) embedded once and
kept in ``--vectors-cache``. Two query sets: *planted* — the second question of
a duplicate pair whose first question is in the index (a would-be hit) — and
*fresh* — questions held out of the index (mostly misses). Beyond the ~85k real
questions the index is filled with synthetic vectors: normalised blends of two
real ones plus noise, so the filler lies where text embeddings do (random unit
vectors would flatter exact search and be the hardest possible case for an
approximate one). Without the corpus file every entry is synthetic (random).

Partitions of at least ``--ann-min-entries`` are searched approximately (faiss
IVF); ``--ann-min-entries 0`` turns that off (exact search only).

Target (issue #4): ≤ 10 ms p50 at 100k entries, embedding included.

    python bench/cache_lookup.py [--sizes 10000 100000 1000000] [--queries 200] [--threads 2]
"""

from __future__ import annotations

import os

# one BLAS thread: a matrix-vector product gains nothing from a second one on 2 shared cores
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import gzip  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from tokenomy.cache.ann import ANNSettings  # noqa: E402
from tokenomy.cache.index import MemoryVectorIndex  # noqa: E402
from tokenomy.embedding import MiniLMEmbedder, normalise  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = ROOT.parent / "shared" / "data" / "cache" / "qqp_dev.jsonl.gz"
NS, CTX = "bench", "ctx"
#: similarity from which a candidate can be served (cache.semantic.min_similarity)
SERVABLE = 0.80


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def load_corpus(path: Path, embedder: MiniLMEmbedder, cache_dir: Path) -> tuple[list[str], np.ndarray, list[tuple[int, int]]]:
    """Unique questions, their vectors (embedded once, then cached) and the duplicate pairs as indices."""
    rows = [json.loads(line) for line in gzip.open(path, "rt")]
    texts = sorted({t for r in rows for t in (r["a"], r["b"])})
    where = {t: i for i, t in enumerate(texts)}
    pairs = [(where[r["a"]], where[r["b"]]) for r in rows if r["duplicate"] and r["a"] != r["b"]]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    cached = cache_dir / f"{path.stem}-{embedder.model_id}-{digest}.npy"
    if cached.exists():
        vectors = np.load(cached)
    else:
        print(f"embedding {len(texts):,} questions once (cached in {cached}) …", flush=True)
        t0 = time.perf_counter()
        vectors = embedder.embed_many(texts, batch_size=64)
        print(f"  {time.perf_counter() - t0:.0f} s", flush=True)
        cache_dir.mkdir(parents=True, exist_ok=True)
        np.save(cached, vectors)
    return texts, vectors, pairs


def blends(real: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` synthetic unit vectors near the real ones (never the queries): w·a + (1-w)·b + noise."""
    out = np.empty((n, real.shape[1]), dtype=np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        a = real[rng.integers(0, len(real), m)]
        b = real[rng.integers(0, len(real), m)]
        w = rng.uniform(0.5, 0.9, (m, 1)).astype(np.float32)
        noise = rng.standard_normal(a.shape, dtype=np.float32) * (0.15 / np.sqrt(real.shape[1]))
        out[start : start + m] = normalise(w * a + (1 - w) * b + noise)
    return out


def exact_top1(index: MemoryVectorIndex, queries: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Exact best key and score for every query, in one pass over the matrix."""
    part = index._partitions[(NS, CTX)]
    n = len(part.keys)
    best = np.full(len(queries), -np.inf, dtype=np.float32)
    rows = np.zeros(len(queries), dtype=np.int64)
    for start in range(0, n, 200_000):
        scores = part.matrix[start : min(n, start + 200_000)] @ queries.T
        top = scores.argmax(axis=0)
        value = scores[top, np.arange(len(queries))]
        better = value > best
        best[better], rows[better] = value[better], top[better] + start
    return [part.keys[r] for r in rows], best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=200, help="queries per set (planted, fresh)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads for the embedding")
    parser.add_argument("--ann-min-entries", type=int, default=ANNSettings().min_entries or 0)
    parser.add_argument("--probes", type=int, default=None, help="IVF lists a query scans (default: automatic)")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--vectors-cache", type=Path, default=Path.home() / ".cache" / "tokenomy" / "bench")
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args()

    embedder = MiniLMEmbedder(threads=args.threads)
    rng = np.random.default_rng(0)
    if args.corpus.exists():
        texts, real, pairs = load_corpus(args.corpus, embedder, args.vectors_cache)
        chosen = rng.permutation(len(pairs))
        planted: list[tuple[int, int]] = []
        used: set[int] = set()
        for p in chosen:  # pairs whose questions appear in no other chosen pair
            a, b = pairs[p]
            if a not in used and b not in used:
                planted.append((a, b))
                used.update((a, b))
            if len(planted) == args.queries:
                break
        rest = [i for i in rng.permutation(len(texts)) if i not in used]
        fresh, pool = rest[: args.queries], rest[args.queries :]
        query_texts = [texts[b] for _, b in planted] + [texts[i] for i in fresh]
        must = [a for a, _ in planted]  # always in the index: the planted duplicates
        pool = must + pool
        corpus_note = f"{args.corpus.name}: {len(texts):,} questions"
    else:
        print(f"{args.corpus} not found: random unit vectors, template queries (recall is a worst case)")
        real = normalise(rng.standard_normal((100_000, embedder.dim), dtype=np.float32))
        pool = list(range(len(real)))
        query_texts = [f"How do I reset my password? (variant {i})" for i in range(2 * args.queries)]
        planted = []
        corpus_note = "random vectors"
    n_planted = len(planted)
    for text in query_texts[:10]:
        embedder.embed_one(text)  # warm up
    if args.threads != 1:  # the embedding's thread count, compared in this run (interleaved)
        single = MiniLMEmbedder(threads=1)
        for text in query_texts[:10]:
            single.embed_one(text)
        timings: dict[int, list[float]] = {1: [], args.threads: []}
        for text in query_texts[:200]:
            for threads, model in ((1, single), (args.threads, embedder)):
                t1 = time.perf_counter()
                model.embed_one(text)
                timings[threads].append((time.perf_counter() - t1) * 1000)
        del single
        print(
            "embedding p50: "
            + ", ".join(f"{t} thread{'s' if t > 1 else ''} {statistics.median(v):.2f} ms" for t, v in timings.items())
            + f" (load avg {os.getloadavg()[0]:.2f})",
            flush=True,
        )
    print(
        f"{corpus_note}; {n_planted} planted + {len(query_texts) - n_planted} fresh queries; onnxruntime threads "
        f"{args.threads}; approximate search from {args.ann_min_entries or 'never'} entries "
        f"(probing {args.probes or 'automatic'} lists)",
        flush=True,
    )

    rows = []
    for size in args.sizes:
        ann = ANNSettings(min_entries=args.ann_min_entries or None, probes=args.probes)
        load_before = os.getloadavg()[0]
        rss_before = rss_mb()
        t0, cpu0 = time.perf_counter(), time.process_time()
        index = MemoryVectorIndex(embedder.dim, max_per_namespace=size + 1_000, ann=ann)
        take = pool[:size]
        synthetic = size - len(take)
        for start in range(0, len(take), 100_000):
            chunk = take[start : start + 100_000]
            index.add_many(NS, CTX, [f"q{i}" for i in chunk], real[chunk])
        for start in range(0, synthetic, 100_000):
            n = min(100_000, synthetic - start)
            index.add_many(NS, CTX, [f"s{start + i}" for i in range(n)], blends(real[pool], n, rng))
        index.wait_for_builds()
        build_s, build_cpu = time.perf_counter() - t0, time.process_time() - cpu0
        memory = rss_mb() - rss_before
        approximate = index.approximate(NS, CTX)

        embed_ms, search_ms, total_ms, vectors, found = [], [], [], [], []
        for text in query_texts:
            t1 = time.perf_counter()
            vector = embedder.embed_one(text)
            t2 = time.perf_counter()
            result = index.search_now(NS, CTX, vector, 1)
            t3 = time.perf_counter()
            embed_ms.append((t2 - t1) * 1000)
            search_ms.append((t3 - t2) * 1000)
            total_ms.append((t3 - t1) * 1000)
            vectors.append(vector)
            found.append(result[0] if result else ("", -1.0))
        queries = np.stack(vectors)
        exact_ms = []
        for vector in queries[:50]:
            t1 = time.perf_counter()
            index.search_exact(NS, CTX, vector, 1)
            exact_ms.append((time.perf_counter() - t1) * 1000)
        insert_ms, remove_ms = [], []  # what a store and an eviction cost at this size
        for i, vector in enumerate(queries[:100]):
            t1 = time.perf_counter()
            index.add_now(NS, CTX, f"new{i}", vector)
            t2 = time.perf_counter()
            insert_ms.append((t2 - t1) * 1000)
        for i in range(len(insert_ms)):
            t1 = time.perf_counter()
            index.remove_now(NS, CTX, f"new{i}")
            remove_ms.append((time.perf_counter() - t1) * 1000)
        exact_keys, exact_scores = exact_top1(index, queries)
        # a tie (same score, other key) is as good as the exact answer
        right = [k == ek or s >= es - 1e-5 for (k, s), ek, es in zip(found, exact_keys, exact_scores)]
        servable = [r for r, es in zip(right, exact_scores) if es >= SERVABLE]
        planted_found = sum(found[i][0] == f"q{planted[i][0]}" for i in range(n_planted))
        row = {
            "entries": size,
            "synthetic": synthetic,
            "approximate": approximate,
            "embed_p50_ms": round(statistics.median(embed_ms), 3),
            "search_p50_ms": round(statistics.median(search_ms), 3),
            "search_p99_ms": round(pct(search_ms, 99), 3),
            "exact_search_p50_ms": round(statistics.median(exact_ms), 3),
            "lookup_p50_ms": round(statistics.median(total_ms), 3),
            "lookup_p99_ms": round(pct(total_ms, 99), 3),
            "recall_at_1": round(sum(right) / len(right), 4),
            "recall_at_1_servable": round(sum(servable) / len(servable), 4) if servable else None,
            "servable_queries": len(servable),
            "planted_found": planted_found,
            "planted": n_planted,
            "insert_p50_ms": round(statistics.median(insert_ms), 3),
            "remove_p50_ms": round(statistics.median(remove_ms), 3),
            "build_s": round(build_s, 2),
            "build_cpu_s": round(build_cpu, 2),
            "memory_mb": round(memory),
            "load_avg": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        }
        rows.append(row)
        print(
            f"{size:>9,} entries ({'approximate' if approximate else 'exact'}): embed p50 {row['embed_p50_ms']:.2f} ms"
            f" + search p50 {row['search_p50_ms']:.2f} ms = look-up p50 {row['lookup_p50_ms']:.2f} ms"
            f" (p99 {row['lookup_p99_ms']:.2f}); exact search p50 {row['exact_search_p50_ms']:.2f} ms\n"
            f"           recall@1 {row['recall_at_1']:.3f} (servable ≥{SERVABLE}: {row['recall_at_1_servable']}"
            f" of {len(servable)}); planted duplicate found {planted_found}/{n_planted}; load+build"
            f" {build_s:.1f} s ({build_cpu:.1f} CPU-s), +{memory:.0f} MB; load avg {load_before:.2f}→"
            f"{row['load_avg'][1]:.2f}; insert p50 {row['insert_p50_ms']:.3f} ms, remove p50"
            f" {row['remove_p50_ms']:.3f} ms",
            flush=True,
        )
        del index
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
