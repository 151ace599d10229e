"""The job queue's contract: one small abstract class.

A queue carries job ids, not jobs: the job itself (request, status, result) is in
the ``JobStore``, which every replica reads. Delivery is **at least once**:

- ``receive`` hands a message to one consumer and hides it from the others for
  ``visibility_timeout_s``. A consumer that dies (kill -9, lost host) never acks,
  so the message becomes visible again and another consumer gets it.
- ``extend`` pushes the deadline back while a long job runs (heartbeat).
- ``ack`` removes it for good; ``retry`` puts it back after a delay;
  ``dead_letter`` parks it with a reason for an operator to look at.

So a job may run more than once, and exactly-once *effects* are the worker's job:
it records the outcome with a conditional update, and the ledger ignores a second
row with the same request id (never charged twice).

Two implementations side by side (``make_queue`` picks one from settings):
``SQLQueue`` (the jobs database: SQLite embedded, or PostgreSQL) and
``RedisStreamQueue`` (Redis Streams consumer groups, shared by any number of
gateways and ``tokenomy worker`` processes).

Usage::

    queue = make_queue(settings.jobs, engine)
    await queue.start()
    await queue.enqueue("job_123", "async")
    for delivery in await queue.receive("worker-1", max_messages=8, wait_s=1.0):
        ...                               # run the job
        await queue.ack(delivery)
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

#: Traffic classes a queue serves, most urgent first (receive prefers earlier ones).
QUEUE_CLASSES: tuple[str, ...] = ("async", "batch")


@dataclass(slots=True, frozen=True)
class Delivery:
    """One message handed to one consumer.

    ``attempt`` counts deliveries of this message (1 on the first); ``receipt``
    is what ``ack``/``extend``/``retry`` need to find it again.
    """

    job_id: str
    traffic_class: str
    attempt: int
    receipt: str


@dataclass(slots=True, frozen=True)
class DeadLetter:
    job_id: str
    traffic_class: str
    reason: str


class QueueError(Exception):
    """The queue's backing store failed."""


class JobQueue(abc.ABC):
    """A durable, at-least-once queue of job ids with a visibility timeout."""

    visibility_timeout_s: float

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect; create streams/groups or tables as needed."""

    @abc.abstractmethod
    async def enqueue(self, job_id: str, traffic_class: str = "async", *, delay_s: float = 0.0) -> None:
        """Add a message; it becomes visible after ``delay_s``."""

    @abc.abstractmethod
    async def receive(self, consumer: str, max_messages: int = 1, wait_s: float = 0.0) -> list[Delivery]:
        """Up to ``max_messages`` visible messages, waiting up to ``wait_s`` for the first.

        Messages whose consumer did not ack within the visibility timeout are
        handed out again here (with ``attempt`` increased).
        """

    @abc.abstractmethod
    async def extend(self, delivery: Delivery) -> bool:
        """Restart the visibility timeout; ``False`` if the message is no longer ours."""

    @abc.abstractmethod
    async def ack(self, delivery: Delivery) -> None:
        """Done with the message: remove it."""

    @abc.abstractmethod
    async def retry(self, delivery: Delivery, delay_s: float) -> None:
        """Remove the message and add it again, visible after ``delay_s``."""

    @abc.abstractmethod
    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Remove the message and park it in the dead-letter list."""

    @abc.abstractmethod
    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The parked messages, oldest first."""

    @abc.abstractmethod
    async def depth(self) -> int:
        """Messages waiting or in flight (not dead)."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release connections."""
