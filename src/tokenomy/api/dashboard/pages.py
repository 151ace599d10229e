"""The dashboard page, its login form and its bundled static files.

Login: ``GET /dashboard`` without credentials shows a form; posting the master
key to ``/dashboard/login`` sets an HttpOnly, SameSite=Strict session cookie (an
HMAC of the key, see ``tokenomy.api.admin_auth``) and redirects to the
dashboard. Scripts can skip the form and send ``Authorization: Bearer <key>``.
Without a master key the dashboard is open (the gateway then listens on
loopback only).
"""

from __future__ import annotations

from importlib import resources
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from tokenomy.api.admin_auth import SESSION_COOKIE, is_admin, key_matches, session_token
from tokenomy.api.dashboard.api import api_routes
from tokenomy.api.http import gateway_of

STATIC = resources.files("tokenomy.api.dashboard") / "static"

_LOGIN = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Tokenomy · log in</title>
<link rel="stylesheet" href="/dashboard/static/dashboard.css"></head>
<body class="login"><form method="post" action="/dashboard/login" class="card">
<h1>Tokenomy</h1><p>Enter the gateway's master key.</p>{error}
<input type="password" name="key" id="key" placeholder="master key" autofocus required>
<button type="submit">Log in</button></form></body></html>"""


async def index(request: Request) -> Response:
    settings = gateway_of(request).settings
    if not is_admin(request, settings.server.master_key):
        return HTMLResponse(_LOGIN.format(error=""), status_code=401)
    page = (STATIC / "index.html").read_text()
    return HTMLResponse(page, headers={"cache-control": "no-store"})


async def login(request: Request) -> Response:
    master_key = gateway_of(request).settings.server.master_key
    form = parse_qs((await request.body()).decode(errors="replace"))
    presented = (form.get("key") or [""])[0]
    if master_key is None:
        return RedirectResponse("/dashboard", status_code=303)
    if not presented or not key_matches(presented, master_key):
        error = '<p class="error">That is not the master key.</p>'
        return HTMLResponse(_LOGIN.format(error=error), status_code=401)
    response = RedirectResponse("/dashboard", status_code=303)
    response.set_cookie(SESSION_COOKIE, session_token(master_key), httponly=True, samesite="strict",
                        path="/dashboard", secure=request.url.scheme == "https")
    return response


async def logout(request: Request) -> Response:
    response = RedirectResponse("/dashboard", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/dashboard")
    return response


def routes() -> list[BaseRoute]:
    """Everything under ``/dashboard`` (the static files hold no data, so they need no key)."""
    return [
        Route("/dashboard", index, methods=["GET"]),
        Route("/dashboard/", index, methods=["GET"]),
        Route("/dashboard/login", login, methods=["POST"]),
        Route("/dashboard/logout", logout, methods=["GET", "POST"]),
        *api_routes(),
        Mount("/dashboard/static", StaticFiles(directory=str(STATIC)), name="dashboard-static"),
    ]
