"""Run a real gateway (uvicorn, real sockets) in a background thread for tests.

SDK tests go through HTTP exactly as users do; nothing is patched.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn

from tokenomy.app import Gateway, build_gateway, create_app
from tokenomy.config import Settings, load_settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class GatewayServer:
    """A gateway on 127.0.0.1:<free port>, started and stopped by the test."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.gateway: Gateway = build_gateway(settings)
        self.port = free_port()
        config = uvicorn.Config(
            create_app(settings, self.gateway),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=5,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, daemon=True, name="gateway")
        self.loop: asyncio.AbstractEventLoop | None = None

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.serve())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def start(self) -> GatewayServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("gateway failed to start")
            if time.monotonic() > deadline:
                raise RuntimeError("gateway did not start in 30 s")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    def run_coro(self, coro: Any) -> Any:
        """Run a coroutine on the gateway's loop (e.g. flush the ledger) and wait for it."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def flush_ledger(self) -> None:
        if self.gateway.writer is not None:
            self.run_coro(self.gateway.writer.flush())


def wait_ready(port: int, timeout_s: float = 60.0) -> None:
    """Wait until a gateway on ``port`` answers ``/readyz`` with 200."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"gateway on port {port} not ready after {timeout_s:.0f} s")
        time.sleep(0.1)


def settings_for(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for a test: ledger in ``tmp_path`` unless overridden."""
    ledger = {"url": f"sqlite:///{tmp_path / 'ledger.db'}", "flush_interval_s": 0.05}
    ledger.update(overrides.pop("ledger", {}))
    # budget counters and the key pepper live in tmp_path too, never in the working directory
    budgets = {"state_path": str(tmp_path / "counters.db"), **overrides.pop("budgets", {})}
    keys = {"pepper_file": str(tmp_path / "key_pepper"), **overrides.pop("keys", {})}
    return load_settings(None, ledger=ledger, budgets=budgets, keys=keys, **overrides)
