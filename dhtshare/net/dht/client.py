"""The DHT: joining, lookups, provider records, leaving.

:class:`Dht` is what the rest of dhtshare sees of the DHT.  It runs lookups
with :class:`~dhtshare.core.lookup.Lookup` (a sans-IO state machine: a lookup
ends when the closest answers are in, never waiting out a dead node), unions
the provider sets of the closest nodes rather than returning the first
answer, fills the routing table at every distance after joining, tells the
nodes that named a contact when it turns out dead, and says goodbye to its
contacts when it leaves.  The kademlia package itself stays behind
:mod:`dhtshare.net.dht.kad`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from dhtshare.core.ids import NODE_ID_LEN, dht_key, short
from dhtshare.core.lookup import Contact, Lookup
from dhtshare.core.providers import SELF_HOST, Announcement, ProviderRecord, ProviderStore
from dhtshare.errors import ConfigError, PeerUnreachable
from dhtshare.net.dht.kad import (
    ALPHA,
    KSIZE,
    DhtProtocol,
    Node,
    Server,
    id_in_range,
    is_id,
    shared_bits,
)

log = logging.getLogger(__name__)

PROVIDERS_NS = b"providers"
#: How many of the closest nodes hold each provider record.
REPLICATION = 8
#: Upper bound on queries of one lookup, whatever the network answers.
MAX_QUERIES = 64
#: Lookups that fill the routing table run this many at a time.
REFRESH_CONCURRENCY = 3
#: After the first peer of a join answers, how long the others may take.
BOOTSTRAP_GRACE = 0.1
#: Most nodes told that one contact of a lookup did not answer.
MAX_HINTED = 12
#: How long a leaving node waits for its contacts to acknowledge.
LEAVE_WAIT = 0.3

Address = tuple[str, int]
OnRecords = Callable[[list[ProviderRecord]], None]


async def resolve(host: str, port: int) -> Address:
    """Resolve a peer's host name to an IPv4 address (kademlia takes IPs only)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, family=socket.AF_INET, type=socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError) as err:
        raise ConfigError(f"cannot resolve peer host {host!r}: {err}") from err
    return (str(infos[0][4][0]), port)


@dataclass(frozen=True)
class LookupResult:
    """What one lookup found, and what it cost."""

    #: The closest nodes that answered, each with the write token it gave.
    closest: list[tuple[Node, bytes]]
    records: dict[bytes, ProviderRecord]
    queries: int
    hops: int
    stale: int
    failures: int


