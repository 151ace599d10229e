"""A client's Anthropic Messages request (our ``/v1/messages``), translated to the internal OpenAI shape.

Pure functions, no I/O. Validation mirrors Anthropic's own (``model``,
``max_tokens`` and non-empty ``messages`` required) so an Anthropic SDK client
gets the errors it expects.

Anthropic-only features travel as extension keys of the internal request so an
Anthropic upstream can receive them back unchanged: top-level ``thinking``,
``thinking_blocks`` on assistant messages, ``cache_control`` on content parts and
tools. ``strip_anthropic_extensions`` removes them for OpenAI-compatible
upstreams, which reject unknown parameters.
"""

from __future__ import annotations

from typing import Any

import orjson

from tokenomy.errors import InvalidRequest
from tokenomy.providers.anthropic_request import EXTENSION_KEYS, with_cache_control


def anthropic_to_openai_request(body: dict[str, Any]) -> dict[str, Any]:
    """Translate an Anthropic Messages body (a client of ``/v1/messages``) into an OpenAI chat body.

    Validates what Anthropic requires (``model``, ``max_tokens``, non-empty
    ``messages``) with Anthropic-style messages.
    """
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    for name in ("model", "max_tokens", "messages"):
        if body.get(name) is None:
            raise InvalidRequest(f"{name}: Field required", param=name)
    if not isinstance(body["model"], str) or not body["model"]:
        raise InvalidRequest("model: must be a non-empty string", param="model")
    max_tokens = body["max_tokens"]
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise InvalidRequest("max_tokens: must be a positive integer", param="max_tokens")
    if not isinstance(body["messages"], list) or not body["messages"]:
        raise InvalidRequest("messages: at least one message is required", param="messages")
    messages: list[dict[str, Any]] = []
    system = _anthropic_system_to_openai(body.get("system"))
    if system:
        messages.append(system)
    for i, msg in enumerate(body["messages"]):
        where = f"messages.{i}"
        if not isinstance(msg, dict) or msg.get("role") not in ("user", "assistant"):
            raise InvalidRequest(f"{where}.role: must be 'user' or 'assistant'", param=f"{where}.role")
        content = msg.get("content")
        if not isinstance(content, (str, list)):
            raise InvalidRequest(f"{where}.content: must be a string or a list of blocks", param=f"{where}.content")
        if msg["role"] == "user":
            messages.extend(_anthropic_user_to_openai(content, where))
        else:
            messages.append(_anthropic_assistant_to_openai(content, where))
    out: dict[str, Any] = {"model": body["model"], "messages": messages, "max_tokens": max_tokens}
    stops = body.get("stop_sequences")
    if stops:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise InvalidRequest("stop_sequences: must be a list of strings", param="stop_sequences")
        out["stop"] = list(stops)
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            out[name] = body[name]
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise InvalidRequest("metadata: must be an object", param="metadata")
    if metadata.get("user_id"):
        out["user"] = str(metadata["user_id"])
    if body.get("stream"):
        out["stream"] = True
    tools = _anthropic_tools_to_openai(body.get("tools"))
    if tools:
        out["tools"] = tools
    _anthropic_tool_choice_to_openai(body.get("tool_choice"), out)
    if body.get("thinking") is not None:
        out["thinking"] = body["thinking"]
    output_config = body.get("output_config") or {}
    fmt = output_config.get("format") if isinstance(output_config, dict) else None
    if fmt:
        if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
            raise InvalidRequest("output_config.format: only json_schema is supported", param="output_config")
        out["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": fmt["schema"], "strict": True},
        }
    return out


def _anthropic_system_to_openai(system: Any) -> dict[str, Any] | None:
    if not system:
        return None
    if isinstance(system, str):
        return {"role": "system", "content": system}
    if not isinstance(system, list):
        raise InvalidRequest("system: must be a string or a list of text blocks", param="system")
    parts = []
    for j, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise InvalidRequest(f"system.{j}: only text blocks are allowed", param="system")
        parts.append(with_cache_control({"type": "text", "text": block.get("text", "")}, block))
    return {"role": "system", "content": _collapse_text_parts(parts)}


