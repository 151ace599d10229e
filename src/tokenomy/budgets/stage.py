"""``BudgetStage``: reserve the worst case before the upstream call, settle the actual cost after.

Sits after identify/resolve (it needs who pays and which model) and before
everything that may spend money (cache embeddings, routing classifiers,
execute), so every endpoint that costs money goes through it — there is no
side door. Streams are settled in ``reply.on_finish``, after the execute
stage has priced what was streamed; a client that disconnects is charged what
was consumed, at least its input.
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
