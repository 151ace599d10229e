"""The prompt text routers and the semantic cache look at (no heavy imports: used on every call)."""

from __future__ import annotations

from typing import Any


def last_user_text(body: dict[str, Any]) -> str:
    """The last user message's text (text parts joined for multi-part content)."""
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""
