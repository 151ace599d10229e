"""The gateway's internal (OpenAI) chat request, translated for an Anthropic upstream.

Pure functions, no I/O. The reverse direction (a client speaking Anthropic to
``/v1/messages``) lives in ``anthropic_client_request``.

Translation is faithful or it fails loudly: a parameter that would change the
answer and has no counterpart raises ``InvalidRequest`` with ``param`` set,
rather than being dropped and giving the client something it did not ask for.
Parameters that only tune sampling or bookkeeping and have no counterpart are
dropped (listed in ``anthropic_format``'s docstring).

Anthropic-only features the OpenAI shape cannot express (``thinking``, signed
thinking blocks, ``cache_control`` on content parts and tools) travel as
extension keys, so an Anthropic client routed to an Anthropic upstream loses
nothing; ``anthropic_client_request.strip_anthropic_extensions`` removes them
before an OpenAI upstream.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from tokenomy.errors import InvalidRequest

DEFAULT_MAX_TOKENS = 4096

#: Anthropic's temperature range is [0, 1]; OpenAI's is [0, 2].
_ANTHROPIC_MAX_TEMPERATURE = 1.0

_DATA_URL = re.compile(r"^data:(?P<media>[^;,]+)(?:;[^;,]*)*?;base64,(?P<data>.*)$", re.S)

#: Top-level keys of the internal (OpenAI) request that only Anthropic understands.
EXTENSION_KEYS = ("thinking", "top_k")


def openai_to_anthropic_request(
    body: dict[str, Any], upstream_model: str, *, default_max_tokens: int = DEFAULT_MAX_TOKENS
) -> dict[str, Any]:
    """Translate an OpenAI chat-completions body into an Anthropic Messages body.

    ``default_max_tokens`` fills Anthropic's required ``max_tokens`` when the
    client set no limit (OpenAI lets the model run to its context limit).
    """
    _reject_unsupported_openai_params(body)
    system, turns = _openai_messages_to_anthropic(body.get("messages"))
    out: dict[str, Any] = {
        "model": upstream_model,
        "max_tokens": _max_tokens(body, default_max_tokens),
        "messages": turns,
    }
    if system:
        out["system"] = system
    temperature = _number(body, "temperature")
    if temperature is not None:
        out["temperature"] = min(temperature, _ANTHROPIC_MAX_TEMPERATURE)
    top_p = _number(body, "top_p")
    if top_p is not None:
        out["top_p"] = top_p
    stop = _stop_sequences(body.get("stop"))
    if stop:
        out["stop_sequences"] = stop
    user = body.get("user")
    if user:
        out["metadata"] = {"user_id": str(user)}
    if body.get("stream"):
        out["stream"] = True
    tools = _openai_tools_to_anthropic(body.get("tools"))
    if tools:
        out["tools"] = tools
    choice = _openai_tool_choice_to_anthropic(body, has_tools=bool(tools))
    if choice:
        out["tool_choice"] = choice
    output_format = _openai_response_format_to_anthropic(body.get("response_format"))
    if output_format:
        out["output_config"] = {"format": output_format}
    for key in EXTENSION_KEYS:
        if body.get(key) is not None:
            out[key] = body[key]
    return out


def _reject_unsupported_openai_params(body: dict[str, Any]) -> None:
    n = body.get("n")
    if n not in (None, 1):
        raise InvalidRequest("n > 1 is not supported by Anthropic models", param="n")
    if body.get("logprobs"):
        raise InvalidRequest("logprobs are not supported by Anthropic models", param="logprobs")
    if body.get("top_logprobs") is not None:
        raise InvalidRequest("top_logprobs is not supported by Anthropic models", param="top_logprobs")
    for legacy in ("functions", "function_call"):
        if body.get(legacy) is not None:
            raise InvalidRequest(f"{legacy!r} is deprecated and not translated; use 'tools'", param=legacy)
    modalities = body.get("modalities")
    if body.get("audio") is not None or (modalities and set(modalities) - {"text"}):
        raise InvalidRequest("audio output is not supported by Anthropic models", param="modalities")
    if body.get("web_search_options") is not None:
        raise InvalidRequest("web_search_options is not translated for Anthropic models", param="web_search_options")


def _max_tokens(body: dict[str, Any], default: int) -> int:
    for param in ("max_completion_tokens", "max_tokens"):
        value = body.get(param)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidRequest(f"{param} must be a positive integer", param=param)
        return value
    return default


def _number(body: dict[str, Any], param: str) -> float | None:
    value = body.get(param)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise InvalidRequest(f"{param} must be a non-negative number", param=param)
    return value


def _stop_sequences(stop: Any) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return list(stop)
    raise InvalidRequest("stop must be a string or a list of strings", param="stop")


def _openai_messages_to_anthropic(messages: Any) -> tuple[str | list[dict[str, Any]] | None, list[dict[str, Any]]]:
    """Hoist system/developer messages; merge consecutive same-role turns (Anthropic alternates)."""
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages must be a non-empty list", param="messages")
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise InvalidRequest(f"{where} must be an object", param=where)
        role = msg.get("role")
        if role in ("system", "developer"):
            system.extend(_text_blocks(msg.get("content"), where, msg.get("cache_control")))
            continue
        if role == "user":
            blocks = _user_blocks(msg, where)
        elif role == "assistant":
            blocks = _assistant_blocks(msg, where)
        elif role == "tool":
            role, blocks = "user", [_tool_result_block(msg, where)]
        else:
            raise InvalidRequest(f"{where}.role {role!r} is not supported", param=f"{where}.role")
        if not blocks:
            continue  # Anthropic rejects empty turns; an empty message carries nothing
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    if not turns:
        raise InvalidRequest("messages must contain at least one user or assistant message", param="messages")
    for turn in turns:
        # Anthropic wants tool results first in a user turn; keep everything else in order.
        turn["content"].sort(key=lambda block: block.get("type") != "tool_result")
        content = turn["content"]
        if len(content) == 1 and content[0]["type"] == "text" and "cache_control" not in content[0]:
            turn["content"] = content[0]["text"]
    if len(system) == 1 and "cache_control" not in system[0]:
        return system[0]["text"], turns
    return system or None, turns


def _text_blocks(content: Any, where: str, cache_control: Any = None) -> list[dict[str, Any]]:
    """Text-only content (system, tool results) as Anthropic text blocks, empty ones dropped."""
    if content is None:
        return []
    if isinstance(content, str):
        blocks = [{"type": "text", "text": content}] if content else []
    elif isinstance(content, list):
        blocks = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InvalidRequest(f"{where}.content[{j}] must be a text part", param=f"{where}.content")
            if part["text"]:
                blocks.append(with_cache_control({"type": "text", "text": part["text"]}, part))
    else:
        raise InvalidRequest(f"{where}.content must be a string or a list of parts", param=f"{where}.content")
    if cache_control and blocks:
        blocks[-1]["cache_control"] = cache_control
    return blocks


def with_cache_control(block: dict[str, Any], source: dict[str, Any]) -> dict[str, Any]:
    """Copy ``source``'s prompt-cache breakpoint onto ``block``: both formats mark it per part."""
    if source.get("cache_control"):
        block["cache_control"] = source["cache_control"]
    return block


