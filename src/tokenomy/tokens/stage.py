"""``TokenPolicyStage``: spend fewer tokens per request, by the caller's policy.

Placed after identify and resolve (it needs who is calling and which model
serves), before budgets, caches and routing (they should see the request as it
will be sent). In order, for a chat request whose policy asks for it:

1. compression — whitespace and repeated blocks, then retrieved-chunk trimming;
2. context pruning — last N turns, token budget, or a summary of older turns;
3. output caps — a default ``max_tokens``, or a clamp;
4. provider prompt caching — Anthropic breakpoints, or OpenAI's ``prompt_cache_key``.

The prompt is tokenized once (``PromptCount``) and every technique updates the
counts of what it changes. The size before and after goes on the CostTrace so
the baseline is priced on the request as asked, and each technique's tokens
saved are recorded under its name (priced at settlement, see ``savings``).

With no policy for the caller the stage only records the prompt version and the
finish reason: a dictionary lookup and two attribute reads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from tokenomy.config import ConfigError
from tokenomy.errors import GatewayError
from tokenomy.models import ModelRegistry
from tokenomy.pipeline.call import Call, CostItem
from tokenomy.pipeline.reply import Completion, Reply, StreamReply
from tokenomy.pipeline.runner import Next, Stage
from tokenomy.pricing.cost import cost_usd
from tokenomy.providers.base import Provider
from tokenomy.providers.usage import Usage
from tokenomy.tokens import compress, prompt_cache
from tokenomy.tokens.caps import apply_output_cap, finish_reason_of
from tokenomy.tokens.conversation import PromptCount, is_system, split_turns
from tokenomy.tokens.pruning import PRUNERS, SUMMARY_PREFIX, Summarizer, apply_cut
from tokenomy.tokens.settings import TokenPolicy, TokensSettings

log = logging.getLogger(__name__)

PROMPT_HEADER = "x-tokenomy-prompt"
MAX_PROMPT_LABEL = 128

_NO_POLICY = object()


class TokenPolicyStage(Stage):
    name = "tokens"

    def __init__(
        self,
        settings: TokensSettings,
        *,
        summarizer: Summarizer | None = None,
        registry: ModelRegistry | None = None,
        providers: dict[str, Provider] | None = None,
    ) -> None:
        self.settings = settings
        self.summarizer = summarizer
        self.registry = registry
        self.providers = providers or {}
        self._policies: dict[tuple[str | None, str | None, str | None], TokenPolicy | None] = {}
        self._any_policy = settings.enabled and any(not p.is_noop for _, p in settings.policies())

    async def __call__(self, call: Call, next: Next) -> Reply:
        prompt = call.headers.get(PROMPT_HEADER)
        if prompt:
            call.prompt = prompt.strip()[:MAX_PROMPT_LABEL] or None
        if call.kind != "chat":
            return await next(call)
        if self._any_policy:
            policy = self.policy_for(call)
            if policy is not None:
                await self.apply(call, policy)
        messages = call.body.get("messages")
        if messages and compress.has_retrieved(messages):  # markers never reach an upstream
            stripped = list(messages)
            compress.strip_markers(stripped)
            call.body = {**call.body, "messages": stripped}
        reply = await next(call)
        if isinstance(reply, Completion):
            call.finish_reason = finish_reason_of(reply.body)
        else:
            reply.on_finish(_stream_finished)
        return reply

    def policy_for(self, call: Call) -> TokenPolicy | None:
        """The caller's policy (default < team < feature < key), ``None`` if it does nothing."""
        identity = call.identity
        settings = self.settings
        key = (
            identity.team if identity.team in settings.teams else None,
            identity.feature if identity.feature in settings.features else None,
            identity.key_id if identity.key_id in settings.keys else None,
        )
        try:
            return self._policies[key]
        except KeyError:
            pass
        policy = settings.default
        team, feature, key_id = key
        if team is not None:
            policy = settings.teams[team].over(policy)
        if feature is not None:
            policy = settings.features[feature].over(policy)
        if key_id is not None:
            policy = settings.keys[key_id].over(policy)
        resolved = None if policy.is_noop else policy
        self._policies[key] = resolved  # bounded: only names present in the config are keys
        return resolved

    async def apply(self, call: Call, policy: TokenPolicy) -> None:
        body = call.body
        messages = body.get("messages")
        if not isinstance(messages, list) or not call.targets:
            return
        deployment = call.targets[0].deployment
        model = deployment.upstream_model
        trace = call.trace
        caching = policy.prompt_caching
        anthropic_cache = (
            caching is not None
            and caching.anthropic_breakpoints
            and deployment.provider == "anthropic"
            and not prompt_cache.has_breakpoints(body)
        )
        count: PromptCount | None = None
        summary_index: int | None = None
        if policy.changes_input or anthropic_cache:
            count = PromptCount(messages, model, body.get("tools"))
        if policy.changes_input and count is not None:
            asked = count.total
            new_messages = list(messages)
            await self._compress(call, policy, new_messages, count)
            summary_index = await self._prune(call, policy, new_messages, count)
            if new_messages != messages:
                body = {**body, "messages": new_messages}
                trace.prompt_tokens_asked = asked
                trace.prompt_tokens_sent = count.total
        if policy.default_max_tokens is not None or policy.max_tokens_cap is not None:
            body, call.output_cap = apply_output_cap(
                body, model, default=policy.default_max_tokens, cap=policy.max_tokens_cap
            )
        if anthropic_cache and count is not None and caching is not None:
            minimum = caching.min_tokens or prompt_cache.anthropic_min_tokens(model)
            stable = _last_system_before(body["messages"], summary_index)
            body, added = prompt_cache.place_anthropic_breakpoints(
                body, count, min_tokens=minimum, ttl=caching.ttl, cache_messages=caching.cache_messages,
                stable_system=stable,
            )  # fmt: skip
            trace.cache_breakpoints_added = added
        elif (
            caching is not None
            and caching.openai_cache_key
            and deployment.provider == "openai"
            and "prompt_cache_key" not in body
        ):
            body = {**body, "prompt_cache_key": prompt_cache.openai_cache_key(body)}
        call.body = body

    async def _compress(self, call: Call, policy: TokenPolicy, messages: list[Any], count: PromptCount) -> None:
        settings = policy.compression
        if settings is None:
            return
        if settings.normalize_whitespace or settings.dedupe_blocks:
            saved = compress.normalize_messages(
                messages,
                count,
                whitespace=settings.normalize_whitespace,
                dedupe=settings.dedupe_blocks,
                min_block_chars=settings.min_block_chars,
            )
            if saved:
                call.trace.saving("compress").tokens += saved
        if (settings.retrieved_top_k or settings.retrieved_budget_tokens) and compress.has_retrieved(messages):
            embed = None
            if settings.retrieved_relevance != "lexical":
                embed = self._embedder(call, settings.retrieved_relevance)
            saved, dropped = await compress.trim_retrieved(
                messages,
                count,
                top_k=settings.retrieved_top_k,
                budget_tokens=settings.retrieved_budget_tokens,
                embed=embed,
            )
            if dropped:
                call.trace.saving("trim_retrieved").tokens += saved
                call.annotations["retrieved_dropped"] = dropped

    async def _prune(self, call: Call, policy: TokenPolicy, messages: list[Any], count: PromptCount) -> int | None:
        """Prune ``messages`` in place; returns the index of the summary message, if one was added."""
        settings = policy.pruning
        if settings is None or settings.strategy == "none":
            return None
        turns = split_turns(messages)
        if len(turns) < 2:
            return None
        fixed = count.total - sum(count.per_message[i] for i, m in enumerate(messages) if not is_system(m))
        cut = PRUNERS[settings.strategy](turns, count, fixed, settings)
        if cut <= 0:
            return None
        summary = None
        if settings.strategy == "summarize":
            if self.summarizer is None:
                return None
            pruned_tokens = count.of(0, turns[cut].start)
            if pruned_tokens <= settings.summary_max_tokens:
                return None  # a summary would not be shorter than what it replaces
            try:
                summary = await self.summarizer.summary(
                    messages, turns, cut, settings.summarize_step, settings.summary_max_tokens, call.trace.add
                )
            except GatewayError as err:
                log.warning("summary failed for %s (%s); sending the conversation unpruned", call.request_id, err)
                call.annotations["summary_failed"] = err.message[:200]
                return None
        before = count.total
        result = apply_cut(messages, count, turns, cut, summary)
        messages[:] = result.messages
        count.per_message = result.per_message
        technique = "summarize" if summary else "prune"
        entry = call.trace.saving(technique)
        entry.tokens += before - count.total
        entry.cost_usd += sum(item.usd or 0.0 for item in call.trace.items if item.step == "summarize")
        call.annotations["pruned_turns"] = result.dropped_turns
        if summary:
            return next(i for i, m in enumerate(messages) if m.get("role") == "system" and _is_summary(m))
        return None

    def _embedder(self, call: Call, model: str) -> Callable[[list[str]], Any] | None:
        if self.registry is None:
            return None
        target = self.registry.resolve(model, "embeddings").primary
        provider = self.providers[target.deployment.provider]

        async def embed(texts: list[str]) -> list[list[float]]:
            deployment = target.deployment
            result = await provider.embeddings(deployment, {"model": deployment.upstream_model, "input": texts})
            usage = result.usage or Usage()
            call.trace.add(
                CostItem("relevance", deployment.name, deployment.provider, usage, cost_usd(target.price, usage))
            )
            data = sorted(result.body.get("data") or [], key=lambda d: d.get("index", 0))
            return [d["embedding"] for d in data]

        return embed


