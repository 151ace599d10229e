"""Any OpenAI-compatible upstream: OpenAI, vLLM, Ollama, llama.cpp server, Groq, Together…

Requests pass through as they are (only ``model`` is replaced by the upstream
id); streams are relayed chunk by chunk.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from tokenomy.errors import UpstreamError
from tokenomy.providers.base import ChatResult, ChatStream, Deployment, Provider
from tokenomy.providers.http import HTTPUpstream, iter_sse
from tokenomy.providers.usage import Usage

DEFAULT_BASE_URL = "https://api.openai.com/v1"


class OpenAICompatibleProvider(Provider):
    name = "openai"

    def __init__(self, upstream: HTTPUpstream | None = None) -> None:
        self.http = upstream or HTTPUpstream()

    def _url(self, deployment: Deployment, path: str) -> str:
        base = (deployment.base_url or DEFAULT_BASE_URL).rstrip("/")
        return f"{base}/{path}"

    def _headers(self, deployment: Deployment) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if deployment.api_key:
            headers["authorization"] = f"Bearer {deployment.api_key}"
        headers.update(deployment.options.get("headers") or {})
        return headers

    async def chat(self, deployment: Deployment, body: dict[str, Any]) -> ChatResult:
        response = await self.http.post(
            deployment, self._url(deployment, "chat/completions"), body, self._headers(deployment)
        )
        data = await self.http.read_json(deployment, response)
        if not isinstance(data.get("choices"), list):
            raise UpstreamError(f"upstream {deployment.name!r} answered without choices")
        return ChatResult(body=data, usage=Usage.from_openai(data.get("usage")))

    async def chat_stream(self, deployment: Deployment, body: dict[str, Any]) -> ChatStream:
        payload = dict(body)
        payload["stream"] = True
        options = dict(payload.get("stream_options") or {})
        options["include_usage"] = True
        payload["stream_options"] = options
        headers = self._headers(deployment)
        headers["accept"] = "text/event-stream"
        response = await self.http.post(
            deployment, self._url(deployment, "chat/completions"), payload, headers, stream=True
        )
        return ChatStream(self._chunks(deployment, response))

    async def _chunks(self, deployment: Deployment, response: Any) -> AsyncIterator[dict[str, Any]]:
        done = False
        async for _event, data in iter_sse(deployment, response):
            if data == b"[DONE]":
                done = True  # read on to the end of the body so the connection can be reused
                continue
            if done:
                continue
            try:
                chunk = orjson.loads(data)
            except orjson.JSONDecodeError as exc:
                raise UpstreamError(f"upstream {deployment.name!r} sent a malformed stream chunk") from exc
            if isinstance(chunk, dict) and "error" in chunk and "choices" not in chunk:
                message = chunk["error"].get("message") if isinstance(chunk["error"], dict) else chunk["error"]
                raise UpstreamError(f"upstream {deployment.name!r} failed mid-stream: {message}")
            yield chunk
        if not done:
            raise UpstreamError(f"upstream {deployment.name!r} ended the stream before [DONE]")

    async def embeddings(self, deployment: Deployment, body: dict[str, Any]) -> ChatResult:
        response = await self.http.post(
            deployment, self._url(deployment, "embeddings"), body, self._headers(deployment)
        )
        data = await self.http.read_json(deployment, response)
        if not isinstance(data.get("data"), list):
            raise UpstreamError(f"upstream {deployment.name!r} answered without data")
        return ChatResult(body=data, usage=Usage.from_openai(data.get("usage")))

    async def aclose(self) -> None:
        await self.http.aclose()
