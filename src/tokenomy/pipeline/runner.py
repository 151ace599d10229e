"""The request pipeline: an onion of stages around the upstream call.

Each stage is an async callable ``stage(call, next) -> Reply``. It may look at
or change the ``Call`` before calling ``next`` (reserve a budget, choose a
model), answer without calling ``next`` (a cache hit), or act on the reply
after (settle, store, record). For streams a stage acts at the end by
registering ``reply.on_finish(...)``; nothing is buffered.

Adding a capability means adding a stage (or a policy a stage consults), never
a special case in the HTTP layer::

    class Stamp(Stage):
        name = "stamp"
        async def __call__(self, call, next):
            reply = await next(call)
            reply.headers["x-stamp"] = "1"
            return reply

The runner times each stage's own work (excluding the stages inside it) into
``call.stage_ms``.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from tokenomy.pipeline.call import Call
from tokenomy.pipeline.reply import Reply

if TYPE_CHECKING:
    from tokenomy.observe.tracing import StageTracer

Next = Callable[[Call], Awaitable[Reply]]


class Stage(abc.ABC):
    """One step of the pipeline."""

    #: key in ``call.stage_ms`` and in metrics
    name: str = "stage"

    @abc.abstractmethod
    async def __call__(self, call: Call, next: Next) -> Reply:
        """Handle the call, usually by delegating to ``next`` and acting around it."""


class Pipeline:
    """Runs a call through its stages, outermost first."""

    def __init__(self, stages: Sequence[Stage], *, tracer: StageTracer | None = None) -> None:
        if not stages:
            raise ValueError("a pipeline needs at least one stage (the executor)")
        self.stages = list(stages)
        #: when set (tracing on), each stage also runs in an OpenTelemetry span; when
        #: ``None`` the chain is built without any wrapper, so tracing off costs nothing
        self.tracer = tracer
        for stage in self.stages:
            if tracer is not None and hasattr(stage, "tracer"):
                stage.tracer = tracer  # stages that trace their own work (upstream attempts)
        self._entry = self._chain(0)

    def _chain(self, index: int) -> Next:
        stage = self.stages[index]
        if index == len(self.stages) - 1:
            inner: Next | None = None
        else:
            inner = self._chain(index + 1)
        name = stage.name

        if inner is None:

            async def run_last(call: Call) -> Reply:
                start = time.perf_counter()
                try:
                    return await stage(call, _end_of_pipeline)
                finally:
                    _add(call, name, (time.perf_counter() - start) * 1000.0)

            return self._traced(name, run_last)

        async def run(call: Call) -> Reply:
            start = time.perf_counter()
            inside = 0.0

            async def timed_next(c: Call) -> Reply:
                nonlocal inside
                t0 = time.perf_counter()
                try:
                    return await inner(c)
                finally:
                    inside += time.perf_counter() - t0

            try:
                return await stage(call, timed_next)
            finally:
                _add(call, name, (time.perf_counter() - start - inside) * 1000.0)

        return self._traced(name, run)

    def _traced(self, name: str, run: Next) -> Next:
        return run if self.tracer is None else self.tracer.wrap_stage(name, run)

    async def run(self, call: Call) -> Reply:
        return await self._entry(call)


def _add(call: Call, name: str, ms: float) -> None:
    call.stage_ms[name] = call.stage_ms.get(name, 0.0) + ms


async def _end_of_pipeline(call: Call) -> Reply:
    raise RuntimeError("the last stage of a pipeline must answer without calling next")
