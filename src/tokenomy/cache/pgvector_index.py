"""The shared semantic index: vectors in PostgreSQL with pgvector, searched by every replica.

One table (default ``tokenomy_semantic_cache``) keyed by (namespace, context,
key) with an HNSW index on the vectors (cosine) and a b-tree on (namespace,
context). Searches filter by namespace and context first; for small partitions
the planner uses the b-tree and sorts exactly, for large ones the HNSW index
with iterative scans (pgvector ≥ 0.8) so the filter never starves the result.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import orjson

from tokenomy.cache.index import VectorIndex

_TABLE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _literal(vector: np.ndarray) -> str:
    # 9 significant digits round-trip a float32 exactly: ``get`` returns the vector that was added
    return "[" + ",".join(f"{float(v):.9g}" for v in np.asarray(vector, dtype=np.float32)) + "]"


def _parse(text: str) -> np.ndarray:
    """pgvector's text form ``[0.1,0.2,…]`` → float32 (stored as float4: the same numbers it was given)."""
    return np.array(orjson.loads(text), dtype=np.float32)


class PgVectorIndex(VectorIndex):
    def __init__(self, url: str, dim: int = 384, table: str = "tokenomy_semantic_cache", pool_size: int = 4) -> None:
        if not _TABLE.match(table):
            raise ValueError(f"invalid table name {table!r}")
        self.url = url
        self.dim = dim
        self.table = table
        self.pool_size = pool_size
        self._pool: Any = None

    async def start(self) -> None:
        import asyncpg

        async def init(conn: Any) -> None:
            await conn.execute("SET hnsw.iterative_scan = relaxed_order")

        setup = await asyncpg.connect(self.url)
        try:
            await setup.execute("CREATE EXTENSION IF NOT EXISTS vector")
            await setup.execute(
                f"""CREATE TABLE IF NOT EXISTS {self.table} (
                    namespace text NOT NULL,
                    context text NOT NULL,
                    key text NOT NULL,
                    embedding vector({self.dim}) NOT NULL,
                    created_at timestamptz NOT NULL DEFAULT now(),
                    PRIMARY KEY (namespace, context, key))"""
            )
            await setup.execute(
                f"CREATE INDEX IF NOT EXISTS {self.table}_hnsw ON {self.table} USING hnsw (embedding vector_cosine_ops)"
            )
            await setup.execute(f"CREATE INDEX IF NOT EXISTS {self.table}_ctx ON {self.table} (namespace, context)")
        finally:
            await setup.close()
        self._pool = await asyncpg.create_pool(self.url, min_size=1, max_size=self.pool_size, init=init)

    async def add(self, namespace: str, context: str, key: str, vector: np.ndarray) -> None:
        await self._pool.execute(
            f"""INSERT INTO {self.table} (namespace, context, key, embedding) VALUES ($1, $2, $3, $4::vector)
                ON CONFLICT (namespace, context, key) DO UPDATE SET embedding = EXCLUDED.embedding, created_at = now()""",
            namespace,
            context,
            key,
            _literal(vector),
        )

    async def search(self, namespace: str, context: str, vector: np.ndarray, k: int = 1) -> list[tuple[str, float]]:
        rows = await self._pool.fetch(
            f"""SELECT key, 1 - (embedding <=> $3::vector) AS similarity FROM {self.table}
                WHERE namespace = $1 AND context = $2 ORDER BY embedding <=> $3::vector LIMIT $4""",
            namespace,
            context,
            _literal(vector),
            k,
        )
        return [(row["key"], float(row["similarity"])) for row in rows]

    async def get(self, namespace: str, context: str, key: str) -> np.ndarray | None:
        text = await self._pool.fetchval(
            f"SELECT embedding::text FROM {self.table} WHERE namespace = $1 AND context = $2 AND key = $3",
            namespace,
            context,
            key,
        )
        return None if text is None else _parse(text)

    async def remove(self, namespace: str, context: str, key: str) -> None:
        await self._pool.execute(
            f"DELETE FROM {self.table} WHERE namespace = $1 AND context = $2 AND key = $3", namespace, context, key
        )

    async def clear(self, namespace: str | None = None) -> int:
        if namespace is None:
            status = await self._pool.execute(f"DELETE FROM {self.table}")
        else:
            status = await self._pool.execute(f"DELETE FROM {self.table} WHERE namespace = $1", namespace)
        return int(status.split()[-1])

    async def count(self) -> int:
        return int(await self._pool.fetchval(f"SELECT count(*) FROM {self.table}"))

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