def _user_blocks(msg: dict[str, Any], where: str) -> list[dict[str, Any]]:
    content = msg.get("content")
    if content is None or isinstance(content, str):
        return _text_blocks(content, where, msg.get("cache_control"))
    if not isinstance(content, list):
        raise InvalidRequest(f"{where}.content must be a string or a list of parts", param=f"{where}.content")
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        param = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if part.get("text"):
                blocks.append(with_cache_control({"type": "text", "text": str(part["text"])}, part))
        elif kind == "image_url":
            blocks.append(with_cache_control(_image_block(part.get("image_url"), param), part))
        elif kind == "file":
            blocks.append(with_cache_control(_document_block(part.get("file"), param), part))
        else:
            raise InvalidRequest(f"{param}: content part type {kind!r} is not supported by Anthropic", param=param)
    if msg.get("cache_control") and blocks:
        blocks[-1]["cache_control"] = msg["cache_control"]
    return blocks


def _image_block(image_url: Any, param: str) -> dict[str, Any]:
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if not isinstance(url, str) or not url:
        raise InvalidRequest(f"{param}.image_url.url is required", param=param)
    if url.startswith("data:"):
        match = _DATA_URL.match(url)
        if not match:
            raise InvalidRequest(f"{param}: only base64 data URLs are supported", param=param)
        source = {"type": "base64", "media_type": match["media"], "data": match["data"]}
        return {"type": "image", "source": source}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise InvalidRequest(f"{param}: image URL must be http(s) or a base64 data URL", param=param)


def _document_block(file: Any, param: str) -> dict[str, Any]:
    data_url = file.get("file_data") if isinstance(file, dict) else None
    match = _DATA_URL.match(data_url) if isinstance(data_url, str) else None
    if not match or match["media"] != "application/pdf":
        raise InvalidRequest(f"{param}: only inline base64 PDF files are supported", param=param)
    block: dict[str, Any] = {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": match["data"]},
    }
    if file.get("filename"):
        block["title"] = file["filename"]
    return block


