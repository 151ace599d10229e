"""The job store keeps who owns files, batches and jobs, and lists by owner: SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tokenomy.budgets.batch import BatchReservation, HeldReservation
from tokenomy.budgets.counters import Charge
from tokenomy.jobs.owner import ANY_OWNER, Caller
from tokenomy.jobs.store import Job, JobStore
from tokenomy.pipeline.call import Identity


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str | None]:
    """(URL, PostgreSQL schema); sync so it can pull the async ``pg_schema`` fixture."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}", None
    from tests.conftest import PG_URL

    return PG_URL, request.getfixturevalue("pg_schema")


@pytest.fixture
async def store(database: tuple[str, str | None]) -> AsyncIterator[JobStore]:
    url, schema = database
    jobs = JobStore(url, schema=schema)
    await jobs.start()
    yield jobs
    await jobs.aclose()


def file_record(file_id: str, owner: str | None, created_at: float) -> dict[str, Any]:
    return {"id": file_id, "filename": "in.jsonl", "purpose": "batch", "bytes": 1, "created_at": created_at,
            "path": f"/tmp/{file_id}", "status": "processed", "owner": owner}  # fmt: skip


def batch_record(batch_id: str, owner: str | None, created_at: float) -> dict[str, Any]:
    return {"id": batch_id, "status": "validating", "endpoint": "/v1/chat/completions", "input_file_id": "f",
            "completion_window": "24h", "created_at": created_at, "total": 0, "completed": 0, "failed": 0,
            "deduplicated": 0, "headers": {}, "owner": owner}  # fmt: skip


async def test_listings_show_each_owner_its_own_rows(store: JobStore) -> None:
    for n, owner in enumerate(["key_a", "key_b", None, "key_a"]):
        await store.create_file(file_record(f"file-{n}", owner, float(n)))
        await store.create_batch(batch_record(f"batch_{n}", owner, float(n)))
    assert [f["id"] for f in await store.list_files(owner="key_a")] == ["file-3", "file-0"]
    assert [f["id"] for f in await store.list_files(owner=None)] == ["file-2"]  # no key: unowned rows only
    assert len(await store.list_files(owner=ANY_OWNER)) == 4
    assert [b["id"] for b in await store.list_batches(owner="key_b")] == ["batch_1"]
    assert [b["id"] for b in await store.list_batches(after="batch_3", owner="key_a")] == ["batch_0"]
    assert len(await store.list_batches(limit=10)) == 4


async def test_jobs_keep_their_owner_and_batches_their_reservation(store: JobStore) -> None:
    await store.create_job(Job(id="job_1", kind="chat", body={"model": "m"}, owner="key_a"))
    job = await store.get_job("job_1")
    assert job is not None and job.owner == "key_a"
    a, b = Caller(Identity(key_id="key_a")), Caller(Identity(key_id="key_b"))
    assert a.may_see(job.owner) and not b.may_see(job.owner) and Caller(master=True).may_see(job.owner)
    assert not a.may_see(None) and Caller().may_see(None)  # a key does not see rows made without one

    await store.create_batch(batch_record("batch_r", "key_a", 1.0))
    charge = Charge("b:g:*:2026-11", 300, 1000, ("b:g:*:2026-11",), 60)
    reservation = BatchReservation(12.5, 2, [HeldReservation("rsv_1", (charge,)), HeldReservation("rsv_2", (charge,))],
                                   [("g", "*")], (429, {"error": {"code": "budget_exceeded"}}))  # fmt: skip
    await store.update_batch("batch_r", reservation=reservation.as_json())
    stored = await store.get_batch("batch_r")
    assert stored is not None and BatchReservation.from_json(stored["reservation"]) == reservation
