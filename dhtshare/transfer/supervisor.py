"""Keeping a download's peer workers running until it is done, or failing when stuck.

One worker per provider, up to ``max_fetch_peers``.  Other downloaders
announce themselves after their first chunk, so providers are looked up again
soon, then less and less often; a worker whose peer dropped out is replaced
when a lookup names the peer again.  When chunks have no provider left after
a few lookups, the download fails saying how many (the verified part stays).

Every worker runs in the supervisor's task group: :meth:`Supervisor.run`
returns only after each one ended (and each waits for its own writes).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from dhtshare.core.providers import ProviderRecord
from dhtshare.errors import NoProviders
from dhtshare.transfer.manifest_source import ProviderSource
from dhtshare.transfer.services import Address
from dhtshare.transfer.state import Download
from dhtshare.transfer.tasks import task_group
from dhtshare.transfer.worker import run_worker

#: How long to keep looking for providers of missing chunks before giving up.
STALL_TIMEOUT = 8.0
LOOKUP_INTERVAL = 2.0
#: The first look for more providers, once the download is under way.
FIRST_RELOOKUP = 0.2
#: Fresh provider lookups while chunks have no provider, before giving up.
MAX_LOOKUPS = 4


class Supervisor:
    """The peer workers of one download."""

    def __init__(self, dl: Download, source: ProviderSource) -> None:
        self.dl = dl
        self.source = source
        self.workers: dict[Address, asyncio.Task[None]] = {}
        self._tg: asyncio.TaskGroup | None = None

    async def run(self) -> None:
        """Until the file is complete or the download failed (:class:`NoProviders`, fatal)."""
        async with task_group() as tg:
            self._tg = tg
            self.source.on_new = self.spawn
            try:
                await self._watch()
            finally:
                # No new workers from here on; the group awaits the ones running.
                self.source.on_new = None
                self._tg = None
                for task in self.workers.values():
                    task.cancel()

    def _alive(self) -> list[Address]:
        return [a for a, t in self.workers.items() if not t.done()]

    def spawn(self, records: list[ProviderRecord]) -> None:
        """A worker for each provider that has none (up to the limit), the best first.

        Every provider a lookup names gets a worker unless it has one: a worker
        that ended (a dropped link) is started again this way.
        """
        tg = self._tg
        if tg is None:
            return
        dl = self.dl
        for rec in self.source.order(records):
            if len(self._alive()) >= dl.services.config.max_fetch_peers:
                break
            addr = rec.address
            task = self.workers.get(addr)
            if addr in dl.book.banned or (task is not None and not task.done()):
                continue
            dl.wakeups[addr] = asyncio.Event()
            self.workers[addr] = tg.create_task(run_worker(dl, addr, rec.node_id))

    async def _watch(self) -> None:
        dl, source = self.dl, self.source
        picker = dl.picker
        lookups = 0
        last_progress = time.monotonic()
        #: When a worker last ran: a peer dropped after stalling has its own grace to return.
        last_busy = last_progress
        last_done = -1
        self.spawn(list(dl.book.known.values()))
        if not source.looked:  # the manifest was local: nobody looked yet
            source.start_lookup()
        dl.starting = set(self._alive())
        # Other downloaders announce themselves after their first chunk: look
        # again soon, then less and less often, so they trade with us early.
        discover = FIRST_RELOOKUP
        next_lookup = time.monotonic() + discover
        while not picker.complete and dl.fatal is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(0.5, max(0.01, next_lookup - time.monotonic()))):
                    await dl.finished.wait()
            if picker.complete or dl.fatal is not None:
                break
            now = time.monotonic()
            if dl.done_bytes != last_done:
                last_done, last_progress = dl.done_bytes, now
            alive = self._alive()
            if alive:
                last_busy = now
            if len(alive) < dl.services.config.max_fetch_peers:
                # Every provider learned gets its turn, not only the first named.
                self.spawn([r for a, r in dl.book.known.items() if a not in self.workers])
                alive = self._alive()
            stuck = not alive or (
                picker.unavailable() > 0 and now - last_progress > LOOKUP_INTERVAL
            )
            if (stuck or len(alive) < dl.services.config.max_fetch_peers) and now >= next_lookup:
                if stuck:
                    lookups += 1
                    next_lookup = now + LOOKUP_INTERVAL
                else:
                    discover = min(discover * 2, LOOKUP_INTERVAL)
                    next_lookup = now + discover
                source.start_lookup()
                continue
            gave_up = stuck and lookups >= MAX_LOOKUPS
            # Idle since the last worker ended, not since the last chunk: the one
            # provider dropped for a stall gets a fresh link before the fetch gives up.
            if gave_up or (not alive and now - max(last_progress, last_busy) > STALL_TIMEOUT):
                raise NoProviders(
                    f"{picker.missing} of {dl.manifest.chunk_count} chunks could not be "
                    f"fetched: no reachable peer has them{dl.kept()}"
                )
