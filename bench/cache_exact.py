"""Exact-cache hit latency end to end, against a miss baseline measured in the same run.

Processes: load generator, gateway (one worker, full pipeline, ledger on),
fake OpenAI upstream. Rows (same prompt, same concurrency):

- ``direct``: the load generator calls the upstream itself (the floor);
- ``miss``: through the gateway with the cache bypassed (``x-tokenomy-cache: off``):
  what every miss costs, gateway hop + upstream;
- ``hit``: through the gateway, answered by the exact cache (in-process LRU);
- ``hit-redis``: the same with the shared Redis store (if Redis is up).

Target (issue #4): an exact hit adds ≤ 1 ms p50 (``hit − direct``).

    python bench/cache_exact.py [--duration 3] [--concurrency 1 16]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from overhead import free_port, start_upstream, wait_ready  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "Summarize the benefits of caching in three short sentences please."


def start_gateway(port: int, upstream_port: int, workdir: Path, backend: str) -> subprocess.Popen:
    config = workdir / f"tokenomy-{backend}.yaml"
    config.write_text(
        f"""
server: {{port: {port}}}
ledger: {{url: "sqlite:///{workdir / (backend + '-ledger.db')}"}}
log_level: warning
cache:
  backend: {backend}
  key_prefix: "bench:{uuid.uuid4().hex[:8]}"
models:
  - name: bench-http
    deployments:
      - provider: openai
        model: gpt
        base_url: http://127.0.0.1:{upstream_port}/v1
        api_key_env: BENCH_UPSTREAM_KEY
        price_model: gpt-4o-mini
"""
    )
    env = {**os.environ, "BENCH_UPSTREAM_KEY": "sk-fake"}
    proc = subprocess.Popen([sys.executable, "-m", "tokenomy.cli", "serve", "--config", str(config)], env=env)
    wait_ready(f"http://127.0.0.1:{port}/readyz")
    return proc


def load(port: int, body: dict, concurrency: int, duration: float, headers: list[str]) -> dict:
    args = [
        sys.executable,
        str(ROOT / "bench" / "loadgen.py"),
        "--port",
        str(port),
        "--body",
        json.dumps(body),
        "--concurrency",
        str(concurrency),
        "--duration",
        str(duration),
        "--header",
        "Authorization: Bearer sk-fake",
    ]
    for header in headers:
        args += ["--header", header]
    out = subprocess.run(args, check=True, capture_output=True, text=True)
    result = json.loads(out.stdout)
    result.pop("latencies_ms", None)
    return result


def redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args()
    body = {"model": "bench-http", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 64}
    direct_body = {**body, "model": "gpt"}
    rows = []
    upstream_port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        upstream = start_upstream(upstream_port)
        procs = [upstream]
        try:
            ports = {"memory": free_port()}
            procs.append(start_gateway(ports["memory"], upstream_port, Path(tmp), "memory"))
            if redis_up():
                ports["redis"] = free_port()
                procs.append(start_gateway(ports["redis"], upstream_port, Path(tmp), "redis"))
            for concurrency in args.concurrency:
                row = {"concurrency": concurrency}
                row["direct"] = load(upstream_port, direct_body, concurrency, args.duration, [])
                row["miss"] = load(ports["memory"], body, concurrency, args.duration, ["x-tokenomy-cache: off"])
                row["hit"] = load(ports["memory"], body, concurrency, args.duration, [])
                if "redis" in ports:
                    row["hit-redis"] = load(ports["redis"], body, concurrency, args.duration, [])
                rows.append(row)
                print_row(row)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(30)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=2))


def print_row(row: dict) -> None:
    direct = row["direct"]["p50_ms"]
    parts = [f"c={row['concurrency']:<3} direct p50 {direct:.3f} ms"]
    for name in ("miss", "hit", "hit-redis"):
        if name in row:
            r = row[name]
            parts.append(
                f"{name} p50 {r['p50_ms']:.3f} ms (+{r['p50_ms'] - direct:.3f}) p99 {r['p99_ms']:.3f} {r['rps']:.0f} rps"
            )
    print(" | ".join(parts), flush=True)


if __name__ == "__main__":
    main()
