"""``RedisConnection``: one pipelined connection to Redis for the hot path.

The budget stage sends one script call per request and waits for its answer;
everything else about a general-purpose client is overhead on that path.
redis-py's asyncio client checks a connection out of a pool, wraps every send
and every read in its own timeout and encodes each argument in Python: in
``bench/budget_overhead.py`` that cost more than the round trip itself. This
connection does the minimum: ``hiredis.pack_command`` encodes a command in C,
one ``transport.write`` sends it, a ``hiredis.Reader`` parses replies as they
arrive, and each reply resolves the oldest waiting future — Redis answers in
order, so any number of callers share the connection, pipelined, without a
pool or a lock.

One timer watches the oldest command: a command unanswered after
``timeout_s`` fails with ``RedisUnavailable`` and the connection is dropped
(its later replies could no longer be matched to their callers); the next
command connects again. Use redis-py for everything else (scans, pub/sub,
administration).

    conn = RedisConnection("redis://127.0.0.1:6379/0", timeout_s=2.0)
    sha = await conn.execute("SCRIPT", "LOAD", "return 1")
    assert await conn.execute("EVALSHA", sha, 0) == 1
    await conn.aclose()
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
from typing import Any

import hiredis
from redis.asyncio.connection import SSLConnection, parse_url


def bulk(value: bytes | str | int | float) -> bytes:
    """One command argument in RESP (``$<length>\\r\\n<bytes>\\r\\n``).

    For callers that build a command from parts encoded once and reused
    (``send_packed``): joining cached bytes is several times cheaper than
    packing every argument of every call.
    """
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, str):
        data = value.encode()
    elif isinstance(value, int):
        data = b"%d" % value
    else:
        data = repr(value).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


def packed(argc: int, parts: list[bytes]) -> bytes:
    """A whole command from ``argc`` arguments already encoded with ``bulk`` (in ``parts``)."""
    return b"*%d\r\n%s" % (argc, b"".join(parts))


class RedisUnavailable(Exception):
    """Redis could not be reached, dropped the connection or did not answer in time."""


class RedisCommandError(Exception):
    """Redis answered a command with an error reply (``NOSCRIPT …``, ``WRONGTYPE …``, a script error)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def no_script(self) -> bool:
        """The script is not in Redis's cache (it restarted, or ran ``SCRIPT FLUSH``)."""
        return self.message.startswith("NOSCRIPT")


class _Protocol(asyncio.Protocol):
    """Matches replies to waiting futures, in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
        self.loop = loop
        self.timeout_s = timeout_s
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader()
        #: (future, moment sent) of every command not yet answered, oldest first
        self.waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self.lost: BaseException | None = None
        self._watch: asyncio.TimerHandle | None = None
        #: commands sent in this event-loop turn after its first, written together when it ends
        self._out: list[bytes] | None = None
        self._wrote = False  # whether this turn already wrote a command

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport subclasses

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        if self.lost is not None or self.transport is None:
            raise RedisUnavailable(f"connection to Redis lost: {self.lost}")
        future = self.loop.create_future()
        now = self.loop.time()
        self.waiting.append((future, now))
        if self._out is not None:
            self._out.append(packed)
        elif self._wrote:
            # a command already went out in this turn: the rest of the turn's go together
            self._out = [packed]
            self.loop.call_soon(self._write)
        else:
            self.transport.write(packed)  # the first of a turn goes at once: nothing waits for it
            self._wrote = True
            self.loop.call_soon(self._turn_ended)
        if self._watch is None:
            self._watch = self.loop.call_at(now + self.timeout_s, self._check)
        return future

    def _turn_ended(self) -> None:
        self._wrote = False

    def _write(self) -> None:
        """One write for the rest of the turn's commands: each write may wake Redis (and cost a context switch)."""
        out, self._out = self._out, None
        if out and self.lost is None and self.transport is not None:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        waiting = self.waiting
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self._drop(RedisUnavailable(f"Redis sent something that is not RESP: {exc}"))
                return
            if reply is False:
                return
            if not waiting:  # a reply nobody asked for: the stream is out of step
                self._drop(RedisUnavailable("Redis sent a reply no command was waiting for"))
                return
            future, _ = waiting.popleft()
            if future.done():  # its caller gave up (cancelled); the reply is dropped, order is kept
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(RedisCommandError(str(reply)))
            else:
                future.set_result(reply)

    def _check(self) -> None:
        """Fail everything if the oldest command has waited ``timeout_s``; else look again when it would have."""
        self._watch = None
        if not self.waiting:
            return
        sent = self.waiting[0][1]
        if self.loop.time() - sent >= self.timeout_s:
            self._drop(RedisUnavailable(f"Redis did not answer within {self.timeout_s}s"))
            return
        self._watch = self.loop.call_at(sent + self.timeout_s, self._check)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisUnavailable(f"Redis closed the connection ({exc or 'end of stream'})"))

    def _drop(self, exc: RedisUnavailable) -> None:
        self._fail(exc)
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, exc: RedisUnavailable) -> None:
        if self.lost is None:
            self.lost = exc
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        while self.waiting:
            future, _ = self.waiting.popleft()
            if not future.done():
                future.set_exception(exc)


