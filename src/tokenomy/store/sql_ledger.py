"""``Ledger`` on SQL: SQLite embedded by default, PostgreSQL when replicas share it.

One implementation serves both, on SQLAlchemy 2 Core with async drivers
(aiosqlite, asyncpg). The few dialect differences are kept in small functions
here: the driver in the URL, SQLite pragmas, the idempotent insert, and how a
JSON list of tags is unnested for reports.

Tags stay a JSON column (JSONB on PostgreSQL) rather than a child table
``ledger_tags``: a flush is then one ``executemany`` into one table, which is
what the request path's writer pays for, while the reports that unnest tags
(``json_each`` / ``jsonb_array_elements_text``) are rare and run off the hot path.
JSONB also allows a GIN index for ``tags @> '["x"]'`` filters later. ``stage_ms``
and ``cost_items`` are plain JSON: cheaper to insert than JSONB, and they keep
their key order; nothing queries inside them.
"""

from __future__ import annotations

import datetime as dt
import logging
import operator
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tokenomy.config import ConfigError
from tokenomy.store.ledger import (
    NO_GROUP,
    SPEND_DIMENSIONS,
    CapHits,
    Ledger,
    LedgerRow,
    SpendGroup,
    TechniqueSavings,
)
from tokenomy.store.migrations import upgrade_head
from tokenomy.store.rollup import RollupWriter, define_tables, pair_rebuild_statements, rebuild_statements

_UTC = dt.timezone.utc
logger = logging.getLogger(__name__)


