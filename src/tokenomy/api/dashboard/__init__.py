"""The web dashboard at ``/dashboard``: one static page (bundled JS, no CDN) and a JSON API.

``routes()`` lists its Starlette routes; ``api.py`` answers ``/dashboard/api/...``
from the ledger's SQL aggregates (``tokenomy.store.dashboard_queries``).
"""

from __future__ import annotations

from tokenomy.api.dashboard.pages import routes

__all__ = ["routes"]
