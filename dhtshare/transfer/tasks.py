"""Ownership of the work a fetch starts: task groups, and threads waited for to the end.

Rule: whatever a fetch starts is finished before the fetch returns.  Tasks
belong to an :func:`task_group`; work in a thread is awaited with
:func:`in_thread` or :func:`wait_done`, which keep waiting when the waiting
task is cancelled, because cancelling a task does not stop the thread it
waits for: a write left running could land after its file was closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


@contextlib.asynccontextmanager
async def task_group() -> AsyncIterator[asyncio.TaskGroup]:
    """An :class:`asyncio.TaskGroup` whose single failure comes out as itself.

    Callers catch :class:`~dhtshare.errors.DhtshareError`, not groups of them;
    several failures at once (a bug among them, surely) stay a group.
    """
    try:
        async with asyncio.TaskGroup() as tg:
            yield tg
    except BaseExceptionGroup as group:
        if len(group.exceptions) != 1 or isinstance(group.exceptions[0], BaseExceptionGroup):
            raise
        error = group.exceptions[0]
        context = error.__context__
        try:
            raise error  # its own traceback and cause, as if no group had been there
        finally:
            error.__context__ = context


async def wait_done(futures: Iterable[asyncio.Future[Any]]) -> None:
    """Wait until every one of ``futures`` is done, even if cancelled meanwhile.

    A cancellation that arrives while waiting is re-raised once all are done:
    the caller stops as asked, only not before its threads did.
    """
    pending = {f for f in futures if not f.done()}
    cancelled: asyncio.CancelledError | None = None
    while pending:
        try:
            await asyncio.wait(pending)
        except asyncio.CancelledError as err:
            cancelled = err
        pending = {f for f in pending if not f.done()}
    if cancelled is not None:
        raise cancelled


async def in_thread(
    fn: Callable[[], T],
    *,
    interrupt: threading.Event | None = None,
    abandon: Callable[[T], None] | None = None,
) -> T:
    """``fn()`` in a worker thread, awaited to its end whatever happens.

    If the caller is cancelled meanwhile, ``interrupt`` is set (a long job can
    check it and stop early), the thread is still waited for, its result is
    handed to ``abandon`` (to close what it opened) and the cancellation is
    re-raised.
    """
    fut = asyncio.get_running_loop().run_in_executor(None, fn)
    try:
        await asyncio.shield(fut)
    except asyncio.CancelledError:
        if interrupt is not None:
            interrupt.set()
        try:
            await wait_done([fut])
        finally:  # done now, even if cancelled again
            if not fut.cancelled() and fut.exception() is None and abandon is not None:
                abandon(fut.result())
        raise
    return fut.result()