class UTCDateTime(sa.TypeDecorator[dt.datetime]):
    """A timezone-aware UTC datetime on every dialect.

    PostgreSQL stores ``timestamptz``; SQLite has no time zones, so values are
    stored as naive UTC (fixed-width text that sorts chronologically) and given
    their UTC zone back on the way out. Naive inputs are taken to be UTC.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=_UTC) if value.tzinfo is None else value.astimezone(_UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=_UTC) if value.tzinfo is None else value.astimezone(_UTC)


def _tags_json() -> sa.types.TypeEngine[Any]:
    # JSONB on PostgreSQL: jsonb_array_elements_text unnests it for tag reports.
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


metadata = sa.MetaData()

#: The live table. Its shape must match the migrations' head (a test compares them).
LEDGER = sa.Table(
    "ledger",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("duration_ms", sa.Float(), nullable=True),
    sa.Column("api", sa.String(), nullable=False),
    sa.Column("kind", sa.String(), nullable=False),
    sa.Column("endpoint", sa.String(), nullable=True),
    sa.Column("traffic_class", sa.String(), nullable=False),
    sa.Column("stream", sa.Boolean(), nullable=False),
    sa.Column("key_id", sa.String(), nullable=True),
    sa.Column("org", sa.String(), nullable=True),
    sa.Column("team", sa.String(), nullable=True),
    sa.Column("feature", sa.String(), nullable=True),
    sa.Column("customer", sa.String(), nullable=True),
    sa.Column("tags", _tags_json(), nullable=False),
    sa.Column("model_asked", sa.String(), nullable=False),
    sa.Column("model_served", sa.String(), nullable=True),
    sa.Column("provider", sa.String(), nullable=True),
    sa.Column("input_tokens", sa.BigInteger(), nullable=False),
    sa.Column("output_tokens", sa.BigInteger(), nullable=False),
    sa.Column("cached_tokens", sa.BigInteger(), nullable=False),
    sa.Column("cache_write_tokens", sa.BigInteger(), nullable=False),
    sa.Column("cost_usd", sa.Float(), nullable=True),
    sa.Column("baseline_usd", sa.Float(), nullable=True),
    sa.Column("cache_status", sa.String(), nullable=False),
    sa.Column("outcome", sa.String(), nullable=False),
    sa.Column("status", sa.Integer(), nullable=False),
    sa.Column("error_message", sa.Text(), nullable=True),
    sa.Column("upstream_ms", sa.Float(), nullable=True),
    sa.Column("stage_ms", sa.JSON(), nullable=False),
    sa.Column("cost_items", sa.JSON(), nullable=False),
    sa.Column("finish_reason", sa.String(), nullable=True),
    sa.Column("output_cap", sa.Integer(), nullable=True),
    sa.Column("prompt", sa.String(), nullable=True),
    sa.Column("savings", _tags_json(), nullable=False, server_default=sa.text("'{}'")),
    # the routing decision and its reason (revision 0003_route)
    sa.Column("route", sa.String(), nullable=True),
    sa.UniqueConstraint("request_id", name="uq_ledger_request_id"),
    sa.Index("ix_ledger_created_at", "created_at"),
    sa.Index("ix_ledger_prompt_created_at", "prompt", "created_at"),
    *(
        sa.Index(f"ix_ledger_{dimension}_created_at", dimension, "created_at")
        for dimension in ("team", "feature", "customer", "model_served")
    ),
    # the dashboard's "most expensive requests"
    sa.Index("ix_ledger_cost_usd", "cost_usd"),
)

#: Pre-aggregated spend the dashboard reads (``tokenomy.store.rollup``).
LEDGER_DIM_ROLLUP, LEDGER_DAILY, LEDGER_PAIR_DAILY = define_tables(metadata, UTCDateTime())

_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(LedgerRow))
_row_values: Callable[[LedgerRow], tuple[Any, ...]] = operator.attrgetter(*_FIELDS)  # type: ignore[assignment]
_ROW_COLUMNS = [LEDGER.c[name] for name in _FIELDS]


_INSERTS: dict[str, tuple[sa.Insert, RollupWriter]] = {}


async def insert_rows(conn: Any, dialect: str, rows: Sequence[LedgerRow]) -> None:
    """Insert ledger rows in the caller's transaction, idempotently on ``request_id``,
    and add the rows really inserted to the dashboard's rollups (a duplicate is not
    counted twice). Everything that writes ledger rows goes through here."""
    if not rows:
        return
    prepared = _INSERTS.get(dialect)
    if prepared is None:
        # A batch retried after a timeout that actually committed, or a duplicate
        # id, must not fail the rows around it: ON CONFLICT DO NOTHING.
        insert = (postgresql if dialect == "postgresql" else sqlite).insert(LEDGER)
        statement = insert.on_conflict_do_nothing(index_elements=["request_id"]).returning(LEDGER.c.request_id)
        prepared = _INSERTS[dialect] = (statement, RollupWriter(dialect, LEDGER_DIM_ROLLUP, LEDGER_DAILY, LEDGER_PAIR_DAILY))
    statement, rollups = prepared
    result = await conn.execute(statement, [dict(zip(_FIELDS, _row_values(row))) for row in rows])
    inserted = set(result.scalars())
    fresh = rows if len(inserted) == len(rows) else [row for row in rows if row.request_id in inserted]
    await rollups.add(conn, fresh)


def async_url(url: str) -> sa.URL:
    """The async-driver form of a plain ``sqlite:///…`` or ``postgresql://…`` URL.

    Users write the URLs they know; the driver is our business. An explicit
    synchronous driver (``postgresql+psycopg2``) is refused rather than swapped
    silently, since its query options may not mean the same to asyncpg.
    """
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ConfigError(f"ledger.url {url!r} is not a database URL: {exc}") from exc
    backend, _, driver = parsed.drivername.partition("+")
    if backend in ("postgresql", "postgres") and driver in ("", "asyncpg"):
        return parsed.set(drivername="postgresql+asyncpg")
    if backend == "sqlite" and driver in ("", "aiosqlite"):
        return parsed.set(drivername="sqlite+aiosqlite")
    raise ConfigError(
        f"ledger.url: unsupported database {parsed.drivername!r}; "
        "use sqlite:///path/to/ledger.db or postgresql://user@host/db"
    )


def _json_dumps(value: Any) -> str:
    # orjson: faster than json, and writes NaN as null, which PostgreSQL accepts.
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def open_engine(url: sa.URL, *, schema: str | None = None, echo: bool = False) -> AsyncEngine:
    """The engine every SQL store uses (ledger, keys and budgets, jobs).

    SQLite: the file's folder is created and WAL pragmas set on each connection.
    PostgreSQL: pre-ping (after a database restart the next use gets a fresh
    connection instead of failing once on a dead one) and ``schema`` as the
    ``search_path``. JSON columns go through orjson.
    """
    kwargs: dict[str, Any] = {"echo": echo, "json_serializer": _json_dumps, "json_deserializer": orjson.loads}
    dialect = url.get_backend_name()
    if dialect == "sqlite":
        database = url.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    else:
        kwargs["pool_pre_ping"] = True
        if schema is not None:
            kwargs["connect_args"] = {"server_settings": {"search_path": schema}}
    engine = create_async_engine(url, **kwargs)
    if dialect == "sqlite":
        sa.event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets reports read while the writer writes; NORMAL sync is durable enough
    in WAL mode (a power cut may lose the last commits, never corrupt), and the
    busy timeout makes concurrent processes wait for the lock instead of failing."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA busy_timeout = 5000")
        _set_wal(cursor)
        cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()


def _set_wal(cursor: Any, tries: int = 100) -> None:
    """Switch to WAL, retrying while another process holds the lock.

    Changing the journal mode does not wait on ``busy_timeout`` the way writes
    do: replicas opening a new database together can get "database is locked"
    here. This runs on the driver's thread, so the short sleeps never block the
    event loop; WAL is persistent, so once one connection has set it, it holds.
    """
    for attempt in range(tries):
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == tries - 1:
                raise
            time.sleep(0.02)


class SQLLedger(Ledger):
    """The ledger in one SQL table, ``ledger``, migrated by Alembic on ``start()``.

    ``schema`` (PostgreSQL only) puts the table in that schema via the
    connection's ``search_path``; the schema must exist.

        ledger = SQLLedger("sqlite:///.tokenomy/ledger.db")
        await ledger.start()
        await ledger.write_many(rows)
        groups = await ledger.spend_summary("team", since=week_ago)
        await ledger.aclose()
    """

    def __init__(self, url: str, *, schema: str | None = None, echo: bool = False) -> None:
        self.url = async_url(url)
        self.dialect = self.url.get_backend_name()
        if schema is not None and self.dialect != "postgresql":
            raise ConfigError("ledger: a schema is only supported on PostgreSQL")
        self.schema = schema
        self.echo = echo
        self._engine: AsyncEngine | None = None

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("SQLLedger.start() has not been called")
        return self._engine

    async def start(self) -> None:
        if self._engine is not None:
            return
        engine = open_engine(self.url, schema=self.schema, echo=self.echo)
        try:
            async with engine.begin() as conn:
                # Alembic is synchronous; run_sync runs it on the async connection
                # without blocking the event loop on I/O.
                await conn.run_sync(upgrade_head)
        except BaseException:
            await engine.dispose()
            raise
        self._engine = engine
        await self._backfill_rollups()

    async def _backfill_rollups(self) -> None:
        # A ledger written before the rollups existed (or bulk-loaded around the
        # writer) has rows but empty rollups: build them once, in SQL.
        async with self.engine.connect() as conn:
            has_rows = (await conn.execute(sa.select(LEDGER.c.id).limit(1))).first() is not None
            rolled = (await conn.execute(sa.select(LEDGER_DIM_ROLLUP.c.value).limit(1))).first() is not None
            paired = (await conn.execute(sa.select(LEDGER_PAIR_DAILY.c.value).limit(1))).first() is not None
        if has_rows and not rolled:
            logger.warning("ledger: building the dashboard's rollup tables from existing rows (once)")
            await self.rebuild_rollups()
        elif has_rows and not paired:
            # rollups older than revision 0006 (ledger_pair_daily): add the pair rollup alone
            logger.warning("ledger: building the dashboard's pair rollup from existing rows (once)")
            async with self.engine.begin() as conn:
                for statement in pair_rebuild_statements(self.dialect):
                    await conn.exec_driver_sql(statement)

    async def write_many(self, rows: Sequence[LedgerRow]) -> None:
        if not rows:
            return
        async with self.engine.begin() as conn:
            await insert_rows(conn, self.dialect, rows)

    async def rebuild_rollups(self) -> None:
        """Recompute the dashboard's rollup tables from the ledger (after a bulk load)."""
        async with self.engine.begin() as conn:
            for statement in rebuild_statements(self.dialect):
                await conn.exec_driver_sql(statement)

    async def fetch(self, *, since: dt.datetime | None = None, limit: int | None = None) -> list[LedgerRow]:
        stmt = sa.select(*_ROW_COLUMNS).order_by(LEDGER.c.created_at.desc(), LEDGER.c.id.desc())
        if since is not None:
            stmt = stmt.where(LEDGER.c.created_at >= since)
        if limit is not None:
            stmt = stmt.limit(limit)
        async with self.engine.connect() as conn:
            result = await conn.execute(stmt)
            return [LedgerRow(*row) for row in result]

    async def count(self) -> int:
        async with self.engine.connect() as conn:
            return int(await conn.scalar(sa.select(sa.func.count()).select_from(LEDGER)) or 0)

    async def spend_summary(
        self, by: str, since: dt.datetime | None = None, until: dt.datetime | None = None
    ) -> list[SpendGroup]:
        stmt = spend_summary_query(self.dialect, by, since, until)
        async with self.engine.connect() as conn:
            result = await conn.execute(stmt)
            return [
                SpendGroup(
                    group=str(row.spend_group),
                    requests=int(row.requests),
                    input_tokens=int(row.input_tokens),
                    output_tokens=int(row.output_tokens),
                    cost_usd=float(row.cost_usd),
                    baseline_usd=float(row.baseline_usd),
                    savings_usd=float(row.savings_usd),
                    unknown_cost_count=int(row.unknown_cost_count),
                )
                for row in result
            ]

    async def savings_summary(
        self, by: str, since: dt.datetime | None = None, until: dt.datetime | None = None
    ) -> list[TechniqueSavings]:
        stmt = savings_summary_query(self.dialect, by, since, until)
        async with self.engine.connect() as conn:
            result = await conn.execute(stmt)
            return [
                TechniqueSavings(
                    group=str(row.spend_group),
                    technique=str(row.technique),
                    requests=int(row.requests),
                    tokens=int(row.tokens or 0),
                    usd=float(row.usd or 0.0),
                )
                for row in result
            ]

    async def caps_summary(
        self, by: str = "feature", since: dt.datetime | None = None, until: dt.datetime | None = None
    ) -> list[CapHits]:
        stmt = caps_summary_query(self.dialect, by, since, until)
        async with self.engine.connect() as conn:
            result = await conn.execute(stmt)
            return [
                CapHits(
                    group=str(row.spend_group),
                    requests=int(row.requests),
                    capped=int(row.capped),
                    cap_hits=int(row.cap_hits),
                    length_total=int(row.length_total),
                    max_cap=None if row.max_cap is None else int(row.max_cap),
                    output_tokens=int(row.output_tokens),
                )
                for row in result
            ]

    async def aclose(self) -> None:
        if self._engine is not None:
            engine, self._engine = self._engine, None
            await engine.dispose()


