"""Shared by the cache stages: answering from a cached entry, and storing a fresh answer once complete."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from tokenomy.cache.answers import CachedAnswer, StreamAssembler, is_complete, iterate, replay_chunks, storable_body
from tokenomy.pipeline.call import Call, CostItem
from tokenomy.pipeline.reply import Completion, Reply, StreamReply
from tokenomy.pricing.cost import cost_usd
from tokenomy.providers.base import ChatStream
from tokenomy.providers.usage import Usage

log = logging.getLogger(__name__)

CACHE_HEADER = "x-tokenomy-cache"
SIMILARITY_HEADER = "x-tokenomy-cache-similarity"
KEY_HEADER = "x-tokenomy-cache-key"


def answer_from_cache(
    call: Call,
    answer: CachedAnswer,
    status: str,
    *,
    key: str,
    lookup_usd: float = 0.0,
    similarity: float | None = None,
) -> Reply:
    """Serve ``answer``: cost items for the look-up, the baseline it saved, JSON or a replayed stream."""
    call.cache_status = status
    call.model_served = answer.model_served
    call.provider = "cache"
    call.trace.add(CostItem("cache_lookup", "cache", "tokenomy", Usage(), lookup_usd))
    if call.trace.baseline_usd is None and call.baseline_price is not None:
        # what the call would have cost sent as asked: the answer's tokens at the asked model's price
        call.trace.baseline_usd = cost_usd(call.baseline_price, answer.usage)
    headers = {CACHE_HEADER: status, KEY_HEADER: key}
    if similarity is not None:
        headers[SIMILARITY_HEADER] = f"{similarity:.4f}"
        call.annotations["cache_similarity"] = round(similarity, 4)
    call.annotations["cache_entry"] = key
    body = answer.completion()
    if not call.stream:
        return Completion(body, headers=headers)
    stream = ChatStream(iterate(replay_chunks(body)))
    return StreamReply(stream, call, headers=headers)


Store = Callable[[CachedAnswer], Awaitable[None]]


async def store_when_complete(
    call: Call,
    reply: Reply,
    namespace: str,
    tags: tuple[str, ...],
    store: Store,
    *,
    allow_truncated: bool = False,
    intent: str | None = None,
) -> None:
    """Call ``store(answer)`` once the reply is whole; never for errors, cut streams or truncated answers."""

    def build(body: dict[str, Any]) -> CachedAnswer:
        usage = Usage.from_openai(body.get("usage")) or call.trace.usage()
        return CachedAnswer(
            body=storable_body(body),
            usage=usage,
            model_served=call.model_served,
            provider=call.provider,
            namespace=namespace,
            tags=tags,
            request_id=call.request_id,
            intent=intent,
        )

    async def save(body: dict[str, Any]) -> None:
        if call.outcome != "ok" or not is_complete(body, allow_truncated=allow_truncated):
            return
        try:
            await store(build(body))
        except Exception:  # the answer is already on its way: a cache write failure only costs a future hit
            log.exception("cache store failed for %s", call.request_id)

    if isinstance(reply, Completion):
        await save(reply.body)
        return
    assembler = StreamAssembler()

    def collect(chunk: dict[str, Any]) -> dict[str, Any]:
        assembler.add(chunk)
        return chunk

    async def finished(r: StreamReply, exc: BaseException | None) -> None:
        if exc is None and r.stream.completed and r.error is None:
            await save(assembler.completion())

    reply.transform(collect)
    reply.on_finish(finished)

