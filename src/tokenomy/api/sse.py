"""Server-sent events out of the gateway: a small ASGI response that streams
events as they come, stops the upstream when the client leaves, and always
finalizes the call (records it, settles its cost) exactly once.

Written against raw ASGI rather than Starlette's ``StreamingResponse``: one
``send`` per event with nothing wrapped around it, and the disconnect watch is
a single task instead of a task group per response.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from tokenomy.api.http import ClientGone
from tokenomy.pipeline.reply import StreamReply


class SSEResponse(Response):
    media_type = "text/event-stream"

    def __init__(self, reply: StreamReply, events: AsyncIterator[bytes]) -> None:
        headers = {
            **reply.call.response_headers(),
            **reply.headers,
            "cache-control": "no-cache",
            "x-accel-buffering": "no",
        }
        headers.pop("x-tokenomy-cost-usd", None)  # not known yet: it arrives with the final usage
        headers.pop("x-tokenomy-baseline-cost-usd", None)
        self.status_code = 200
        self.background = None
        self.init_headers(headers)
        self.reply = reply
        self.events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pump = asyncio.ensure_future(self._pump(send))
        watcher = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait((pump, watcher), return_when=asyncio.FIRST_COMPLETED)
            if not pump.done():  # the client left: stop reading upstream
                pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await pump
        finally:
            watcher.cancel()
            if not pump.done():
                pump.cancel()
            reply = self.reply
            if not reply.stream.completed:
                await reply.stream.aclose()
            await reply.finish(None if reply.stream.completed else ClientGone())

    async def _pump(self, send: Send) -> None:
        """Relay events; events that are ready together leave in one write.

        A reader task pulls events as fast as the upstream delivers them; the
        writer sends whatever has accumulated since its last write. No event
        waits for another — when the upstream trickles, every event is its own
        write — but a burst (cache replay, a fast upstream) costs one ``send``
        instead of one per event.
        """
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        ready: list[bytes] = []
        wake = asyncio.Event()
        finished = False

        async def read() -> None:
            nonlocal finished
            try:
                async for data in self.events:
                    ready.append(data)
                    wake.set()
            finally:
                finished = True
                wake.set()

        reader = asyncio.ensure_future(read())
        try:
            while True:
                await wake.wait()
                wake.clear()
                if ready:
                    body = ready[0] if len(ready) == 1 else b"".join(ready)
                    ready.clear()
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                if finished and not ready:
                    break
            reader.result()  # re-raise what broke the reader, if anything
        finally:
            if not reader.done():
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
            await self.events.aclose()  # type: ignore[attr-defined]
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _disconnected(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
