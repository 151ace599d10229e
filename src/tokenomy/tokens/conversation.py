"""A chat request seen as a conversation: system messages, turns, and their token counts.

Pruning works on *turns*, never on single messages: a turn is a user message
and everything after it up to the next user message (the assistant's answers,
its tool calls and the tool results). Dropping whole turns from the front
therefore can never separate a tool call from its result, never reorders
anything, and leaves a conversation that starts with a user message — which is
what Anthropic requires after the system prompt is hoisted, and what OpenAI
accepts. System (and developer) messages are never dropped.

Token counts are computed once per message and reused by every technique
(``PromptCount``), so a policy costs one pass of the tokenizer over the prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tokenomy.tokens.counting import REPLY_PRIMING_TOKENS, count_messages, count_text, encoding_name_for

SYSTEM_ROLES = frozenset(("system", "developer"))


@dataclass(frozen=True, slots=True)
class Turn:
    """Messages ``[start, end)`` of the request: one user message and what followed it."""

    start: int
    end: int


def is_system(message: Any) -> bool:
    return isinstance(message, dict) and message.get("role") in SYSTEM_ROLES


def split_turns(messages: Sequence[Any]) -> list[Turn]:
    """The turns of ``messages``, in order. Messages before the first user message (the system
    prompt, a greeting) belong to the first turn.

    System messages stay inside the turn they sit in (pruning keeps them anyway).
    """
    turns: list[Turn] = []
    start = 0
    seen_user = False
    for i, message in enumerate(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            if seen_user:
                turns.append(Turn(start, i))
                start = i
            seen_user = True
    if messages:
        turns.append(Turn(start, len(messages)))
    return turns


class PromptCount:
    """Token counts of one request's messages, each counted once.

    ``total`` follows ``count_messages``: per-message framing, reply priming,
    and the tools' JSON. Stages change messages through ``replace`` so the
    counts stay right without recounting the untouched ones.
    """

    __slots__ = ("model", "per_message", "tools_tokens")

    def __init__(self, messages: Sequence[Any], model: str | None, tools: list[Any] | None = None) -> None:
        self.model = model
        self.per_message = [message_tokens(m, model) for m in messages]
        self.tools_tokens = tools_tokens(tools, model)

    @property
    def total(self) -> int:
        return sum(self.per_message) + REPLY_PRIMING_TOKENS + self.tools_tokens

    def of(self, start: int, end: int) -> int:
        return sum(self.per_message[start:end])


class _CountMemo:
    """Token counts of plain messages already seen, keyed by a hash of (encoding, role, content).

    A chat client resends its whole history on every turn, so the same messages
    are counted again and again; remembering their counts makes a 30-turn prompt
    cost a few dictionary lookups instead of tokenizing it again. Keys are
    Python's 64-bit string hash (no copy of the text is kept), so the memo stays
    small; a collision could only misstate one message's count. FIFO-bounded.
    """

    def __init__(self, size: int = 65_536) -> None:
        self.size = size
        self._counts: dict[int, int] = {}

    def count(self, message: dict[str, Any], model: str | None) -> int:
        content = message.get("content")
        if type(content) is not str or len(message) > 3 or message.get("tool_calls"):
            return count_messages([message], model) - REPLY_PRIMING_TOKENS
        key = hash((encoding_name_for(model), message.get("role"), content, message.get("tool_call_id")))
        counts = self._counts
        tokens = counts.get(key)
        if tokens is None:
            tokens = counts[key] = count_messages([message], model) - REPLY_PRIMING_TOKENS
            if len(counts) > self.size:
                del counts[next(iter(counts))]
        return tokens


# Process-wide on purpose, like the encodings: counts are pure functions of their key.
_MEMO = _CountMemo()


def message_tokens(message: Any, model: str | None) -> int:
    """Tokens one message adds to a prompt (framing included, reply priming not)."""
    if not isinstance(message, dict):
        return 0
    return _MEMO.count(message, model)


def tools_tokens(tools: list[Any] | None, model: str | None) -> int:
    if not tools:
        return 0
    return count_messages([], model, tools=tools) - REPLY_PRIMING_TOKENS


def message_text(message: dict[str, Any]) -> str:
    """The readable text of a message (content parts joined; tool calls as ``name(arguments)``)."""
    content = message.get("content")
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        text = "\n".join(
            str(part.get("text") or part.get("refusal") or "")
            for part in content
            if isinstance(part, dict) and part.get("type") in ("text", "refusal")
        )
    else:
        text = ""
    calls = []
    for call in message.get("tool_calls") or ():
        function = (call.get("function") or {}) if isinstance(call, dict) else {}
        calls.append(f"{function.get('name')}({function.get('arguments') or ''})")
    if calls:
        text = (text + "\n" if text else "") + "calls " + "; ".join(calls)
    return text


def clip_text(text: str, tokens: int, model: str | None = None) -> str:
    """``text`` cut to about ``tokens`` tokens (whole text when it fits)."""
    if tokens <= 0:
        return ""
    if len(text) <= tokens * 2 or count_text(text, model) <= tokens:
        return text
    # ~4 characters a token; good enough for clipping a summarizer's input
    return text[: tokens * 4] + " …"
