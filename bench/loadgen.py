"""A lean HTTP/1.1 load generator for the benchmarks: keep-alive connections,
pre-encoded requests, per-request latency, and cheap enough on CPU that the
thing measured (not the client) is the bottleneck.

Used as a library (``run_load``) or run as a separate process by the benchmarks
so the client does not share a core's GIL with the server under test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import dataclass


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        index = min(len(ordered) - 1, max(0, int(round(q / 100 * (len(ordered) - 1)))))
        return ordered[index]

    def summary(self) -> dict[str, float]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "rps": round(self.rps, 1),
            "p50_ms": round(self.percentile(50), 3),
            "p99_ms": round(self.percentile(99), 3),
            "mean_ms": round(statistics.fmean(self.latencies_ms), 3) if self.latencies_ms else float("nan"),
        }


def build_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: keep-alive",
    ]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one response (Content-Length or chunked); return its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    index = lower.find(b"content-length:")
    if index >= 0:
        end = lower.index(b"\r\n", index)
        length = int(lower[index + 15 : end])
        await reader.readexactly(length)
        return status
    if b"transfer-encoding: chunked" in lower:
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.strip().split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                return status
    raise RuntimeError("response without length")


class RequestMaker:
    """Pre-encoded requests; a ``{n}`` in the body becomes a per-request counter, so
    every request is distinct (no cache hit, no coalescing) at almost no cost."""

    def __init__(self, host: str, port: int, path: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.fixed = None if b"{n}" in body else build_request(host, port, path, body, headers)
        self.parts = (host, port, path, body, headers)
        self.counter = 0

    def next(self) -> bytes:
        if self.fixed is not None:
            return self.fixed
        self.counter += 1
        host, port, path, body, headers = self.parts
        return build_request(host, port, path, body.replace(b"{n}", str(self.counter).encode()), headers)


async def run_load(
    host: str,
    port: int,
    request: RequestMaker,
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float = 0.5,
) -> LoadResult:
    latencies: list[float] = []
    errors = 0
    counting = False
    stop_at = 0.0

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while True:
                now = time.perf_counter()
                if stop_at and now >= stop_at:
                    return
                writer.write(request.next())
                status = await _read_response(reader)
                elapsed = (time.perf_counter() - now) * 1000.0
                if counting:
                    if status == 200:
                        latencies.append(elapsed)
                    else:
                        errors += 1
        finally:
            writer.close()

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    await asyncio.sleep(warmup_s)
    counting = True
    started = time.perf_counter()
    stop_at = started + duration_s
    await asyncio.gather(*tasks)
    seconds = time.perf_counter() - started
    return LoadResult(len(latencies), errors, seconds, latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/v1/chat/completions")
    parser.add_argument("--body", required=True, help="JSON request body; {n} becomes a per-request counter")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--header", action="append", default=[], help="extra header 'Name: value'")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    headers = dict(h.split(": ", 1) for h in args.header)
    request = RequestMaker(args.host, args.port, args.path, args.body.encode(), headers)
    result = asyncio.run(
        run_load(args.host, args.port, request, concurrency=args.concurrency, duration_s=args.duration)
    )
    json.dump({**result.summary(), "latencies_ms": result.latencies_ms}, sys.stdout)


if __name__ == "__main__":
    main()
