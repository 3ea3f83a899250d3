"""Finding a manifest's providers in the DHT, and getting the verified manifest from them.

A lookup hands over providers as soon as any DHT node names them, so the
manifest is asked for, and chunks are downloaded, while the lookup is still
going on.  The manifest is asked of one provider at a time, the best first
(complete copies, then the freshest records); one slow to answer gets a
second asked beside it (a hedge).  The first manifest that matches its hash
wins; one that does not gets its sender banned for the rest of the fetch.

:class:`ProviderSource` owns its lookups and manifest requests: they run in
its task groups, and none outlives the ``async with`` that opened it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from dhtshare.core.ids import ManifestHash, short
from dhtshare.core.manifest import Manifest
from dhtshare.core.providers import ProviderRecord
from dhtshare.core.stats import Stats
from dhtshare.errors import (
    DhtshareError,
    IntegrityError,
    ManifestError,
    ManifestNotFound,
    NotFoundReply,
    PeerError,
    PeerTimeout,
    PeerUnreachable,
    RemoteProtocolError,
)
from dhtshare.transfer.services import Address, FetchServices, label
from dhtshare.transfer.tasks import task_group

log = logging.getLogger(__name__)

#: How long one provider may take to hand over a manifest before the next is asked.
MANIFEST_TIMEOUT = 10.0
#: How long a fetch keeps looking when no provider of the manifest answers.
MANIFEST_PATIENCE = 3.0
#: A manifest request unanswered this long gets a second provider asked in parallel.
MANIFEST_HEDGE = 0.25
#: Most providers asked for the manifest in one fetch (those that fail at once
#: cost nothing; those that hang cost MANIFEST_HEDGE each).
MAX_MANIFEST_ATTEMPTS = 32


@dataclass
class PeerBook:
    """What one fetch learned about peers, from its lookups and from the peers themselves."""

    #: Every provider the DHT named so far (this node and banned ones left out).
    known: dict[Address, ProviderRecord] = field(default_factory=dict)
    #: Peers that sent data failing verification: ignored for the rest of the fetch.
    banned: set[Address] = field(default_factory=set)
    banned_ids: set[bytes] = field(default_factory=set)
    #: Providers named in the DHT that could not be reached.
    unreachable: set[Address] = field(default_factory=set)
    #: The node's counters (verification failures and bans).
    stats: Stats = field(default_factory=Stats)

    def ban(self, addr: Address, node_id: bytes | None) -> None:
        self.stats.banned(addr not in self.banned)
        self.banned.add(addr)
        if node_id is not None:
            self.banned_ids.add(node_id)


class ProviderSource:
    """The providers of one manifest, as lookups name them; open with :meth:`open`."""

    def __init__(self, services: FetchServices, mh: ManifestHash, tg: asyncio.TaskGroup) -> None:
        self.s = services
        self.mh = mh
        self.book = PeerBook(stats=services.stats)
        #: Told about every provider a lookup names (the download's supervisor, once running).
        self.on_new: Callable[[list[ProviderRecord]], None] | None = None
        self._tg = tg
        self._lookup: asyncio.Task[None] | None = None
        #: Resolved when a lookup names someone or ends (a fresh one per wait).
        self._arrival: asyncio.Future[None] | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, services: FetchServices, mh: ManifestHash) -> AsyncIterator[ProviderSource]:
        """A source whose lookups are stopped and awaited when the block ends."""
        async with task_group() as tg:
            source = cls(services, mh, tg)
            try:
                yield source
            finally:
                source.on_new = None
                if source._lookup is not None:
                    source._lookup.cancel()

    # -- lookups ------------------------------------------------------------------------
    @property
    def looked(self) -> bool:
        """Whether a lookup was started (none is when the manifest was local)."""
        return self._lookup is not None

    @property
    def looking(self) -> bool:
        return self._lookup is not None and not self._lookup.done()

    def start_lookup(self) -> None:
        """Start a provider lookup, unless one is running."""
        if not self.looking:
            self._lookup = self._tg.create_task(self._look())

    async def _look(self) -> None:
        try:
            await self.s.find_providers(self.mh, self._on_records)
        except DhtshareError as err:
            log.warning("provider lookup failed: %r", err)
        except Exception:
            log.exception("provider lookup for %s failed on a bug", short(self.mh))
            raise
        finally:
            self._signal()

    def _signal(self) -> None:
        if self._arrival is not None and not self._arrival.done():
            self._arrival.set_result(None)

    def _on_records(self, records: list[ProviderRecord]) -> None:
        book = self.book
        named = []
        for r in records:
            if r.node_id == self.s.node_id or r.node_id in book.banned_ids:
                continue
            if r.address in book.banned:
                continue
            named.append(r)
            old = book.known.get(r.address)
            if old is None or (r.complete, r.ttl) > (old.complete, old.ttl):
                book.known[r.address] = r
        if not named:
            return
        self._signal()
        if self.on_new is not None:
            self.on_new(named)

    def order(self, records: list[ProviderRecord]) -> list[ProviderRecord]:
        """Best first, one host at a time; the unreachable last.

        A record's host is the address its announcement came from, so however
        many records a flooder signs with fresh keys, they name its own few
        hosts: taking each host's best record before anyone's second costs a
        fetch one try per flooding address, not one per fake.  Within a turn,
        complete copies and then the freshest records come first.  Providers
        that did not answer us, or that the DHT saw time out or leave, go
        last (slow is not gone: they are still tried, after the others), and
        so do the other records of a host that did not answer.
        """
        book = self.book
        failed_hosts = {host for host, _port in book.unreachable}

        def rank(r: ProviderRecord) -> tuple[bool, bool, bool, float]:
            gone = r.address in book.unreachable or self.s.provider_is_dead(r.address)
            return (gone, r.host in failed_hosts, not r.complete, -r.ttl)

        turns: dict[str, int] = {}
        keyed = []
        for r in sorted(records, key=rank):
            turn = turns[r.host] = turns.get(r.host, -1) + 1
            gone, host_failed, *_ = rank(r)
            keyed.append(((gone, host_failed, turn), r))
        keyed.sort(key=lambda k: k[0])  # stable: each turn keeps the order of rank
        return [r for _, r in keyed]

    # -- the manifest -------------------------------------------------------------------
    async def manifest(self) -> Manifest:
        """The verified manifest, from this node's store or from a provider."""
        local = self.s.store.get(self.mh)
        if local is not None:
            return local.manifest
        deadline = time.monotonic() + MANIFEST_PATIENCE
        tried: set[Address] = set()
        errors: list[str] = []
        delay = 0.25
        while True:
            self.start_lookup()
            manifest = await self._ask_providers(tried, errors)
            if manifest is not None:
                return manifest
            if time.monotonic() + delay > deadline or len(tried) >= MAX_MANIFEST_ATTEMPTS:
                break
            # A provider may be joining or announcing right now: look again shortly.
            await asyncio.sleep(delay)
            delay *= 2
        if not tried:
            raise ManifestNotFound(
                f"no reachable peer provides {self.mh.hex()}: check the hash, "
                "and that a node holding the file is running"
            )
        raise ManifestNotFound(
            f"could not get manifest {self.mh.hex()} from {len(tried)} provider(s): "
            + "; ".join(errors[:3])
        )

    async def _ask_providers(self, tried: set[Address], errors: list[str]) -> Manifest | None:
        """Ask providers as the lookup names them; the first verified manifest wins.

        ``None`` when the lookup is over and every provider it named failed.
        The requests still running when this returns are cancelled and awaited.
        """
        loop = asyncio.get_running_loop()
        attempts: dict[asyncio.Task[Manifest | None], ProviderRecord] = {}
        hedge_at = 0.0
        async with task_group() as tg:
            try:
                while True:
                    arrival = self._arrival = loop.create_future()
                    untried = self.order([r for a, r in self.book.known.items()
                                          if a not in tried and a not in self.book.banned])
                    now = loop.time()
                    if untried and (not attempts or now >= hedge_at) \
                            and len(tried) < MAX_MANIFEST_ATTEMPTS:
                        rec = untried[0]
                        tried.add(rec.address)
                        attempts[tg.create_task(self._attempt(rec, errors))] = rec
                        hedge_at = now + MANIFEST_HEDGE
                        continue
                    if not attempts and (not self.looking or len(tried) >= MAX_MANIFEST_ATTEMPTS):
                        return None
                    done, _ = await asyncio.wait(
                        {*attempts, arrival},
                        timeout=max(0.0, hedge_at - now) if attempts and untried else None,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    for task in [t for t in attempts if t in done]:
                        del attempts[task]
                        manifest = task.result()
                        if manifest is not None:
                            return manifest
            finally:
                self._arrival = None
                for task in attempts:
                    task.cancel()

    async def _attempt(self, rec: ProviderRecord, errors: list[str]) -> Manifest | None:
        """One provider's manifest, verified; ``None`` (and the reason in ``errors``) if not."""
        try:
            conn = await self.s.pool.get(rec.address, rec.node_id)
            data = await conn.get_manifest(self.mh, MANIFEST_TIMEOUT)
            return Manifest.decode_verified(bytes(data), self.mh)
        except (IntegrityError, ManifestError) as err:
            log.warning("peer %s sent a bad manifest: %s", label(rec.address), err)
            self.book.ban(rec.address, rec.node_id)
            errors.append(str(err))
        except (PeerUnreachable, PeerTimeout) as err:
            self.book.unreachable.add(rec.address)
            errors.append(str(err))
        except (PeerError, NotFoundReply, RemoteProtocolError) as err:
            errors.append(str(err))
        except Exception:
            log.exception("asking %s for manifest %s failed on a bug",
                          label(rec.address), short(self.mh))
            raise
        return None
