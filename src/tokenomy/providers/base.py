"""The contract between the pipeline and an upstream: one small abstract class.

A provider speaks one wire format (OpenAI-compatible, Anthropic Messages, an
in-process model, the simulator). It takes requests in OpenAI's chat/embeddings
shape, already pointed at its upstream model id, and gives back OpenAI-shaped
answers and normalized ``Usage``. Everything about cost, caching, budgets and
routing happens above this line; everything about sockets, auth headers and
translation happens below it.

Usage::

    provider = OpenAICompatibleProvider()
    result = await provider.chat(deployment, {"model": "gpt-4o-mini", "messages": [...]})
    stream = await provider.chat_stream(deployment, {...})
    async for chunk in stream:  # OpenAI ``chat.completion.chunk`` dicts
        ...

Errors are raised as ``tokenomy.errors`` types (``UpstreamError``,
``UpstreamTimeout``, ``RateLimited``, ``UpstreamRejected``) so the layers above
never see a transport library's exceptions. A streaming call raises them before
its first chunk when the upstream refuses the request, and from the iterator when
the stream breaks mid-way.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from tokenomy.providers.usage import Usage


@dataclass(slots=True)
class Deployment:
    """One way to serve a public model name: a provider, an upstream model id, credentials.

    ``price_model`` names the price-catalog entry used to price it (defaults to
    the upstream model id); ``prices`` overrides catalog fields (USD per 1M tokens).
    ``options`` holds provider-specific settings (simulator latency and faults,
    extra headers…).
    """

    name: str
    provider: str
    upstream_model: str
    base_url: str | None = None
    api_key: str | None = None
    price_model: str | None = None
    prices: dict[str, Any] = field(default_factory=dict)
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 120.0
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def pricing_key(self) -> str:
        return self.price_model or self.upstream_model


@dataclass(slots=True)
class ChatResult:
    """A complete (non-streamed) answer: OpenAI-shaped body plus its usage."""

    body: dict[str, Any]
    usage: Usage | None


class ChatStream:
    """An answer arriving chunk by chunk (OpenAI ``chat.completion.chunk`` dicts).

    ``usage`` is set once the upstream reports it (normally on the last chunk);
    ``finish_reason`` once the model stops. ``aclose()`` cancels the upstream call
    and is safe to call more than once.
    """

    def __init__(self, chunks: AsyncIterator[dict[str, Any]]) -> None:
        self._chunks = chunks
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.completed = False

    def __aiter__(self) -> ChatStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        try:
            chunk = await self._chunks.__anext__()
        except StopAsyncIteration:
            self.completed = True
            raise
        usage = chunk.get("usage")
        if usage:
            self.usage = Usage.from_openai(usage)
        for choice in chunk.get("choices") or ():
            reason = choice.get("finish_reason")
            if reason:
                self.finish_reason = reason
        return chunk

    async def aclose(self) -> None:
        aclose = getattr(self._chunks, "aclose", None)
        if aclose is not None:
            await aclose()


class Provider(abc.ABC):
    """An upstream wire format. Instances are shared by all deployments of that format."""

    #: the name used in config (``provider: openai``)
    name: str = ""
    #: whether requests may keep Anthropic-only keys (``cache_control`` on parts,
    #: ``thinking``…) that clients of ``/v1/messages`` send; others get them stripped
    accepts_anthropic_extensions: bool = False

    @abc.abstractmethod
    async def chat(self, deployment: Deployment, body: dict[str, Any]) -> ChatResult:
        """Send a chat-completions request; return the whole answer."""

    @abc.abstractmethod
    async def chat_stream(self, deployment: Deployment, body: dict[str, Any]) -> ChatStream:
        """Send a streaming chat-completions request.

        ``body`` asks for usage (``stream_options.include_usage``) so the stream's
        cost is known; the HTTP layer drops the usage chunk if the client did not
        ask for it.
        """

    async def embeddings(self, deployment: Deployment, body: dict[str, Any]) -> ChatResult:
        """Create embeddings (OpenAI ``/v1/embeddings`` shape)."""
        from tokenomy.errors import InvalidRequest

        raise InvalidRequest(f"model {deployment.name!r} does not support embeddings", param="model")

    async def start(self) -> None:
        """Open pools; called once when the gateway starts."""

    async def aclose(self) -> None:
        """Close pools and workers; called once when the gateway stops."""
