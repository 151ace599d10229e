"""Context pruning: which turns of a long conversation are sent.

A pruning policy answers one question — from which turn on is the conversation
kept verbatim — and ``apply_cut`` does the rest the same way for every policy:
system messages of the dropped turns stay, an optional summary takes the dropped
turns' place, and everything from the cut on is kept as it was. Because the cut
is always at a turn boundary (see ``conversation``), tool calls keep their
results and the kept part starts with a user message, valid for OpenAI and for
Anthropic.

Adding a policy means writing one function ``(turns, count, system_tokens,
settings) -> cut`` and naming it in ``PRUNERS``::

    def keep_odd(turns, count, system_tokens, settings):
        return len(turns) // 2

Summaries are the exception that needs a model call; ``Summarizer`` makes them
(with the cheapest configured model) and caches each by a hash of the messages
it replaces, so a conversation pays for a summary once every
``summarize_step`` turns, not on every turn.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from tokenomy.errors import GatewayError
from tokenomy.models import ModelRegistry, Target
from tokenomy.pipeline.call import CostItem
from tokenomy.pricing.cost import cost_usd
from tokenomy.providers.base import Provider
from tokenomy.providers.usage import Usage
from tokenomy.tokens.conversation import PromptCount, Turn, clip_text, is_system, message_text, message_tokens
from tokenomy.tokens.settings import PruningSettings

log = logging.getLogger(__name__)

#: ``(turns, count, fixed_tokens, settings) -> index of the first turn kept`` (0: keep everything).
#: ``fixed_tokens`` is what is always sent: system messages, tools and framing.
Pruner = Callable[[Sequence[Turn], PromptCount, int, PruningSettings], int]

SUMMARY_PREFIX = "Summary of the earlier conversation"


def keep_last_n(turns: Sequence[Turn], count: PromptCount, fixed_tokens: int, settings: PruningSettings) -> int:
    """Keep the last ``keep_last_turns`` turns."""
    return max(0, len(turns) - settings.keep_last_turns)


def keep_within_budget(turns: Sequence[Turn], count: PromptCount, fixed_tokens: int, settings: PruningSettings) -> int:
    """Keep the most recent turns whose tokens fit in ``budget_tokens`` with the system prompt.

    The last turn (the question being asked) is always kept, even alone over budget.
    """
    room = settings.budget_tokens - fixed_tokens
    cut = len(turns)
    for index in range(len(turns) - 1, -1, -1):
        turn = turns[index]
        tokens = _non_system_tokens(count, turn)
        if cut < len(turns) and tokens > room:
            break
        room -= tokens
        cut = index
    return cut


def summary_cut(turns: Sequence[Turn], count: PromptCount, fixed_tokens: int, settings: PruningSettings) -> int:
    """Turns to replace by a summary: a multiple of ``summarize_step``, leaving at least ``keep_last_turns``.

    Moving the cut in steps is what lets one summary serve several turns.
    """
    step = settings.summarize_step
    return max(0, (len(turns) - settings.keep_last_turns) // step * step)


PRUNERS: dict[str, Pruner] = {
    "last_n": keep_last_n,
    "budget": keep_within_budget,
    "summarize": summary_cut,
}


@dataclass(slots=True)
class Cut:
    """The result of pruning: the new messages, their counts, and what was dropped."""

    messages: list[Any]
    per_message: list[int]
    dropped_turns: int
    dropped_messages: int


def apply_cut(
    messages: Sequence[Any], count: PromptCount, turns: Sequence[Turn], cut: int, summary: str | None = None
) -> Cut:
    """Drop turns ``[0, cut)`` except their system messages; put ``summary`` in their place."""
    end = turns[cut].start if cut < len(turns) else len(messages)
    kept = [i for i in range(end) if is_system(messages[i])]
    out = [messages[i] for i in kept]
    per = [count.per_message[i] for i in kept]
    if summary:
        message = summary_message(summary, cut)
        out.append(message)
        per.append(message_tokens(message, count.model))
    out.extend(messages[end:])
    per.extend(count.per_message[end:])
    return Cut(out, per, cut, end - len(kept))


def summary_message(summary: str, turns: int) -> dict[str, Any]:
    return {"role": "system", "content": f"{SUMMARY_PREFIX} ({turns} turns, replaced by this summary):\n{summary}"}


def _non_system_tokens(count: PromptCount, turn: Turn) -> int:
    return sum(count.per_message[turn.start : turn.end])


# -- summaries ----------------------------------------------------------------------------

SUMMARIZER_INSTRUCTIONS = (
    "You compress chat transcripts. Summarize the conversation below so an assistant can continue it "
    "without the original: keep facts, names, numbers, decisions, the user's goals and preferences, "
    "tool results that matter and open questions. Write plain sentences, no preamble."
)


class SummaryStore:
    """Summaries by prefix hash: an in-process LRU (one replica computes a summary once).

    Small on purpose: a shared implementation (Redis) only needs ``get``/``put``.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: collections.OrderedDict[str, str] = collections.OrderedDict()

    def get(self, key: str) -> str | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: str, value: str) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class Summarizer:
    """Writes summaries of conversation prefixes with one model; caches them by prefix hash.

    Incremental: the summary of turns ``[0, cut)`` is made from the cached
    summary of the longest shorter prefix (a multiple of the step) plus the turns
    after it, so its input stays small however long the conversation gets.
    Concurrent requests for the same prefix share one model call.
    """

    def __init__(
        self,
        target: Target,
        provider: Provider,
        *,
        store: SummaryStore,
        input_tokens: int = 6000,
    ) -> None:
        self.target = target
        self.provider = provider
        self.store = store
        self.input_tokens = input_tokens
        self._inflight: dict[str, asyncio.Future[str]] = {}
        self.calls = 0  # model calls made (for tests and metrics)

    @classmethod
    def from_registry(
        cls, registry: ModelRegistry, providers: dict[str, Provider], model: str, *, cache_size: int, input_tokens: int
    ) -> Summarizer | None:
        """The summarizer for ``model`` (``auto``: the cheapest priced chat model); ``None`` if there is none."""
        if model == "auto":
            target = cheapest_chat_target(registry)
            if target is None:
                return None
        else:
            target = registry.resolve(model, "chat").primary
        provider = providers.get(target.deployment.provider)
        if provider is None:
            return None
        return cls(target, provider, store=SummaryStore(cache_size), input_tokens=input_tokens)

    @property
    def model(self) -> str:
        return self.target.deployment.name

    async def summary(
        self,
        messages: Sequence[Any],
        turns: Sequence[Turn],
        cut: int,
        step: int,
        max_tokens: int,
        charge: Callable[[CostItem], None],
    ) -> str:
        """The summary of turns ``[0, cut)``; a model call (charged via ``charge``) unless cached."""
        keys = self._prefix_keys(messages, turns, cut, step)
        key = keys[cut]
        cached = self.store.get(key)
        if cached is not None:
            return cached
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            previous, start = None, 0
            for boundary in range(cut - step, 0, -step):
                previous = self.store.get(keys[boundary])
                if previous is not None:
                    start = boundary
                    break
            text = await self._write(messages, turns, start, cut, previous, max_tokens, charge)
            self.store.put(key, text)
            future.set_result(text)
            return text
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody logs "never retrieved"
            raise
        finally:
            del self._inflight[key]

    def _prefix_keys(self, messages: Sequence[Any], turns: Sequence[Turn], cut: int, step: int) -> dict[int, str]:
        """Hash of the non-system messages of turns ``[0, b)`` for every boundary ``b`` that is a step multiple."""
        digest = hashlib.sha256(self.model.encode())
        keys: dict[int, str] = {}
        for index in range(cut):
            turn = turns[index]
            for message in messages[turn.start : turn.end]:
                if not is_system(message):
                    digest.update(orjson.dumps(message, option=orjson.OPT_SORT_KEYS))
            boundary = index + 1
            if boundary % step == 0 or boundary == cut:
                keys[boundary] = digest.copy().hexdigest()
        return keys

    async def _write(
        self,
        messages: Sequence[Any],
        turns: Sequence[Turn],
        start: int,
        cut: int,
        previous: str | None,
        max_tokens: int,
        charge: Callable[[CostItem], None],
    ) -> str:
        lines = []
        for turn in turns[start:cut]:
            for message in messages[turn.start : turn.end]:
                if is_system(message) or not isinstance(message, dict):
                    continue
                role = message.get("role")
                label = f"tool result ({message.get('tool_call_id')})" if role == "tool" else role
                text = message_text(message)
                if text:
                    lines.append((label, text))
        model = self.target.deployment.upstream_model
        limit = self.input_tokens
        window = self.target.price.context_window if self.target.price is not None else None
        if window:  # a small local model: its context must hold the transcript and the summary
            limit = min(limit, int((window - max_tokens) / 1.2) - 64)
        budget = limit - (0 if previous is None else max_tokens) - 64
        per_line = max(32, budget // max(1, len(lines)))
        transcript = "\n".join(f"{label}: {clip_text(text, per_line, model)}" for label, text in lines)
        user = transcript if previous is None else f"Summary so far:\n{previous}\n\nConversation since:\n{transcript}"
        body = {
            "model": model,
            "messages": [{"role": "system", "content": SUMMARIZER_INSTRUCTIONS}, {"role": "user", "content": user}],
            "max_tokens": max_tokens,
            "temperature": 0,
        }
        self.calls += 1
        result = await self.provider.chat(self.target.deployment, body)
        usage = result.usage or Usage()
        deployment = self.target.deployment
        charge(CostItem("summarize", deployment.name, deployment.provider, usage, cost_usd(self.target.price, usage)))
        choices = result.body.get("choices") or [{}]
        text = ((choices[0].get("message") or {}).get("content") or "").strip()
        if not text:
            raise SummaryFailed(f"summarizer {deployment.name!r} returned no text")
        return text


class SummaryFailed(GatewayError):
    """The summarizer gave no usable summary (the request then goes unpruned)."""

    status = 502
    code = "summary_failed"


def cheapest_chat_target(registry: ModelRegistry) -> Target | None:
    """The priced chat deployment with the lowest input + output price (ties: by name)."""
    best: tuple[float, str, Target] | None = None
    for entry in registry:
        if entry.kind != "chat":
            continue
        target = entry.primary
        if target.price is None:
            continue
        price = target.price.input + target.price.output
        if best is None or (price, entry.name) < best[:2]:
            best = (price, entry.name, target)
    return best[2] if best else None