def _tls_context(options: dict[str, Any]) -> ssl.SSLContext:
    """The TLS settings of a ``rediss://`` URL (``ssl_ca_certs``, ``ssl_certfile``/``ssl_keyfile``,
    ``ssl_cert_reqs=none``, ``ssl_check_hostname=false``), as redis-py reads them."""
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    if options.get("ssl_certfile"):
        context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile"))
    if options.get("ssl_check_hostname") is False:
        context.check_hostname = False
    if options.get("ssl_cert_reqs") in ("none", ssl.CERT_NONE):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class RedisConnection:
    """A single pipelined connection, opened on first use and again after it is lost.

    ``url`` is read as redis-py reads it: ``redis://[user:password@]host:port/db``,
    ``rediss://`` (TLS) and ``unix:///path?db=N``.
    """

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, timeout_s: float = 2.0) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._options: dict[str, Any] = dict(parse_url(url))
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    def send_packed(self, command: bytes) -> asyncio.Future[Any] | None:
        """Send a command already in RESP (see ``packed``) now, if connected; ``None`` if not.

        Returns the future of its reply, for callers that would rather add a
        callback than await (a ``RedisCommandError`` for an error reply,
        ``RedisUnavailable`` if the connection is lost first).
        """
        protocol = self._protocol
        if protocol is None or protocol.lost is not None:
            return None
        return protocol.send(command)

    async def execute(self, *args: Any) -> Any:
        """Send one command and wait for its reply (connecting first if needed)."""
        return await self.execute_packed(hiredis.pack_command(args))

    async def execute_packed(self, command: bytes) -> Any:
        """``execute`` for a command already in RESP (see ``packed``)."""
        protocol = self._protocol
        if protocol is None or protocol.lost is not None:
            protocol = await self._connect()
        return await protocol.send(command)

    async def _connect(self) -> _Protocol:
        """Open the connection once for every caller waiting on it."""
        connecting = self._connecting
        if connecting is None or connecting.done():
            connecting = self._connecting = asyncio.ensure_future(self._open())
            # read the outcome even if every caller gave up waiting (no "exception never retrieved")
            connecting.add_done_callback(lambda done: done.cancelled() or done.exception())
        return await asyncio.shield(connecting)

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        options = self._options
        try:
            if "path" in options:
                opening = loop.create_unix_connection(lambda: _Protocol(loop, self.timeout_s), options["path"])
            else:
                host, port = options.get("host", "127.0.0.1"), int(options.get("port", 6379))
                context = _tls_context(options) if options.get("connection_class") is SSLConnection else None
                opening = loop.create_connection(
                    lambda: _Protocol(loop, self.timeout_s), host, port, ssl=context, server_hostname=host if context else None
                )
            _, protocol = await asyncio.wait_for(opening, self.timeout_s)
        except (OSError, asyncio.TimeoutError) as exc:
            raise RedisUnavailable(f"cannot connect to Redis at {self.url}: {exc!r}") from exc
        transport = protocol.transport
        assert transport is not None
        # Nagle would hold a small command back until the previous one is acknowledged
        sock = transport.get_extra_info("socket")
        if sock is not None and "path" not in options:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            password = options.get("password")
            if password:
                username = options.get("username")
                auth = ("AUTH", username, password) if username else ("AUTH", password)
                await protocol.send(hiredis.pack_command(auth))
            db = int(options.get("db", 0) or 0)
            if db:
                await protocol.send(hiredis.pack_command(("SELECT", db)))
        except BaseException:
            transport.abort()
            raise
        self._protocol = protocol
        return protocol

    async def aclose(self) -> None:
        """Close the connection; commands still waiting fail with ``RedisUnavailable``."""
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()
            protocol._fail(RedisUnavailable("connection closed"))
