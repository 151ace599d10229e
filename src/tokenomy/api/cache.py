"""Cache routes: ``POST /v1/feedback``, ``POST /v1/cache/invalidate``, ``GET /v1/cache/stats``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from tokenomy.api.http import JSONResponse, authenticate, bearer_token, error_response, gateway_of, is_master, read_json
from tokenomy.errors import AuthenticationFailed, GatewayError, InvalidRequest

if TYPE_CHECKING:
    from tokenomy.app import Gateway


def require_admin(request: Request, gateway: Gateway) -> None:
    """Invalidation and stats act on every tenant's entries: the master key only (when one is set)."""
    master_key = gateway.settings.server.master_key
    if master_key is not None and not is_master(bearer_token(request), master_key):
        raise AuthenticationFailed("this route needs the master key")


async def feedback(request: Request) -> Response:
    """``{"request_id": "...", "correct": false}``: was the semantic cache's answer right?"""
    gateway = gateway_of(request)
    try:
        await authenticate(request, gateway)  # any caller of the gateway may report a wrong answer
        body = await read_json(request, 64 * 1024)
        request_id = body.get("request_id")
        correct = body.get("correct")
        if not isinstance(request_id, str) or not request_id:
            raise InvalidRequest("request_id must be a non-empty string", param="request_id")
        if not isinstance(correct, bool):
            raise InvalidRequest("correct must be true or false", param="correct")
    except GatewayError as err:
        return error_response(err)
    semantic = gateway.cache.semantic if gateway.cache is not None else None
    if semantic is None:
        applied, reason = False, "the semantic cache is not enabled"
    else:
        applied, reason = semantic.feedback(request_id, correct)
    return JSONResponse({"request_id": request_id, "applied": applied, "reason": reason})


async def invalidate(request: Request) -> Response:
    """Drop entries: ``{"key": ...}``, or any of ``namespace``, ``tag``, ``older_than_s`` (all must match)."""
    gateway = gateway_of(request)
    try:
        require_admin(request, gateway)
        body = await read_json(request, 64 * 1024)
        key, namespace, tag, age = body.get("key"), body.get("namespace"), body.get("tag"), body.get("older_than_s")
        for name, value in (("key", key), ("namespace", namespace), ("tag", tag)):
            if value is not None and not isinstance(value, str):
                raise InvalidRequest(f"{name} must be a string", param=name)
        if age is not None and (isinstance(age, bool) or not isinstance(age, (int, float)) or age < 0):
            raise InvalidRequest("older_than_s must be a non-negative number", param="older_than_s")
        if key is None and namespace is None and tag is None and age is None and body.get("all") is not True:
            raise InvalidRequest("give key, namespace, tag or older_than_s (or \"all\": true)")
    except GatewayError as err:
        return error_response(err)
    cache = gateway.cache
    if cache is None:
        return JSONResponse({"removed": 0})
    if key is not None:
        removed = int(await cache.store.delete(key))
    else:
        removed = await cache.store.invalidate(namespace=namespace, tag=tag, older_than_s=age)
    if cache.semantic is not None and cache.semantic.index is not None and tag is None and age is None and key is None:
        await cache.semantic.index.clear(namespace)
    # vectors of other removed entries are dropped lazily when a lookup finds their answer gone
    return JSONResponse({"removed": removed})


async def stats(request: Request) -> Response:
    gateway = gateway_of(request)
    try:
        require_admin(request, gateway)
    except GatewayError as err:
        return error_response(err)
    cache = gateway.cache
    if cache is None:
        return JSONResponse({"enabled": False})
    out: dict[str, object] = {"enabled": cache.settings.enabled, "entries": await cache.store.count()}
    if cache.semantic is not None and cache.semantic.index is not None:
        out["vectors"] = await cache.semantic.index.count()
        state = getattr(cache.semantic.policy, "state", None)
        out["semantic_policy"] = state() if state else {"mode": "fixed", "threshold": cache.semantic.policy.threshold}
    if cache.coalesce is not None:
        out["coalesce"] = {"in_flight": len(cache.coalesce.flights), "upstream_calls": cache.coalesce.leaders}
    return JSONResponse(out)
