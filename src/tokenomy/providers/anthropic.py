"""Anthropic's Messages API as an upstream.

Requests arrive in OpenAI's shape and are translated (``anthropic_format``);
answers and streams are translated back, with Anthropic's usage normalized so
cache reads and writes are priced at their own rates. Embeddings are not
offered by Anthropic: the base class refuses them.

Deployment options: ``anthropic_version`` (header, default ``2023-06-01``),
``default_max_tokens`` (Anthropic requires ``max_tokens``; used when the client
set none), ``headers`` (extra headers, e.g. ``anthropic-beta``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from tokenomy.errors import UpstreamError
from tokenomy.providers.anthropic_request import DEFAULT_MAX_TOKENS, openai_to_anthropic_request
from tokenomy.providers.anthropic_response import anthropic_to_openai_response
from tokenomy.providers.anthropic_stream import AnthropicToOpenAIStream
from tokenomy.providers.base import ChatResult, ChatStream, Deployment, Provider
from tokenomy.providers.http import HTTPUpstream, iter_sse
from tokenomy.providers.usage import Usage

DEFAULT_BASE_URL = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"


class AnthropicProvider(Provider):
    name = "anthropic"
    accepts_anthropic_extensions = True

    def __init__(self, upstream: HTTPUpstream | None = None, *, default_max_tokens: int = DEFAULT_MAX_TOKENS) -> None:
        self.http = upstream or HTTPUpstream()
        self.default_max_tokens = default_max_tokens

    def _url(self, deployment: Deployment) -> str:
        # Accept base URLs written either way: "https://api.anthropic.com" or ".../v1".
        base = (deployment.base_url or DEFAULT_BASE_URL).rstrip("/")
        return f"{base}/messages" if base.endswith("/v1") else f"{base}/v1/messages"

    def _headers(self, deployment: Deployment) -> dict[str, str]:
        headers = {
            "content-type": "application/json",
            "anthropic-version": str(deployment.options.get("anthropic_version") or ANTHROPIC_VERSION),
        }
        if deployment.api_key:
            headers["x-api-key"] = deployment.api_key
        headers.update(deployment.options.get("headers") or {})
        return headers

    def _payload(self, deployment: Deployment, body: dict[str, Any], *, stream: bool) -> dict[str, Any]:
        default_max = int(deployment.options.get("default_max_tokens") or self.default_max_tokens)
        payload = openai_to_anthropic_request(body, deployment.upstream_model, default_max_tokens=default_max)
        if stream:
            payload["stream"] = True
        else:
            payload.pop("stream", None)
        return payload

    async def chat(self, deployment: Deployment, body: dict[str, Any]) -> ChatResult:
        payload = self._payload(deployment, body, stream=False)
        response = await self.http.post(deployment, self._url(deployment), payload, self._headers(deployment))
        data = await self.http.read_json(deployment, response)
        if data.get("type") != "message" or not isinstance(data.get("content"), list):
            raise UpstreamError(f"upstream {deployment.name!r} answered with no message (type={data.get('type')!r})")
        model = data.get("model") or deployment.upstream_model
        return ChatResult(body=anthropic_to_openai_response(data, model), usage=Usage.from_anthropic(data.get("usage")))

    async def chat_stream(self, deployment: Deployment, body: dict[str, Any]) -> ChatStream:
        payload = self._payload(deployment, body, stream=True)
        headers = self._headers(deployment)
        headers["accept"] = "text/event-stream"
        response = await self.http.post(deployment, self._url(deployment), payload, headers, stream=True)
        translator = AnthropicToOpenAIStream()
        return AnthropicChatStream(self._chunks(deployment, response, translator), translator)

    async def _chunks(
        self, deployment: Deployment, response: aiohttp.ClientResponse, translator: AnthropicToOpenAIStream
    ) -> AsyncIterator[dict[str, Any]]:
        # aclosing: an error raised here closes the SSE reader at once, which drops the connection
        async with contextlib.aclosing(iter_sse(deployment, response)) as events:
            async for event, data in events:
                if translator.finished:
                    continue  # read on to the end of the body so the connection can be reused
                for chunk in self._translate(deployment, translator, event, data):
                    yield chunk
        if not translator.finished:
            raise UpstreamError(f"upstream {deployment.name!r} ended the stream before message_stop")

    @staticmethod
    def _translate(
        deployment: Deployment, translator: AnthropicToOpenAIStream, event: str | None, data: bytes
    ) -> list[dict[str, Any]]:
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(f"upstream {deployment.name!r} sent a malformed stream event {event!r}") from exc
        if not isinstance(parsed, dict):
            raise UpstreamError(f"upstream {deployment.name!r} sent a stream event that is not an object")
        try:
            return translator.feed(parsed)
        except UpstreamError as exc:
            raise UpstreamError(f"upstream {deployment.name!r} failed mid-stream: {exc.message}") from exc

    async def aclose(self) -> None:
        await self.http.aclose()


class AnthropicChatStream(ChatStream):
    """A ``ChatStream`` whose ``usage`` keeps Anthropic's cache writes.

    The OpenAI usage chunk has no field for prompt-cache writes, which Anthropic
    bills above the input rate (1.25 times for 5 minutes, 2 times for 1 hour);
    reading usage back from that chunk would price them as plain input. The
    translator's own ``Usage`` is exact, so it replaces the chunk's.
    """

    def __init__(self, chunks: AsyncIterator[dict[str, Any]], translator: AnthropicToOpenAIStream) -> None:
        super().__init__(chunks)
        self._translator = translator

    async def __anext__(self) -> dict[str, Any]:
        chunk = await super().__anext__()
        if self._translator.usage is not None:
            self.usage = self._translator.usage
        return chunk
