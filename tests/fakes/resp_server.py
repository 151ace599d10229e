"""A Redis stand-in that speaks RESP and answers only when the test says so.

For what a real Redis will not do on cue: stay silent (timeouts), drop the
connection mid-command, answer several commands at once.
"""

from __future__ import annotations

import asyncio
import contextlib

import hiredis


class RespServer:
    """Accepts connections on 127.0.0.1; every command received is kept in ``commands``.

    ``reply(data)`` writes raw RESP to the newest connection; ``drop()`` closes it.
    """

    def __init__(self) -> None:
        self.commands: list[list[bytes]] = []
        self.connections = 0
        self._server: asyncio.base_events.Server | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._received = asyncio.Condition()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def __aenter__(self) -> RespServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.drop()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writer = writer
        parser = hiredis.Reader()  # a command is a RESP array of bulk strings, parsed like a reply
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                parser.feed(data)
                while (command := parser.gets()) is not False:
                    async with self._received:
                        self.commands.append(command)
                        self._received.notify_all()

    async def wait_for(self, count: int) -> None:
        """Until ``count`` commands have arrived in all."""
        async with self._received:
            await asyncio.wait_for(self._received.wait_for(lambda: len(self.commands) >= count), 5)

    def reply(self, data: bytes) -> None:
        assert self._writer is not None
        self._writer.write(data)

    def drop(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