def _grouping(dialect: str, by: str) -> tuple[sa.FromClause, sa.ColumnElement[Any]]:
    """The rows to aggregate and the group expression (labelled ``spend_group``) for ``by``."""
    if by not in SPEND_DIMENSIONS:
        raise ValueError(f"cannot group spend by {by!r}; choose one of {', '.join(SPEND_DIMENSIONS)}")
    table = LEDGER
    source: sa.FromClause = table
    if by == "tag":
        # One output row per (ledger row, tag); the outer join keeps untagged
        # rows, whose NULL tag becomes the "(none)" group below.
        if dialect == "postgresql":
            tags = sa.func.jsonb_array_elements_text(table.c.tags).table_valued("value").render_derived(name="tag")
            tags = tags.lateral()
        else:
            tags = sa.func.json_each(table.c.tags).table_valued("value").alias("tag")
        source = table.outerjoin(tags, sa.true())
        key: sa.ColumnElement[Any] = tags.c.value
    else:
        key = table.c[SPEND_DIMENSIONS[by]]
    # A literal, not a bound parameter: GROUP BY must repeat the select's
    # expression exactly, and two binds ($1, $9) would not compare equal.
    none = sa.literal_column("'" + NO_GROUP.replace("'", "''") + "'", sa.String())
    return source, sa.func.coalesce(key, none).label("spend_group")


