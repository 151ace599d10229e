"""Batch files in OpenAI's formats: the ``batch`` object, input validation, output lines.

Input files are read line by line (never whole); validation follows OpenAI's
rules and also finds duplicate request bodies (a 16-byte digest per distinct
body), so a local run computes each of them once.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from tokenomy.jobs.worker import JobWorker

#: batch endpoint → Call kind
BATCH_ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/embeddings": "embeddings"}
MAX_REPORTED_ERRORS = 100


def batch_object(record: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's ``batch`` object (plus ``request_counts.deduplicated`` and the cost)."""

    def ts(name: str) -> int | None:
        value = record.get(name)
        return int(value) if value is not None else None

    errors = record.get("errors")
    return {
        "id": record["id"],
        "object": "batch",
        "endpoint": record["endpoint"],
        "errors": {"object": "list", "data": errors} if errors else None,
        "input_file_id": record["input_file_id"],
        "completion_window": record["completion_window"],
        "status": record["status"],
        "output_file_id": record.get("output_file_id"),
        "error_file_id": record.get("error_file_id"),
        "created_at": ts("created_at"),
        "in_progress_at": ts("in_progress_at"),
        "expires_at": ts("expires_at"),
        "finalizing_at": ts("finalizing_at"),
        "completed_at": ts("completed_at"),
        "failed_at": ts("failed_at"),
        "expired_at": None,
        "cancelling_at": ts("cancelling_at"),
        "cancelled_at": ts("cancelled_at"),
        "request_counts": {
            "total": record["total"],
            "completed": record["completed"],
            "failed": record["failed"],
            "deduplicated": record.get("deduplicated", 0),
        },
        "metadata": record.get("metadata"),
        "tokenomy": {"execution": record.get("execution"), "cost_usd": record.get("cost_usd")},
    }


@dataclass
class Validation:
    """What the validating pass learned about an input file."""

    total: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    models: set[str] = field(default_factory=set)
    #: digest → number of lines with that request body, for bodies seen more than once
    duplicates: dict[bytes, int] = field(default_factory=dict)


def digest(body: dict[str, Any]) -> bytes:
    return hashlib.blake2b(orjson.dumps(body, option=orjson.OPT_SORT_KEYS), digest_size=16).digest()


def iter_lines(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """``(line number, parsed object or None, error)`` for each non-blank line, streamed."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                item = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                yield number, None, f"line {number} is not valid JSON: {exc}"
                continue
            if not isinstance(item, dict):
                yield number, None, f"line {number} is not a JSON object"
                continue
            yield number, item, None


def validate_file(path: Path, endpoint: str, max_requests: int) -> Validation:
    """OpenAI's checks: each line has a unique ``custom_id``, ``method`` POST, the batch's ``url``, a body with a model."""
    result = Validation()
    seen_ids: set[str] = set()
    counts: dict[bytes, int] = {}

    def error(number: int, message: str, code: str = "invalid_request", param: str | None = None) -> None:
        if len(result.errors) < MAX_REPORTED_ERRORS:
            result.errors.append({"code": code, "message": message, "param": param, "line": number})

    for number, item, problem in iter_lines(path):
        result.total += 1
        if item is None:
            error(number, problem or "invalid line", "invalid_json_line")
            continue
        custom_id = item.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            error(number, "custom_id must be a non-empty string", param="custom_id")
        elif custom_id in seen_ids:
            error(number, f"custom_id {custom_id!r} is used more than once", "duplicate_custom_id", "custom_id")
        else:
            seen_ids.add(custom_id)
        if item.get("method", "POST") != "POST":
            error(number, "method must be POST", param="method")
        if item.get("url") != endpoint:
            error(number, f"url must be {endpoint!r}, the batch's endpoint", "mismatched_url", "url")
        body = item.get("body")
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            error(number, "body must be an object with a model", param="body")
            continue
        if body.get("stream"):
            error(number, "stream is not supported in batches", param="body.stream")
        result.models.add(body["model"])
        key = digest(body)
        counts[key] = counts.get(key, 0) + 1
    if result.total > max_requests:
        error(0, f"the batch has {result.total} requests; the limit is {max_requests}", "too_many_requests")
    if result.total == 0:
        error(0, "the input file has no requests", "empty_file")
    result.duplicates = {key: count for key, count in counts.items() if count > 1}
    return result


def output_line(custom_id: str, request_id: str, status: int, body: dict[str, Any]) -> bytes:
    line = {
        "id": "batch_req_" + uuid.uuid4().hex[:24],
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": request_id, "body": body},
        "error": None,
    }
    return orjson.dumps(line) + b"\n"


async def finalize(
    worker: JobWorker,
    batch_id: str,
    output_id: str,
    output_path: Path,
    error_id: str,
    error_path: Path,
    cost: float | None,
    *,
    cancelled: bool = False,
    owner: str | None = None,
) -> None:
    """Register the output and error files (``owner``'s, the batch's) and close the batch."""
    files = worker.service.files
    values: dict[str, Any] = {"cost_usd": cost}
    if output_path.exists() and output_path.stat().st_size:
        await files.register(output_id, output_path, f"{batch_id}_output.jsonl", "batch_output", owner=owner)
        values["output_file_id"] = output_id
    else:
        output_path.unlink(missing_ok=True)
    if error_path.exists() and error_path.stat().st_size:
        await files.register(error_id, error_path, f"{batch_id}_error.jsonl", "batch_output", owner=owner)
        values["error_file_id"] = error_id
    else:
        error_path.unlink(missing_ok=True)
    now = time.time()
    if cancelled:
        values.update(status="cancelled", cancelled_at=now)
    else:
        values.update(status="completed", completed_at=now)
    await worker.service.store.update_batch(batch_id, **values)