def _collapse_text_parts(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """A single plain text part becomes a string, which every OpenAI-compatible server takes.

    Several parts stay parts: joining them would pick a separator the client never chose.
    """
    if len(parts) == 1 and parts[0]["type"] == "text" and "cache_control" not in parts[0]:
        return str(parts[0]["text"])
    return parts


def _anthropic_user_to_openai(content: str | list[Any], where: str) -> list[dict[str, Any]]:
    """One Anthropic user turn → tool messages (its tool results) then one user message."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    tool_messages: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        param = f"{where}.content.{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "tool_result":
            message, images = _anthropic_tool_result_to_openai(block, param)
            tool_messages.append(message)
            parts.extend(images)  # OpenAI tool messages carry text only: images go to the next user turn
        else:
            parts.append(_anthropic_part_to_openai(block, kind, param))
    messages = tool_messages
    if parts:
        messages.append({"role": "user", "content": _collapse_text_parts(parts)})
    return messages


def _anthropic_part_to_openai(block: dict[str, Any], kind: str | None, param: str) -> dict[str, Any]:
    if kind == "text":
        part = with_cache_control({"type": "text", "text": block.get("text", "")}, block)
        if block.get("retrieved"):  # a retrieved chunk (see tokenomy.tokens.compress); never sent upstream
            part["retrieved"] = True
        return part
    if kind == "image":
        source = block.get("source") or {}
        if source.get("type") == "base64":
            url = f"data:{source.get('media_type')};base64,{source.get('data')}"
        elif source.get("type") == "url":
            url = source.get("url")
        else:
            raise InvalidRequest(f"{param}: image source {source.get('type')!r} is not supported", param=param)
        return with_cache_control({"type": "image_url", "image_url": {"url": url}}, block)
    if kind == "document":
        source = block.get("source") or {}
        if source.get("type") != "base64" or source.get("media_type") != "application/pdf":
            raise InvalidRequest(f"{param}: only base64 PDF documents are supported", param=param)
        file: dict[str, Any] = {"file_data": f"data:application/pdf;base64,{source.get('data')}"}
        if block.get("title"):
            file["filename"] = block["title"]
        return with_cache_control({"type": "file", "file": file}, block)
    raise InvalidRequest(f"{param}: content block type {kind!r} is not supported", param=param)


def _anthropic_tool_result_to_openai(block: dict[str, Any], param: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    if not block.get("tool_use_id"):
        raise InvalidRequest(f"{param}.tool_use_id: Field required", param=param)
    content = block.get("content")
    images: list[dict[str, Any]] = []
    if content is None or isinstance(content, str):
        text: str | list[dict[str, Any]] = content or ""
    else:
        parts = []
        for k, inner in enumerate(content):
            kind = inner.get("type") if isinstance(inner, dict) else None
            if kind == "image":
                images.append(_anthropic_part_to_openai(inner, kind, f"{param}.content.{k}"))
            elif kind == "text":
                parts.append(with_cache_control({"type": "text", "text": inner.get("text", "")}, inner))
            else:
                raise InvalidRequest(f"{param}.content.{k}: type {kind!r} is not supported", param=param)
        text = _collapse_text_parts(parts)
    if block.get("cache_control"):
        if isinstance(text, str):
            text = [{"type": "text", "text": text}]
        if text:
            text[-1]["cache_control"] = block["cache_control"]
    return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": text}, images


def _anthropic_assistant_to_openai(content: str | list[Any], where: str) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    thinking: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append(with_cache_control({"type": "text", "text": block.get("text", "")}, block))
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            function = {"name": block.get("name"), "arguments": arguments}
            calls.append({"id": block.get("id"), "type": "function", "function": function})
        elif kind in ("thinking", "redacted_thinking"):
            thinking.append(dict(block))
        else:
            param = f"{where}.content.{j}"
            raise InvalidRequest(f"{param}: content block type {kind!r} is not supported", param=param)
    message: dict[str, Any] = {"role": "assistant", "content": _collapse_text_parts(parts) if parts else None}
    if calls:
        message["tool_calls"] = calls
    if thinking:
        message["thinking_blocks"] = thinking
    return message


def _anthropic_tools_to_openai(tools: Any) -> list[dict[str, Any]]:
    if not tools:
        return []
    if not isinstance(tools, list):
        raise InvalidRequest("tools: must be a list", param="tools")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type", "custom") not in ("custom", None) or not tool.get("name"):
            raise InvalidRequest(f"tools.{i}: only custom tools are supported (no server tools)", param="tools")
        function: dict[str, Any] = {
            "name": tool["name"],
            "parameters": tool.get("input_schema") or {"type": "object", "properties": {}},
        }
        if tool.get("description"):
            function["description"] = tool["description"]
        if tool.get("strict") is not None:
            function["strict"] = bool(tool["strict"])
        out.append(with_cache_control({"type": "function", "function": function}, tool))
    return out


def _anthropic_tool_choice_to_openai(choice: Any, out: dict[str, Any]) -> None:
    if not choice:
        return
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "auto":
        out["tool_choice"] = "auto"
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "none":
        out["tool_choice"] = "none"
    elif kind == "tool" and choice.get("name"):
        out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise InvalidRequest(f"tool_choice: type {kind!r} is not supported", param="tool_choice")
    if choice.get("disable_parallel_tool_use"):
        out["parallel_tool_calls"] = False


def strip_anthropic_extensions(body: dict[str, Any]) -> dict[str, Any]:
    """A copy of an internal request without the Anthropic-only extension keys.

    For OpenAI-compatible upstreams, which reject unknown parameters: drops
    ``thinking``/``top_k``, ``cache_control`` on content parts and tools, and
    ``thinking_blocks`` on assistant messages.
    """
    out = {k: v for k, v in body.items() if k not in EXTENSION_KEYS}
    if isinstance(body.get("tools"), list):
        out["tools"] = [_without(tool, "cache_control") for tool in body["tools"]]
    if isinstance(body.get("messages"), list):
        messages = []
        for msg in body["messages"]:
            if not isinstance(msg, dict):
                messages.append(msg)
                continue
            msg = dict(_without(msg, "thinking_blocks", "cache_control"))  # a copy: the caller's body stays whole
            if isinstance(msg.get("content"), list):
                msg["content"] = [_without(p, "cache_control") for p in msg["content"]]
            messages.append(msg)
        out["messages"] = messages
    return out


def _without(item: Any, *keys: str) -> Any:
    if not isinstance(item, dict) or not any(k in item for k in keys):
        return item
    return {k: v for k, v in item.items() if k not in keys}
