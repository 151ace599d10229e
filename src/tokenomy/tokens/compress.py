"""Prompt compression that keeps the meaning: whitespace, repeated blocks, retrieved chunks.

**Normalizations** (``normalize_whitespace``, ``dedupe_blocks``) are pure
functions of a message's text, so the same prompt always compresses to the same
bytes and provider prompt caches keep hitting. Inside a line only runs of
spaces/tabs after the first visible character are collapsed (indentation is
meaning in code, YAML and Python); trailing blanks go; three or more blank lines
become one. Fenced code blocks (```` ``` ````) are left exactly as they are.
A paragraph repeated verbatim inside one message (pasted twice, a footer on every
document) is kept once.

**Retrieved chunks**: a request marks the context it retrieved by giving the text
content parts an extra key ``"retrieved": true``::

    {"role": "user", "content": [
        {"type": "text", "text": "Doc 1 …", "retrieved": true},
        {"type": "text", "text": "Doc 2 …", "retrieved": true},
        {"type": "text", "text": "What is the refund window?"}]}

The marker never reaches the upstream. With ``retrieved_top_k`` and/or
``retrieved_budget_tokens`` set, the chunks most relevant to the question (the
last user message's unmarked text) are kept — at most K, within the token budget,
most relevant first — and the others are dropped; kept chunks stay in their
original order. Relevance is BM25 (``lexical``, free) or cosine similarity of an
embeddings model's vectors.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from tokenomy.tokens.conversation import PromptCount, message_tokens
from tokenomy.tokens.counting import count_text

RETRIEVED_KEY = "retrieved"

_FENCE = re.compile(r"(```.*?(?:```|\Z))", re.S)
_INNER_RUN = re.compile(r"(?<=\S)[ \t]{2,}(?=\S)")
_TRAILING = re.compile(r"[ \t]+$", re.M)
_BLANK_LINES = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")
_PARAGRAPH_SPLIT = re.compile(r"(\n\s*\n)")
_WORD = re.compile(r"\w+", re.UNICODE)

Embed = Callable[[list[str]], Awaitable[list[list[float]]]]


# -- normalizations -----------------------------------------------------------------------


#: Texts already normalized: hash of (options, text) → the new text, or None when unchanged.
#: Histories are resent every turn; this keeps their normalization to a lookup. FIFO-bounded.
_NORMALIZED: dict[int, str | None] = {}
_NORMALIZED_SIZE = 16_384


def normalize_text(text: str, *, whitespace: bool, dedupe: bool, min_block_chars: int) -> str:
    """``text`` with the safe normalizations applied (code fences untouched)."""
    if not text:
        return text
    key = hash((whitespace, dedupe, min_block_chars, text))
    if key in _NORMALIZED:
        done = _NORMALIZED[key]
        return text if done is None else done
    out = _normalize(text, whitespace, dedupe, min_block_chars)
    _NORMALIZED[key] = None if out == text else out
    if len(_NORMALIZED) > _NORMALIZED_SIZE:
        del _NORMALIZED[next(iter(_NORMALIZED))]
    return out


def _normalize(text: str, whitespace: bool, dedupe: bool, min_block_chars: int) -> str:
    if "```" in text:
        pieces = _FENCE.split(text)
        seen: set[str] = set()
        return "".join(
            piece if piece.startswith("```") else _normalize_prose(piece, whitespace, dedupe, min_block_chars, seen)
            for piece in pieces
        )
    return _normalize_prose(text, whitespace, dedupe, min_block_chars, set())


def _normalize_prose(text: str, whitespace: bool, dedupe: bool, min_block_chars: int, seen: set[str]) -> str:
    if whitespace:
        text = _INNER_RUN.sub(" ", text)
        text = _TRAILING.sub("", text)
        text = _BLANK_LINES.sub("\n\n", text)
    if dedupe and len(text) >= 2 * min_block_chars:
        pieces = _PARAGRAPH_SPLIT.split(text)
        out: list[str] = []
        for i, piece in enumerate(pieces):
            if i % 2:  # a separator
                out.append(piece)
                continue
            key = piece.strip()
            if len(key) >= min_block_chars:
                if key in seen:
                    if out and not out[-1].strip():
                        out.pop()  # the separator before the dropped paragraph goes with it
                    continue
                seen.add(key)
            out.append(piece)
        text = "".join(out)
    return text


def normalize_messages(
    messages: list[Any], count: PromptCount, *, whitespace: bool, dedupe: bool, min_block_chars: int
) -> int:
    """Normalize every message's text in place (new message dicts); returns tokens saved."""
    saved = 0
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            new: Any = normalize_text(content, whitespace=whitespace, dedupe=dedupe, min_block_chars=min_block_chars)
            if new == content:
                continue
        elif isinstance(content, list):
            changed = False
            parts = []
            for part in content:
                if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                    text = normalize_text(
                        part["text"], whitespace=whitespace, dedupe=dedupe, min_block_chars=min_block_chars
                    )
                    if text != part["text"]:
                        part = {**part, "text": text}
                        changed = True
                parts.append(part)
            if not changed:
                continue
            new = parts
        else:
            continue
        messages[i] = {**message, "content": new}
        saved += _recount(messages, count, i)
    return saved


