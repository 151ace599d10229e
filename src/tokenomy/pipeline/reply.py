"""What the pipeline hands back to the HTTP layer: a whole answer or a stream.

Both are in OpenAI's shape (the HTTP layer translates for ``/v1/messages``).
A ``StreamReply`` runs its finalizers exactly once when the stream ends —
completed, broken, or abandoned by a disconnected client — which is where
stages settle costs and record the call without buffering the answer.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tokenomy.errors import GatewayError, UpstreamError
from tokenomy.pipeline.call import Call
from tokenomy.providers.base import ChatStream

log = logging.getLogger(__name__)

Finalizer = Callable[["StreamReply", BaseException | None], Awaitable[None] | None]


@dataclass(slots=True)
class Completion:
    """A complete answer: OpenAI chat completion or embeddings body."""

    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


class StreamReply:
    """A streamed answer: iterate ``chunks()``; finalizers run once when it ends.

    ``error`` is set if the stream broke after it started (the HTTP layer can
    only report it in-band at that point).
    """

    def __init__(self, stream: ChatStream, call: Call, headers: dict[str, str] | None = None) -> None:
        self.stream = stream
        self.call = call
        self.headers = headers or {}
        self.error: GatewayError | None = None
        self._finalizers: list[Finalizer] = []
        self._finished = False
        self._transforms: list[Callable[[dict[str, Any]], dict[str, Any] | None]] = []

    def on_finish(self, finalizer: Finalizer) -> None:
        """Run ``finalizer(reply, exc)`` when the stream ends.

        Finalizers run in registration order; inner stages register first (after
        ``next`` returns), so costs are settled before the outer record stage runs.
        """
        self._finalizers.append(finalizer)

    def transform(self, fn: Callable[[dict[str, Any]], dict[str, Any] | None]) -> None:
        """Rewrite each chunk on its way out; returning ``None`` drops the chunk."""
        self._transforms.append(fn)

    async def chunks(self) -> AsyncIterator[dict[str, Any]]:
        exc: BaseException | None = None
        try:
            async for chunk in self.stream:
                out: dict[str, Any] | None = chunk
                for fn in self._transforms:
                    out = fn(out)
                    if out is None:
                        break
                if out is not None:
                    yield out
        except GatewayError as err:
            exc = self.error = err
            raise
        except Exception as err:  # a provider bug: report it as an upstream failure
            exc = self.error = UpstreamError(f"stream failed: {err}")
            raise self.error from err
        except BaseException as err:  # cancelled, or the client went away: finalize, re-raise
            exc = err
            raise
        finally:
            if exc is not None or not self.stream.completed:
                await self.stream.aclose()
            await self.finish(exc)

    async def finish(self, exc: BaseException | None = None) -> None:
        """Run the finalizers once (also used when the client never read the stream)."""
        if self._finished:
            return
        self._finished = True
        for finalizer in self._finalizers:
            try:
                result = finalizer(self, exc)
                if result is not None:
                    await result
            except Exception:  # a failing finalizer must not hide the others or the answer
                log.exception("stream finalizer failed")


Reply = Completion | StreamReply
