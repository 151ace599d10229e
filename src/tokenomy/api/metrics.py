"""``GET /metrics``: the gateway's Prometheus metrics (``tokenomy.observe.metrics``)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from tokenomy.api.admin_auth import is_admin
from tokenomy.api.http import error_response, gateway_of
from tokenomy.errors import AuthenticationFailed
from tokenomy.observe.metrics import CONTENT_TYPE


async def metrics(request: Request) -> Response:
    gateway = gateway_of(request)
    settings = gateway.settings
    if settings.observe.metrics_auth and not is_admin(request, settings.server.master_key):
        return error_response(AuthenticationFailed("/metrics needs the master key: 'Authorization: Bearer <key>'"))
    assert gateway.metrics is not None
    return Response(gateway.metrics.exposition(), media_type=CONTENT_TYPE)
