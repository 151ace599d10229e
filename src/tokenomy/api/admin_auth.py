"""Who may see the gateway's own views (``/metrics``, ``/dashboard``): the master key holder.

Three ways to present the key, all checked in constant time:

- ``Authorization: Bearer <master key>`` or ``x-api-key: <master key>`` (scripts, Prometheus);
- the dashboard's session cookie, set by its login form: an HMAC of the master key,
  so the key itself never sits in the browser, and changing the key logs everyone out.

Without a master key (a gateway bound to loopback) everything is open, like the API.
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.requests import Request

SESSION_COOKIE = "tokenomy_session"


def session_token(master_key: str) -> str:
    """The cookie value that proves the browser once presented ``master_key``."""
    return hmac.new(master_key.encode(), b"tokenomy-dashboard-session-v1", hashlib.sha256).hexdigest()


def key_matches(presented: str, master_key: str) -> bool:
    return hmac.compare_digest(presented.encode(), master_key.encode())


def is_admin(request: Request, master_key: str | None) -> bool:
    """Whether the request carries the master key (header) or a valid session cookie."""
    if master_key is None:
        return True
    auth = request.headers.get("authorization", "")
    token = auth[7:].strip() if auth[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
    if token:
        return key_matches(token, master_key)
    cookie = request.cookies.get(SESSION_COOKIE)
    return bool(cookie) and hmac.compare_digest(cookie.encode(), session_token(master_key).encode())
