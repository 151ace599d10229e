"""The exact cache stage: the same normalized request (in the same namespace) gets the stored answer.

Also reuses ``/v1/embeddings`` results per input, so the same text is never
embedded twice: only the inputs not seen before go upstream.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from tokenomy.cache.answers import CachedAnswer
from tokenomy.cache.keys import CacheControl, digest, namespace_of
from tokenomy.cache.plan import CachePlan, CachePlanner
from tokenomy.cache.serve import CACHE_HEADER, KEY_HEADER, answer_from_cache, store_when_complete
from tokenomy.cache.store import AnswerStore
from tokenomy.config import CacheSettings
from tokenomy.pipeline.call import Call, CostItem
from tokenomy.pipeline.reply import Completion, Reply
from tokenomy.pipeline.runner import Next, Stage
from tokenomy.pricing.cost import cost_usd
from tokenomy.providers.usage import Usage
from tokenomy.tokens.counting import count_text

log = logging.getLogger(__name__)


def fresh_enough(answer: CachedAnswer, control: CacheControl) -> bool:
    return control.max_age_s is None or answer.age_s() <= control.max_age_s


class ExactCacheStage(Stage):
    name = "cache_exact"

    def __init__(self, store: AnswerStore, planner: CachePlanner, settings: CacheSettings) -> None:
        self.store = store
        self.planner = planner
        self.settings = settings

    async def __call__(self, call: Call, next: Next) -> Reply:
        if call.kind == "embeddings":
            return await self._embeddings(call, next)
        plan = self.planner.plan(call)
        if plan is None:
            return await next(call)
        if plan.control.bypass:
            call.cache_status = "bypass"
            reply = await next(call)
            reply.headers[CACHE_HEADER] = "bypass"
            return reply
        if plan.exact and plan.lookup:
            answer = await self._get(plan.key)
            if answer is not None and fresh_enough(answer, plan.control):
                return answer_from_cache(call, answer, "hit-exact", key=plan.key)
        call.cache_status = "miss"
        reply = await next(call)
        if call.cache_status not in ("miss", "coalesced"):
            return reply  # answered by an inner tier (a semantic hit)
        reply.headers.setdefault(CACHE_HEADER, "miss")
        reply.headers.setdefault(KEY_HEADER, plan.key)
        if plan.store and plan.exact and call.cache_status == "miss":
            await store_when_complete(
                call, reply, plan.namespace, plan.tags, self._put_for(plan), allow_truncated=self.settings.store_truncated
            )
        return reply

    def _put_for(self, plan: CachePlan):  # noqa: ANN202 - a closure over the plan
        async def put(answer: CachedAnswer) -> None:
            if not plan.stored:  # the semantic tier may have stored it already
                await self.store.put(plan.key, answer, plan.ttl_s)
                plan.stored = True

        return put

    async def _get(self, key: str) -> CachedAnswer | None:
        try:
            return await self.store.get(key)
        except Exception:  # a cache outage is a miss, not an error
            log.exception("cache lookup failed")
            return None

    # -- embeddings reuse ------------------------------------------------------------------
    async def _embeddings(self, call: Call, next: Next) -> Reply:
        settings = self.settings
        control = CacheControl.from_headers(call.headers)
        if not (settings.enabled and settings.embeddings) or control.bypass:
            return await next(call)
        inputs = call.body.get("input")
        single = isinstance(inputs, str)
        items: list[Any] = [inputs] if single else list(inputs) if isinstance(inputs, list) else []
        if not items:
            return await next(call)
        namespace = namespace_of(call, tuple(settings.namespace_by), settings.shared)
        params = {k: v for k, v in call.body.items() if k not in ("input", "user")}
        params["model"] = call.model_asked
        keys = ["emb:" + digest([namespace, params, item]) for item in items]
        found: list[CachedAnswer | None] = [None] * len(items)
        if control.lookup:
            for i, key in enumerate(keys):
                answer = await self._get(key)
                if answer is not None and fresh_enough(answer, control):
                    found[i] = answer
        missing = [i for i, answer in enumerate(found) if answer is None]
        cached_tokens = sum(found[i].usage.input_tokens for i in range(len(items)) if found[i] is not None)
        if not missing:
            call.cache_status = "hit-exact"
            call.provider = "cache"
            call.model_served = found[0].model_served if found[0] else None
            call.trace.add(CostItem("cache_lookup", "cache", "tokenomy", Usage(), 0.0))
            call.trace.baseline_usd = cost_usd(call.baseline_price, Usage(input_tokens=cached_tokens))
            data = [{**found[i].body, "index": i} for i in range(len(items))]  # type: ignore[union-attr]
            body = {
                "object": "list",
                "data": data,
                "model": found[0].body.get("_model", call.model_asked),  # type: ignore[union-attr]
                "usage": {"prompt_tokens": cached_tokens, "total_tokens": cached_tokens},
            }
            for row in data:
                row.pop("_model", None)
            return Completion(body, headers={CACHE_HEADER: "hit-exact"})
        original = call.body
        if len(missing) < len(items):
            call.body = {**original, "input": [items[i] for i in missing]}
        try:
            reply = await next(call)
        finally:
            call.body = original
        assert isinstance(reply, Completion)
        upstream = reply.body.get("data") or []
        model = reply.body.get("model")
        if len(upstream) != len(missing):
            return reply  # unexpected shape: pass it on untouched
        by_position = {missing[j]: dict(row) for j, row in enumerate(sorted(upstream, key=lambda r: r.get("index", 0)))}
        if control.store:
            now = time.time()
            for i, row in by_position.items():
                tokens = count_text(items[i]) if isinstance(items[i], str) else len(items[i])
                entry = CachedAnswer(
                    body={**row, "_model": model},
                    usage=Usage(input_tokens=tokens),
                    model_served=call.model_served,
                    provider=call.provider,
                    namespace=namespace,
                    created_at=now,
                    tags=call.identity.tags,
                    request_id=call.request_id,
                )
                try:
                    await self.store.put(keys[i], entry, settings.ttl_s)
                except Exception:
                    log.exception("embedding cache store failed")
        if len(missing) == len(items):
            call.cache_status = "miss"
            reply.headers[CACHE_HEADER] = "miss"
            return reply
        data = []
        for i in range(len(items)):
            row = by_position.get(i)
            if row is None:
                row = {k: v for k, v in found[i].body.items() if k != "_model"}  # type: ignore[union-attr]
            data.append({**row, "index": i})
        body = {**reply.body, "data": data}
        usage = dict(body.get("usage") or {})
        usage["prompt_tokens"] = int(usage.get("prompt_tokens") or 0) + cached_tokens
        usage["total_tokens"] = int(usage.get("total_tokens") or 0) + cached_tokens
        body["usage"] = usage
        if call.baseline_price is not None:
            call.trace.baseline_usd = (call.trace.baseline_usd or 0.0) + (
                cost_usd(call.baseline_price, Usage(input_tokens=cached_tokens)) or 0.0
            )
        call.cache_status = "hit-partial"
        return Completion(body, headers={**reply.headers, CACHE_HEADER: "hit-partial"})
