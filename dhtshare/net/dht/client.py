"""The DHT: joining, lookups, provider records, leaving.

:class:`Dht` is what the rest of dhtshare sees of the DHT.  It runs lookups
(:mod:`.lookups`: they end when the closest answers are in, never waiting out
a dead node, and union the provider sets of the closest nodes rather than
returning the first answer), fills the routing table at every distance after
joining, and says goodbye to its contacts when it leaves.  The kademlia
package itself stays behind :mod:`dhtshare.net.dht.kad` and the modules it is
built from.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import Counter
from collections.abc import Iterable

from dhtshare.activity import activity
from dhtshare.core.identity import Identity
from dhtshare.core.ids import NODE_ID_LEN, dht_key, short
from dhtshare.core.provider_store import OWN, ProviderStore
from dhtshare.core.providers import SELF_HOST, Announcement, ProviderRecord, Signer
from dhtshare.core.stats import Stats
from dhtshare.errors import ConfigError, PeerUnreachable
from dhtshare.net.dht.datagram import Address
from dhtshare.net.dht.kad import KSIZE, DhtProtocol, Server, new_nonce, signed_pong
from dhtshare.net.dht.lookups import LookupResult, OnRecords, run_lookup
from dhtshare.net.dht.routing import Node, id_in_range, is_id, shared_bits

log = logging.getLogger(__name__)

PROVIDERS_NS = b"providers"
#: Lookups that fill the routing table run this many at a time.
REFRESH_CONCURRENCY = 3
#: After the first peer of a join answers, how long the others may take.
BOOTSTRAP_GRACE = 0.1
#: How long a leaving node waits for its contacts to acknowledge.
LEAVE_WAIT = 0.3


async def resolve(host: str, port: int) -> Address:
    """Resolve a peer's host name to an IPv4 address (kademlia takes IPs only)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, family=socket.AF_INET, type=socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError) as err:
        raise ConfigError(f"cannot resolve peer host {host!r}: {err}") from err
    return (str(infos[0][4][0]), port)


class Dht:
    """A running DHT node with provider records, signed with the node's key."""

    def __init__(
        self, identity: Identity, *, timeout: float = 1.5, dead_ttl: float = 300.0,
        stats: Stats | None = None,
    ) -> None:
        #: Lookups counted and timed (the node's counters, or this Dht's own).
        self.stats = stats if stats is not None else Stats()
        self.providers = ProviderStore()
        self._server = Server(identity, self.providers, timeout, dead_ttl)
        self.identity = identity
        self.node_id: bytes = identity.node_id
        self._signer = Signer(identity)
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
        """Ping a peer we join through; it must prove it holds the key of the id it gives."""
        t0 = time.monotonic()
        nonce = new_nonce()
        result = await self.protocol.request(addr, "ping", self.node_id, nonce)
        if result[0]:
            self.protocol.rtt.sample(time.monotonic() - t0)
        reply = result[1]
        if not (result[0] and isinstance(reply, list) and reply and is_id(reply[0])
                and signed_pong(reply, reply[0], nonce)):
            return None
        node = Node(reply[0], addr[0], addr[1])
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

    # -- provider records ---------------------------------------------------------------
    async def announce(self, content_hash: bytes, ann: Announcement) -> int:
        """Register this node as a provider; returns how many DHT nodes confirmed.

        The record is signed with this node's key.  We also keep it
        ourselves, so a peer that asks us directly finds us even before the
        other holders answer.
        """
        key = dht_key(PROVIDERS_NS, content_hash)
        result = await self._lookup(key, "get_providers")
        signed = self._signer.announcement(key, ann)
        self.providers.add(key, signed, ann.advertise or SELF_HOST, OWN, own=True)
        wire = signed.to_wire()
        results = await asyncio.gather(
            *(
                self.protocol._call(node, "add_provider", key, token, wire)
                for node, token in result.closest
            )
        )
        stored = sum(1 for ok, reply in results if ok and reply is True)
        activity("dht_announce", "announced %s to %d/%d DHT nodes", short(content_hash), stored,
                 len(result.closest), manifest=content_hash, found=stored)
        return stored

    async def withdraw(self, content_hash: bytes) -> int:
        """Remove this node's record for ``content_hash`` where it is stored."""
        key = dht_key(PROVIDERS_NS, content_hash)
        result = await self._lookup(key, "get_providers")
        self.providers.remove(key, self.node_id)
        wire = self._signer.withdrawal(key).to_wire()
        results = await asyncio.gather(
            *(self.protocol._call(n, "remove_provider", key, token, wire)
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
        t0 = time.monotonic()
        found = [r for r in (await self.lookup_providers(content_hash, on_records)).records.values()
                 if r.node_id != self.node_id]
        activity("dht_lookup", "looked up %s: %d providers in %.0f ms", short(content_hash),
                 len(found), (time.monotonic() - t0) * 1000, manifest=content_hash,
                 found=len(found), seconds=round(time.monotonic() - t0, 4))
        return found

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

    async def _lookup(self, key: bytes, rpc: str,
                      on_records: OnRecords | None = None) -> LookupResult:
        """:func:`run_lookup`, counted and timed in :attr:`stats`."""
        t0 = time.monotonic()
        try:
            return await run_lookup(self.protocol, key, rpc, on_records)
        finally:
            self.stats.lookup_done(rpc, time.monotonic() - t0)

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
