"""kademlia, extended: the protocol and server that dhtshare runs.

kademlia 2.2.3 is used as a library and extended by subclassing (only
:mod:`dhtshare.net.dht` imports it; :mod:`.client` is the facade the rest of
dhtshare sees):

* :class:`DhtProtocol` adds provider RPCs (``get_providers``,
  ``add_provider``, ``remove_provider``) and two for liveness (``leave``: a
  node stopping politely; ``suspect``: "a contact you gave me did not
  answer").  It refuses the stock value ``store`` (last-writer-wins is
  useless for provider sets), validates every argument before the library
  sees it, and answers garbage with silence.
* It runs on :class:`~dhtshare.net.dht.datagram.DatagramRpc`, rpcudp's wire
  format decoded with msgpack's C codec and answered inline, and on
  :class:`~dhtshare.net.dht.routing.RoutingTable`, which answers
  ``find_node`` with the truly closest contacts.
* Contacts that time out are evicted at once (replaced from the bucket's
  waiting list, as in the paper), not asked again for a while, and never
  handed to other nodes.
* Every provider record stored sweeps a few keys' expired records out, so
  records nobody asks for again do not stay until their key is evicted.
"""

from __future__ import annotations

import logging
import time
from typing import Any, ClassVar

from kademlia.network import Server as _KadServer
from kademlia.node import Node
from kademlia.storage import ForgetfulStorage

from dhtshare.core.lookup import RttEstimator
from dhtshare.core.providers import Announcement, ProviderStore, TokenIssuer, is_loopback
from dhtshare.net.dht.datagram import Address, DatagramRpc
from dhtshare.net.dht.routing import RoutingTable, is_id

log = logging.getLogger(__name__)

ALPHA = 3
KSIZE = 20
#: A full bucket's oldest contact is pinged (to make room) only if quiet this long.
HEAD_QUIET = 60.0
#: A suspected contact is pinged at most once per this many seconds.
SUSPECT_INTERVAL = 10.0
MAX_SUSPECTS = 8
MAX_DEAD = 10_000
#: Keys checked for expired provider records on each store: more than the one
#: record a store adds, so the sweep keeps ahead of what stores bring in.
CULL_STEP = 8


class DhtProtocol(DatagramRpc):
    """kademlia's protocol with provider RPCs, liveness tracking and hardening."""

    rpcs: ClassVar[frozenset[str]] = frozenset({
        "ping", "find_node", "find_value", "store", "get_providers", "add_provider",
        "remove_provider", "leave", "suspect"})

    def __init__(
        self,
        source_node: Node,
        storage: ForgetfulStorage,
        ksize: int,
        providers: ProviderStore,
        timeout: float,
        dead_ttl: float,
    ) -> None:
        super().__init__(source_node, storage, ksize, timeout)
        self.router = RoutingTable(self, ksize, source_node)
        self.providers = providers
        self.tokens = TokenIssuer()
        self.dead_ttl = dead_ttl
        self.rtt = RttEstimator()
        self._dead: dict[Address, float] = {}
        #: When each contact was last heard from (any message or answer).
        self.seen: dict[bytes, float] = {}
        self._checked: dict[bytes, float] = {}

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

    def check_alive(self, node: Node, quiet: float = HEAD_QUIET) -> None:
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
        self.spawn(self.call_ping(node))

    def handle_call_response(self, result: Any, node: Node) -> Any:
        if not result[0]:
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
                self.check_alive(contact, quiet=0.0)
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
        # Before the add, so that keys this step empties make room before a
        # full store evicts a live one.
        self.providers.cull(budget=CULL_STEP)
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


__all__ = ["ALPHA", "CULL_STEP", "KSIZE", "DhtProtocol", "Server"]
