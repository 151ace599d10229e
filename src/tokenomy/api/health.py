"""Liveness and readiness probes, and OpenAI-shaped answers for unknown routes."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from tokenomy.api.http import JSONResponse, gateway_of


async def healthz(request: Request) -> Response:
    """The process is up and serving HTTP."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready for traffic: stores connected, providers started, ledger writer keeping up."""
    gateway = gateway_of(request)
    writer = gateway.writer
    body = {
        "status": "ready" if gateway.ready else "starting",
        "models": sum(1 for _ in gateway.registry),
        "ledger": None
        if writer is None
        else {"pending_rows": writer.pending, "dropped_rows": writer.dropped},
    }
    return JSONResponse(body, status_code=200 if gateway.ready else 503)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kinds = {404: "not_found", 405: "method_not_allowed"}
    return JSONResponse(
        {
            "error": {
                "message": f"{request.method} {request.url.path}: {exc.detail}",
                "type": "invalid_request_error",
                "param": None,
                "code": kinds.get(exc.status_code, "http_error"),
            }
        },
        status_code=exc.status_code,
    )


EXCEPTION_HANDLERS = {HTTPException: http_error}
