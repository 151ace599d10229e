"""``BudgetStage``: reserve the worst case before the upstream call, settle the actual cost after.

Sits last before execute: it needs who pays, the deployments routing chose and
the output cap the token stage set. Every endpoint that costs money goes
through it — there is no side door. What the call already spent on its way
here (a summary of older turns, cache embeddings) is part of its reservation,
and so is every answer the executor may pay for: fallbacks, every cascade
level and its judge calls (``routing.attempts``). Streams are settled in
``reply.on_finish``, after the execute stage has priced what was streamed; a
client that disconnects is charged what was consumed, at least its input.
"""

from __future__ import annotations

from tokenomy.budgets.enforcer import BudgetEnforcer
from tokenomy.pipeline.call import Call
from tokenomy.pipeline.reply import Reply, StreamReply
from tokenomy.pipeline.runner import Next, Stage


class BudgetStage(Stage):
    name = "budget"

    def __init__(self, enforcer: BudgetEnforcer) -> None:
        self.enforcer = enforcer

    async def __call__(self, call: Call, next: Next) -> Reply:
        enforcer = self.enforcer
        ticket = await enforcer.admit(call)
        if ticket is None:
            return await next(call)
        try:
            reply = await next(call)
        except BaseException as exc:  # upstream failure, or cancelled because the client left
            enforcer.settle_later(ticket, call, exc)
            raise
        reply.headers.update(ticket.headers)
        if isinstance(reply, StreamReply):
            # registered after the execute stage's finalizer, so the streamed cost is known;
            # settled in the background so the stream's end does not wait for the store
            reply.on_finish(lambda _reply, exc: enforcer.settle_later(ticket, call, exc))
        else:
            enforcer.settle_later(ticket, call)
        return reply
