"""A webhook endpoint for tests: records every delivery (headers, body), or fails on purpose."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import orjson
from aiohttp import web


class WebhookReceiver:
    def __init__(self, *, status: int = 200) -> None:
        self.status = status  # what every delivery is answered with
        self.deliveries: list[dict[str, Any]] = []
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _hook(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.deliveries.append({"headers": {k.lower(): v for k, v in request.headers.items()}, "raw": raw, "body": orjson.loads(raw)})
        return web.Response(status=self.status, text="ok" if self.status < 300 else "nope")

    def start(self) -> WebhookReceiver:
        self._thread = threading.Thread(target=self._serve, daemon=True, name="webhook-receiver")
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("webhook receiver did not start")
        return self

    def _serve(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._started.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
