"""Keeping a node in the network: joining, announcing, repairing, leaving politely.

A node's content is only findable while its provider records live in the DHT,
and only durable while enough holders keep copies; this is the room that runs
those chores on timers, and the polite goodbye (hand-off, withdrawal, LEAVE)
when the node stops.  Joining runs in the background so that a node answers
its control socket at once; operations that need the network wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any

from dhtshare.config import Config
from dhtshare.core.bitfield import bitfield_from_indices
from dhtshare.core.ids import short
from dhtshare.core.providers import MAX_DHT_BITFIELD, Announcement
from dhtshare.core.stats import Stats
from dhtshare.disk.datadir import DataDir
from dhtshare.disk.intake import sweep_empty
from dhtshare.disk.store import ContentStore
from dhtshare.errors import DhtshareError, NotJoined
from dhtshare.net.dht.client import Dht, require_contacts
from dhtshare.transfer.replication import Replicator

log = logging.getLogger(__name__)

ANNOUNCE_CONCURRENCY = 8
WITHDRAW_TIMEOUT = 3.0

Emit = Callable[[str, dict[str, Any]], None]
Spawn = Callable[[Coroutine[Any, Any, Any]], "asyncio.Task[Any]"]


class Upkeep:
    """The background chores of one node, and its membership state."""

    def __init__(
        self,
        config: Config,
        data: DataDir,
        store: ContentStore,
        dht: Dht,
        replicator: Replicator,
        port: int,
        spawn: Spawn,
        stats: Stats | None = None,
    ) -> None:
        #: Repair copies made and copies still short (the node's counters).
        self.stats = stats if stats is not None else Stats()
        self.config = config
        self.data = data
        self.store = store
        self.dht = dht
        self.replicator = replicator
        self.port = port
        self._spawn = spawn
        self._announced: set[bytes] = set()
        #: Set once joining is over, successfully or not (``join_error`` says).
        self.joined = asyncio.Event()
        self.join_error: DhtshareError | None = None
        #: Set when the node gives up on its own (it could not join).
        self.gave_up = asyncio.Event()

    @property
    def state(self) -> str:
        if not self.joined.is_set():
            return "joining"
        return "offline" if self.join_error is not None else "joined"

    # -- joining -------------------------------------------------------------------------
    async def join_then_serve(self) -> None:
        """Join, then start announcing, refreshing and repairing."""
        try:
            await self._join()
        except DhtshareError as err:
            self.join_error = err
            self.gave_up.set()
            return
        except asyncio.CancelledError:
            # Stopped while joining: never counted as joined (no goodbyes owed).
            self.join_error = NotJoined("the node stopped before it had joined")
            raise
        except Exception as err:
            # A bug: never pretend to be joined; the traceback goes to the log.
            self.join_error = DhtshareError(f"joining the network failed: {err!r}")
            self.gave_up.set()
            raise
        finally:
            self.joined.set()
        log.info("joined the network: %d DHT contacts", len(self.dht.contacts()))
        # Saved now, not only at a clean exit or the first maintenance round: a node
        # that crashes before then must still rejoin when its --peer nodes are gone.
        self.data.save_contacts(self.dht.contacts())
        self._spawn(self.announce_all())
        self._spawn(self._maintenance())
        self._spawn(self._repair_loop())

    async def _join(self) -> None:
        """Join through ``--peer`` nodes and the contacts saved last time, together.

        A long-running node keeps trying for ``join_timeout`` seconds (peers
        started at the same moment, as in a compose cluster, may not listen
        yet); a short-lived one gives up after one round.
        """
        peers = list(self.config.peers)
        saved = [c for c in self.data.saved_contacts() if c not in peers]
        deadline = time.monotonic() + self.config.join_timeout
        delay = 0.5
        while True:
            answered = await self.dht.bootstrap(peers + saved)
            if answered or not peers or time.monotonic() + delay > deadline:
                break
            log.warning("no peer answered yet; retrying in %.1f s", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        if peers:
            require_contacts(answered, peers)

    async def wait_joined(self, emit: Emit | None = None) -> None:
        """Return once joined; wait (bounded) while joining; raise if the join failed."""
        if not self.joined.is_set():
            if emit is not None:
                emit("progress", {"stage": "joining"})
            try:
                async with asyncio.timeout(self.config.join_wait):
                    await self.joined.wait()
            except TimeoutError:
                raise NotJoined(
                    f"this node has not joined the network after {self.config.join_wait:.0f} s: "
                    "none of its peers has answered yet (is --peer right, and is that node up?)"
                ) from None
        if self.join_error is not None:
            raise self.join_error

    # -- providing -----------------------------------------------------------------------
    def _announcement(self, h: bytes) -> Announcement | None:
        entry = self.store.get(h)
        if entry is None:
            return None
        bitfield = b""
        n = entry.manifest.chunk_count
        if not entry.complete and (n + 7) // 8 <= MAX_DHT_BITFIELD:
            bitfield = bitfield_from_indices(n, entry.held_indices())
        return Announcement(self.port, self.config.provider_ttl, entry.complete, bitfield,
                            self.config.advertise)

    async def announce(self, h: bytes) -> int:
        """Tell the DHT we provide ``h`` (once joined); returns how many nodes stored it."""
        await self.joined.wait()
        ann = self._announcement(h)
        if ann is None or self.join_error is not None:
            return 0
        self._announced.add(h)
        return await self.dht.announce(h, ann)

    async def announce_all(self) -> None:
        sem = asyncio.Semaphore(ANNOUNCE_CONCURRENCY)

        async def one(h: bytes) -> None:
            async with sem:
                await self.announce(h)

        await asyncio.gather(*(one(h) for h in list(self.store.entries)))

    async def withdraw(self, h: bytes) -> None:
        """Stop providing ``h``: remove our records (bounded in time)."""
        self._announced.discard(h)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(WITHDRAW_TIMEOUT):
                await self.dht.withdraw(h)

    # -- timers --------------------------------------------------------------------------
    async def _maintenance(self) -> None:
        interval = self.config.reannounce_interval
        while True:
            await asyncio.sleep(interval)
            self.data.save_contacts(self.dht.contacts())
            dropped = sweep_empty(self.store)  # offers others never filled
            if dropped:
                log.info("dropped %d replicas agreed to but never filled", dropped)
            self.store.save()
            await self.dht.refresh(self_lookup=True)
            await self.announce_all()

    async def _repair_loop(self) -> None:
        """Every ``repair_interval`` (with jitter), check each replicated file."""
        interval = self.config.repair_interval
        while True:
            await asyncio.sleep(interval * random.uniform(0.8, 1.2))
            for h, entry in list(self.store.entries.items()):
                if entry.replicas <= 0 or self.store.entries.get(h) is not entry:
                    continue
                if not (entry.durable or entry.complete):
                    continue
                try:
                    placement = await self.replicator.repair(entry)
                except DhtshareError as err:
                    log.warning("repair of %s failed: %s", short(h), err)
                    continue
                self.stats.repair_copies += sum(placement.placed.values())
                self.stats.deficits[h] = sum(placement.short.values())

    # -- leaving -------------------------------------------------------------------------
    async def leave(self, polite: bool) -> bool:
        """On the way out: hand off, withdraw, save contacts, tell our contacts (bounded).

        Returns whether it said goodbye (only a joined node does), so the
        peer links can too.
        """
        polite = polite and self.state == "joined"
        if polite:
            await self._hand_off_all()
            if self._announced:
                with contextlib.suppress(TimeoutError, Exception):
                    async with asyncio.timeout(WITHDRAW_TIMEOUT):
                        await asyncio.gather(*(self.dht.withdraw(h)
                                               for h in list(self._announced)))
        self.data.save_contacts(self.dht.contacts())
        if polite:
            # The original projects' leave message: our contacts drop us now
            # instead of handing us out until each of them times out on us.
            with contextlib.suppress(Exception):
                told = await self.dht.leave()
                log.info("told %d DHT contacts that we are leaving", told)
        return polite

    async def _hand_off_all(self) -> None:
        """Copy chunks we are among the last N holders of to others (bounded)."""
        durable = [e for e in self.store.entries.values() if e.durable and e.replicas > 0]
        if not durable:
            return
        try:
            async with asyncio.timeout(self.config.handoff_timeout):
                for entry in durable:
                    await self.replicator.hand_off(entry)
        except TimeoutError:
            log.warning("hand-off did not finish within %.0f s", self.config.handoff_timeout)
        except DhtshareError as err:
            log.warning("hand-off failed: %s", err)


__all__ = ["Upkeep"]