def _window(stmt: sa.Select[Any], since: dt.datetime | None, until: dt.datetime | None) -> sa.Select[Any]:
    if since is not None:
        stmt = stmt.where(LEDGER.c.created_at >= since)
    if until is not None:
        stmt = stmt.where(LEDGER.c.created_at < until)
    return stmt


def savings_summary_query(
    dialect: str, by: str, since: dt.datetime | None = None, until: dt.datetime | None = None
) -> sa.Select[Any]:
    """Savings per (group, technique): the ``savings`` JSON object unnested in SQL."""
    source, group = _grouping(dialect, by)
    if dialect == "postgresql":
        techniques = sa.func.jsonb_each(LEDGER.c.savings).table_valued("key", "value").render_derived(name="technique")
        techniques = techniques.lateral()
        tokens = sa.cast(techniques.c.value.op("->>")("tokens"), sa.BigInteger())
        usd = sa.cast(techniques.c.value.op("->>")("usd"), sa.Float())
    else:
        techniques = sa.func.json_each(LEDGER.c.savings).table_valued("key", "value").alias("technique")
        tokens = sa.func.json_extract(techniques.c.value, "$.tokens")
        usd = sa.func.json_extract(techniques.c.value, "$.usd")
    saved = sa.func.coalesce(sa.func.sum(usd), 0.0).label("usd")
    technique = techniques.c.key.label("technique")
    stmt = (
        sa.select(
            group,
            technique,
            sa.func.count().label("requests"),
            sa.func.coalesce(sa.func.sum(tokens), 0).label("tokens"),
            saved,
        )
        .select_from(source.join(techniques, sa.true()))
        .group_by(group, techniques.c.key)
        .order_by(saved.desc(), group, techniques.c.key)
    )
    return _window(stmt, since, until)


