"""The semantic cache stage: serve the answer to a request that asked the same thing in other words.

The intent (the last user turn) is embedded and compared only with entries of
the same namespace (tenant) and the same context key (model, system prompt,
previous turns, parameters) — see ``keys.py``. The best candidate then goes
through the lexical guards and the serving policy (``verified.py``): served
(``x-tokenomy-cache: hit-semantic`` + ``x-tokenomy-cache-similarity``), or sent
upstream and — in verified mode — compared with the fresh answer to learn.

Every lookup adds a ``cache_embedding`` cost item; a hit records the baseline it
saved. Client verdicts arrive through ``feedback()`` (``POST /v1/feedback``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from tokenomy.cache.answers import CachedAnswer, completion_text
from tokenomy.embedding import CachedEmbedder, Embedder, MiniLMEmbedder, SharedEmbedder, embed_for_call
from tokenomy.cache.exact import fresh_enough
from tokenomy.cache.guards import compare
from tokenomy.cache.ann import ANNSettings
from tokenomy.cache.index import MemoryVectorIndex, VectorIndex
from tokenomy.cache.keys import context_key, split_intent
from tokenomy.cache.plan import CachePlanner
from tokenomy.cache.serve import CACHE_HEADER, KEY_HEADER, answer_from_cache, store_when_complete
from tokenomy.cache.store import AnswerStore
from tokenomy.cache.verified import EXPLORE, HIT, VERIFY, Decision, Policy, VerifiedPolicy
from tokenomy.config import CacheSettings
from tokenomy.pipeline.call import Call, CostItem
from tokenomy.pipeline.reply import Completion, Reply, StreamReply
from tokenomy.pipeline.runner import Next, Stage
from tokenomy.providers.usage import Usage

log = logging.getLogger(__name__)

#: semantic hits remembered for feedback
MAX_FEEDBACK_ENTRIES = 100_000


class SemanticCacheStage(Stage):
    name = "cache_semantic"

    def __init__(
        self,
        settings: CacheSettings,
        store: AnswerStore,
        planner: CachePlanner,
        embedder: Embedder | None,
        index: VectorIndex | None,
        policy: Policy,
    ) -> None:
        self.settings = settings
        self.semantic = settings.semantic
        self.store = store
        self.planner = planner
        self.embedder = embedder
        self.index = index
        self.policy = policy
        self._served: OrderedDict[str, tuple[Decision, str]] = OrderedDict()
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        if self.embedder is None:
            threads = self.semantic.embed_threads
            self.embedder = CachedEmbedder(await asyncio.to_thread(MiniLMEmbedder, threads))
        elif isinstance(self.embedder, SharedEmbedder):
            await asyncio.to_thread(lambda: self.embedder.loaded)  # load the model now, not on a request
        if self.index is None:
            ann = ANNSettings(self.semantic.ann_min_entries, self.semantic.ann_probes)
            self.index = MemoryVectorIndex(self.embedder.dim, self.semantic.max_entries, ann)
        await self.index.start()

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.index is not None:
            await self.index.aclose()

    async def embed(self, text: str) -> np.ndarray:
        assert self.embedder is not None
        return (await asyncio.to_thread(self.embedder.embed, [text], True))[0]  # keep_end, as in __call__

    async def __call__(self, call: Call, next: Next) -> Reply:
        plan = self.planner.plan(call)
        if plan is None or not plan.semantic or plan.control.bypass or self.index is None:
            return await next(call)
        intent, context = split_intent(call)
        if intent is None:
            return await next(call)
        assert self.embedder is not None
        context_id = context_key(context, plan.namespace)
        # keep_end: the same truncation as the learned router, so a prompt both
        # embed is embedded once per call (embed_for_call memoizes by text)
        vector = await embed_for_call(call, self.embedder, intent, keep_end=True)
        call.trace.add(
            CostItem("cache_embedding", self.embedder.model_id, "local", Usage(), self.semantic.embedding_cost_usd)
        )
        candidate: tuple[Decision, str, CachedAnswer] | None = None
        if plan.lookup:
            found = await self.index.search(plan.namespace, context_id, vector, 1)

            if found:
                key, similarity = found[0]
                answer = await self._get(key)
                if answer is None:
                    await self.index.remove(plan.namespace, context_id, key)  # expired or invalidated
                elif fresh_enough(answer, plan.control) and answer.intent is not None:
                    cached = await self._vector(plan.namespace, context_id, key)
                    decision = self.policy.decide(key, similarity, compare(intent, answer.intent), vector, cached)
                    call.annotations["cache_decision"] = decision.action
                    if decision.action == HIT:
                        self._remember(call.request_id, decision, key)
                        return answer_from_cache(call, answer, "hit-semantic", key=key, similarity=similarity)
                    if decision.action in (VERIFY, EXPLORE):
                        candidate = (decision, key, answer)
        if call.cache_status == "none":
            call.cache_status = "miss"
        reply = await next(call)
        if call.cache_status != "miss":
            return reply  # a coalesced follower: the leader stores
        reply.headers.setdefault(CACHE_HEADER, "miss")
        reply.headers.setdefault(KEY_HEADER, plan.key)
        if candidate is not None:
            self._check_later(call, reply, candidate)
        if plan.store:

            async def put(answer: CachedAnswer) -> None:
                assert self.index is not None
                await self.store.put(plan.key, answer, plan.ttl_s)
                plan.stored = True
                await self.index.add(plan.namespace, context_id, plan.key, vector)

            await store_when_complete(
                call, reply, plan.namespace, plan.tags, put, allow_truncated=self.settings.store_truncated, intent=intent
            )
        return reply

    async def _get(self, key: str) -> CachedAnswer | None:
        try:
            return await self.store.get(key)
        except Exception:
            log.exception("semantic cache read failed")
            return None

    async def _vector(self, namespace: str, context_id: str, key: str) -> np.ndarray | None:
        """The candidate's stored vector, for a policy that learns from the two vectors' interactions."""
        if not self.policy.uses_vectors or self.index is None:
            return None
        try:
            return await self.index.get(namespace, context_id, key)
        except Exception:
            log.exception("semantic cache vector read failed")
            return None

    def _remember(self, request_id: str, decision: Decision, key: str) -> None:
        self._served[request_id] = (decision, key)
        while len(self._served) > MAX_FEEDBACK_ENTRIES:
            self._served.popitem(last=False)

    # -- learning ------------------------------------------------------------------------------
    def _check_later(self, call: Call, reply: Reply, candidate: tuple[Decision, str, CachedAnswer]) -> None:
        """Once the fresh answer is complete, compare it with the candidate's and learn from the verdict."""
        decision, key, cached = candidate

        def launch(fresh_text: str) -> None:
            task = asyncio.get_running_loop().create_task(self._judge(decision, key, cached.text(), fresh_text))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        if isinstance(reply, Completion):
            if call.outcome == "ok":
                launch(completion_text(reply.body))
            return
        parts: list[str] = []

        def collect(chunk: dict[str, Any]) -> dict[str, Any]:
            for choice in chunk.get("choices") or ():
                content = (choice.get("delta") or {}).get("content")
                if content:
                    parts.append(content)
            return chunk

        def finished(r: StreamReply, exc: BaseException | None) -> None:
            if exc is None and r.stream.completed:
                launch("".join(parts))

        reply.transform(collect)
        reply.on_finish(finished)

    async def _judge(self, decision: Decision, key: str, cached: str, fresh: str) -> None:
        try:
            correct = await self.answers_agree(cached, fresh)
            self.policy.observe(decision, correct, key)
        except Exception:
            log.exception("semantic verification failed")

    async def answers_agree(self, cached: str, fresh: str) -> bool:
        if cached.strip() == fresh.strip():
            return True
        assert self.embedder is not None
        vectors = await asyncio.to_thread(self.embedder.embed, [cached, fresh])
        return float(vectors[0] @ vectors[1]) >= self.semantic.answer_agreement

    def feedback(self, request_id: str, correct: bool) -> tuple[bool, str]:
        """A client's verdict on a semantic hit it was served."""
        served = self._served.pop(request_id, None)
        if served is None:
            return False, "not a recent semantic cache hit"
        decision, key = served
        self.policy.observe(decision, correct, key, feedback=True)
        return True, "recorded"


