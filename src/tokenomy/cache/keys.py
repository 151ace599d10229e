"""What makes two requests "the same": cache keys, context keys, namespaces, per-request controls.

- The **exact key** hashes the whole normalized request — model, every message
  (system, history, tool results), tools, response_format and every parameter
  that can change the output — plus the tenant namespace. Only fields that
  cannot change the answer (``stream``, ``stream_options``, ``user``,
  ``metadata``, ``store``…) are left out, so a streamed and a JSON request share
  an entry.
- The **context key** hashes the same minus the last user turn: the semantic
  cache only compares intents of requests whose context is identical, so "cancel
  it" in one conversation never matches "cancel it" in another.
- The **namespace** is the tenant (org, key, team by default); entries never
  cross namespaces unless sharing is switched on.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import orjson

from tokenomy.pipeline.call import Call

#: request fields that cannot change the answer's content
NON_OUTPUT_FIELDS = frozenset(
    {"stream", "stream_options", "user", "metadata", "store", "service_tier", "parallel_tool_calls_hint"}
)
#: the message field that carries what the user asks
INTENT_ROLES = ("user",)

_MAX_AGE = re.compile(r"max-age\s*=\s*(\d+)")


@dataclass(slots=True, frozen=True)
class CacheControl:
    """What the request allows: read (``lookup``), write (``store``), and which tiers."""

    lookup: bool = True
    store: bool = True
    exact: bool = True
    semantic: bool = True
    max_age_s: float | None = None
    #: the client asked for caching explicitly (``x-tokenomy-cache: exact|semantic``)
    opted_in: bool = False
    bypass: bool = False

    @classmethod
    def from_headers(cls, headers: dict[str, str]) -> CacheControl:
        mode = (headers.get("x-tokenomy-cache") or "").strip().lower()
        if mode in ("off", "none", "bypass", "false", "0"):
            return cls(lookup=False, store=False, exact=False, semantic=False, bypass=True)
        exact, semantic, opted_in = True, True, False
        if mode == "exact":
            semantic, opted_in = False, True
        elif mode in ("semantic", "on", "true", "1"):
            opted_in = True
        lookup = store = True
        max_age: float | None = None
        directives = (headers.get("cache-control") or "").lower()
        if directives:
            if "no-cache" in directives:
                lookup = False
            if "no-store" in directives:
                store = False
            match = _MAX_AGE.search(directives)
            if match:
                max_age = float(match.group(1))
                if max_age == 0:
                    lookup = False
        return cls(lookup, store, exact, semantic, max_age, opted_in, bypass=not (lookup or store))


def namespace_of(call: Call, parts: tuple[str, ...], shared: bool) -> str:
    """The tenant a call's entries belong to, e.g. ``org=acme|key=k1|team=growth``."""
    if shared:
        return "shared"
    identity = call.identity
    values = {
        "org": identity.org,
        "key": identity.key_id,
        "team": identity.team,
        "feature": identity.feature,
        "customer": identity.customer,
        "endpoint": identity.endpoint,
    }
    return "|".join(f"{part}={values.get(part) or ''}" for part in parts) or "default"


def _normalize_content(content: Any) -> Any:
    """Text parts joined into one string (the two shapes OpenAI accepts mean the same)."""
    if isinstance(content, str):
        return content.strip()
    if isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        for part in content
    ):
        return "".join(part["text"] for part in content).strip()
    return content


def _normalize_message(message: Any) -> Any:
    if not isinstance(message, dict):
        return message
    out = {k: v for k, v in message.items() if v is not None}
    if "content" in out:
        out["content"] = _normalize_content(out["content"])
    return out


def normalized_request(call: Call) -> dict[str, Any]:
    """The request as the cache sees it: only what can change the answer, in a canonical form."""
    body = call.body
    out: dict[str, Any] = {
        k: v for k, v in body.items() if k not in NON_OUTPUT_FIELDS and k != "messages" and v is not None
    }
    out["model"] = call.model_asked
    out["_kind"] = call.kind
    if "messages" in body:
        out["messages"] = [_normalize_message(m) for m in body["messages"]]
    return out


def digest(value: Any) -> str:
    data = orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return hashlib.blake2b(data, digest_size=20).hexdigest()


def exact_key(call: Call, namespace: str) -> str:
    return digest([namespace, normalized_request(call)])


def split_intent(call: Call) -> tuple[str | None, dict[str, Any]]:
    """``(intent, context)``: the last user turn's text, and everything else.

    ``intent`` is ``None`` when the request does not end with a plain-text user
    turn (tool results, images…): such requests are only cached exactly.
    """
    request = normalized_request(call)
    messages = request.get("messages") or []
    if not messages:
        return None, request
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") not in INTENT_ROLES:
        return None, request
    content = last.get("content")
    if not isinstance(content, str) or not content:
        return None, request
    others = {k: v for k, v in last.items() if k != "content"}
    context = {**request, "messages": [*messages[:-1], others]}
    return content, context


def context_key(context: dict[str, Any], namespace: str) -> str:
    return digest([namespace, context])


def is_sampled(call: Call, missing_is_sampled: bool) -> bool:
    """Would the upstream sample a different answer each time?"""
    temperature = call.body.get("temperature")
    if temperature is None:
        return missing_is_sampled
    try:
        return float(temperature) > 0
    except (TypeError, ValueError):
        return True