def build_token_stage(
    settings: TokensSettings, registry: ModelRegistry, providers: dict[str, Provider]
) -> TokenPolicyStage:
    """The stage for ``settings``, with a summarizer when a policy summarizes."""
    summarizer = None
    if any(p.pruning is not None and p.pruning.strategy == "summarize" for _, p in settings.policies()):
        try:
            summarizer = Summarizer.from_registry(
                registry,
                providers,
                settings.summarizer_model,
                cache_size=settings.summary_cache_size,
                input_tokens=settings.summary_input_tokens,
            )
        except GatewayError as err:
            raise ConfigError(f"tokens.summarizer_model: {err.message}") from err
        if summarizer is None:
            raise ConfigError("tokens.summarizer_model: no priced chat model to summarize with; name one")
    for where, policy in settings.policies():
        relevance = policy.compression.retrieved_relevance if policy.compression is not None else "lexical"
        if relevance != "lexical":
            try:
                registry.resolve(relevance, "embeddings")
            except GatewayError as err:
                raise ConfigError(f"{where}.compression.retrieved_relevance: {err.message}") from err
    return TokenPolicyStage(settings, summarizer=summarizer, registry=registry, providers=providers)


def _is_summary(message: dict[str, Any]) -> bool:
    content = message.get("content")
    return isinstance(content, str) and content.startswith(SUMMARY_PREFIX)


def _last_system_before(messages: list[Any], summary_index: int | None) -> int | None:
    """The client's last system message: before the summary when pruning added one."""
    last = None
    for i, message in enumerate(messages):
        if summary_index is not None and i >= summary_index:
            break
        if is_system(message):
            last = i
    return last


def _stream_finished(reply: StreamReply, exc: BaseException | None) -> None:
    reply.call.finish_reason = reply.stream.finish_reason
