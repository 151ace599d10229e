"""Cascades: try the cheapest adequate model first, escalate when its answer fails the checks.

Checks (``CascadeChecks``), in order: non-empty; not a refusal; valid JSON (and
the schema's required top-level keys) when ``response_format`` asks for JSON;
mean token logprob above a floor (when the upstream returns logprobs); and an
optional judge model answering YES/NO. A rejected answer stays in the
CostTrace as a ``cascade`` item (outcome ``rejected:<check>``) — it was paid
for — and the next model is tried, up to ``max_depth`` models and the latency
budget. When the budget is spent, or the last model answers, that answer is
returned as it is. A model that fails outright (after its own retries and
failover) is skipped the same way. Streams are not cascaded (see the route stage).
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from tokenomy.errors import GatewayError
from tokenomy.pipeline.call import Call
from tokenomy.pipeline.reply import Completion, Reply
from tokenomy.routing.fallback import ResilientExecuteStage, classify
from tokenomy.routing.rules import describe
from tokenomy.routing.settings import CascadeChecks

_REFUSAL = re.compile(
    r"^\s*(I'?m sorry|I am sorry|Sorry, |I can(?:no|')t (?:help|assist|do|provide|comply)|I cannot|I am unable|I'm unable"
    r"|I'm not able|I am not able|As an AI\b)",
    re.IGNORECASE,
)
JUDGE_PROMPT = (
    "You grade answers. Reply with exactly YES if the answer below fully and correctly answers the "
    "question, otherwise NO.\n\nQuestion:\n{question}\n\nAnswer:\n{answer}"
)
#: The judge answers YES or NO: this is all it may write (and all a budget reserves for it).
JUDGE_MAX_TOKENS = 3
#: Re-tokenized inside the judge's prompt, an answer may take a token or two more than it did as output.
_ANSWER_BOUNDARY_TOKENS = 2


def answer_text(body: dict[str, Any]) -> tuple[str, bool]:
    """The first choice's text and whether it called tools."""
    choices = body.get("choices") or [{}]
    message = choices[0].get("message") or {}
    content = message.get("content")
    return (content if isinstance(content, str) else ""), bool(message.get("tool_calls"))


def static_check(body: dict[str, Any], request: dict[str, Any], checks: CascadeChecks) -> str | None:
    """The first failed check's name (``None``: the answer is acceptable)."""
    text, tools = answer_text(body)
    if tools:
        return None
    if checks.non_empty and not text.strip():
        return "empty"
    if checks.no_refusal and _REFUSAL.search(text):
        return "refusal"
    fmt = request.get("response_format")
    if checks.valid_json and isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        try:
            value = json.loads(_strip_fence(text))
        except ValueError:
            return "invalid_json"
        if not isinstance(value, dict):
            return "invalid_json"
        schema = (fmt.get("json_schema") or {}).get("schema") or {}
        missing = [key for key in schema.get("required", ()) if key not in value]
        if missing:
            return "schema"
    if checks.min_mean_logprob is not None:
        logprobs = ((body.get("choices") or [{}])[0].get("logprobs") or {}).get("content") or []
        values = [t.get("logprob") for t in logprobs if isinstance(t, dict) and isinstance(t.get("logprob"), (int, float))]
        if values and sum(values) / len(values) < checks.min_mean_logprob:
            return "low_confidence"
    return None


def _strip_fence(text: str) -> str:
    text = text.strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
        text = text.rsplit("```", 1)[0]
    return text


def judge_messages(call: Call, answer: str) -> list[dict[str, Any]]:
    """The judge's prompt for ``answer`` to the call's last question."""
    from tokenomy.routing.prompt import last_user_text

    return [{"role": "user", "content": JUDGE_PROMPT.format(question=last_user_text(call.body), answer=answer)}]


def judge_prompt_tokens(call: Call, judge: str) -> int:
    """Prompt tokens of one judge call, without the answer it grades (at most the call's output cap)."""
    from tokenomy.tokens.counting import count_messages

    return count_messages(judge_messages(call, ""), judge) + _ANSWER_BOUNDARY_TOKENS


async def _judge(stage: ResilientExecuteStage, call: Call, judge: str, answer: str) -> bool:
    """Ask the judge model; its cost goes into the call's trace as a ``judge`` item."""
    body = {
        "model": judge,
        "messages": judge_messages(call, answer),
        "max_tokens": JUDGE_MAX_TOKENS,
        "temperature": 0,
    }
    sub = Call(kind="chat", body=body, model_asked=judge, trace=call.trace, request_id=call.request_id)
    before = len(call.trace.items)
    try:
        reply = await stage.serve(sub, stage.registry.resolve(judge).targets)
    except GatewayError:
        return True  # a broken judge must not block answers: accept
    finally:
        for item in call.trace.items[before:]:
            if item.step == "generation":
                item.step = "judge"
    assert isinstance(reply, Completion)
    verdict, _ = answer_text(reply.body)
    return verdict.strip().upper().startswith("YES")


async def run_cascade(stage: ResilientExecuteStage, call: Call, plan: Any) -> Reply:
    settings = plan.settings
    checks: CascadeChecks = settings.checks
    if checks.min_mean_logprob is not None and "logprobs" not in call.body:
        call.body = {**call.body, "logprobs": True}
    last_error: GatewayError | None = None
    depth = len(plan.models)
    for level, (model, chain) in enumerate(zip(plan.models, plan.chains), start=1):
        final = level == depth
        had_baseline = call.trace.baseline_usd is not None
        try:
            reply = await stage.serve(call, chain)
        except GatewayError as err:
            last_error = err
            if final or classify(err) == "client":
                raise
            continue
        assert isinstance(reply, Completion)
        if final:
            _note(call, f"accepted {model} (depth {level}, last)")
            return reply
        verdict = static_check(reply.body, call.body, checks)
        if verdict is None and checks.judge_model:
            text, _ = answer_text(reply.body)
            if not await _judge(stage, call, checks.judge_model, text):
                verdict = "judge"
        if verdict is None:
            _note(call, f"accepted {model} (depth {level})")
            return reply
        item = next(i for i in reversed(call.trace.items) if i.step == "generation" and i.model == model)
        item.step, item.outcome = "cascade", f"rejected:{verdict}"
        if not had_baseline:
            call.trace.baseline_usd = None  # the baseline is priced on the answer finally given
        spent_ms = (time.perf_counter() - call.started_perf) * 1000.0
        if settings.latency_budget_ms is not None and spent_ms >= settings.latency_budget_ms:
            # keep the (rejected) answer rather than exceed the budget; it is charged as the answer
            item.step, item.outcome = "generation", f"budget_spent:{verdict}"
            if call.trace.baseline_usd is None and call.baseline_price is not None:
                from tokenomy.pricing.cost import cost_usd

                call.trace.baseline_usd = cost_usd(call.baseline_price, call.trace.baseline_usage(item.usage))
            _note(call, f"latency budget spent at {model} (depth {level}, {verdict})")
            return reply
    assert last_error is not None
    raise last_error


def _note(call: Call, text: str) -> None:
    call.route = describe(f"{call.route}; {text}" if call.route else text)
