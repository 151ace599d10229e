"""Budgets, rate limits, virtual keys and alerts, enforced at request time.

Where to start reading:

- ``stage.py``: the pipeline stage (reserve before ``next``, settle after).
- ``enforcer.py``: which rules apply, the charges they become, refusals and headers.
- ``counters.py``: the atomic multi-counter store contract; ``counters_memory.py``
  (one process, SQLite-persisted) and ``counters_redis.py`` (Lua, shared by replicas).
- ``periods.py``: calendar, rolling and lifetime windows.
- ``estimate.py``: the worst-case cost reserved before the call, over every answer it may
  pay for (``routing.attempts``: fallbacks, cascade levels, judge calls).
- ``batch.py``: the reservation of a batch passed through to a provider's batch API.
- ``policy.py`` / ``book.py``: budget and rate-limit rules and where they come from.
- ``keys.py``: virtual API keys (HMAC-hashed, cached lookups).
- ``alerts.py`` / ``runaway.py``: threshold alerts, signed webhooks, spend-rate anomalies.
"""