class Dht:
    """A running DHT node with provider records."""

    def __init__(
        self, node_id: bytes, *, timeout: float = 1.5, dead_ttl: float = 300.0
    ) -> None:
        self.providers = ProviderStore()
        self._server = Server(node_id, self.providers, timeout, dead_ttl)
        self.node_id = node_id
        #: The table refresh that follows a join (done once the table is full).
        self.refreshing: asyncio.Future[int] | None = None

    @property
    def protocol(self) -> DhtProtocol:
        proto: DhtProtocol = self._server.protocol
        return proto

    async def listen(self, host: str, port: int) -> None:
        await self._server.listen(port, interface=host)

    def contacts(self) -> list[tuple[bytes, str, int]]:
        """Every contact in the routing table, for saving and status."""
        return [(n.id, n.ip, n.port) for n in self.protocol.router.contacts()]

    def table(self) -> list[tuple[bytes, str, int, float]]:
        """Every contact with how many seconds ago we last heard from it."""
        now = time.monotonic()
        seen = self.protocol.seen
        return [(n.id, n.ip, n.port, now - seen.get(n.id, now))
                for n in self.protocol.router.contacts()]

    def answered_within(self, seconds: float) -> int:
        """How many routing-table contacts we heard from in the last ``seconds``."""
        now = time.monotonic()
        seen = self.protocol.seen
        contacts = self.protocol.router.contacts()
        return sum(1 for n in contacts if now - seen.get(n.id, -1e9) < seconds)

    def is_dead(self, address: Address) -> bool:
        """Whether ``address`` recently failed to answer us or said it was leaving."""
        return self.protocol.is_dead(address)

    def forget_peer(self, node_id: bytes, address: Address) -> bool:
        """A peer link said goodbye: forget the DHT contact of that node at that address."""
        return self.protocol.forget_peer(node_id, address)

    # -- joining and keeping the table full ---------------------------------------------
    async def bootstrap(self, peers: Iterable[tuple[str, int]]) -> int:
        """Join through ``peers`` (host names allowed); returns how many answered.

        All peers are pinged at once and the join goes on as soon as one
        answers (a dead one never holds it up for a timeout).  After the lookup
        of our own id, which finds our neighbourhood, the rest of the table is
        filled in the background, one lookup per distance range short of
        contacts.
        """
        addrs = []
        for host, port in peers:
            try:
                addr = await resolve(host, port)
            except ConfigError as err:
                log.warning("%s", err)
                continue
            if addr not in addrs:
                addrs.append(addr)
        if not addrs:
            return 0
        pings = {asyncio.ensure_future(self._ping(a)) for a in addrs}
        answered = 0
        while pings and not answered:
            done, pings = await asyncio.wait(pings, return_when=asyncio.FIRST_COMPLETED)
            answered += sum(1 for t in done if t.result() is not None)
        if pings:  # the others get a moment more; stragglers still add themselves later
            done, pings = await asyncio.wait(pings, timeout=BOOTSTRAP_GRACE)
            answered += sum(1 for t in done if t.result() is not None)
            for straggler in pings:
                self.protocol.adopt(straggler)
        if answered:
            await self._lookup(self.node_id, "find_node")
            self.refreshing = asyncio.ensure_future(self.refresh())
            self.protocol.adopt(self.refreshing)
        return answered

    async def _ping(self, addr: Address) -> Node | None:
        t0 = time.monotonic()
        result = await self.protocol.request(addr, "ping", self.node_id)
        if result[0]:
            self.protocol.rtt.sample(time.monotonic() - t0)
        if not result[0] or not is_id(result[1]):
            return None
        node = Node(result[1], addr[0], addr[1])
        self.protocol.welcome_if_new(node)
        return node

    async def refresh(self, self_lookup: bool = False) -> int:
        """Look up a random id in every distance range with fewer than k contacts.

        The lookup of our own id only finds the nodes nearest us; without this a
        node that joined through one peer knows a handful of nodes and hands
        out the same few to everyone (the paper's bucket refresh, done at join
        rather than an hour later).  Returns how many lookups ran.
        """
        if self_lookup:
            await self._lookup(self.node_id, "find_node")
        contacts = self.protocol.router.contacts()
        if not contacts:
            return 0
        depth = max(shared_bits(self.node_id, n.id) for n in contacts)
        counts = Counter(shared_bits(self.node_id, n.id) for n in contacts)
        ranges = [i for i in range(depth) if counts[i] < KSIZE]
        sem = asyncio.Semaphore(REFRESH_CONCURRENCY)

        async def one(shared: int) -> None:
            async with sem:
                await self._lookup(id_in_range(self.node_id, shared), "find_node")

        await asyncio.gather(*(one(i) for i in ranges))
        return len(ranges)

    async def leave(self) -> int:
        """Tell every contact we are going; returns how many acknowledged (bounded wait).

        Our own background work (table refresh, liveness pings) stops first and
        we stop answering, so nothing we send afterwards puts us back into
        anyone's table.
        """
        proto = self.protocol
        if proto is None or not proto.open:
            return 0
        proto.leaving = True
        proto.cancel_tasks()
        futs = [proto.request((n.ip, n.port), "leave", self.node_id)
                for n in proto.router.contacts()]
        if not futs:
            return 0
        done, _ = await asyncio.wait(futs, timeout=LEAVE_WAIT)
        return sum(1 for f in done if f.result()[0] and f.result()[1] is True)

    # -- lookups ------------------------------------------------------------------------
    async def _lookup(
        self, key: bytes, rpc: str, on_records: OnRecords | None = None
    ) -> LookupResult:
        """Iterative lookup of ``key`` (see :mod:`dhtshare.core.lookup` for when it ends).

        Returns the closest answering nodes (with the write token each gave,
        when ``rpc`` is ``get_providers``) and the union of every provider
        record any of them returned.  ``on_records`` is called with each batch
        of newly seen records as answers arrive, so a fetch can start before
        the lookup ends.
        """
        proto = self.protocol
        target = Node(key)
        seeds = [Contact(n.id, n.ip, n.port) for n in proto.router.find_neighbors(target, KSIZE)]
        lookup = Lookup(key, seeds, want=REPLICATION, alpha=ALPHA, max_queries=MAX_QUERIES,
                        self_id=self.node_id)
        found: dict[bytes, ProviderRecord] = {}
        tokens: dict[bytes, bytes] = {}
        pending: dict[asyncio.Future[Any], Contact] = {}
        loop = asyncio.get_running_loop()
        if on_records is not None:
            own = [r for r in self.providers.get(key) if r.node_id != self.node_id]
            for rec in own:
                found[rec.node_id] = rec
            if own:
                on_records(own)
        while True:
            now = loop.time()
            stale_after = proto.rtt.stale_after()
            lookup.expire(now, stale_after)
            while batch := lookup.to_query(now):
                for c in batch:
                    if proto.is_dead(c.addr):  # known dead: skip it without a query
                        lookup.failed(c.id)
                        continue
                    query: asyncio.Future[Any] = asyncio.ensure_future(
                        proto._call(Node(c.id, c.ip, c.port), rpc, key))
                    query.add_done_callback(self._suspect_on_failure(lookup, c))
                    pending[query] = c
            if lookup.done or not pending:
                break
            expiry = lookup.next_expiry(stale_after)
            wait = max(0.005, expiry - now) if expiry is not None else None
            done, _ = await asyncio.wait(pending, timeout=wait,
                                         return_when=asyncio.FIRST_COMPLETED)
            for fut in done:
                c = pending.pop(fut)
                ok, reply = fut.result()
                parsed = self._parse_reply(rpc, reply, c) if ok else None
                if parsed is None:
                    lookup.failed(c.id)
                    continue
                nodes, records, token = parsed
                tokens[c.id] = token
                fresh = self._merge(found, records)
                if fresh and on_records is not None:
                    on_records(fresh)
                lookup.answered(c.id, [n for n in nodes if not proto.is_dead(n.addr)])
        for straggler in pending:  # they finish (and evict their node if dead) on their own
            proto.adopt(straggler)
        closest = [(Node(c.id, c.ip, c.port), tokens.get(c.id, b"")) for c in lookup.closest()]
        for rec in self.providers.get(key):
            found.setdefault(rec.node_id, rec)
        return LookupResult(closest, found, lookup.queries, lookup.hops, lookup.stale_count,
                            lookup.failures)

    def _suspect_on_failure(
        self, lookup: Lookup, contact: Contact
    ) -> Callable[[asyncio.Future[Any]], None]:
        """When a query times out, tell the nodes near it to check that contact.

        Those are the nodes that named it and the others that answered this
        lookup: they sit near the same key, so they are the ones that would
        hand it to the next node looking there.
        """

        def done(fut: asyncio.Future[Any]) -> None:
            if fut.cancelled() or fut.result()[0]:
                return
            proto = self.protocol
            if not proto.open or proto.leaving:
                return
            near = dict.fromkeys([*lookup.referrers(contact.id),
                                  *(c.id for c in lookup.answered_contacts())])
            for ref in list(near)[:MAX_HINTED]:
                node = proto.router.get_contact(ref)
                if node is not None:
                    proto.counters["suspects_sent"] += 1
                    proto.adopt(proto.request((node.ip, node.port), "suspect", self.node_id,
                                              [contact.id]))

        return done

    @staticmethod
    def _merge(
        found: dict[bytes, ProviderRecord], records: list[ProviderRecord]
    ) -> list[ProviderRecord]:
        """Add ``records`` to ``found`` (freshest wins); returns the ones new to it."""
        fresh = []
        for rec in records:
            old = found.get(rec.node_id)
            if old is None:
                fresh.append(rec)
            if old is None or rec.ttl > old.ttl:
                found[rec.node_id] = rec
        return fresh

    def _parse_reply(
        self, rpc: str, reply: Any, node: Contact
    ) -> tuple[list[Contact], list[ProviderRecord], bytes] | None:
        if rpc == "find_node":
            return (self._contacts(reply), [], b"") if isinstance(reply, list) else None
        if not (isinstance(reply, list) and len(reply) == 3):
            return None
        raw_records, raw_nodes, token = reply
        if not isinstance(raw_records, list) or not isinstance(raw_nodes, list):
            return None
        records = []
        for raw in raw_records[:64]:
            rec = ProviderRecord.from_wire(raw)
            if rec is not None and rec.host == SELF_HOST:
                # A node's record of itself: reachable where we just reached it.
                rec = replace(rec, host=node.ip) if rec.node_id == node.id else None
            if rec is not None and rec.ttl > 0:
                records.append(rec)
        return self._contacts(raw_nodes), records, token if isinstance(token, bytes) else b""

    def _contacts(self, raw: list[Any]) -> list[Contact]:
        return [
            Contact(t[0], t[1], t[2])
            for t in raw[: 2 * KSIZE]
            if isinstance(t, list | tuple)
            and len(t) == 3
            and is_id(t[0])
            and t[0] != self.node_id
            and isinstance(t[1], str)
            and isinstance(t[2], int)
            and 0 < t[2] < 65536
        ]

    async def announce(self, content_hash: bytes, ann: Announcement) -> int:
        """Register this node as a provider; returns how many DHT nodes confirmed.

        We also keep the record ourselves, so a peer that asks us directly
        finds us even before the other holders answer.
        """
        key = dht_key(PROVIDERS_NS, content_hash)
        result = await self._lookup(key, "get_providers")
        self.providers.add(key, self.node_id, ann.advertise or SELF_HOST, ann)
        wire = ann.to_wire()
        results = await asyncio.gather(
            *(
                self.protocol._call(node, "add_provider", key, token, wire)
                for node, token in result.closest
            )
        )
        stored = sum(1 for ok, reply in results if ok and reply is True)
        log.debug("announced %s to %d/%d DHT nodes", short(content_hash), stored,
                  len(result.closest))
        return stored

    async def withdraw(self, content_hash: bytes) -> int:
        """Remove this node's record for ``content_hash`` where it is stored."""
        key = dht_key(PROVIDERS_NS, content_hash)
        result = await self._lookup(key, "get_providers")
        for rec in self.providers.get(key):
            if rec.node_id == self.node_id:
                self.providers.remove(key, self.node_id, rec.host)
        results = await asyncio.gather(
            *(self.protocol._call(n, "remove_provider", key, token)
              for n, token in result.closest)
        )
        return sum(1 for ok, reply in results if ok and reply is True)

    async def nodes_near(self, key: bytes) -> list[tuple[bytes, Address]]:
        """Live nodes closest to ``key`` (a lookup) plus every routing-table contact."""
        result = await self._lookup(key[:NODE_ID_LEN], "find_node")
        found = {n.id: (n.ip, n.port) for n, _token in result.closest}
        for nid, ip, port in self.contacts():
            found.setdefault(nid, (ip, port))
        return list(found.items())

    async def find_providers(
        self, content_hash: bytes, on_records: OnRecords | None = None
    ) -> list[ProviderRecord]:
        """Every live provider the closest nodes know of (ours excluded).

        ``on_records`` sees each provider as soon as some node names it.
        """
        return [r for r in (await self.lookup_providers(content_hash, on_records)).records.values()
                if r.node_id != self.node_id]

    async def lookup_providers(
        self, content_hash: bytes, on_records: OnRecords | None = None
    ) -> LookupResult:
        """:meth:`find_providers` with the lookup's cost (for benchmarks and status)."""
        key = dht_key(PROVIDERS_NS, content_hash)

        def ours_excluded(records: list[ProviderRecord]) -> None:
            theirs = [r for r in records if r.node_id != self.node_id]
            if theirs and on_records is not None:
                on_records(theirs)

        return await self._lookup(key, "get_providers", ours_excluded if on_records else None)

    def stop(self) -> None:
        self._server.stop()
        if self._server.protocol is not None:
            self.protocol.cancel_tasks()


def require_contacts(answered: int, peers: list[tuple[str, int]]) -> None:
    """Fail clearly when none of the given peers answered."""
    if peers and not answered:
        names = ", ".join(f"{h}:{p}" for h, p in peers)
        raise PeerUnreachable(f"no peer answered at {names}: is a dhtshare node running there?")


__all__ = ["PROVIDERS_NS", "Dht", "LookupResult", "require_contacts"]
