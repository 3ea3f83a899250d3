"""The DHT adapter: the only module that imports kademlia.

kademlia 2.2.3 is used as a library and extended by subclassing:

* :class:`DhtProtocol` adds provider RPCs (``get_providers``,
  ``add_provider``, ``remove_provider``) and two for liveness (``leave``: a
  node stopping politely; ``suspect``: "a contact you gave me did not
  answer"), which rpcudp dispatches by name.  It refuses the stock value
  ``store`` (last-writer-wins is useless for provider sets), validates every
  argument before the library sees it, and answers garbage with silence.
* :class:`RoutingTable` fixes the library's ``find_neighbors``, which walks
  buckets in index order and stops at the first k contacts it meets, so it
  can answer a ``find_node`` with nodes that are not the closest it knows:
  lookups then converge on the wrong nodes and miss records.  It also pings a
  full bucket's least recently seen contact only when that one has been quiet
  for a while, with a tracked task instead of a stray one.
* Contacts that time out are evicted at once (replaced from the bucket's
  waiting list, as in the paper), not asked again for a while, and never
  handed to other nodes.
* :class:`Dht` runs lookups with :class:`~dhtshare.lookup.Lookup` (a sans-IO
  state machine), unions the provider sets of the closest nodes rather than
  returning the first answer, fills the routing table at every distance
  after joining, and says goodbye to its contacts when it leaves.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, replace
from typing import Any

import msgpack
from kademlia.network import Server
from kademlia.node import Node
from kademlia.protocol import KademliaProtocol
from kademlia.routing import RoutingTable as _KadRoutingTable
from kademlia.storage import ForgetfulStorage

from dhtshare.errors import ConfigError, PeerUnreachable
from dhtshare.ids import NODE_ID_LEN, dht_key, short
from dhtshare.lookup import Contact, Lookup, RttEstimator
from dhtshare.providers import (
    SELF_HOST,
    Announcement,
    ProviderRecord,
    ProviderStore,
    TokenIssuer,
    is_loopback,
)

log = logging.getLogger(__name__)

PROVIDERS_NS = b"providers"
#: How many of the closest nodes hold each provider record.
REPLICATION = 8
ALPHA = 3
KSIZE = 20
#: Upper bound on queries of one lookup, whatever the network answers.
MAX_QUERIES = 64
MAX_DATAGRAM = 64 * 1024
#: A full bucket's oldest contact is pinged (to make room) only if quiet this long.
HEAD_QUIET = 60.0
#: A suspected contact is pinged at most once per this many seconds.
SUSPECT_INTERVAL = 10.0
MAX_SUSPECTS = 8
#: Lookups that fill the routing table run this many at a time.
REFRESH_CONCURRENCY = 3
#: After the first peer of a join answers, how long the others may take.
BOOTSTRAP_GRACE = 0.1
#: How long a leaving node waits for its contacts to acknowledge.
LEAVE_WAIT = 0.3
MAX_DEAD = 10_000
#: rpcudp's datagram layout: one kind byte, a 20-byte message id, msgpack.
REQUEST, RESPONSE = b"\x00", b"\x01"
HEADER_LEN = 21
#: The RPCs we answer (rpcudp would dispatch any ``rpc_*`` attribute).
RPCS = frozenset({"ping", "find_node", "find_value", "store", "get_providers",
                  "add_provider", "remove_provider", "leave", "suspect"})

Address = tuple[str, int]
OnRecords = Callable[[list[ProviderRecord]], None]


def _pack(obj: Any) -> bytes:
    out: bytes = msgpack.packb(obj, use_bin_type=True)
    return out


def _is_id(v: object) -> bool:
    return isinstance(v, bytes) and len(v) == NODE_ID_LEN


def _shared_bits(a: bytes, b: bytes) -> int:
    """Leading bits ``a`` and ``b`` have in common."""
    x = int.from_bytes(a, "big") ^ int.from_bytes(b, "big")
    return len(a) * 8 - x.bit_length()


def _id_in_range(own: bytes, shared: int) -> bytes:
    """A random id sharing exactly ``shared`` leading bits with ``own``."""
    bit = 1 << (len(own) * 8 - 1 - shared)
    own_int = int.from_bytes(own, "big")
    above = own_int & ~((bit << 1) - 1)
    low = int.from_bytes(os.urandom(len(own)), "big") & (bit - 1)
    return (above | (~own_int & bit) | low).to_bytes(len(own), "big")


class RoutingTable(_KadRoutingTable):  # type: ignore[misc]
    """kademlia's k-buckets with a correct nearest-neighbour query."""

    _flat: list[Node] | None = None

    def contacts(self) -> list[Node]:
        """Every contact (not the waiting lists); cached until the table changes."""
        if self._flat is None:
            self._flat = [n for b in self.buckets for n in b.nodes.values()]
        return self._flat

    def touch(self, node: Node) -> None:
        """``node`` was heard from: move it to its bucket's tail, or add it."""
        bucket = self.buckets[self.get_bucket_for(node)]
        known = bucket.nodes.get(node.id)
        if known is not None or node.id in bucket.replacement_nodes:
            if known is None or not known.same_home_as(node):
                self._flat = None  # membership or an address changes
            bucket.add_node(node)
        else:
            self.add_contact(node)

    def remove_contact(self, node: Node) -> None:
        self._flat = None
        super().remove_contact(node)

    def split_bucket(self, index: int) -> None:
        self._flat = None
        super().split_bucket(index)

    def find_neighbors(self, node: Node, k: int | None = None, exclude: Node | None = None) -> Any:
        """The ``k`` contacts closest to ``node`` by XOR distance, whatever bucket they sit in."""
        k = k or self.ksize
        target = node.long_id
        # Two spare places: the target itself and the asker are left out.
        nearest = heapq.nsmallest(k + 2, self.contacts(), key=lambda n: n.long_id ^ target)
        return [
            n for n in nearest
            if n.id != node.id and (exclude is None or not n.same_home_as(exclude))
        ][:k]

    def add_contact(self, node: Node) -> None:
        self._flat = None
        index = self.get_bucket_for(node)
        bucket = self.buckets[index]
        if bucket.add_node(node):
            return
        if bucket.has_in_range(self.node) or bucket.depth() % 5 != 0:
            self.split_bucket(index)
            self.add_contact(node)
            return
        # Full: the newcomer waits in the replacement list; the oldest contact is
        # asked whether it is still there, and evicted (newcomer promoted) if not.
        self.protocol.check_alive(bucket.head())

    def get_contact(self, node_id: bytes) -> Node | None:
        probe = Node(node_id)
        bucket = self.buckets[self.get_bucket_for(probe)]
        found: Node | None = bucket.nodes.get(node_id) or bucket.replacement_nodes.get(node_id)
        return found


