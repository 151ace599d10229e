"""``/admin/...``: orgs, teams, virtual keys, budgets, rate limits and recent alerts.

Master key only: a virtual key, however privileged its team, is refused with
403, and the admin API is off (403) while no master key is configured. Routes
parse and render; the checks live in ``tokenomy.budgets.manage``, shared with
the CLI. A key's secret appears once, in the answer that creates it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tokenomy.api.http import JSONResponse, bearer_token, error_response, gateway_of, internal_error_response, is_master, read_json
from tokenomy.budgets.factory import Enforcement
from tokenomy.budgets.keys import looks_like_key
from tokenomy.budgets.manage import budget_dict, budget_from, create_key, rate_limit_dict, rate_limit_from
from tokenomy.errors import AuthenticationFailed, GatewayError, InvalidRequest, PermissionDenied

Handler = Callable[[Request, Enforcement], Awaitable[Response]]
MAX_ADMIN_BODY = 64 * 1024


def admin(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a handler: master key check, error envelopes, and fresh rules after a change."""

    async def endpoint(request: Request) -> Response:
        gateway = gateway_of(request)
        try:
            token = bearer_token(request)
            master = gateway.settings.server.master_key
            if not token:
                raise AuthenticationFailed("missing API key: the admin API needs the master key")
            if master is None:
                raise PermissionDenied("the admin API is disabled: set server.master_key to use it", code="admin_disabled")
            if not is_master(token, master):
                if looks_like_key(token):
                    raise PermissionDenied("virtual keys cannot use the admin API; use the master key", code="not_admin")
                raise AuthenticationFailed("incorrect API key provided")
            enforcement = gateway.enforcement
            assert enforcement is not None
            response = await handler(request, enforcement)
            if request.method != "GET":
                await enforcement.book.refresh()
                enforcement.keys.forget()
            return response
        except GatewayError as err:
            return error_response(err)
        except Exception as exc:  # a bug: logged with its trace, reported as a clean 500
            return internal_error_response(exc)

    return endpoint


async def _body(request: Request) -> dict:
    return await read_json(request, MAX_ADMIN_BODY)


async def create_org(request: Request, e: Enforcement) -> Response:
    body = await _body(request)
    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequest("name is required", param="name")
    return JSONResponse(await e.access.create_org(name), status_code=201)


async def list_orgs(request: Request, e: Enforcement) -> Response:
    return JSONResponse({"data": await e.access.list_orgs()})


async def create_team(request: Request, e: Enforcement) -> Response:
    body = await _body(request)
    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequest("name is required", param="name")
    models = body.get("models")
    if models is not None and (not isinstance(models, list) or not all(isinstance(m, str) for m in models)):
        raise InvalidRequest("models must be a list of model names", param="models")
    team = await e.access.create_team(name, body.get("org"), models)
    extras = {}
    if body.get("budget"):
        spec = body["budget"]
        rule = budget_from({"amount": spec} if isinstance(spec, str) else spec, scope="team", value=name)
        await e.access.create_budget(rule)
        extras["budget"] = budget_dict(rule)
    return JSONResponse({**team.as_dict(), **extras}, status_code=201)


async def list_teams(request: Request, e: Enforcement) -> Response:
    return JSONResponse({"data": [team.as_dict() for team in await e.access.list_teams()]})


async def create_key_route(request: Request, e: Enforcement) -> Response:
    secret, record, extras = await create_key(e.keys, e.access, await _body(request))
    return JSONResponse({"key": secret, **record.as_dict(), **extras}, status_code=201)


async def list_keys(request: Request, e: Enforcement) -> Response:
    team = request.query_params.get("team")
    revoked = request.query_params.get("include_revoked") in ("1", "true")
    return JSONResponse({"data": [k.as_dict() for k in await e.access.list_keys(team, revoked)]})


async def get_key(request: Request, e: Enforcement) -> Response:
    return JSONResponse((await e.access.get_key(request.path_params["key_id"])).as_dict())


async def revoke_key(request: Request, e: Enforcement) -> Response:
    return JSONResponse((await e.access.revoke_key(request.path_params["key_id"])).as_dict())


async def create_budget(request: Request, e: Enforcement) -> Response:
    rule = await e.access.create_budget(budget_from(await _body(request)))
    return JSONResponse(budget_dict(rule), status_code=201)


async def list_budgets(request: Request, e: Enforcement) -> Response:
    return JSONResponse({"data": [budget_dict(rule) for rule in e.book.current().budgets]})


async def delete_budget(request: Request, e: Enforcement) -> Response:
    await e.access.delete_budget(request.path_params["budget_id"])
    return JSONResponse({"deleted": request.path_params["budget_id"]})


async def create_rate_limit(request: Request, e: Enforcement) -> Response:
    rule = rate_limit_from(await _body(request))
    if rule is None:
        raise InvalidRequest("set at least one of rpm, tpm, concurrent")
    await e.access.create_rate_limit(rule)
    return JSONResponse(rate_limit_dict(rule), status_code=201)


async def list_rate_limits(request: Request, e: Enforcement) -> Response:
    return JSONResponse({"data": [rate_limit_dict(rule) for rule in e.book.current().limits]})


async def delete_rate_limit(request: Request, e: Enforcement) -> Response:
    await e.access.delete_rate_limit(request.path_params["limit_id"])
    return JSONResponse({"deleted": request.path_params["limit_id"]})


async def list_alerts(request: Request, e: Enforcement) -> Response:
    return JSONResponse({"data": [alert.as_dict() for alert in reversed(e.alerts.sent)]})


ROUTES = [
    Route("/admin/orgs", admin(create_org), methods=["POST"]),
    Route("/admin/orgs", admin(list_orgs), methods=["GET"]),
    Route("/admin/teams", admin(create_team), methods=["POST"]),
    Route("/admin/teams", admin(list_teams), methods=["GET"]),
    Route("/admin/keys", admin(create_key_route), methods=["POST"]),
    Route("/admin/keys", admin(list_keys), methods=["GET"]),
    Route("/admin/keys/{key_id}", admin(get_key), methods=["GET"]),
    Route("/admin/keys/{key_id}", admin(revoke_key), methods=["DELETE"]),
    Route("/admin/keys/{key_id}/revoke", admin(revoke_key), methods=["POST"]),
    Route("/admin/budgets", admin(create_budget), methods=["POST"]),
    Route("/admin/budgets", admin(list_budgets), methods=["GET"]),
    Route("/admin/budgets/{budget_id}", admin(delete_budget), methods=["DELETE"]),
    Route("/admin/rate-limits", admin(create_rate_limit), methods=["POST"]),
    Route("/admin/rate-limits", admin(list_rate_limits), methods=["GET"]),
    Route("/admin/rate-limits/{limit_id}", admin(delete_rate_limit), methods=["DELETE"]),
    Route("/admin/alerts", admin(list_alerts), methods=["GET"]),
]
