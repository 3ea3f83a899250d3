"""kademlia, extended: the only module that imports the ``kademlia`` package.

kademlia 2.2.3 is used as a library and extended by subclassing:

* :class:`DhtProtocol` adds provider RPCs (``get_providers``,
  ``add_provider``, ``remove_provider``) and two for liveness (``leave``: a
  node stopping politely; ``suspect``: "a contact you gave me did not
  answer").  It refuses the stock value ``store`` (last-writer-wins is
  useless for provider sets), validates every argument before the library
  sees it, and answers garbage with silence.
* Its datagram layer keeps rpcudp's wire format (a kind byte, a 20-byte
  message id, msgpack) but decodes with msgpack's C codec and answers inline:
  rpcudp uses pure-Python umsgpack and starts two tasks per datagram, which
  was two thirds of a lookup's CPU.  An answer is only accepted from the
  address the question went to.
* :class:`RoutingTable` fixes the library's ``find_neighbors``, which walks
  buckets in index order and stops at the first k contacts it meets, so it
  can answer a ``find_node`` with nodes that are not the closest it knows:
  lookups then converge on the wrong nodes and miss records.  It also pings a
  full bucket's least recently seen contact only when that one has been quiet
  for a while, with a tracked task instead of a stray one.
* Contacts that time out are evicted at once (replaced from the bucket's
  waiting list, as in the paper), not asked again for a while, and never
  handed to other nodes.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import os
import time
from collections import Counter
from collections.abc import Coroutine
from typing import Any

import msgpack
from kademlia.network import Server as _KadServer
from kademlia.node import Node
from kademlia.protocol import KademliaProtocol
from kademlia.routing import RoutingTable as _KadRoutingTable
from kademlia.storage import ForgetfulStorage

from dhtshare.core.ids import NODE_ID_LEN
from dhtshare.core.lookup import RttEstimator
from dhtshare.core.providers import Announcement, ProviderStore, TokenIssuer, is_loopback

log = logging.getLogger(__name__)

ALPHA = 3
KSIZE = 20
MAX_DATAGRAM = 64 * 1024
#: A full bucket's oldest contact is pinged (to make room) only if quiet this long.
HEAD_QUIET = 60.0
#: A suspected contact is pinged at most once per this many seconds.
SUSPECT_INTERVAL = 10.0
MAX_SUSPECTS = 8
MAX_DEAD = 10_000
#: rpcudp's datagram layout: one kind byte, a 20-byte message id, msgpack.
REQUEST, RESPONSE = b"\x00", b"\x01"
HEADER_LEN = 21
#: The RPCs we answer (rpcudp would dispatch any ``rpc_*`` attribute).
RPCS = frozenset({"ping", "find_node", "find_value", "store", "get_providers",
                  "add_provider", "remove_provider", "leave", "suspect"})

Address = tuple[str, int]


def _pack(obj: Any) -> bytes:
    out: bytes = msgpack.packb(obj, use_bin_type=True)
    return out


def is_id(v: object) -> bool:
    return isinstance(v, bytes) and len(v) == NODE_ID_LEN


def shared_bits(a: bytes, b: bytes) -> int:
    """Leading bits ``a`` and ``b`` have in common."""
    x = int.from_bytes(a, "big") ^ int.from_bytes(b, "big")
    return len(a) * 8 - x.bit_length()


def id_in_range(own: bytes, shared: int) -> bytes:
    """A random id sharing exactly ``shared`` leading bits with ``own``."""
    bit = 1 << (len(own) * 8 - 1 - shared)
    own_int = int.from_bytes(own, "big")
    above = own_int & ~((bit << 1) - 1)
    low = int.from_bytes(os.urandom(len(own)), "big") & (bit - 1)
    return (above | (~own_int & bit) | low).to_bytes(len(own), "big")


def _bound(span: tuple[int, int], target: int) -> int:
    """No id in ``[lo, hi]`` is closer to ``target`` than this (their shared prefix)."""
    lo, hi = span
    free = (lo ^ hi).bit_length()
    return ((lo ^ target) >> free) << free


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
        """The ``k`` contacts closest to ``node`` by XOR distance, whatever bucket they sit in.

        A bucket holds ids between two bounds that share a prefix, so no id in
        it is closer to the target than that prefix XOR the target's: buckets
        are visited in order of that bound, and once ``k`` contacts beat the
        next bucket's bound the rest are not looked at (a few buckets of a
        table of hundreds of contacts).
        """
        k = k or self.ksize
        want = k + 2  # two spare places: the target itself and the asker are left out
        target = node.long_id
        best: list[tuple[int, int, Node]] = []  # max-heap by distance, as negatives
        for bound, _, bucket in sorted((_bound(b.range, target), i, b)
                                       for i, b in enumerate(self.buckets)):
            if len(best) >= want and bound > -best[0][0]:
                break
            for n in bucket.nodes.values():
                d = n.long_id ^ target
                if len(best) < want:
                    heapq.heappush(best, (-d, id(n), n))
                elif d < -best[0][0]:
                    heapq.heapreplace(best, (-d, id(n), n))
        nearest = [n for _, _, n in sorted(best, reverse=True)]
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
        contact = self.router.get_contact(node_id) if is_id(node_id) else None
        if contact is None or (contact.ip, contact.port) != address:
            return False
        self.forget(contact)
        return True

    def check_alive(self, node: Node, quiet: float = HEAD_QUIET,
                    why: str = "liveness_pings") -> None:
        """Ping ``node`` unless heard from within ``quiet`` seconds.

        At most once per :data:`SUSPECT_INTERVAL` per contact, whoever asks; a
        timeout evicts it (:meth:`handle_call_response`).
        """
        now = time.monotonic()
        if now - self.seen.get(node.id, -quiet) < quiet:
            return
        if now - self._checked.get(node.id, -SUSPECT_INTERVAL) < SUSPECT_INTERVAL:
            return
        self._checked[node.id] = now
        self.counters[why] += 1
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
        if not is_id(node.id) or node.id == self.source_node.id:
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
        if not is_id(nodeid):
            return None
        return super().rpc_ping(sender, nodeid)

    def rpc_find_node(self, sender: Address, nodeid: Any, key: Any) -> Any:
        if not (is_id(nodeid) and is_id(key)):
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
        if not is_id(nodeid):
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
        if not is_id(nodeid) or not isinstance(ids, list):
            return False
        for node_id in ids[:MAX_SUSPECTS]:
            contact = self.router.get_contact(node_id) if is_id(node_id) else None
            if contact is not None:
                self.check_alive(contact, quiet=0.0, why="suspect_pings")
        return True

    # -- provider RPCs ------------------------------------------------------------------
    def rpc_get_providers(self, sender: Address, nodeid: Any, key: Any) -> Any:
        """Known providers of ``key``, the closest nodes we know, and a write token."""
        if not (is_id(nodeid) and is_id(key)):
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
        if not (is_id(nodeid) and is_id(key)) or not self.tokens.check(sender[0], token):
            return False
        ann = Announcement.from_wire(announcement)
        if ann is None:
            return False
        self.welcome_if_new(Node(nodeid, sender[0], sender[1]))
        return self.providers.add(key, nodeid, ann.advertise or sender[0], ann, origin=sender[0])

    def rpc_remove_provider(self, sender: Address, nodeid: Any, key: Any, token: Any) -> bool:
        """Only the address that registered a record may remove it."""
        if not (is_id(nodeid) and is_id(key)) or not self.tokens.check(sender[0], token):
            return False
        return self.providers.remove(key, nodeid, sender[0])


class Server(_KadServer):  # type: ignore[misc]
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


__all__ = ["KSIZE", "DhtProtocol", "Node", "RoutingTable", "Server", "id_in_range",
           "is_id", "shared_bits"]