def refit_in_thread(job: Callable[[], None]) -> None:
    """Run a verified-policy refit (a second or so of tree fitting) off the event loop.

    Called from the loop (``observe`` runs in a request's task); outside a loop
    (evaluation, tests) the refit runs inline.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        job()
        return
    task = loop.create_task(asyncio.to_thread(job))
    _REFITS.add(task)
    task.add_done_callback(_refit_done)


_REFITS: set[asyncio.Task[None]] = set()


def _refit_done(task: asyncio.Task[None]) -> None:
    _REFITS.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("verified cache refit failed", exc_info=task.exception())


def make_policy(settings: CacheSettings) -> Policy:
    semantic = settings.semantic
    if semantic.mode == "fixed":
        return Policy(semantic.threshold, semantic.min_similarity, semantic.guards)
    return VerifiedPolicy(
        run_refit=refit_in_thread,
        target_error=semantic.target_error,
        verify_fraction=semantic.verify_fraction,
        explore_fraction=semantic.explore_fraction,
        min_similarity=semantic.min_similarity,
        guards=semantic.guards,
        cold_threshold=semantic.cold_threshold,
    )


def build_semantic_stage(
    settings: CacheSettings, store: AnswerStore, planner: CachePlanner, *, embedder: Embedder | None = None
) -> SemanticCacheStage:
    index: VectorIndex | None = None
    if settings.semantic.index == "pgvector":
        from tokenomy.cache.pgvector_index import PgVectorIndex

        if not settings.semantic.pg_url:
            raise ValueError("cache.semantic.index is pgvector but cache.semantic.pg_url is not set")
        index = PgVectorIndex(settings.semantic.pg_url, dim=384, table=settings.semantic.pg_table)
    return SemanticCacheStage(settings, store, planner, embedder, index, make_policy(settings))
