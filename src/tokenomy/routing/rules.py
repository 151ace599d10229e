"""The rule router: conditions on who sent the call and on its prompt → a tier.

Deterministic and explainable: the first rule whose conditions all hold wins,
and its name and the facts that matched become the route's reason
(``x-tokenomy-route``). Prompt features are computed once per call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tokenomy.pipeline.call import Call
from tokenomy.routing.prompt import last_user_text
from tokenomy.routing.settings import RuleCondition, RuleSettings

CHARS_PER_TOKEN = 4
_CODE = re.compile(
    r"```|^\s*(def |class |import |from \S+ import|#include|function |public |fn |let |const |SELECT |for\s*\(|while\s*\()"
    r"|[;{}]\s*$",
    re.MULTILINE,
)


@dataclass(slots=True)
class PromptFacts:
    """What rules look at, computed once per call."""

    tokens: int
    text: str  # the last user message
    lowered: str
    code: bool
    tools: bool
    response_format: str | None
    team: str | None
    feature: str | None
    priority: str | None
    tags: tuple[str, ...]

    @classmethod
    def of(cls, call: Call) -> PromptFacts:
        body = call.body
        chars = 0
        for message in body.get("messages") or ():
            if isinstance(message, dict):
                content = message.get("content")
                if isinstance(content, str):
                    chars += len(content)
                elif isinstance(content, list):
                    chars += sum(len(p.get("text", "")) for p in content if isinstance(p, dict))
        text = last_user_text(body)
        fmt = body.get("response_format")
        return cls(
            tokens=(chars + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN,
            text=text,
            lowered=text.lower(),
            code=bool(_CODE.search(text)),
            tools=bool(body.get("tools") or body.get("functions")),
            response_format=fmt.get("type") if isinstance(fmt, dict) else None,
            team=call.identity.team,
            feature=call.identity.feature,
            priority=(call.headers.get("x-tokenomy-priority") or "").strip().lower() or None,
            tags=call.identity.tags,
        )


class CompiledCondition:
    """A ``RuleCondition`` ready to test; ``explain`` says which facts matched."""

    def __init__(self, cond: RuleCondition) -> None:
        self.cond = cond
        self.regex = re.compile(cond.regex, re.IGNORECASE) if cond.regex else None
        self.keywords = [k.lower() for k in cond.keywords]
        self.priorities = [p.lower() for p in cond.priorities]

    def match(self, f: PromptFacts) -> str | None:
        """``None`` if the condition fails, else a short description of what matched."""
        c = self.cond
        why: list[str] = []
        if c.teams:
            if f.team not in c.teams:
                return None
            why.append(f"team={f.team}")
        if c.features:
            if f.feature not in c.features:
                return None
            why.append(f"feature={f.feature}")
        if self.priorities:
            if f.priority not in self.priorities:
                return None
            why.append(f"priority={f.priority}")
        if c.tags:
            hit = next((t for t in f.tags if t in c.tags), None)
            if hit is None:
                return None
            why.append(f"tag={hit}")
        if c.min_prompt_tokens is not None:
            if f.tokens < c.min_prompt_tokens:
                return None
            why.append(f"prompt_tokens={f.tokens}>={c.min_prompt_tokens}")
        if c.max_prompt_tokens is not None:
            if f.tokens > c.max_prompt_tokens:
                return None
            why.append(f"prompt_tokens={f.tokens}<={c.max_prompt_tokens}")
        if c.code is not None:
            if f.code != c.code:
                return None
            why.append("code" if f.code else "no code")
        if self.keywords:
            hit = next((k for k in self.keywords if k in f.lowered), None)
            if hit is None:
                return None
            why.append(f"keyword={hit}")
        if self.regex is not None:
            if not self.regex.search(f.text):
                return None
            why.append("regex")
        if c.tools is not None:
            if f.tools != c.tools:
                return None
            why.append("tools" if f.tools else "no tools")
        if c.response_format:
            if (f.response_format or "text") not in c.response_format:
                return None
            why.append(f"response_format={f.response_format or 'text'}")
        return ", ".join(why) or "always"


class RuleRouter:
    """First matching rule → its tier; no match → the default tier."""

    def __init__(self, rules: list[RuleSettings], default_tier: str) -> None:
        self.rules = [(rule, CompiledCondition(rule.when)) for rule in rules]
        self.default_tier = default_tier

    def decide(self, facts: PromptFacts) -> tuple[str, str]:
        """``(tier, reason)``."""
        for rule, cond in self.rules:
            why = cond.match(facts)
            if why is not None:
                return rule.tier, f"rule {rule.name}: {why}"
        return self.default_tier, "no rule matched: default tier"


def condition_matches(cond: RuleCondition, call: Call) -> bool:
    """One-off test of a condition against a call (substitution policies)."""
    return CompiledCondition(cond).match(PromptFacts.of(call)) is not None


def describe(value: Any) -> str:
    """Header-safe text: ASCII, no control characters, bounded."""
    text = str(value).encode("ascii", "replace").decode()
    return re.sub(r"[\x00-\x1f\x7f]", " ", text)[:300]
