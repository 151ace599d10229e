"""What the gateway adds: latency and throughput, gateway vs direct, in one run.

Three processes per measurement (load generator, gateway, upstream) so none
shares a GIL with another. Targets compared in the same run on the same machine:

- ``direct``: the load generator calls the fake OpenAI upstream itself;
- ``gw-http``: through the gateway (one worker, full pipeline, SQLite ledger on) to that upstream;
- ``gw-sim``: through the gateway to the built-in simulated model with zero latency
  (no upstream hop: the gateway's whole cost).

Added latency = gw-http − direct at the same percentile and concurrency.
Targets (issue #2): added p50 ≤ 1 ms at concurrency 1; ≥ 1,500 req/s at
concurrency 64 over the HTTP upstream.

    python bench/overhead.py [--duration 3] [--concurrency 1 16 64]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
#: {n} makes every request distinct, so the full pipeline runs (cache lookup misses,
#: nothing is coalesced) as it would for real traffic
PROMPT = "Summarize the benefits of caching in three short sentences please (request {n})."


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not become ready")


def start_upstream(port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.openai_upstream", "--port", str(port)], cwd=ROOT, env=os.environ.copy()
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("upstream did not start")


def start_gateway(port: int, upstream_port: int, workdir: Path) -> subprocess.Popen:
    config = workdir / "tokenomy.yaml"
    config.write_text(
        f"""
server: {{port: {port}}}
ledger: {{url: "sqlite:///{workdir / 'ledger.db'}"}}
log_level: warning
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


def load(port: int, body: dict, concurrency: int, duration: float, path: str = "/v1/chat/completions") -> dict:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "loadgen.py"),
            "--port",
            str(port),
            "--path",
            path,
            "--body",
            json.dumps(body),
            "--concurrency",
            str(concurrency),
            "--duration",
            str(duration),
            "--header",
            "Authorization: Bearer sk-fake",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(out.stdout)
    result.pop("latencies_ms")
    return result


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (robust on a busy machine, unlike wall time)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def load_measured(port: int, body: dict, concurrency: int, duration: float, pid: int) -> dict:
    """``load`` plus the gateway's CPU time per answered request (µs)."""
    before = cpu_seconds(pid)
    result = load(port, body, concurrency, duration)
    spent = cpu_seconds(pid) - before
    # warm-up requests are not counted by the load generator but cost CPU: bound them out
    result["cpu_us_per_req"] = round(spent / max(result["requests"], 1) * 1e6, 1)
    return result


def chat_body(model: str, stream: bool) -> dict:
    body: dict = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 64}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--json", dest="json_out", help="also write the results to this file")
    args = parser.parse_args()

    upstream_port, gateway_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        upstream = start_upstream(upstream_port)
        gateway = start_gateway(gateway_port, upstream_port, Path(tmp))
        rows = []
        try:
            for stream in (False, True):
                mode = "stream" if stream else "json"
                for concurrency in args.concurrency:
                    direct = load(upstream_port, chat_body("gpt", stream), concurrency, args.duration)
                    via_http = load_measured(
                        gateway_port, chat_body("bench-http", stream), concurrency, args.duration, gateway.pid
                    )
                    via_sim = load_measured(
                        gateway_port, chat_body("sim-mini", stream), concurrency, args.duration, gateway.pid
                    )
                    rows.append(
                        {
                            "mode": mode,
                            "concurrency": concurrency,
                            "direct": direct,
                            "gw_http": via_http,
                            "gw_sim": via_sim,
                            "added_p50_ms": round(via_http["p50_ms"] - direct["p50_ms"], 3),
                            "added_p99_ms": round(via_http["p99_ms"] - direct["p99_ms"], 3),
                        }
                    )
                    print_row(rows[-1])
            rows_in_ledger = ledger_count(gateway_port)
        finally:
            for proc in (gateway, upstream):
                proc.terminate()
                proc.wait(30)
    print_table(rows)
    print(f"\nledger writer at the end of the run: {rows_in_ledger}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=2))


def ledger_count(port: int) -> str:
    ready = httpx.get(f"http://127.0.0.1:{port}/readyz").json()
    return f"pending={ready['ledger']['pending_rows']} dropped={ready['ledger']['dropped_rows']}"


def print_row(row: dict) -> None:
    print(
        f"{row['mode']:6} c={row['concurrency']:<3} direct {row['direct']['rps']:>7.0f} rps p50 {row['direct']['p50_ms']:.3f}"
        f" | gw-http {row['gw_http']['rps']:>7.0f} rps p50 {row['gw_http']['p50_ms']:.3f}"
        f" | gw-sim {row['gw_sim']['rps']:>7.0f} rps p50 {row['gw_sim']['p50_ms']:.3f}",
        file=sys.stderr,
    )


def print_table(rows: list[dict]) -> None:
    header = (
        f"{'mode':6} {'conc':>4} | {'direct rps':>10} {'p50':>7} {'p99':>7} | {'gw-http rps':>11} {'p50':>7} {'p99':>7}"
        f" | {'added p50':>9} {'added p99':>9} | {'gw-sim rps':>10} {'p50':>7} {'p99':>7}"
        f" | {'cpu µs/req http':>15} {'sim':>6}"
    )
    print("\n" + header)
    print("-" * len(header))
    for row in rows:
        d, h, s = row["direct"], row["gw_http"], row["gw_sim"]
        print(
            f"{row['mode']:6} {row['concurrency']:>4} | {d['rps']:>10.0f} {d['p50_ms']:>7.3f} {d['p99_ms']:>7.3f}"
            f" | {h['rps']:>11.0f} {h['p50_ms']:>7.3f} {h['p99_ms']:>7.3f}"
            f" | {row['added_p50_ms']:>9.3f} {row['added_p99_ms']:>9.3f}"
            f" | {s['rps']:>10.0f} {s['p50_ms']:>7.3f} {s['p99_ms']:>7.3f}"
            f" | {h['cpu_us_per_req']:>15.0f} {s['cpu_us_per_req']:>6.0f}"
        )
    print("latencies in ms; added = gw-http − direct at the same percentile and concurrency")
    print("cpu µs/req: the gateway process's CPU time per answered request (includes warm-up and ledger writes)")


if __name__ == "__main__":
    main()
