"""Routing settings (the ``routing:`` section of ``tokenomy.yaml``); every key is documented in example_config.yaml."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RetrySettings(_Section):
    #: Tries per deployment for transient errors (timeouts, connection errors, 5xx, 429); 1 = no retry.
    attempts: int = Field(2, ge=1, le=10)
    #: First backoff before a retry; doubles (``backoff_multiplier``) up to ``backoff_max_s``, with ±20 % jitter.
    backoff_s: float = Field(0.2, ge=0)
    backoff_multiplier: float = Field(2.0, ge=1)
    backoff_max_s: float = Field(4.0, ge=0)
    #: A 429 whose Retry-After is longer than this goes to the next deployment at once instead of waiting.
    max_retry_after_s: float = Field(2.0, ge=0)
    #: No new attempt starts after this many seconds since the call arrived (the last error is returned).
    deadline_s: float = Field(60.0, gt=0)


class HealthSettings(_Section):
    #: Consecutive failures (timeouts, connection errors, 5xx) that open a deployment's circuit.
    failures: int = Field(3, ge=1)
    #: Seconds an open circuit keeps the deployment out of rotation (a 429 opens it for its Retry-After).
    cooldown_s: float = Field(30.0, gt=0)
    #: Share circuit state across replicas through this Redis (``redis://127.0.0.1:6379/0``); in-process when unset.
    redis_url: str | None = None
    #: Prefix of the Redis keys (``<prefix>open:<deployment>``, ``<prefix>fail:<deployment>``).
    key_prefix: str = "tokenomy:health:"
    #: Among equally priced deployments of one model, prefer the one with the lowest recent latency.
    latency_aware: bool = False


class RuleCondition(_Section):
    """All listed conditions must hold (an empty condition always matches)."""

    teams: list[str] = Field(default_factory=list)
    features: list[str] = Field(default_factory=list)
    #: Values of the ``x-tokenomy-priority`` header.
    priorities: list[str] = Field(default_factory=list)
    #: Any of these tags.
    tags: list[str] = Field(default_factory=list)
    #: Prompt length bounds in tokens (all messages, approximate: 4 characters a token).
    min_prompt_tokens: int | None = Field(None, ge=0)
    max_prompt_tokens: int | None = Field(None, ge=0)
    #: The prompt contains code (fenced blocks or code-like lines) / does not.
    code: bool | None = None
    #: Any of these words or phrases (case-insensitive) in the last user message.
    keywords: list[str] = Field(default_factory=list)
    #: A regular expression searched in the last user message.
    regex: str | None = None
    #: The request offers tools / does not.
    tools: bool | None = None
    #: ``response_format.type`` is one of these (``json_object``, ``json_schema``, ``text``).
    response_format: list[str] = Field(default_factory=list)


class RuleSettings(_Section):
    #: Shown in the route header and the ledger.
    name: str
    when: RuleCondition = Field(default_factory=RuleCondition)
    #: Tier (from ``routing.tiers``) or model to use when the rule matches.
    tier: str


class LearnedSettings(_Section):
    #: Router file written by ``tokenomy router train``.
    path: str
    #: Router-file model name → gateway model name; models not mapped are not candidates.
    models: dict[str, str] = Field(default_factory=dict)
    #: Choose the cheapest model whose predicted success probability is at least this…
    quality_target: float | None = Field(None, ge=0, le=1)
    #: …or else maximise ``p_success − cost_weight × relative_cost`` (relative to the dearest candidate).
    cost_weight: float = Field(0.5, ge=0)


class CascadeChecks(_Section):
    #: Reject empty answers.
    non_empty: bool = True
    #: Reject answers that look like refusals ("I can't help with that…").
    no_refusal: bool = True
    #: When ``response_format`` asks for JSON, reject answers that are not valid JSON (or miss required keys).
    valid_json: bool = True
    #: Reject answers whose mean token logprob is below this (asks the upstream for logprobs).
    min_mean_logprob: float | None = None
    #: Ask this model to grade the answer (``YES``/``NO``); its cost is a cost item too.
    judge_model: str | None = None


class CascadeSettings(_Section):
    #: Models to try, cheapest first; defaults to the router's tiers in order.
    models: list[str] = Field(default_factory=list)
    #: At most this many models are tried.
    max_depth: int = Field(3, ge=1)
    #: Do not escalate once this much time has passed since the call arrived.
    latency_budget_ms: float | None = Field(None, gt=0)
    checks: CascadeChecks = Field(default_factory=CascadeChecks)
    #: Streaming requests cannot be checked before they are sent: they go to this model (default: the last).
    stream_model: str | None = None


class RouterSettings(_Section):
    #: The name clients ask for (``model: "auto"``) to be routed.
    name: str
    strategy: Literal["rules", "learned", "cascade"] = "rules"
    rules: list[RuleSettings] = Field(default_factory=list)
    #: Tier or model when no rule matches (and the learned router's fallback). Default: the first tier.
    default_tier: str | None = None
    learned: LearnedSettings | None = None
    cascade: CascadeSettings | None = None
    #: Model whose price is the baseline for savings (default: the dearest candidate).
    baseline_model: str | None = None

    @model_validator(mode="after")
    def _strategy_settings(self) -> RouterSettings:
        if self.strategy == "learned" and self.learned is None:
            raise ValueError(f"router {self.name!r}: strategy 'learned' needs a 'learned' section")
        if self.strategy == "cascade" and self.cascade is None:
            self.cascade = CascadeSettings()
        return self


class SubstitutionSettings(_Section):
    """Route requests for concrete models through a router when the caller's policy allows it."""

    when: RuleCondition = Field(default_factory=RuleCondition)
    #: The router that decides instead.
    router: str
    #: Only requests for these models (empty: any chat model).
    models: list[str] = Field(default_factory=list)


class RoutingSettings(_Section):
    #: Named groups of models, cheapest first: ``{small: [sim-mini], large: [sim-flagship]}``.
    tiers: dict[str, list[str]] = Field(default_factory=dict)
    routers: list[RouterSettings] = Field(default_factory=list)
    substitute: list[SubstitutionSettings] = Field(default_factory=list)
    #: Model → models to try, in order, when all its deployments failed (5xx, timeouts, 429…).
    fallbacks: dict[str, list[str]] = Field(default_factory=dict)
    #: Model → larger-context models to use when the prompt does not fit.
    context_fallbacks: dict[str, list[str]] = Field(default_factory=dict)
    #: Model → models to try when the provider's content filter refuses the request.
    content_policy_fallbacks: dict[str, list[str]] = Field(default_factory=dict)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    health: HealthSettings = Field(default_factory=HealthSettings)

    @model_validator(mode="after")
    def _references(self) -> RoutingSettings:
        names = [r.name for r in self.routers]
        if len(set(names)) != len(names):
            raise ValueError("routing.routers: two routers have the same name")
        for sub in self.substitute:
            if sub.router not in names:
                raise ValueError(f"routing.substitute: unknown router {sub.router!r}")
        return self