def caps_summary_query(
    dialect: str, by: str = "feature", since: dt.datetime | None = None, until: dt.datetime | None = None
) -> sa.Select[Any]:
    """Output-limit hits per group (chat calls): capped calls, hits, every ``length`` finish."""
    source, group = _grouping(dialect, by)
    table = LEDGER
    length = table.c.finish_reason == "length"
    capped_count = sa.func.coalesce(sa.func.sum(sa.case((table.c.output_cap.is_not(None), 1), else_=0)), 0)
    stmt = (
        sa.select(
            group,
            sa.func.count().label("requests"),
            capped_count.label("capped"),
            sa.func.coalesce(
                sa.func.sum(sa.case((sa.and_(table.c.output_cap.is_not(None), length), 1), else_=0)), 0
            ).label("cap_hits"),
            sa.func.coalesce(sa.func.sum(sa.case((length, 1), else_=0)), 0).label("length_total"),
            sa.func.max(table.c.output_cap).label("max_cap"),
            sa.func.coalesce(sa.func.sum(table.c.output_tokens), 0).label("output_tokens"),
        )
        .select_from(source)
        .where(table.c.kind == "chat")
        .group_by(group)
        .order_by(capped_count.desc(), sa.func.count().desc(), group)
    )
    return _window(stmt, since, until)


def spend_summary_query(
    dialect: str, by: str, since: dt.datetime | None = None, until: dt.datetime | None = None
) -> sa.Select[Any]:
    """The ``GROUP BY`` behind ``spend_summary``; ``dialect`` matters only for ``by="tag"``."""
    source, group = _grouping(dialect, by)
    table = LEDGER
    both_known = sa.and_(table.c.cost_usd.is_not(None), table.c.baseline_usd.is_not(None))
    cost = sa.func.coalesce(sa.func.sum(table.c.cost_usd), 0.0).label("cost_usd")
    stmt = (
        sa.select(
            group,
            sa.func.count().label("requests"),
            sa.func.coalesce(sa.func.sum(table.c.input_tokens), 0).label("input_tokens"),
            sa.func.coalesce(sa.func.sum(table.c.output_tokens), 0).label("output_tokens"),
            cost,
            sa.func.coalesce(sa.func.sum(table.c.baseline_usd), 0.0).label("baseline_usd"),
            sa.func.coalesce(
                sa.func.sum(sa.case((both_known, table.c.baseline_usd - table.c.cost_usd), else_=0.0)), 0.0
            ).label("savings_usd"),
            sa.func.coalesce(sa.func.sum(sa.case((table.c.cost_usd.is_(None), 1), else_=0)), 0).label(
                "unknown_cost_count"
            ),
        )
        .select_from(source)
        .group_by(group)
        .order_by(cost.desc(), group)
    )
    if since is not None:
        stmt = stmt.where(table.c.created_at >= since)
    if until is not None:
        stmt = stmt.where(table.c.created_at < until)
    return stmt