class DhtProtocol(KademliaProtocol):  # type: ignore[misc]
    """kademlia's protocol with provider RPCs, liveness tracking and hardening."""

    def __init__(
        self,
        source_node: Node,
        storage: ForgetfulStorage,
        ksize: int,
        providers: ProviderStore,
        timeout: float,
        dead_ttl: float,
    ) -> None:
        super().__init__(source_node, storage, ksize)
        self.router = RoutingTable(self, ksize, source_node)
        self._wait_timeout = timeout
        self.providers = providers
        self.tokens = TokenIssuer()
        self.dead_ttl = dead_ttl
        self.rtt = RttEstimator()
        self._dead: dict[Address, float] = {}
        #: When each contact was last heard from (any message or answer).
        self.seen: dict[bytes, float] = {}
        self._checked: dict[bytes, float] = {}
        self._tasks: set[asyncio.Future[Any]] = set()
        self._waiting: dict[bytes, tuple[asyncio.Future[Any], asyncio.TimerHandle, Address]] = {}
        #: Set by :meth:`Dht.leave`: from then on the node neither asks nor answers.
        self.leaving = False
        self.counters: Counter[str] = Counter()

    # -- task hygiene and hostile datagrams -----------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def adopt(self, fut: asyncio.Future[Any]) -> None:
        """Keep a reference to a query nobody waits for until it finishes."""
        self._tasks.add(fut)
        fut.add_done_callback(self._tasks.discard)

    def cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for fut, timer, *_ in [*self._outstanding.values(), *self._waiting.values()]:
            timer.cancel()
            if not fut.done():
                fut.set_result((False, None))
        self._outstanding.clear()
        self._waiting.clear()

    # -- the datagram layer: rpcudp's wire format, msgpack's C codec, no task per packet --
    def datagram_received(self, data: bytes, addr: Address) -> None:
        """Decode and answer a datagram inline; garbage is dropped without a word.

        rpcudp's own path decodes with pure-Python umsgpack and starts two tasks
        per datagram; the bytes on the wire are the same (``0x00``/``0x01``,
        a 20-byte message id, then msgpack), so stock peers interoperate.
        """
        if not HEADER_LEN < len(data) <= MAX_DATAGRAM:
            return
        try:
            body = msgpack.unpackb(data[HEADER_LEN:], raw=False)
        except (ValueError, msgpack.UnpackException) as err:
            log.debug("dropped malformed datagram from %s: %r", addr, err)
            return
        kind, msg_id = data[:1], data[1:HEADER_LEN]
        if kind == REQUEST:
            self._serve(msg_id, body, addr)
        elif kind == RESPONSE:
            self._accept_response(msg_id, body, addr)

    def _serve(self, msg_id: bytes, body: Any, addr: Address) -> None:
        if self.leaving:
            return  # an answer would put us back in the asker's table
        if not (isinstance(body, list) and len(body) == 2 and isinstance(body[0], str)
                and isinstance(body[1], list) and body[0] in RPCS):
            return
        try:
            answer = getattr(self, "rpc_" + body[0])(addr, *body[1])
        except Exception as err:  # wrong arity or types: the sender's problem
            log.debug("dropped malformed %s request from %s: %r", body[0], addr, err)
            return
        if self.open:
            self.transport.sendto(RESPONSE + msg_id + _pack(answer), addr)

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def request(self, address: Address, name: str, *args: Any) -> asyncio.Future[Any]:
        """Send RPC ``name``; the future gives ``(True, answer)`` or ``(False, None)``.

        A closed node, or one that is leaving (except for its goodbyes), sends
        nothing: any query now would make the others welcome it back.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        if not self.open or (self.leaving and name != "leave"):
            fut.set_result((False, None))
            return fut
        msg_id = os.urandom(HEADER_LEN - 1)
        self.transport.sendto(REQUEST + msg_id + _pack([name, list(args)]), address)
        timer = loop.call_later(self._wait_timeout, self._expire, msg_id)
        self._waiting[msg_id] = (fut, timer, address)
        return fut

    def _expire(self, msg_id: bytes) -> None:
        entry = self._waiting.pop(msg_id, None)
        if entry is not None and not entry[0].done():
            entry[0].set_result((False, None))

    def _accept_response(self, msg_id: bytes, data: Any, address: Address) -> None:
        entry = self._waiting.get(msg_id)
        if entry is None:
            outstanding = self._outstanding.get(msg_id)  # a request sent the stock way
            if outstanding is not None and not outstanding[0].done():
                super()._accept_response(msg_id, data, address)
            return
        fut, timer, sent_to = entry
        if sent_to != address:
            return  # an answer must come from where the question went
        del self._waiting[msg_id]
        timer.cancel()
        if not fut.done():
            fut.set_result((True, data))

    # -- liveness ---------------------------------------------------------------------
    def is_dead(self, address: Address) -> bool:
        until = self._dead.get(address)
        if until is None:
            return False
        if until < time.monotonic():
            del self._dead[address]
            return False
        return True

    def mark_dead(self, address: Address) -> None:
        now = time.monotonic()
        if len(self._dead) >= MAX_DEAD:
            for addr in [a for a, t in self._dead.items() if t < now]:
                del self._dead[addr]
            while len(self._dead) >= MAX_DEAD:
                del self._dead[next(iter(self._dead))]
        self._dead[address] = now + self.dead_ttl

    def forget(self, node: Node) -> None:
        """Drop ``node`` from the routing table and don't ask or hand it out for a while."""
        self.mark_dead((node.ip, node.port))
        self.router.remove_contact(node)
        self.seen.pop(node.id, None)
        self._checked.pop(node.id, None)

    def forget_peer(self, node_id: bytes, address: Address) -> bool:
        """Forget the contact ``node_id`` if it lives at ``address`` (a peer said goodbye)."""
        contact = self.router.get_contact(node_id) if _is_id(node_id) else None
        if contact is None or (contact.ip, contact.port) != address:
            return False
        self.forget(contact)
        return True

    def check_alive(self, node: Node) -> None:
        """Ping ``node`` (at most once per :data:`SUSPECT_INTERVAL`) unless heard from lately."""
        now = time.monotonic()
        if now - self.seen.get(node.id, 0.0) < HEAD_QUIET:
            return
        if now - self._checked.get(node.id, -SUSPECT_INTERVAL) < SUSPECT_INTERVAL:
            return
        self._checked[node.id] = now
        self.counters["liveness_pings"] += 1
        self.spawn(self.call_ping(node))

    def handle_call_response(self, result: Any, node: Node) -> Any:
        if not result[0]:
            self.counters["timeouts"] += 1
            self.forget(node)
            return result
        self.welcome_if_new(node)
        return result

    def welcome_if_new(self, node: Node) -> None:
        """Add or refresh a contact; never pushes stored values (we store none)."""
        if not _is_id(node.id) or node.id == self.source_node.id:
            return
        self._dead.pop((node.ip, node.port), None)
        self.seen[node.id] = time.monotonic()
        self.router.touch(node)

    async def _call(self, node: Node, method: str, *args: Any) -> Any:
        address = (node.ip, node.port)
        if self.is_dead(address):
            return (False, None)
        t0 = time.monotonic()
        result = await self.request(address, method, self.source_node.id, *args)
        if result[0]:
            self.rtt.sample(time.monotonic() - t0)
        return self.handle_call_response(result, node)

    async def call_find_node(self, node_to_ask: Node, node_to_find: Node) -> Any:
        return await self._call(node_to_ask, "find_node", node_to_find.id)

    async def call_ping(self, node_to_ask: Node) -> Any:
        return await self._call(node_to_ask, "ping")

    async def call_find_value(self, node_to_ask: Node, node_to_find: Node) -> Any:
        return await self._call(node_to_ask, "find_node", node_to_find.id)

    async def call_store(self, node_to_ask: Node, key: bytes, value: Any) -> Any:
        return (False, None)

    # -- stock RPCs, validated ----------------------------------------------------------
    def rpc_ping(self, sender: Address, nodeid: Any) -> Any:
        if not _is_id(nodeid):
            return None
        return super().rpc_ping(sender, nodeid)

    def rpc_find_node(self, sender: Address, nodeid: Any, key: Any) -> Any:
        if not (_is_id(nodeid) and _is_id(key)):
            return None
        self.welcome_if_new(Node(nodeid, sender[0], sender[1]))
        return self._neighbors(key, nodeid, sender)

    def _neighbors(self, key: bytes, nodeid: bytes, sender: Address) -> list[tuple[Any, ...]]:
        """Closest contacts to ``key``, minus the asker and nodes we found dead."""
        neighbors = self.router.find_neighbors(Node(key), exclude=Node(nodeid, *sender))
        return [tuple(n) for n in neighbors if not self.is_dead((n.ip, n.port))]

    def rpc_find_value(self, sender: Address, nodeid: Any, key: Any) -> Any:
        return self.rpc_find_node(sender, nodeid, key)

    def rpc_store(self, sender: Address, nodeid: Any, key: Any, value: Any) -> bool:
        """Refused: provider sets go through ``add_provider``."""
        return False

    # -- liveness RPCs ------------------------------------------------------------------
    def rpc_leave(self, sender: Address, nodeid: Any) -> bool:
        """The node at ``sender`` is stopping: forget it now rather than at a timeout."""
        if not _is_id(nodeid):
            return False
        gone = self.forget_peer(nodeid, sender)
        if gone:
            self.counters["leaves"] += 1
            log.debug("contact %s:%d left the network", *sender)
        return gone

    def rpc_suspect(self, sender: Address, nodeid: Any, ids: Any) -> bool:
        """``sender`` found contacts we gave it silent: check them ourselves.

        Nothing is dropped on the sender's word; we ping each (bounded in
        number and frequency) and our own timeout evicts the dead ones, so the
        next node that asks us is not handed them.
        """
        if not _is_id(nodeid) or not isinstance(ids, list):
            return False
        for node_id in ids[:MAX_SUSPECTS]:
            contact = self.router.get_contact(node_id) if _is_id(node_id) else None
            if contact is not None:
                self.check_alive_now(contact)
        return True

    def check_alive_now(self, node: Node) -> None:
        """Ping ``node`` even if heard from lately (at most once per :data:`SUSPECT_INTERVAL`)."""
        now = time.monotonic()
        if now - self._checked.get(node.id, -SUSPECT_INTERVAL) < SUSPECT_INTERVAL:
            return
        self._checked[node.id] = now
        self.counters["suspect_pings"] += 1
        self.spawn(self.call_ping(node))

    # -- provider RPCs ------------------------------------------------------------------
    def rpc_get_providers(self, sender: Address, nodeid: Any, key: Any) -> Any:
        """Known providers of ``key``, the closest nodes we know, and a write token."""
        if not (_is_id(nodeid) and _is_id(key)):
            return None
        self.welcome_if_new(Node(nodeid, sender[0], sender[1]))
        records = self.providers.get(key)
        if not is_loopback(sender[0]):
            # A loopback address means nothing to a peer on another host.
            records = [r for r in records if not is_loopback(r.host)]
        return [
            [r.to_wire() for r in records[:32]],
            self._neighbors(key, nodeid, sender),
            self.tokens.issue(sender[0]),
        ]

    def rpc_add_provider(
        self, sender: Address, nodeid: Any, key: Any, token: Any, announcement: Any
    ) -> bool:
        if not (_is_id(nodeid) and _is_id(key)) or not self.tokens.check(sender[0], token):
            return False
        ann = Announcement.from_wire(announcement)
        if ann is None:
            return False
        self.welcome_if_new(Node(nodeid, sender[0], sender[1]))
        return self.providers.add(key, nodeid, ann.advertise or sender[0], ann, origin=sender[0])

    def rpc_remove_provider(self, sender: Address, nodeid: Any, key: Any, token: Any) -> bool:
        """Only the address that registered a record may remove it."""
        if not (_is_id(nodeid) and _is_id(key)) or not self.tokens.check(sender[0], token):
            return False
        return self.providers.remove(key, nodeid, sender[0])


