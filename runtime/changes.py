"""Run changes: clients that wait for a run to move are told when it did, instead of polling.

Every change to a run (its status, a step) is written together with an audit event of the run,
so the audit writer knows which runs a transaction changed (the one exception, a worker taking a
queued run up, is told with the execution's first commit, its ``run.started``). When that
transaction commits:

- in this process, :class:`RunChanges` wakes whoever watches those runs (``Database.on_commit``);
- on PostgreSQL, the same transaction sends ``NOTIFY steward_run_changes`` naming the runs (sent
  only if it commits), and every API process listening wakes its watchers: a change made by a
  worker in another process reaches a client waiting on any server.

A watcher also looks again every ``fallback_seconds`` on its own, so a missed notification (a
listening connection that dropped, another process writing the same SQLite file) delays an
answer by at most that long, never loses it.

>>> with changes.watch(run_id) as changed:   # watching before the first read: no change is missed
...     run = await read(run_id)
...     while not done(run):
...         await changes.wait(changed, timeout=5)
...         changed.clear()                   # then read: a change committed after this sets it again
...         run = await read(run_id)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Iterator

log = logging.getLogger("steward.changes")

CHANNEL = "steward_run_changes"
EVERY_RUN = "*"  # a payload too long for NOTIFY: every watcher looks again
MAX_PAYLOAD = 7000  # NOTIFY payloads are limited to 8000 bytes


def payload(run_ids: Iterable[str]) -> str:
    """The NOTIFY payload naming ``run_ids`` (comma-separated, or :data:`EVERY_RUN` when too long)."""
    text = ",".join(run_ids)
    return text if len(text) <= MAX_PAYLOAD else EVERY_RUN


class RunChanges:
    """Who watches which run, in this process; :meth:`changed` may be called from any thread."""

    def __init__(self, *, fallback_seconds: float = 1.0) -> None:
        self.fallback_seconds = fallback_seconds
        self._watchers: dict[str, set[asyncio.Event]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: asyncio.Task | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    @contextlib.contextmanager
    def watch(self, run_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever ``run_id`` changes while the block runs (clear it before each read)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        event = asyncio.Event()
        self._watchers.setdefault(run_id, set()).add(event)
        try:
            yield event
        finally:
            watchers = self._watchers.get(run_id)
            if watchers is not None:
                watchers.discard(event)
                if not watchers:
                    del self._watchers[run_id]

    async def wait(self, event: asyncio.Event, *, timeout: float) -> bool:
        """Until ``event`` is set or ``timeout`` (at most :attr:`fallback_seconds`) passes; True when set."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(event.wait(), max(0.0, min(timeout, self.fallback_seconds)))
        return event.is_set()

    def watching(self) -> int:
        return sum(len(w) for w in self._watchers.values())

    def changed(self, run_ids: Iterable[str]) -> None:
        """``run_ids`` changed (a transaction naming them committed); from any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        # Only runs someone watches wake the loop (a dict read from another thread: a watcher that
        # registers after this look reads the run after the commit, so it misses nothing).
        ids = [run_id for run_id in run_ids if run_id in self._watchers or run_id == EVERY_RUN]
        if not ids:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake(ids)
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
                loop.call_soon_threadsafe(self._wake, ids)

    def _wake(self, run_ids: list[str]) -> None:
        if EVERY_RUN in run_ids:
            targets: Iterable[set[asyncio.Event]] = list(self._watchers.values())
        else:
            targets = [self._watchers[r] for r in run_ids if r in self._watchers]
        for watchers in targets:
            for event in watchers:
                event.set()

    def start_listening(self, libpq_url: str) -> None:
        """PostgreSQL: wake watchers for changes committed by any process (``LISTEN``; reconnects)."""
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen(libpq_url))

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
            self._listener = None

    async def _listen(self, libpq_url: str) -> None:
        import psycopg

        while True:
            try:
                async with await psycopg.AsyncConnection.connect(libpq_url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self._wake([EVERY_RUN])  # changes made while not listening
                    async for note in conn.notifies():
                        self._wake(note.payload.split(","))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - watchers fall back to looking every second
                log.warning("listening for run changes failed (%s); watchers look every %.1fs until it "
                            "reconnects", type(exc).__name__, self.fallback_seconds)
                await asyncio.sleep(self.fallback_seconds)
