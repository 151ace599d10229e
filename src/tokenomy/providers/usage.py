"""Token usage, normalized across providers.

OpenAI counts cached prompt tokens inside ``prompt_tokens``; Anthropic reports
``input_tokens`` *excluding* cache reads and writes. ``Usage`` follows OpenAI:
``input_tokens`` is the whole prompt, and ``cached_tokens`` / ``cache_write_tokens``
say which part of it was read from or written to the provider's prompt cache, so
pricing can charge each part at its own rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True, frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens read from the provider's cache
    cache_write_tokens: int = 0  # prompt tokens written to a 5-minute cache
    cache_write_1h_tokens: int = 0  # prompt tokens written to a 1-hour cache

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cached_tokens + other.cached_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            self.cache_write_1h_tokens + other.cache_write_1h_tokens,
        )

    @property
    def uncached_input_tokens(self) -> int:
        """Prompt tokens billed at the plain input rate."""
        return max(
            0,
            self.input_tokens - self.cached_tokens - self.cache_write_tokens - self.cache_write_1h_tokens,
        )

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def openai_dict(self) -> dict[str, Any]:
        """The ``usage`` object of an OpenAI chat completion."""
        usage: dict[str, Any] = {
            "prompt_tokens": self.input_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
        }
        if self.cached_tokens:
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        return usage

    @classmethod
    def from_openai(cls, usage: dict[str, Any] | None) -> Usage | None:
        """Read OpenAI's usage object (chat or embeddings); ``None`` if absent."""
        if not usage:
            return None
        details = usage.get("prompt_tokens_details") or {}
        return cls(
            input_tokens=int(usage.get("prompt_tokens") or 0),
            output_tokens=int(usage.get("completion_tokens") or 0),
            cached_tokens=int(details.get("cached_tokens") or 0),
        )

    @classmethod
    def from_anthropic(cls, usage: dict[str, Any] | None) -> Usage | None:
        """Read Anthropic's usage object (``input_tokens`` excludes cache reads/writes)."""
        if not usage:
            return None
        read = int(usage.get("cache_read_input_tokens") or 0)
        creation = int(usage.get("cache_creation_input_tokens") or 0)
        split = usage.get("cache_creation") or {}
        write_1h = int(split.get("ephemeral_1h_input_tokens") or 0)
        write_5m = creation - write_1h if creation >= write_1h else creation
        plain = int(usage.get("input_tokens") or 0)
        return cls(
            input_tokens=plain + read + creation,
            output_tokens=int(usage.get("output_tokens") or 0),
            cached_tokens=read,
            cache_write_tokens=write_5m,
            cache_write_1h_tokens=write_1h,
        )

    def anthropic_dict(self) -> dict[str, Any]:
        """The ``usage`` object of an Anthropic message."""
        return {
            "input_tokens": self.uncached_input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_input_tokens": self.cached_tokens,
            "cache_creation_input_tokens": self.cache_write_tokens + self.cache_write_1h_tokens,
        }
