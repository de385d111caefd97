"""Drives one run in a process of its own and dies (``os._exit``) right after LangGraph has saved the
``k``-th batch of a task's pending writes, before the superstep's next checkpoint.

    python -m tests.kill_driver RUN_ID K      (settings from STEWARD_* variables)

Exits 0 when the drive ended before the ``k``-th batch, 137 when it died as asked.
"""

from __future__ import annotations

import asyncio
import os
import sys

from runtime.service import open_steward
from runtime.settings import Settings


async def main(run_id: str, k: int) -> None:
    async with open_steward(Settings()) as steward:
        saver = steward.executor.checkpointer
        real = saver.aput_writes
        saved = 0

        async def dying(*args, **kwargs):
            nonlocal saved
            await real(*args, **kwargs)
            saved += 1
            if saved == k:
                os._exit(137)

        saver.aput_writes = dying  # this process only; the test's own Steward uses the real saver
        await steward.executor.drive(run_id)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
