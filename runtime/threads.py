"""Threads that run blocking work for the event loop: a queue, some threads, results handed back.

The data layer's transactions run here (see :mod:`runtime.db`). It is the smallest
executor that does the job: a caller puts ``(function, future)`` on a queue, a thread
runs the function and settles the future through ``call_soon_threadsafe``. That is
half the cost per call of ``loop.run_in_executor`` with a ``ThreadPoolExecutor``
(no ``concurrent.futures`` future to chain, no idle-thread bookkeeping), and a
transaction on SQLite pays it once per step.

>>> writer = Threads("steward-db-writer", 1)
>>> rows = await writer.submit(read_rows, session)
>>> await writer.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
_STOP = None


class Threads:
    """``size`` threads named ``name-N`` taking work from one queue, first come first served.

    One thread (``size=1``) runs the work strictly one item at a time, in the order submitted.
    The threads start with the first :meth:`submit` and end with :meth:`close`."""

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self.idents: frozenset[int] = frozenset()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run ``fn(*args)`` in one of the threads; the future settles on the running loop."""
        if not self._threads:
            self._start()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put((fn, args, future))
        return future

    def _start(self) -> None:
        with self._lock:
            if self._threads:
                return
            self._threads = [threading.Thread(target=self._work, name=f"{self.name}-{n}", daemon=True)
                             for n in range(self.size)]
            for thread in self._threads:
                thread.start()
            self.idents = frozenset(thread.ident for thread in self._threads if thread.ident is not None)

    def _work(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            fn, args, future = item
            try:
                result, error = fn(*args), None
            except BaseException as exc:  # handed to the awaiting caller, whatever it is
                result, error = None, exc
            with contextlib.suppress(RuntimeError):  # the loop was closed meanwhile: nobody is waiting
                future.get_loop().call_soon_threadsafe(_settle, future, result, error)
            del item, fn, args, future, result, error

    async def close(self) -> None:
        """End the threads once the work already queued is done; waits for them in another thread."""
        threads, self._threads = self._threads, []
        for _ in threads:
            self._queue.put(_STOP)  # behind everything queued so far
        if threads:
            await asyncio.to_thread(lambda: [thread.join() for thread in threads])


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled by its awaiting caller
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
