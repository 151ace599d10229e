"""Provider prompt caching: breakpoints for Anthropic, a stable cache key for OpenAI.

**Anthropic** caches a prompt prefix only where a ``cache_control`` breakpoint
marks its end, at most four per request, and only prefixes above a minimum
length (below it the mark is ignored). Reads cost a tenth of the input price,
5-minute writes 1.25 times it (1-hour writes twice). The gateway marks, in
Anthropic's cache order (tools → system → messages), when the prefix up to the
mark is long enough:

1. the last tool (tool definitions rarely change);
2. the last system message of the client's own (not a summary added by pruning,
   which changes every few turns);
3. the previous request's last user-side message (the user message or tool
   result the conversation ended with one exchange ago): its prefix was written
   by that request, so this one reads it;
4. the last user-side message, written now for the next request to read.

Requests that already carry ``cache_control`` are left alone: the client manages
its cache. Breakpoints are placed on the gateway's internal (OpenAI-shaped)
request as ``cache_control`` keys on tools and messages, which the Anthropic
translation turns into block-level marks.

**OpenAI** caches prefixes of 1024 tokens and more automatically; the gateway
keeps them stable (pruning keeps the system prompt first and moves its cut in
steps; compression is deterministic) and can send ``prompt_cache_key`` (a hash of
tools and system prompt) so requests with the same prefix reach the same cache.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import orjson

from tokenomy.tokens.conversation import PromptCount, is_system
from tokenomy.tokens.counting import PROVIDER_TOKEN_FACTORS

MAX_BREAKPOINTS = 4

#: Smallest cacheable prefix per model family (Anthropic's prompt-caching documentation):
#: 4096 for Claude Opus 4.5/4.6 and Haiku 4.5, 2048 for Sonnet 4.6 and Haiku 3/3.5, 1024 otherwise.
_MINIMUMS: tuple[tuple[re.Pattern[str], int], ...] = (
    (re.compile(r"opus-4-[56]|haiku-4-5"), 4096),
    (re.compile(r"sonnet-4-6|haiku"), 2048),
)
DEFAULT_MINIMUM = 1024


def anthropic_min_tokens(model: str) -> int:
    """The minimum cacheable prompt length of ``model`` (Anthropic tokens)."""
    name = model.lower()
    for pattern, minimum in _MINIMUMS:
        if pattern.search(name):
            return minimum
    return DEFAULT_MINIMUM


def has_breakpoints(body: dict[str, Any]) -> bool:
    """Whether the client already marked any part of the request for caching."""
    for tool in body.get("tools") or ():
        if isinstance(tool, dict) and tool.get("cache_control"):
            return True
    for message in body.get("messages") or ():
        if not isinstance(message, dict):
            continue
        if message.get("cache_control"):
            return True
        content = message.get("content")
        if isinstance(content, list) and any(isinstance(p, dict) and p.get("cache_control") for p in content):
            return True
    return False


def place_anthropic_breakpoints(
    body: dict[str, Any],
    count: PromptCount,
    *,
    min_tokens: int,
    ttl: str = "5m",
    cache_messages: bool = True,
    stable_system: int | None = None,
) -> tuple[dict[str, Any], int]:
    """``body`` with breakpoints added (a copy) and how many were added.

    ``stable_system`` is the index of the last system message that belongs to
    the client (pruning adds its summary after it); by default the last system
    message. Token counts are scaled to Anthropic's tokenizer before comparing
    with ``min_tokens``.
    """
    messages = body.get("messages") or []
    factor = PROVIDER_TOKEN_FACTORS["anthropic"]
    control: dict[str, Any] = {"type": "ephemeral"}
    if ttl != "5m":
        control["ttl"] = ttl

    def long_enough(tokens: int) -> bool:
        return tokens * factor >= min_tokens

    tools = body.get("tools") or []
    marks: list[tuple[str, int]] = []  # ("tool" | "message", index)
    prefix = count.tools_tokens
    if tools and long_enough(prefix):
        marks.append(("tool", len(tools) - 1))
    system_indices = [i for i, m in enumerate(messages) if is_system(m)]
    system_total = sum(count.per_message[i] for i in system_indices)
    if system_indices:
        anchor = stable_system if stable_system is not None else system_indices[-1]
        anchored = prefix + sum(count.per_message[i] for i in system_indices if i <= anchor)
        if long_enough(anchored):
            marks.append(("message", anchor))
    if cache_messages:
        prefix += system_total
        cumulative: dict[int, int] = {}
        for i, message in enumerate(messages):
            if not is_system(message):
                prefix += count.per_message[i]
                cumulative[i] = prefix
        user_side = [i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") in ("user", "tool")]
        if user_side:
            last = user_side[-1]
            previous = next(
                (
                    i
                    for i in reversed(user_side[:-1])
                    if i + 1 < len(messages) and isinstance(messages[i + 1], dict)
                    and messages[i + 1].get("role") == "assistant"
                ),
                None,
            )
            for index in (previous, last):
                if index is not None and long_enough(cumulative[index]):
                    marks.append(("message", index))
    if not marks:
        return body, 0
    # keep the last four: the later a mark, the more it covers
    marks = list(dict.fromkeys(marks))[-MAX_BREAKPOINTS:]
    out = dict(body)
    new_messages = list(messages)
    new_tools = list(tools)
    for kind, index in marks:
        if kind == "tool":
            new_tools[index] = {**new_tools[index], "cache_control": dict(control)}
        else:
            new_messages[index] = {**new_messages[index], "cache_control": dict(control)}
    if tools:
        out["tools"] = new_tools
    out["messages"] = new_messages
    return out, len(marks)


def openai_cache_key(body: dict[str, Any]) -> str:
    """A stable ``prompt_cache_key``: a hash of the tools and the leading system messages."""
    digest = hashlib.sha256()
    digest.update(orjson.dumps(body.get("tools") or [], option=orjson.OPT_SORT_KEYS))
    for message in body.get("messages") or ():
        if not is_system(message):
            break
        digest.update(orjson.dumps(message.get("content"), option=orjson.OPT_SORT_KEYS))
    return "tkn-" + digest.hexdigest()[:32]
