"""``tokenomy worker``: a gateway without HTTP, running job workers until SIGTERM/SIGINT.

Workers are the same program as the gateway (same settings, pipeline, ledger),
so they scale independently: start as many as the queue needs, on any host that
reaches the queue and the jobs database.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from tokenomy.config import Settings

log = logging.getLogger(__name__)


async def run_workers(settings: Settings, count: int) -> None:
    from tokenomy.app import build_gateway

    gateway = build_gateway(settings)
    await gateway.start(run_workers=False)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    gateway.start_workers(count)
    log.info("%d worker(s) started", count)
    try:
        await stop.wait()
    finally:
        log.info("stopping: finishing the jobs in hand")
        await gateway.stop()
