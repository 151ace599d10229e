"""``/dashboard/api/...``: JSON (and CSV) answers for the dashboard page.

Every endpoint takes the same query string:

- ``since`` / ``until``: ``24h``, ``7d``, ``2026-01-01`` or an ISO datetime (UTC);
  ``since`` defaults to 30 days ago, ``until`` to now;
- a filter per dimension: ``team=search&model=gpt-4o-mini`` (``(none)`` matches calls without one);
- ``format=csv`` on ``breakdown`` and ``requests`` for a CSV download.

    GET /dashboard/api/summary          totals, cache hit rate, error and routed counts
    GET /dashboard/api/timeseries       ?by=model&step=day   spend over time, split by a dimension
    GET /dashboard/api/breakdown        ?by=team             spend per value of a dimension
    GET /dashboard/api/savings          baseline vs actual, per technique (and per token technique)
    GET /dashboard/api/routing          model asked → model served
    GET /dashboard/api/requests         ?order=cost|recent&limit=50
    GET /dashboard/api/requests/{id}    one call with its CostTrace
    GET /dashboard/api/budgets          budgets, burn rate, projected exhaustion ({"budgets": null} when none exist)
    GET /dashboard/api/dimensions       values for the filter menus
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tokenomy.api.admin_auth import is_admin
from tokenomy.api.http import JSONResponse, error_response, gateway_of
from tokenomy.errors import AuthenticationFailed, InvalidRequest, NotFound
from tokenomy.observe.spend_report import parse_since
from tokenomy.store.budget_view import budget_status
from tokenomy.store.dashboard_queries import FILTERS, DashboardQueries, Query
from tokenomy.store.sql_ledger import SQLLedger

DEFAULT_WINDOW = "30d"


def queries_of(request: Request) -> DashboardQueries:
    gateway = gateway_of(request)
    cached = getattr(gateway, "_dashboard_queries", None)
    if cached is None:
        if not isinstance(gateway.ledger, SQLLedger):
            raise NotFound("the dashboard needs the ledger (ledger.enabled: true)")
        cached = DashboardQueries(gateway.ledger)
        gateway._dashboard_queries = cached  # type: ignore[attr-defined]
    return cached


def parse_query(request: Request) -> Query:
    params = request.query_params
    try:
        since_text = params.get("since", DEFAULT_WINDOW)
        since = None if since_text in ("", "all") else parse_since(since_text)
        until = parse_since(params["until"]) if params.get("until") else None
        filters = {name: params[name] for name in FILTERS if params.get(name)}
        return Query(since, until, filters)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None


def _int(request: Request, name: str, default: int, most: int) -> int:
    try:
        return max(0, min(int(request.query_params.get(name, default)), most))
    except ValueError:
        raise InvalidRequest(f"{name} must be an integer") from None


def _csv(rows: list[dict[str, Any]], filename: str) -> Response:
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: v if not isinstance(v, (dict, list)) else str(v) for k, v in row.items()})
    return Response(out.getvalue(), media_type="text/csv; charset=utf-8",
                    headers={"content-disposition": f'attachment; filename="{filename}"'})


def admin_only(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """Checks the master key and turns gateway errors into OpenAI-style envelopes."""

    async def endpoint(request: Request) -> Response:
        settings = gateway_of(request).settings
        if not is_admin(request, settings.server.master_key):
            return error_response(AuthenticationFailed("the dashboard needs the master key (log in at /dashboard)"))
        try:
            return await handler(request)
        except (InvalidRequest, NotFound) as err:
            return error_response(err)
        except ValueError as exc:
            return error_response(InvalidRequest(str(exc)))

    return endpoint


@admin_only
async def summary(request: Request) -> Response:
    query = parse_query(request)
    body = await queries_of(request).summary(query)
    body["window"] = _window(query)
    return JSONResponse(body)


@admin_only
async def timeseries(request: Request) -> Response:
    params = request.query_params
    by = params.get("by") or None
    step = params.get("step", "day")
    return JSONResponse(await queries_of(request).timeseries(parse_query(request), by, step, _int(request, "top", 8, 50)))


@admin_only
async def breakdown(request: Request) -> Response:
    by = request.query_params.get("by", "model")
    rows = await queries_of(request).breakdown(parse_query(request), by, _int(request, "limit", 100, 10_000))
    if request.query_params.get("format") == "csv":
        return _csv([{by: row.pop("group"), **row} for row in rows], f"spend-by-{by}.csv")
    return JSONResponse({"by": by, "groups": rows})


@admin_only
async def savings(request: Request) -> Response:
    queries, query = queries_of(request), parse_query(request)
    return JSONResponse({"techniques": await queries.savings(query), "token_techniques": await queries.token_savings(query)})


@admin_only
async def routing(request: Request) -> Response:
    return JSONResponse({"routes": await queries_of(request).routing(parse_query(request))})


@admin_only
async def requests_list(request: Request) -> Response:
    order = request.query_params.get("order", "cost")
    rows = await queries_of(request).requests(
        parse_query(request), order, _int(request, "limit", 50, 10_000), _int(request, "offset", 0, 10**9)
    )
    if request.query_params.get("format") == "csv":
        return _csv(rows, f"requests-by-{order}.csv")
    return JSONResponse({"order": order, "requests": rows})


@admin_only
async def request_detail(request: Request) -> Response:
    row = await queries_of(request).request(request.path_params["request_id"])
    if row is None:
        raise NotFound(f"no call {request.path_params['request_id']!r} in the ledger")
    return JSONResponse(row)


@admin_only
async def budgets(request: Request) -> Response:
    return JSONResponse({"budgets": await budget_status(queries_of(request))})


@admin_only
async def dimensions(request: Request) -> Response:
    return JSONResponse({"dimensions": await queries_of(request).dimension_values(parse_query(request))})


def _window(query: Query) -> dict[str, str | None]:
    def iso(moment: dt.datetime | None) -> str | None:
        return moment.isoformat() if moment else None

    return {"since": iso(query.since), "until": iso(query.until)}


def api_routes() -> list[Route]:
    prefix = "/dashboard/api"
    return [
        Route(f"{prefix}/summary", summary, methods=["GET"]),
        Route(f"{prefix}/timeseries", timeseries, methods=["GET"]),
        Route(f"{prefix}/breakdown", breakdown, methods=["GET"]),
        Route(f"{prefix}/savings", savings, methods=["GET"]),
        Route(f"{prefix}/routing", routing, methods=["GET"]),
        Route(f"{prefix}/requests", requests_list, methods=["GET"]),
        Route(f"{prefix}/requests/{{request_id:path}}", request_detail, methods=["GET"]),
        Route(f"{prefix}/budgets", budgets, methods=["GET"]),
        Route(f"{prefix}/dimensions", dimensions, methods=["GET"]),
    ]
