"""A fake OpenAI API server speaking OpenAI's documented wire format.

Chat completions (JSON and SSE with ``stream_options.include_usage``),
embeddings, and OpenAI's error bodies. The upstream model id selects a
behaviour, so one fake serves every test:

- ``fail-500`` / ``fail-503``: an OpenAI ``server_error`` body with that status
- ``fail-429``: ``rate_limit_exceeded`` with ``retry-after: 2``
- ``fail-400``: ``invalid_request_error`` (the client's fault)
- ``fail-401``: ``invalid_api_key``
- ``fail-context``: 400 ``context_length_exceeded``
- ``fail-policy``: 400 ``content_policy_violation``
- ``flaky-500``: every other request fails with 500 (so a retry succeeds)
- ``hang``: never answers (the gateway's read timeout fires)
- ``malformed``: 200 with a body that is not JSON
- ``cut-stream``: streams three chunks then drops the connection
- ``slow-stream``: 50 ms between chunks
- anything else: a deterministic answer ``"echo: <last user text>"``

Every request is kept in ``requests`` (path, headers, JSON body) for assertions.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.background import BackgroundServer

CHUNK_WORDS = 2


def _error(status: int, message: str, type_: str, code: str | None) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if p.get("type") == "text")
            return str(content)
    return ""


class FakeOpenAI(BackgroundServer):
    label = "fake-openai"

    def __init__(self, *, api_key: str | None = "sk-fake", record: bool = True) -> None:
        super().__init__()
        self.api_key = api_key
        self.record = record
        self.requests: list[dict[str, Any]] = []
        self._flaky = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/embeddings", self.embeddings)
        return app

    # -- handlers -----------------------------------------------------------------------
    def _check(self, request: web.Request) -> web.Response | None:
        if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return _error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        return None

    async def chat(self, request: web.Request) -> web.StreamResponse:
        denied = self._check(request)
        if denied:
            return denied
        body = await request.json(loads=orjson.loads)
        if self.record:
            self.requests.append({"path": request.path, "headers": dict(request.headers), "body": body})
        model = body.get("model", "")
        failure = await self._failure(model)
        if failure is not None:
            return failure
        if model == "malformed":
            return web.Response(status=200, body=b'{"id": "chatcmpl-x", "choi', content_type="application/json")
        prompt_tokens = sum(len(str(m.get("content", "")).split()) + 4 for m in body["messages"]) + 3
        text = "echo: " + _last_user_text(body["messages"])
        words = text.split(" ")
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        finish = "stop"
        if limit is not None and len(words) > limit:
            words, finish = words[:limit], "length"
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(words),
            "total_tokens": prompt_tokens + len(words),
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        }
        ident = f"chatcmpl-fake{int(time.time() * 1000)}"
        if not body.get("stream"):
            answer = {
                "id": ident,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": " ".join(words), "refusal": None},
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                ],
                "usage": usage,
                "system_fingerprint": "fp_fake",
            }
            return web.Response(body=orjson.dumps(answer), content_type="application/json")
        return await self._stream(request, body, ident, model, words, finish, usage)

    async def _stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        ident: str,
        model: str,
        words: list[str],
        finish: str,
        usage: dict[str, Any],
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
        await response.prepare(request)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            data: dict[str, Any] = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
            }
            if include_usage:
                data["usage"] = None
            return b"data: " + orjson.dumps(data) + b"\n\n"

        await response.write(chunk({"role": "assistant", "content": "", "refusal": None}))
        pieces = [" ".join(words[i : i + CHUNK_WORDS]) for i in range(0, len(words), CHUNK_WORDS)]
        for index, piece in enumerate(pieces):
            if model == "cut-stream" and index == 2:
                request.transport.close()  # type: ignore[union-attr]
                return response
            if model == "slow-stream":
                await asyncio.sleep(0.05)
            await response.write(chunk({"content": piece if index == 0 else " " + piece}))
        await response.write(chunk({}, finish))
        if include_usage:
            final = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": [],
                "usage": usage,
            }
            await response.write(b"data: " + orjson.dumps(final) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def embeddings(self, request: web.Request) -> web.Response:
        denied = self._check(request)
        if denied:
            return denied
        body = await request.json(loads=orjson.loads)
        if self.record:
            self.requests.append({"path": request.path, "headers": dict(request.headers), "body": body})
        failure = await self._failure(body.get("model", ""))
        if failure is not None:
            return failure
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        tokens = sum(len(str(text).split()) for text in inputs)
        data = [
            {"object": "embedding", "index": i, "embedding": [float(len(str(text))), 1.0, 0.5]}
            for i, text in enumerate(inputs)
        ]
        answer = {
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return web.Response(body=orjson.dumps(answer), content_type="application/json")

    async def _failure(self, model: str) -> web.Response | None:
        if model in ("fail-500", "fail-503"):
            status = int(model[-3:])
            return _error(status, "The server had an error while processing your request.", "server_error", None)
        if model == "fail-429":
            response = _error(429, "Rate limit reached for requests", "requests", "rate_limit_exceeded")
            response.headers["retry-after"] = "2"
            return response
        if model == "fail-400":
            return _error(400, "Invalid value for 'temperature'.", "invalid_request_error", "invalid_value")
        if model == "fail-401":
            return _error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        if model == "fail-context":
            return _error(
                400,
                "This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 tokens.",
                "invalid_request_error",
                "context_length_exceeded",
            )
        if model == "fail-policy":
            return _error(
                400,
                "Your request was rejected as a result of our safety system.",
                "invalid_request_error",
                "content_policy_violation",
            )
        if model == "flaky-500":
            # fails every other request: the first try fails, a retry succeeds
            self._flaky += 1
            if self._flaky % 2 == 1:
                return _error(500, "The server had an error while processing your request.", "server_error", None)
        if model == "hang":
            await asyncio.sleep(3600)
        return None


def main() -> None:
    """Run the fake on its own (for benchmarks): ``python -m tests.fakes.openai_upstream --port N``."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default="sk-fake")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    fake = FakeOpenAI(api_key=args.api_key, record=False)
    web.run_app(fake.app(), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
