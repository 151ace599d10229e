"""CPU time of ``write_many`` of 500 chronological rows on SQLite, median of 20 batches, three ways:
the rollups' ``add`` disabled (``none``), the pair rollup disabled (``no-pair``), everything (``pair``).

    python bench/rollup_writer_overhead.py
"""
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))
from conftest import ledger_row  # noqa: E402
from observe.test_dashboard_queries import seeded_rows  # noqa: E402

from tokenomy.store import rollup  # noqa: E402
from tokenomy.store.sql_ledger import SQLLedger  # noqa: E402


async def run(mode):
    orig_add, orig_init = rollup.RollupWriter.add, rollup.RollupWriter.__init__
    if mode == "none":
        async def add(self, conn, rows): return None
        rollup.RollupWriter.add = add
    elif mode == "no-pair":
        def init(self, *a):
            orig_init(self, *a); self._pair_index = []
        rollup.RollupWriter.__init__ = init
    import tokenomy.store.sql_ledger as sl
    sl._INSERTS.clear()
    d = tempfile.mkdtemp()
    ledger = SQLLedger(f"sqlite:///{d}/w.db"); await ledger.start()
    rows = sorted(seeded_rows(ledger_row, n=500 * 21, seed=3), key=lambda r: r.created_at)
    times = []
    for i in range(21):
        batch = rows[i * 500:(i + 1) * 500]
        t0 = time.process_time(); await ledger.write_many(batch); times.append(time.process_time() - t0)
    await ledger.aclose()
    rollup.RollupWriter.add, rollup.RollupWriter.__init__ = orig_add, orig_init
    return statistics.median(times[1:]) * 1000

async def main():
    for rnd in range(2):
        for mode in ("none", "no-pair", "pair"):
            print(rnd, mode, f"{await run(mode):.1f} ms CPU per write_many(500)", flush=True)
asyncio.run(main())