class _Server(Server):  # type: ignore[misc]
    protocol_class = DhtProtocol

    def __init__(self, node_id: bytes, providers: ProviderStore, timeout: float, dead_ttl: float):
        super().__init__(ksize=KSIZE, alpha=ALPHA, node_id=node_id, storage=ForgetfulStorage())
        self._providers = providers
        self._timeout = timeout
        self._dead_ttl = dead_ttl

    def _create_protocol(self) -> DhtProtocol:
        return DhtProtocol(
            self.node, self.storage, self.ksize, self._providers, self._timeout, self._dead_ttl
        )

    def refresh_table(self, interval: int = 3600) -> None:
        """Disabled: :meth:`Dht.refresh` keeps the table full with our own lookups."""


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
        self._server = _Server(node_id, self.providers, timeout, dead_ttl)
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
        if not result[0] or not _is_id(result[1]):
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
        depth = max(_shared_bits(self.node_id, n.id) for n in contacts)
        counts = Counter(_shared_bits(self.node_id, n.id) for n in contacts)
        ranges = [i for i in range(depth) if counts[i] < KSIZE]
        sem = asyncio.Semaphore(REFRESH_CONCURRENCY)

        async def one(shared: int) -> None:
            async with sem:
                await self._lookup(_id_in_range(self.node_id, shared), "find_node")

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
        """Iterative lookup of ``key`` (see :mod:`dhtshare.lookup` for when it ends).

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
        """When a query times out, tell the nodes that named that contact to check it."""

        def done(fut: asyncio.Future[Any]) -> None:
            if fut.cancelled() or fut.result()[0]:
                return
            proto = self.protocol
            if not proto.open or proto.leaving:
                return
            for ref in lookup.referrers(contact.id):
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
            and _is_id(t[0])
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


__all__ = ["Dht", "DhtProtocol", "LookupResult", "RoutingTable"]
