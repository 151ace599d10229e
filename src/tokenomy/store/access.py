"""Who may call and how much: orgs, teams, virtual keys, budgets and rate limits in SQL.

The same database as the ledger by default (SQLite file, or PostgreSQL shared
by replicas), migrated by the same Alembic chain. Nothing here runs on the
request path except ``find_key`` on a key-cache miss; budget and rate-limit
rules are read in the background (``PolicyBook``) and matched in memory.

Keys are stored as an HMAC of the secret (``key_hash``) plus a short hint
(``tk-…abcd``) to recognise them in listings; the secret itself is shown once
at creation and never stored.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from tokenomy.budgets.policy import BudgetRule, RateLimitRule
from tokenomy.config import ConfigError
from tokenomy.errors import InvalidRequest, NotFound
from tokenomy.store.migrations import upgrade_head
from tokenomy.store.sql_ledger import async_url, open_engine

metadata = sa.MetaData()

ORGS = sa.Table(
    "orgs", metadata, sa.Column("name", sa.String(), primary_key=True), sa.Column("created_at", sa.Float(), nullable=False)
)
TEAMS = sa.Table(
    "teams",
    metadata,
    sa.Column("name", sa.String(), primary_key=True),
    sa.Column("org", sa.String()),
    sa.Column("allowed_models", sa.JSON()),
    sa.Column("created_at", sa.Float(), nullable=False),
)
KEYS = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(), primary_key=True),
    sa.Column("key_hash", sa.String(), nullable=False),
    sa.Column("hint", sa.String(), nullable=False),
    sa.Column("name", sa.String()),
    sa.Column("org", sa.String()),
    sa.Column("team", sa.String()),
    sa.Column("feature", sa.String()),
    sa.Column("customer", sa.String()),
    sa.Column("allowed_models", sa.JSON()),
    sa.Column("created_at", sa.Float(), nullable=False),
    sa.Column("expires_at", sa.Float()),
    sa.Column("revoked_at", sa.Float()),
    sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
)
BUDGETS = sa.Table(
    "budgets",
    metadata,
    sa.Column("id", sa.String(), primary_key=True),
    sa.Column("scope", sa.String(), nullable=False),
    sa.Column("value", sa.String(), nullable=False),
    sa.Column("amount_usd", sa.Float(), nullable=False),
    sa.Column("period", sa.String(), nullable=False),
    sa.Column("window_s", sa.Integer()),
    sa.Column("timezone", sa.String()),
    sa.Column("mode", sa.String(), nullable=False),
    sa.Column("downgrade_to", sa.String()),
    sa.Column("thresholds", sa.JSON(), nullable=False),
    sa.Column("created_at", sa.Float(), nullable=False),
)
RATE_LIMITS = sa.Table(
    "rate_limits",
    metadata,
    sa.Column("id", sa.String(), primary_key=True),
    sa.Column("scope", sa.String(), nullable=False),
    sa.Column("value", sa.String(), nullable=False),
    sa.Column("rpm", sa.Integer()),
    sa.Column("tpm", sa.Integer()),
    sa.Column("concurrent", sa.Integer()),
    sa.Column("created_at", sa.Float(), nullable=False),
)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A virtual key as stored (never the secret)."""

    id: str
    hint: str
    name: str | None
    org: str | None
    team: str | None
    feature: str | None
    customer: str | None
    allowed_models: tuple[str, ...] | None
    created_at: float
    expires_at: float | None
    revoked_at: float | None

    def active(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "hint": self.hint,
            "name": self.name,
            "org": self.org,
            "team": self.team,
            "feature": self.feature,
            "customer": self.customer,
            "allowed_models": list(self.allowed_models) if self.allowed_models is not None else None,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
        }


@dataclass(frozen=True, slots=True)
class TeamRecord:
    name: str
    org: str | None
    allowed_models: tuple[str, ...] | None
    created_at: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "org": self.org,
            "allowed_models": list(self.allowed_models) if self.allowed_models is not None else None,
            "created_at": self.created_at,
        }


def _key_record(row: Any) -> KeyRecord:
    models = row.allowed_models
    return KeyRecord(
        row.id, row.hint, row.name, row.org, row.team, row.feature, row.customer,
        tuple(models) if models is not None else None, row.created_at, row.expires_at, row.revoked_at,
    )


def _budget_rule(row: Any) -> BudgetRule:
    return BudgetRule(
        id=row.id, scope=row.scope, value=row.value, amount_usd=row.amount_usd, period=row.period,
        window_s=row.window_s, timezone=row.timezone or "", mode=row.mode, downgrade_to=row.downgrade_to,
        thresholds=tuple(row.thresholds or ()),
    )


def new_id(kind: str) -> str:
    return f"{kind}_{uuid.uuid4().hex[:16]}"


