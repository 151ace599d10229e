"""Which traffic class a request belongs to: answered now, queued, or batched.

``x-tokenomy-priority: high|medium|low`` (names and mapping configurable in
``traffic.priorities``; default high → realtime, medium → async, low → batch),
or, without the header, the priority ``traffic.features`` gives the request's
``x-tokenomy-feature``. Everything else is real-time.
"""

from __future__ import annotations

from collections.abc import Mapping

from tokenomy.config import TrafficSettings
from tokenomy.errors import InvalidRequest

REALTIME = "realtime"
CLASSES = ("realtime", "async", "batch")


def traffic_class_for(headers: Mapping[str, str], settings: TrafficSettings) -> str:
    """The class of a request with these (lower-cased) headers; 400 for an unknown priority."""
    priority = headers.get("x-tokenomy-priority")
    if priority is None:
        feature = headers.get("x-tokenomy-feature")
        if not feature or not settings.features:
            return REALTIME
        priority = settings.features.get(feature.strip())
        if priority is None:
            return REALTIME
    cls = settings.priorities.get(priority.strip().lower())
    if cls is None:
        known = ", ".join(sorted(settings.priorities))
        raise InvalidRequest(f"x-tokenomy-priority must be one of {known}; got {priority!r}", param="x-tokenomy-priority")
    return cls
