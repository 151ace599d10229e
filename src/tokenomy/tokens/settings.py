"""Token policies: the ``tokens:`` section of ``tokenomy.yaml``.

A policy says how the gateway trims a request before it is sent: output caps,
context pruning, prompt compression and provider prompt caching. Policies are
layered: ``default``, then the caller's team, feature and key, the most specific
last. A key set at a more specific level wins; a whole sub-section
(``pruning``, ``compression``, ``prompt_caching``) set at a more specific level
replaces the less specific one (no deep merge, so what applies is easy to read)::

    tokens:
      default:
        default_max_tokens: 1024
        max_tokens_cap: 4096
      features:
        support-chat:
          pruning: {strategy: summarize, keep_last_turns: 6}
          prompt_caching: {anthropic_breakpoints: true}
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PruningSettings(_Section):
    """Context pruning of multi-turn requests.

    A *turn* is a user message with everything after it up to the next user
    message (answers, tool calls and their results), so a tool call is never
    separated from its result. System messages are never dropped.
    """

    #: ``none``, ``last_n`` (keep the last ``keep_last_turns``), ``budget`` (system prompt and the most
    #: recent turns within ``budget_tokens``) or ``summarize`` (older turns replaced by a summary).
    strategy: Literal["none", "last_n", "budget", "summarize"] = "none"
    #: ``last_n``/``summarize``: turns kept verbatim at the end of the conversation.
    keep_last_turns: int = Field(3, ge=1)
    #: ``budget``: prompt tokens allowed for the messages (the last turn is always kept).
    budget_tokens: int = Field(8000, ge=1)
    #: ``summarize``: the summarized prefix grows in steps of this many turns, so one summary
    #: serves this many consecutive turns of a conversation (and the prompt prefix stays stable).
    summarize_step: int = Field(3, ge=1)
    #: ``summarize``: longest summary, in tokens.
    summary_max_tokens: int = Field(300, ge=16)


class CompressionSettings(_Section):
    """Prompt compression that does not change meaning."""

    #: Trailing spaces removed, runs of spaces/tabs inside a line collapsed, 3+ blank lines made 2.
    #: Leading indentation and fenced code blocks are left alone.
    normalize_whitespace: bool = True
    #: A paragraph repeated verbatim inside one message is kept once.
    dedupe_blocks: bool = True
    #: Paragraphs shorter than this are never treated as repeated blocks.
    min_block_chars: int = Field(80, ge=1)
    #: Retrieved chunks (text parts marked ``"retrieved": true``) kept at most, most relevant first.
    retrieved_top_k: int | None = Field(None, ge=1)
    #: Tokens of retrieved chunks kept at most (most relevant first).
    retrieved_budget_tokens: int | None = Field(None, ge=1)
    #: ``lexical`` (BM25 against the question, no model call) or the name of an embeddings model
    #: (cosine similarity; the embedding call is a cost item of the request).
    retrieved_relevance: str = "lexical"


class PromptCacheSettings(_Section):
    """Provider prompt caching."""

    #: Add Anthropic ``cache_control`` breakpoints on long stable prefixes (tools, system, earlier turns).
    anthropic_breakpoints: bool = True
    #: Lifetime of the breakpoints the gateway adds: ``5m`` or ``1h`` (writes cost more).
    ttl: Literal["5m", "1h"] = "5m"
    #: Also mark the conversation (the previous and the latest user turn), not only tools and system.
    cache_messages: bool = True
    #: Smallest cacheable prefix in tokens; default: the model's documented minimum (1024, 2048 or 4096).
    min_tokens: int | None = Field(None, ge=1)
    #: OpenAI: send ``prompt_cache_key`` (a hash of the tools and system prompt) so requests sharing a
    #: prefix land on the same cache. Only for upstreams that accept the parameter.
    openai_cache_key: bool = False


class TokenPolicy(_Section):
    """What the gateway does to one request's tokens. Unset keys inherit from the less specific level."""

    #: ``max_tokens`` sent when the request sets no output limit.
    default_max_tokens: int | None = Field(None, ge=1)
    #: Largest output limit allowed: a larger ``max_tokens``/``max_completion_tokens`` is lowered to it.
    max_tokens_cap: int | None = Field(None, ge=1)
    pruning: PruningSettings | None = None
    compression: CompressionSettings | None = None
    prompt_caching: PromptCacheSettings | None = None

    def over(self, base: TokenPolicy) -> TokenPolicy:
        """This policy layered over ``base``: keys set here win."""
        if not self.model_fields_set:
            return base
        values = {name: getattr(base, name) for name in type(self).model_fields}
        for name in self.model_fields_set:
            values[name] = getattr(self, name)
        return TokenPolicy.model_construct(base.model_fields_set | self.model_fields_set, **values)

    @property
    def changes_input(self) -> bool:
        """Whether the policy may rewrite the prompt (so its tokens must be counted)."""
        pruning = self.pruning is not None and self.pruning.strategy != "none"
        return pruning or self.compression is not None

    @property
    def is_noop(self) -> bool:
        return (
            self.default_max_tokens is None
            and self.max_tokens_cap is None
            and not self.changes_input
            and self.prompt_caching is None
        )


class TokensSettings(_Section):
    """The ``tokens:`` section: policies by team, feature and key."""

    #: Apply token policies at all (prompt versions are recorded either way).
    enabled: bool = True
    #: Model that writes conversation summaries: a model name, or ``auto`` for the cheapest chat model
    #: configured (``local-smollm2`` when installed, else ``sim-mini`` on embedded defaults).
    summarizer_model: str = "auto"
    #: Summaries kept in memory (each keyed by a hash of the messages it replaces).
    summary_cache_size: int = Field(10_000, ge=1)
    #: Longest summarizer input in tokens; longer transcripts are clipped message by message.
    summary_input_tokens: int = Field(6000, ge=256)
    default: TokenPolicy = Field(default_factory=TokenPolicy)
    teams: dict[str, TokenPolicy] = Field(default_factory=dict)
    features: dict[str, TokenPolicy] = Field(default_factory=dict)
    keys: dict[str, TokenPolicy] = Field(default_factory=dict)

    @field_validator("default", "teams", "features", "keys", mode="before")
    @classmethod
    def _empty_is_default(cls, value: object, info: ValidationInfo) -> object:
        # A YAML key whose body is all comments reads as null: take it as "nothing set".
        if value is None:
            return {}
        return value

    @model_validator(mode="after")
    def _caps(self) -> TokensSettings:
        for where, policy in self.policies():
            if (
                policy.default_max_tokens is not None
                and policy.max_tokens_cap is not None
                and policy.default_max_tokens > policy.max_tokens_cap
            ):
                raise ValueError(f"{where}: default_max_tokens is larger than max_tokens_cap")
        return self

    def policies(self) -> list[tuple[str, TokenPolicy]]:
        """Every policy of the section with where it is configured (``tokens.teams.growth``)."""
        out = [("tokens.default", self.default)]
        for section in ("teams", "features", "keys"):
            out += [(f"tokens.{section}.{name}", p) for name, p in getattr(self, section).items()]
        return out
