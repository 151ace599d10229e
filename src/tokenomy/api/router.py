"""The ASGI entry point: the hot API routes dispatched directly, everything else
(probes, models list, lifespan, 404s) through Starlette.

Starlette's router and its exception middlewares cost tens of microseconds per
request and wrap every ``send`` of a stream; the completion routes catch their
own errors and render OpenAI's envelope, so they need neither.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

Endpoint = Callable[[Request], Awaitable[Response]]


class GatewayASGI:
    def __init__(self, app: Starlette, hot_routes: dict[str, Endpoint]) -> None:
        self.app = app
        self.state = app.state
        self.hot_routes = hot_routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = self.hot_routes.get(scope["path"])
            if endpoint is not None:
                scope["app"] = self.app
                response = await endpoint(Request(scope, receive))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
