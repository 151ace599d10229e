"""In-flight coalescing: identical requests arriving while the first is upstream share its one call.

The first request for a key (the leader) goes upstream; the others (followers)
wait for its answer. Streams fan out live: every chunk the leader's upstream
sends is handed to each streaming follower as it arrives. If the leader fails,
its followers elect a new leader among themselves, so one failure does not turn
into fifty upstream calls — nor into fifty errors.

Across replicas (``backend: redis``) the local leader also takes a Redis lock;
a replica that loses the race waits for the winner to publish the whole answer
(pub/sub + a short-lived result key) and replays it. Streams do not fan out
live across replicas: remote followers get the answer once it is complete.

Only requests that may be served from cache are coalesced (same rules as the
exact cache: deterministic, or opted in; never with ``x-tokenomy-cache: off``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from tokenomy.cache.answers import CachedAnswer, StreamAssembler, is_complete, iterate, replay_chunks, storable_body
from tokenomy.cache.plan import CachePlanner
from tokenomy.cache.serve import CACHE_HEADER, KEY_HEADER
from tokenomy.config import CoalesceSettings
from tokenomy.errors import GatewayError, UpstreamError
from tokenomy.pipeline.call import Call, CostItem
from tokenomy.pipeline.reply import Completion, Reply, StreamReply
from tokenomy.pipeline.runner import Next, Stage
from tokenomy.pricing.cost import cost_usd
from tokenomy.providers.base import ChatStream
from tokenomy.providers.usage import Usage

log = logging.getLogger(__name__)

COALESCED_HEADER = "x-tokenomy-coalesced"


class Flight:
    """One upstream call that several identical requests wait on."""

    def __init__(self) -> None:
        self.chunks: list[dict[str, Any]] = []  # stream chunks as they arrive (live fan-out)
        self.streaming = False
        self.changed = asyncio.Event()
        self.done = False
        self.answer: CachedAnswer | None = None  # set when the leader's answer is whole
        self.followers = 0

    def push(self, chunk: dict[str, Any]) -> None:
        copied = dict(chunk)
        if isinstance(copied.get("usage"), dict):
            copied["usage"] = dict(copied["usage"])
        self.chunks.append(copied)
        self._wake()

    def finish(self, answer: CachedAnswer | None) -> None:
        self.answer = answer
        self.done = True
        self._wake()

    def _wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    async def wait_done(self, timeout: float) -> CachedAnswer | None:
        deadline = time.monotonic() + timeout
        while not self.done:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except asyncio.TimeoutError:
                return None
        return self.answer


class RemoteFlights:
    """Cross-replica leadership and answer hand-off through Redis."""

    def __init__(self, url: str, prefix: str, lock_ttl_s: float, client: Any = None) -> None:
        self.url = url
        self.prefix = prefix
        self.lock_ttl_ms = int(lock_ttl_s * 1000)
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            import redis.asyncio as redis

            self._client = redis.Redis.from_url(self.url)
        return self._client

    async def try_lead(self, key: str) -> str | None:
        token = uuid.uuid4().hex
        ok = await self.client.set(f"{self.prefix}:lock:{key}", token, nx=True, px=self.lock_ttl_ms)
        return token if ok else None

    async def publish(self, key: str, token: str, answer: CachedAnswer | None) -> None:
        pipe = self.client.pipeline(transaction=False)
        if answer is not None:
            pipe.set(f"{self.prefix}:result:{key}", answer.dumps(), px=60_000)
        pipe.delete(f"{self.prefix}:lock:{key}")
        pipe.publish(f"{self.prefix}:done:{key}", b"ok" if answer is not None else b"failed")
        await pipe.execute()

    async def wait(self, key: str, timeout: float) -> tuple[str, CachedAnswer | None]:
        """``("ok", answer)``, ``("failed", None)`` when the leader gave up, ``("timeout", None)``."""
        pubsub = self.client.pubsub()
        await pubsub.subscribe(f"{self.prefix}:done:{key}")
        deadline = time.monotonic() + timeout
        try:
            while True:
                data = await self.client.get(f"{self.prefix}:result:{key}")
                if data is not None:
                    return "ok", CachedAnswer.loads(data)
                if not await self.client.exists(f"{self.prefix}:lock:{key}"):
                    return "failed", None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return "timeout", None
                await pubsub.get_message(ignore_subscribe_messages=True, timeout=min(0.5, remaining))
        finally:
            await pubsub.unsubscribe()
            await pubsub.aclose()

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


class CoalesceStage(Stage):
    name = "coalesce"

    def __init__(self, planner: CachePlanner, settings: CoalesceSettings, remote: RemoteFlights | None = None) -> None:
        self.planner = planner
        self.settings = settings
        self.remote = remote
        self.flights: dict[str, Flight] = {}
        #: upstream calls made by leaders (for tests and metrics)
        self.leaders = 0

    async def __call__(self, call: Call, next: Next) -> Reply:
        plan = self.planner.plan(call)
        if plan is None or plan.control.bypass or not plan.servable:
            return await next(call)
        key = plan.key
        deadline = time.monotonic() + self.settings.wait_timeout_s
        while True:
            flight = self.flights.get(key)
            if flight is None:
                return await self._lead(call, next, key)
            if time.monotonic() >= deadline:
                return await next(call)
            flight.followers += 1
            if call.stream and (flight.streaming or not flight.done):
                reply = await self._follow_stream(call, flight, key, deadline)
            else:
                answer = await flight.wait_done(deadline - time.monotonic())
                reply = self._from_answer(call, answer, key) if answer is not None else None
            if reply is not None:
                return reply
            # the leader failed before anything reached us: loop, and lead or follow the next leader

    # -- leader ------------------------------------------------------------------------------
    async def _lead(self, call: Call, next: Next, key: str) -> Reply:
        flight = Flight()
        self.flights[key] = flight
        token: str | None = None
        try:
            if self.remote is not None:
                answer, token = await self._remote_answer(key)
                if answer is not None:
                    self._land(key, flight, answer)
                    return self._from_answer(call, answer, key)
            self.leaders += 1
            reply = await next(call)
        except BaseException:
            await self._land_remote(key, token, None)
            self._land(key, flight, None)
            raise
        if isinstance(reply, Completion):
            answer = self._answer(call, reply.body)
            await self._land_remote(key, token, answer)
            self._land(key, flight, answer)
            return reply
        flight.streaming = True
        assembler = StreamAssembler()

        def fan_out(chunk: dict[str, Any]) -> dict[str, Any]:
            assembler.add(chunk)
            flight.push(chunk)
            return chunk

        async def finished(r: StreamReply, exc: BaseException | None) -> None:
            answer = None
            if exc is None and r.stream.completed and r.error is None:
                answer = self._answer(call, assembler.completion())
            await self._land_remote(key, token, answer)
            self._land(key, flight, answer)

        reply.transform(fan_out)
        reply.on_finish(finished)
        return reply

    async def _remote_answer(self, key: str) -> tuple[CachedAnswer | None, str | None]:
        """Lead across replicas (``(None, lock token)``) or wait out the replica that does (``(answer, None)``)."""
        assert self.remote is not None
        deadline = time.monotonic() + self.settings.wait_timeout_s
        try:
            while time.monotonic() < deadline:
                token = await self.remote.try_lead(key)
                if token is not None:
                    return None, token
                status, answer = await self.remote.wait(key, deadline - time.monotonic())
                if status == "ok":
                    return answer, None
                if status == "timeout":
                    break
        except Exception:  # Redis unreachable: coalesce within this replica only
            log.exception("cross-replica coalescing failed; going upstream")
        return None, None

    async def _land_remote(self, key: str, token: str | None, answer: CachedAnswer | None) -> None:
        if self.remote is None or token is None:
            return
        try:
            await self.remote.publish(key, token, answer)
        except Exception:
            log.exception("publishing a coalesced answer failed")

    def _land(self, key: str, flight: Flight, answer: CachedAnswer | None) -> None:
        if self.flights.get(key) is flight:
            del self.flights[key]
        flight.finish(answer)

    def _answer(self, call: Call, body: dict[str, Any]) -> CachedAnswer | None:
        if call.outcome != "ok" or not is_complete(body, allow_truncated=True):
            return None
        return CachedAnswer(
            body=storable_body(body),
            usage=Usage.from_openai(body.get("usage")) or call.trace.usage(),
            model_served=call.model_served,
            provider=call.provider,
            namespace="",
            request_id=call.request_id,
        )

    # -- followers ---------------------------------------------------------------------------
    def _account(self, call: Call, usage: Usage, model: str | None, key: str) -> dict[str, str]:
        call.cache_status = "coalesced"
        call.provider = "cache"
        call.model_served = model
        call.trace.add(CostItem("coalesced", "cache", "tokenomy", Usage(), 0.0))
        if call.trace.baseline_usd is None and call.baseline_price is not None:
            call.trace.baseline_usd = cost_usd(call.baseline_price, usage)
        return {COALESCED_HEADER: "true", CACHE_HEADER: "miss", KEY_HEADER: key}

    def _from_answer(self, call: Call, answer: CachedAnswer, key: str) -> Reply:
        headers = self._account(call, answer.usage, answer.model_served, key)
        body = answer.completion()
        if not call.stream:
            return Completion(body, headers=headers)
        return StreamReply(ChatStream(iterate(replay_chunks(body))), call, headers=headers)

    async def _follow_stream(self, call: Call, flight: Flight, key: str, deadline: float) -> Reply | None:
        """A stream fed by the leader's chunks as they arrive; ``None`` if the leader failed first."""
        # wait for the first chunk (or the end) so a leader that fails early lets us retry cleanly
        while not flight.chunks and not flight.done:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            waiter = flight.changed
            try:
                await asyncio.wait_for(waiter.wait(), remaining)
            except asyncio.TimeoutError:
                return None
        if flight.done and not flight.streaming:
            return self._from_answer(call, flight.answer, key) if flight.answer is not None else None
        if flight.done and flight.answer is None and not flight.chunks:
            return None
        headers = self._account(call, Usage(), None, key)
        stage = self

        async def chunks() -> AsyncIterator[dict[str, Any]]:
            sent = 0
            while True:
                while sent < len(flight.chunks):
                    chunk = flight.chunks[sent]
                    sent += 1
                    out = dict(chunk)
                    if isinstance(out.get("usage"), dict):
                        out["usage"] = dict(out["usage"])
                    yield out
                if flight.done:
                    break
                await flight.changed.wait()
            if flight.answer is None:
                raise UpstreamError("the shared upstream answer broke off")
            stage._settle_follower(call, flight.answer)

        reply = StreamReply(ChatStream(chunks()), call, headers=headers)
        return reply

    def _settle_follower(self, call: Call, answer: CachedAnswer) -> None:
        call.model_served = answer.model_served
        if call.baseline_price is not None:
            call.trace.baseline_usd = cost_usd(call.baseline_price, answer.usage)


__all__ = ["CoalesceStage", "Flight", "RemoteFlights", "GatewayError"]
