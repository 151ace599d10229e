"""Request checks, as strict as OpenAI's on the fields the gateway relies on and
tolerant of everything else: unknown fields pass through to the upstream, as
OpenAI's own API ignores what it does not know.

Hand-written rather than a pydantic model: these run on every request and cost
a few microseconds this way (DESIGN.md §7 measured pydantic bodies at −40 % RPS).
"""

from __future__ import annotations

from typing import Any

from tokenomy.errors import InvalidRequest

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def _require_model(body: dict[str, Any]) -> None:
    model = body.get("model")
    if model is None:
        raise InvalidRequest("you must provide a model parameter", param="model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model must be a non-empty string", param="model")


def _optional_int(body: dict[str, Any], name: str, minimum: int) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{name} must be an integer", param=name)
    if value < minimum:
        raise InvalidRequest(f"{name} must be at least {minimum}", param=name)


def _optional_number(body: dict[str, Any], name: str, low: float, high: float) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"{name} must be a number", param=name)
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be between {low:g} and {high:g}", param=name)


def validate_chat(body: dict[str, Any]) -> None:
    """Check a chat-completions request; raise ``InvalidRequest`` naming the bad field."""
    _require_model(body)
    messages = body.get("messages")
    if messages is None:
        raise InvalidRequest("you must provide a messages parameter", param="messages")
    if not isinstance(messages, list):
        raise InvalidRequest("messages must be an array", param="messages")
    if not messages:
        raise InvalidRequest("messages must contain at least one message", param="messages")
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if not isinstance(message, dict):
            raise InvalidRequest(f"{param} must be an object", param=param)
        role = message.get("role")
        if role not in ROLES:
            raise InvalidRequest(
                f"{param}.role must be one of {', '.join(sorted(ROLES))}; got {role!r}", param=f"{param}.role"
            )
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise InvalidRequest(f"{param}.content must be a string or an array of parts", param=f"{param}.content")
        if content is None and role in ("user", "system", "developer") :
            raise InvalidRequest(f"{param}.content is required for role {role!r}", param=f"{param}.content")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("stream must be a boolean", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("stream_options must be an object", param="stream_options")
    _optional_int(body, "max_tokens", 1)
    _optional_int(body, "max_completion_tokens", 1)
    _optional_int(body, "n", 1)
    _optional_number(body, "temperature", 0, 2)
    _optional_number(body, "top_p", 0, 1)
    _optional_number(body, "presence_penalty", -2, 2)
    _optional_number(body, "frequency_penalty", -2, 2)
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise InvalidRequest("tools must be an array", param="tools")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise InvalidRequest("user must be a string", param="user")


def validate_embeddings(body: dict[str, Any]) -> None:
    _require_model(body)
    inputs = body.get("input")
    if inputs is None:
        raise InvalidRequest("you must provide an input parameter", param="input")
    if isinstance(inputs, str):
        return
    if not isinstance(inputs, list) or not inputs:
        raise InvalidRequest("input must be a string or a non-empty array", param="input")
    if len(inputs) > 2048:
        raise InvalidRequest("input must have at most 2048 items", param="input")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise InvalidRequest("user must be a string", param="user")
