"""Virtual API keys: generated once, stored as an HMAC, looked up through a short-lived cache.

A key looks like ``tk-<43 url-safe characters>`` (256 random bits). The database
keeps ``HMAC-SHA256(pepper, key)``: a leaked table is useless without the
pepper, which lives outside it (an environment variable, else the master key,
else a file only the gateway can read). Lookups by that hash are exact, so
authentication is one indexed read on a cache miss and a dictionary hit
otherwise; a revoked key stops working within ``cache_ttl_s``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from tokenomy.config import Settings
from tokenomy.pipeline.call import Identity
from tokenomy.store.access import AccessStore, KeyRecord, new_id

log = logging.getLogger(__name__)

KEY_PREFIX = "tk-"
_CACHE_LIMIT = 10_000


def resolve_pepper(settings: Settings) -> bytes:
    """The secret keys are hashed with: ``keys.pepper_env``, else the master key, else ``keys.pepper_file``."""
    from_env = os.environ.get(settings.keys.pepper_env)
    if from_env:
        return from_env.encode()
    if settings.server.master_key:
        return settings.server.master_key.encode()
    path = Path(settings.keys.pepper_file)
    if path.exists():
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    pepper = secrets.token_hex(32).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pepper)
    log.warning("generated a key pepper in %s: keep it (or set %s); without it no key works", path, settings.keys.pepper_env)
    return pepper


def hash_key(pepper: bytes, key: str) -> str:
    return hmac.new(pepper, key.encode(), hashlib.sha256).hexdigest()


def looks_like_key(token: str) -> bool:
    return token.startswith(KEY_PREFIX) and len(token) > len(KEY_PREFIX) + 16


class KeyService:
    """Creates keys and turns presented keys into an ``Identity``."""

    def __init__(
        self, store: AccessStore, pepper: bytes, *, cache_ttl_s: float = 5.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.pepper = pepper
        self.cache_ttl_s = cache_ttl_s
        self.clock = clock
        self._cache: dict[str, tuple[float, Identity | None]] = {}

    async def create(
        self,
        *,
        name: str | None = None,
        team: str | None = None,
        org: str | None = None,
        feature: str | None = None,
        customer: str | None = None,
        allowed_models: list[str] | None = None,
        expires_at: float | None = None,
    ) -> tuple[str, KeyRecord]:
        """A new key: ``(secret, record)``. The secret is returned here and never again."""
        if team is not None:
            team_record = await self.store.ensure_team(team, org)
            org = org or team_record.org
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        record = KeyRecord(
            id=new_id("key"),
            hint=f"{KEY_PREFIX}…{secret[-4:]}",
            name=name,
            org=org,
            team=team,
            feature=feature,
            customer=customer,
            allowed_models=tuple(allowed_models) if allowed_models is not None else None,
            created_at=time.time(),
            expires_at=expires_at,
            revoked_at=None,
        )
        await self.store.insert_key(record, hash_key(self.pepper, secret))
        return secret, record

    async def authenticate(self, token: str) -> Identity | None:
        """The identity a key binds, or ``None`` if it is unknown, revoked or expired."""
        digest = hash_key(self.pepper, token)
        now = self.clock()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        record = await self.store.find_key(digest)
        identity = await self._identity(record, now) if record is not None else None
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        # an expiring key must not outlive its expiry in the cache
        until = now + self.cache_ttl_s
        if record is not None and record.expires_at is not None:
            until = min(until, record.expires_at)
        self._cache[digest] = (until, identity)
        return identity

    async def _identity(self, record: KeyRecord, now: float) -> Identity | None:
        if not record.active(now):
            return None
        allowed = record.allowed_models
        org = record.org
        if record.team is not None:
            team = await self.store.get_team(record.team)
            if team is not None:
                org = org or team.org
                if allowed is None:
                    allowed = team.allowed_models
                elif team.allowed_models is not None:
                    allowed = tuple(m for m in allowed if m in team.allowed_models)
        return Identity(
            key_id=record.id,
            org=org,
            team=record.team,
            feature=record.feature,
            customer=record.customer,
            allowed_models=frozenset(allowed) if allowed is not None else None,
        )

    def forget(self) -> None:
        """Drop the cache (after a revocation through this process's admin API)."""
        self._cache.clear()


#: Server-set headers carrying a key's bound identity into a queued job. Never read from
#: clients: ``FORWARDED_HEADERS`` does not include them, so only the gateway writes them.
_BOUND = {"key_id": "x-tokenomy-bound-key", "org": "x-tokenomy-bound-org", "team": "x-tokenomy-bound-team",
          "feature": "x-tokenomy-bound-feature", "customer": "x-tokenomy-bound-customer"}
_BOUND_MODELS = "x-tokenomy-bound-models"


def bound_headers(identity: Identity | None) -> dict[str, str]:
    """The identity a virtual key binds, as job headers (async jobs run later, in a worker)."""
    if identity is None:
        return {}
    out = {header: getattr(identity, field) for field, header in _BOUND.items() if getattr(identity, field)}
    if identity.allowed_models is not None:
        out[_BOUND_MODELS] = ",".join(sorted(identity.allowed_models))
    return out


def bound_identity(headers: dict[str, str]) -> Identity:
    """The identity written by ``bound_headers`` (empty if the job was not sent with a virtual key)."""
    values = {field: headers.get(header) for field, header in _BOUND.items()}
    models = headers.get(_BOUND_MODELS)
    allowed = frozenset(m for m in models.split(",") if m) if models is not None else None
    return Identity(**values, allowed_models=allowed)