class AccessStore:
    """Orgs, teams, keys, budgets and rate limits (``schema``: PostgreSQL search path, for tests)."""

    def __init__(self, url: str, *, schema: str | None = None) -> None:
        self.url = async_url(url)
        self.dialect = self.url.get_backend_name()
        if schema is not None and self.dialect != "postgresql":
            raise ConfigError("keys: a schema is only supported on PostgreSQL")
        self.schema = schema
        self._engine: AsyncEngine | None = None

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("AccessStore.start() has not been called")
        return self._engine

    async def start(self) -> None:
        if self._engine is not None:
            return
        engine = open_engine(self.url, schema=self.schema)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(upgrade_head)
        except BaseException:
            await engine.dispose()
            raise
        self._engine = engine

    async def aclose(self) -> None:
        if self._engine is not None:
            engine, self._engine = self._engine, None
            await engine.dispose()

    # orgs and teams ---------------------------------------------------------

    async def create_org(self, name: str) -> dict[str, Any]:
        async with self.engine.begin() as conn:
            if await conn.scalar(sa.select(ORGS.c.name).where(ORGS.c.name == name)):
                raise InvalidRequest(f"org {name!r} already exists", param="name")
            now = time.time()
            await conn.execute(ORGS.insert().values(name=name, created_at=now))
        return {"name": name, "created_at": now}

    async def list_orgs(self) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(sa.select(ORGS).order_by(ORGS.c.name))
            return [{"name": r.name, "created_at": r.created_at} for r in rows]

    async def ensure_team(self, name: str, org: str | None = None, allowed_models: list[str] | None = None) -> TeamRecord:
        """The team, created if missing (``keys create --team growth`` needs no separate step)."""
        team = await self.get_team(name)
        if team is not None:
            return team
        return await self.create_team(name, org, allowed_models)

    async def create_team(self, name: str, org: str | None = None, allowed_models: list[str] | None = None) -> TeamRecord:
        now = time.time()
        async with self.engine.begin() as conn:
            if await conn.scalar(sa.select(TEAMS.c.name).where(TEAMS.c.name == name)):
                raise InvalidRequest(f"team {name!r} already exists", param="name")
            if org is not None and not await conn.scalar(sa.select(ORGS.c.name).where(ORGS.c.name == org)):
                await conn.execute(ORGS.insert().values(name=org, created_at=now))
            await conn.execute(TEAMS.insert().values(name=name, org=org, allowed_models=allowed_models, created_at=now))
        return TeamRecord(name, org, tuple(allowed_models) if allowed_models is not None else None, now)

    async def get_team(self, name: str) -> TeamRecord | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(TEAMS).where(TEAMS.c.name == name))).first()
        if row is None:
            return None
        models = row.allowed_models
        return TeamRecord(row.name, row.org, tuple(models) if models is not None else None, row.created_at)

    async def list_teams(self) -> list[TeamRecord]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(sa.select(TEAMS).order_by(TEAMS.c.name))
            return [
                TeamRecord(r.name, r.org, tuple(r.allowed_models) if r.allowed_models is not None else None, r.created_at)
                for r in rows
            ]

    # keys ---------------------------------------------------------------------

    async def insert_key(self, record: KeyRecord, key_hash: str) -> None:
        values = record.as_dict()
        values["key_hash"] = key_hash
        async with self.engine.begin() as conn:
            await conn.execute(KEYS.insert().values(**values))

    async def find_key(self, key_hash: str) -> KeyRecord | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(KEYS).where(KEYS.c.key_hash == key_hash))).first()
        return _key_record(row) if row is not None else None

    async def get_key(self, key_id: str) -> KeyRecord:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(KEYS).where(KEYS.c.id == key_id))).first()
        if row is None:
            raise NotFound(f"no key with id {key_id!r}")
        return _key_record(row)

    async def list_keys(self, team: str | None = None, include_revoked: bool = False) -> list[KeyRecord]:
        stmt = sa.select(KEYS).order_by(KEYS.c.created_at)
        if team is not None:
            stmt = stmt.where(KEYS.c.team == team)
        if not include_revoked:
            stmt = stmt.where(KEYS.c.revoked_at.is_(None))
        async with self.engine.connect() as conn:
            return [_key_record(row) for row in await conn.execute(stmt)]

    async def revoke_key(self, key_id: str) -> KeyRecord:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                KEYS.update().where(KEYS.c.id == key_id, KEYS.c.revoked_at.is_(None)).values(revoked_at=time.time())
            )
        if result.rowcount == 0:
            await self.get_key(key_id)  # raises NotFound if it does not exist at all
        return await self.get_key(key_id)

    # budgets and rate limits ----------------------------------------------------

    async def create_budget(self, rule: BudgetRule) -> BudgetRule:
        async with self.engine.begin() as conn:
            await conn.execute(
                BUDGETS.insert().values(
                    id=rule.id, scope=rule.scope, value=rule.value or "*", amount_usd=rule.amount_usd,
                    period=rule.period, window_s=rule.window_s, timezone=rule.timezone or None, mode=rule.mode,
                    downgrade_to=rule.downgrade_to, thresholds=list(rule.thresholds), created_at=time.time(),
                )
            )
        return rule

    async def list_budgets(self) -> list[BudgetRule]:
        async with self.engine.connect() as conn:
            return [_budget_rule(row) for row in await conn.execute(sa.select(BUDGETS).order_by(BUDGETS.c.created_at))]

    async def delete_budget(self, budget_id: str) -> None:
        async with self.engine.begin() as conn:
            result = await conn.execute(BUDGETS.delete().where(BUDGETS.c.id == budget_id))
        if result.rowcount == 0:
            raise NotFound(f"no budget with id {budget_id!r}")

    async def create_rate_limit(self, rule: RateLimitRule) -> RateLimitRule:
        async with self.engine.begin() as conn:
            await conn.execute(
                RATE_LIMITS.insert().values(
                    id=rule.id, scope=rule.scope, value=rule.value or "*", rpm=rule.rpm, tpm=rule.tpm,
                    concurrent=rule.concurrent, created_at=time.time(),
                )
            )
        return rule

    async def list_rate_limits(self) -> list[RateLimitRule]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(sa.select(RATE_LIMITS).order_by(RATE_LIMITS.c.created_at))
            return [RateLimitRule(r.id, r.scope, r.value, r.rpm, r.tpm, r.concurrent) for r in rows]

    async def delete_rate_limit(self, limit_id: str) -> None:
        async with self.engine.begin() as conn:
            result = await conn.execute(RATE_LIMITS.delete().where(RATE_LIMITS.c.id == limit_id))
        if result.rowcount == 0:
            raise NotFound(f"no rate limit with id {limit_id!r}")