def _assistant_blocks(msg: dict[str, Any], where: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for block in msg.get("thinking_blocks") or ():
        # Only signed blocks can go back to Anthropic; unsigned reasoning from other vendors cannot.
        if isinstance(block, dict) and (block.get("signature") or block.get("type") == "redacted_thinking"):
            blocks.append(dict(block))
    content = msg.get("content")
    if isinstance(content, list):
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in ("text", "refusal"):
                raise InvalidRequest(
                    f"{where}.content[{j}]: assistant content must be text", param=f"{where}.content[{j}]"
                )
            text = part.get(kind)
            if text:
                blocks.append(with_cache_control({"type": "text", "text": str(text)}, part))
        if msg.get("cache_control") and blocks:
            blocks[-1]["cache_control"] = msg["cache_control"]
    elif content is not None:
        blocks.extend(_text_blocks(content, where, msg.get("cache_control")))
    for j, call in enumerate(msg.get("tool_calls") or ()):
        blocks.append(_tool_use_block(call, f"{where}.tool_calls[{j}]"))
    return blocks


def _tool_use_block(call: Any, where: str) -> dict[str, Any]:
    if not isinstance(call, dict) or call.get("type", "function") != "function":
        raise InvalidRequest(f"{where}: only function tool calls are supported", param=where)
    function = call.get("function") or {}
    if not call.get("id") or not function.get("name"):
        raise InvalidRequest(f"{where}: id and function.name are required", param=where)
    arguments = function.get("arguments") or "{}"
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"{where}.function.arguments is not valid JSON", param=f"{where}.function.arguments"
        ) from exc
    if not isinstance(parsed, dict):
        raise InvalidRequest(f"{where}.function.arguments must be a JSON object", param=f"{where}.function.arguments")
    return {"type": "tool_use", "id": call["id"], "name": function["name"], "input": parsed}


def _tool_result_block(msg: dict[str, Any], where: str) -> dict[str, Any]:
    tool_call_id = msg.get("tool_call_id")
    if not tool_call_id:
        raise InvalidRequest(f"{where}.tool_call_id is required", param=f"{where}.tool_call_id")
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_call_id}
    content = msg.get("content")
    if isinstance(content, str):
        if content:
            block["content"] = content
    else:
        parts = _text_blocks(content, where)
        if parts:
            block["content"] = parts
    if msg.get("cache_control"):
        block["cache_control"] = msg["cache_control"]
    return block


def _openai_tools_to_anthropic(tools: Any) -> list[dict[str, Any]]:
    if not tools:
        return []
    if not isinstance(tools, list):
        raise InvalidRequest("tools must be a list", param="tools")
    out = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type", "function") != "function" or not function.get("name"):
            raise InvalidRequest(f"tools[{i}]: only function tools with a name are supported", param=f"tools[{i}]")
        converted: dict[str, Any] = {
            "name": function["name"],
            "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
        }
        if function.get("description"):
            converted["description"] = function["description"]
        if function.get("strict") is not None:
            converted["strict"] = bool(function["strict"])
        out.append(with_cache_control(converted, tool))
    return out


def _openai_tool_choice_to_anthropic(body: dict[str, Any], *, has_tools: bool) -> dict[str, Any] | None:
    choice = body.get("tool_choice")
    parallel_off = body.get("parallel_tool_calls") is False
    if not has_tools:
        if choice in (None, "auto", "none"):
            return None
        raise InvalidRequest("tool_choice needs tools", param="tool_choice")
    if choice is None:
        # auto is Anthropic's default: send nothing unless parallel calls must be switched off
        return {"type": "auto", "disable_parallel_tool_use": True} if parallel_off else None
    if choice == "none":
        return {"type": "none"}  # Anthropic refuses disable_parallel_tool_use with none
    if choice == "auto":
        translated: dict[str, Any] = {"type": "auto"}
    elif choice == "required":
        translated = {"type": "any"}
    elif isinstance(choice, dict) and choice.get("type") == "function" and (choice.get("function") or {}).get("name"):
        translated = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise InvalidRequest(f"tool_choice {choice!r} is not supported", param="tool_choice")
    if parallel_off:
        translated["disable_parallel_tool_use"] = True
    return translated


def _openai_response_format_to_anthropic(response_format: Any) -> dict[str, Any] | None:
    if not response_format:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise InvalidRequest("response_format.json_schema.schema is required", param="response_format")
        return {"type": "json_schema", "schema": schema}
    raise InvalidRequest(
        f"response_format {kind!r} has no Anthropic equivalent (use json_schema)", param="response_format"
    )
