"""Translation between OpenAI chat completions (the gateway's internal shape) and
Anthropic Messages, in both directions: one import for the public API.

Used two ways:

* by ``AnthropicProvider`` (gateway → Anthropic upstream):
  ``openai_to_anthropic_request`` → POST → ``anthropic_to_openai_response`` or
  ``AnthropicToOpenAIStream``;
* by the ``/v1/messages`` route (Anthropic client → gateway):
  ``anthropic_to_openai_request`` → pipeline → ``openai_to_anthropic_response``
  or ``OpenAIToAnthropicStream`` (+ ``encode_sse``), errors as
  ``anthropic_error_body``.

What is translated (OpenAI ⇄ Anthropic):

============================== ==================================================
system / developer messages    ``system`` (a string; text blocks when several or
                               any has ``cache_control``); later ones hoisted too
user text / image_url parts    text / image blocks (data URL ⇄ base64 source,
                               http(s) ⇄ url source)
file parts (inline PDF)        document blocks (base64 PDF)
assistant tool_calls           tool_use blocks (arguments JSON ⇄ input object)
tool messages                  tool_result blocks, first in a user turn;
                               consecutive same-role turns merged (alternation)
tools / tool_choice            tools (parameters ⇄ input_schema, strict);
                               auto/none/required/named ⇄ auto/none/any/tool;
                               parallel_tool_calls=false ⇄ disable_parallel_tool_use
max_completion_tokens,         max_tokens (Anthropic requires it: the provider's
max_tokens                     default when absent)
temperature                    temperature (clamped to Anthropic's max of 1.0)
top_p, stream                  same
stop (str or list)             stop_sequences
user                           metadata.user_id
response_format json_schema    output_config.format (structured outputs)
cache_control on parts, tools  kept as is (an extension key on the OpenAI side)
thinking (request)             passed through (extension key)
thinking blocks (answer)       message.reasoning_content + message.thinking_blocks
                               (signed; sent back to Anthropic on the next turn);
                               streamed as delta.reasoning_content, the signature
                               and redacted thinking as delta.thinking_blocks
finish_reason                  end_turn/stop_sequence/pause_turn→stop,
                               max_tokens/model_context_window_exceeded→length,
                               tool_use→tool_calls, refusal→content_filter
usage                          ``Usage.from_anthropic`` / ``anthropic_dict`` (+
                               ``cache_creation`` TTL split)
============================== ==================================================

Refused with ``InvalidRequest`` (``param`` set), because dropping them would
change the answer: ``n`` > 1, ``logprobs``, ``top_logprobs``, legacy
``functions``/``function_call``, audio output (``audio``, ``modalities``),
``web_search_options``, ``response_format`` ``json_object`` (Anthropic has no
schema-less JSON mode), non-function tools, content parts other than text,
image_url and inline PDF, images by non-http URL. From Anthropic clients:
server tools (web search, bash…), image/document sources other than base64/url
(e.g. Files API ids), ``output_config.format`` other than json_schema.

Dropped silently (no Anthropic counterpart; the answer stays valid):
``seed``, ``presence_penalty``, ``frequency_penalty``, ``logit_bias``,
``service_tier``, ``store``, ``metadata``, ``stream_options`` (Anthropic always
reports usage), ``prediction``, ``reasoning_effort``, message ``name``. From
Anthropic clients: ``top_k``, ``tool_result.is_error``, ``service_tier``,
``container``, ``mcp_servers``; tool-result images move to the next user
message (OpenAI tool messages carry text only). A trailing assistant message
(Anthropic "prefill") is passed on as a plain assistant turn: only an Anthropic
upstream continues it.
"""

from __future__ import annotations

from tokenomy.providers.anthropic_client_request import anthropic_to_openai_request, strip_anthropic_extensions
from tokenomy.providers.anthropic_request import DEFAULT_MAX_TOKENS, openai_to_anthropic_request
from tokenomy.providers.anthropic_response import (
    anthropic_error_body,
    anthropic_error_type,
    anthropic_to_openai_response,
    anthropic_usage,
    finish_reason_for,
    openai_to_anthropic_response,
    stop_reason_for,
)
from tokenomy.providers.anthropic_stream import (
    AnthropicToOpenAIStream,
    Event,
    OpenAIToAnthropicStream,
    encode_sse,
)

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "AnthropicToOpenAIStream",
    "Event",
    "OpenAIToAnthropicStream",
    "anthropic_error_body",
    "anthropic_error_type",
    "anthropic_to_openai_request",
    "anthropic_to_openai_response",
    "anthropic_usage",
    "encode_sse",
    "finish_reason_for",
    "openai_to_anthropic_request",
    "openai_to_anthropic_response",
    "stop_reason_for",
    "strip_anthropic_extensions",
]
