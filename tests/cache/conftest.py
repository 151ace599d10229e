"""Fixtures for the shared cache backends: real Redis (127.0.0.1:6379) and pgvector (``pgserver``)."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REDIS_URL = os.environ.get("TOKENOMY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
_REDIS_HINT = (
    "start it with: redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save '' --appendonly no"
)


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A unique key prefix on the real Redis; its keys are deleted afterwards."""
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            pass
    except OSError as exc:
        pytest.fail(f"Redis at {REDIS_URL} is not reachable ({exc}); {_REDIS_HINT}")
    prefix = f"test:{uuid.uuid4().hex[:12]}"
    yield prefix
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="session")
def pgvector_url() -> Iterator[str]:
    """A throwaway PostgreSQL 16 with pgvector (from the ``pgserver`` package), for the session.

    Its directory is made with ``mkdtemp`` directly under the temp dir: run as root, pgserver
    runs the server as an unprivileged user, who cannot enter pytest's private temp tree.
    """
    pgserver = pytest.importorskip("pgserver")
    directory = Path(tempfile.mkdtemp(prefix="tokenomy-pgvector-"))
    server = pgserver.get_server(directory, cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(directory, ignore_errors=True)
