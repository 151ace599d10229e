"""Who pays and what for: identity and tags from the request headers.

Headers: ``x-tokenomy-team``, ``x-tokenomy-feature``, ``x-tokenomy-customer``,
``x-tokenomy-endpoint``, ``x-tokenomy-tags`` (comma list). The OpenAI ``user``
field names the customer when the header does not.
"""

from __future__ import annotations

from tokenomy.pipeline.call import Call, Identity
from tokenomy.pipeline.reply import Reply
from tokenomy.pipeline.runner import Next, Stage

MAX_TAGS = 32
MAX_LABEL = 128


class IdentifyStage(Stage):
    name = "identify"

    async def __call__(self, call: Call, next: Next) -> Reply:
        call.identity = identity_from(call)
        return await next(call)


def identity_from(call: Call) -> Identity:
    headers = call.headers
    user = call.body.get("user") if call.kind == "chat" or call.kind == "embeddings" else None
    customer = _label(headers.get("x-tokenomy-customer")) or (
        _label(user) if isinstance(user, str) else None
    )
    raw_tags = headers.get("x-tokenomy-tags") or ""
    tags = tuple(dict.fromkeys(t for t in (_label(t) for t in raw_tags.split(",")) if t))[:MAX_TAGS]
    # What a virtual key binds wins over headers: a header must not move a call
    # out of the team (or customer) whose budget it is charged to.
    base = call.identity
    return Identity(
        key_id=base.key_id,
        org=base.org,
        team=base.team or _label(headers.get("x-tokenomy-team")),
        feature=base.feature or _label(headers.get("x-tokenomy-feature")),
        customer=base.customer or customer,
        endpoint=_label(headers.get("x-tokenomy-endpoint")) or base.endpoint,
        tags=tags or base.tags,
        allowed_models=base.allowed_models,
    )


def _label(value: str | None) -> str | None:
    """A trimmed, bounded label; empty means absent."""
    if not value:
        return None
    value = value.strip()
    return value[:MAX_LABEL] or None