def _recount(messages: list[Any], count: PromptCount, i: int) -> int:
    before = count.per_message[i]
    count.per_message[i] = message_tokens(messages[i], count.model)
    return before - count.per_message[i]


# -- retrieved chunks ---------------------------------------------------------------------


def has_retrieved(messages: Sequence[Any]) -> bool:
    """Whether any text part carries the ``retrieved`` marker (cheap: string contents are skipped)."""
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if type(content) is list:
            for part in content:
                if isinstance(part, dict) and RETRIEVED_KEY in part:
                    return True
    return False


def strip_markers(messages: list[Any]) -> None:
    """Remove the ``retrieved`` markers (in place, new dicts), so upstreams never see them."""
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if type(content) is list and any(isinstance(p, dict) and RETRIEVED_KEY in p for p in content):
            parts = [
                {k: v for k, v in p.items() if k != RETRIEVED_KEY} if isinstance(p, dict) else p for p in content
            ]
            messages[i] = {**message, "content": parts}


def question_of(messages: Sequence[Any]) -> str:
    """The unmarked text of the last user message: what the retrieved chunks should answer."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(
                    str(p.get("text") or "")
                    for p in content
                    if isinstance(p, dict) and p.get("type") == "text" and not p.get(RETRIEVED_KEY)
                )
    return ""


async def trim_retrieved(
    messages: list[Any],
    count: PromptCount,
    *,
    top_k: int | None,
    budget_tokens: int | None,
    embed: Embed | None = None,
) -> tuple[int, int]:
    """Drop the least relevant retrieved chunks (in place); returns ``(tokens saved, chunks dropped)``.

    Markers are stripped from every message either way.
    """
    chunks: list[tuple[int, int, str]] = []  # (message index, part index, text)
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if type(content) is list:
            for j, part in enumerate(content):
                if isinstance(part, dict) and part.get(RETRIEVED_KEY) and isinstance(part.get("text"), str):
                    chunks.append((i, j, part["text"]))
    question = question_of(messages)
    drop: set[tuple[int, int]] = set()
    if chunks and (top_k is not None or budget_tokens is not None):
        texts = [text for _, _, text in chunks]
        if embed is not None:
            vectors = await embed([question, *texts])
            scores = [_cosine(vectors[0], v) for v in vectors[1:]]
        else:
            scores = bm25_scores(question, texts)
        ranked = sorted(range(len(chunks)), key=lambda k: (-scores[k], k))
        kept = 0
        used = 0
        for k in ranked:
            tokens = count_text(texts[k], count.model)
            fits = budget_tokens is None or used + tokens <= budget_tokens
            if (top_k is None or kept < top_k) and fits:
                kept += 1
                used += tokens
            else:
                drop.add(chunks[k][:2])
        # a message made only of chunks keeps its most relevant one: an empty message is invalid
        for i in {i for i, _, _ in chunks}:
            content = messages[i]["content"]
            if all((i, j) in drop for j in range(len(content))):
                best = next(k for k in ranked if chunks[k][0] == i)
                drop.discard(chunks[best][:2])
    saved = 0
    touched = {i for i, _, _ in chunks}
    strip_markers(messages)
    for i in sorted(touched):
        message = messages[i]
        parts = [p for j, p in enumerate(message["content"]) if (i, j) not in drop]
        if len(parts) != len(message["content"]):
            messages[i] = {**message, "content": parts}
            saved += _recount(messages, count, i)
    return saved, len(drop)


_SUFFIXES = ("ing", "ed", "es", "s")


def _terms(text: str) -> list[str]:
    """Lower-cased words with a light English suffix strip (refunds → refund, shipped → shipp)."""
    out = []
    for word in _WORD.findall(text.lower()):
        for suffix in _SUFFIXES:
            if len(word) > len(suffix) + 2 and word.endswith(suffix):
                word = word[: -len(suffix)]
                break
        out.append(word)
    return out


def bm25_scores(query: str, documents: Sequence[str], k1: float = 1.2, b: float = 0.75) -> list[float]:
    """Okapi BM25 score of each document for ``query``."""
    docs = [_terms(d) for d in documents]
    terms = set(_terms(query))
    if not docs or not terms:
        return [0.0] * len(documents)
    n = len(docs)
    avg = sum(len(d) for d in docs) / n or 1.0
    df = Counter(t for d in docs for t in set(d) if t in terms)
    scores = []
    for d in docs:
        tf = Counter(t for t in d if t in terms)
        score = 0.0
        for t, f in tf.items():
            idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
            score += idf * f * (k1 + 1) / (f + k1 * (1 - b + b * len(d) / avg))
        scores.append(score)
    return scores


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    na = math.sqrt(sum(x * x for x in a)) or 1.0
    nb = math.sqrt(sum(y * y for y in b)) or 1.0
    return dot / (na * nb)
