"""The outermost stage: once a call is over, hand it to the recorders (ledger, metrics).

Recorders are synchronous and must be O(1): the ledger writer only appends to
an in-memory batch that a background task flushes. Failed calls are recorded
too, with their outcome, so upstream failures show in the ledger.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from tokenomy.errors import GatewayError
from tokenomy.pipeline.call import Call
from tokenomy.pipeline.reply import Reply, StreamReply
from tokenomy.pipeline.runner import Next, Stage

log = logging.getLogger(__name__)

Recorder = Callable[[Call], None]

#: nginx's code for "client closed request": the client left before the answer was complete
CLIENT_CLOSED = 499


class RecordStage(Stage):
    name = "record"

    def __init__(self, recorders: Sequence[Recorder]) -> None:
        self.recorders = list(recorders)

    async def __call__(self, call: Call, next: Next) -> Reply:
        try:
            reply = await next(call)
        except GatewayError as err:
            mark_failed(call, err)
            self.record(call)
            raise
        except asyncio.CancelledError:
            call.outcome, call.status = "client_disconnected", CLIENT_CLOSED
            self.record(call)
            raise
        except Exception as err:
            call.outcome, call.status, call.error_message = "internal_error", 500, repr(err)[:500]
            self.record(call)
            raise
        if isinstance(reply, StreamReply):
            reply.on_finish(self._stream_finished)
        else:
            self.record(call)
        return reply

    def _stream_finished(self, reply: StreamReply, exc: BaseException | None) -> None:
        call = reply.call
        if isinstance(exc, GatewayError):
            mark_failed(call, exc)
        elif exc is not None:
            call.outcome, call.status = "client_disconnected", CLIENT_CLOSED
        self.record(call)

    def record(self, call: Call) -> None:
        call.finish()
        if call.outcome != "ok":
            # A failed attempt of a queued job is recorded under its own id, so the
            # job id stays free for the attempt that succeeds (charged once).
            failed_id = call.annotations.get("failed_attempt_id")
            if failed_id:
                call.request_id = failed_id
        for recorder in self.recorders:
            try:
                recorder(call)
            except Exception:  # a broken recorder must not fail the answer already given
                log.exception("recorder %r failed for %s", recorder, call.request_id)


def mark_failed(call: Call, err: GatewayError) -> None:
    call.outcome = err.outcome
    call.status = err.status
    call.error_message = err.message[:1000]
