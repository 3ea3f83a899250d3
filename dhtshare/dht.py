"""The DHT adapter: the only module that imports kademlia.

kademlia 2.2.3 is used as a library and extended by subclassing:

* :class:`DhtProtocol` adds three RPCs (``get_providers``, ``add_provider``,
  ``remove_provider``) that rpcudp dispatches by name, refuses the stock value
  ``store`` (last-writer-wins is useless for provider sets), validates every
  argument before the library sees it, and answers garbage with silence.
* It shortens the RPC timeout (the stock 5 s makes every dead peer cost 5 s)
  and keeps a short-lived cache of addresses that timed out, so a lookup does
  not wait on the same corpse twice.
* It replaces ``welcome_if_new``, which re-hashes already-hashed keys and
  re-welcomes nodes parked in a full bucket's replacement list on every reply
  (store storms), with a version that only updates the routing table.
* :class:`Dht` resolves host names before ``bootstrap`` (which takes IP
  addresses only), runs its own iterative lookup that unions the provider
  sets of the k closest nodes rather than returning the first answer, and
  counts confirmed stores honestly.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import replace
from typing import Any

from kademlia.network import Server
from kademlia.node import Node, NodeHeap
from kademlia.protocol import KademliaProtocol
from kademlia.storage import ForgetfulStorage

from dhtshare.errors import ConfigError, PeerUnreachable
from dhtshare.ids import NODE_ID_LEN, dht_key, short
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
#: A query not answered within this long no longer holds up a lookup.
SOFT_TIMEOUT = 0.5
MAX_DATAGRAM = 64 * 1024

Address = tuple[str, int]


def _is_id(v: object) -> bool:
    return isinstance(v, bytes) and len(v) == NODE_ID_LEN


class DhtProtocol(KademliaProtocol):  # type: ignore[misc]
    """kademlia's protocol with provider RPCs, hardening and a dead-peer cache."""

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
        self._wait_timeout = timeout
        self.providers = providers
        self.tokens = TokenIssuer()
        self.dead_ttl = dead_ttl
        self._dead: dict[Address, float] = {}
        self._tasks: set[asyncio.Future[Any]] = set()

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

    def datagram_received(self, data: bytes, addr: Address) -> None:
        if len(data) > MAX_DATAGRAM:
            return
        self.spawn(self._guarded(self._solve_datagram, addr, data, addr))

    async def _guarded(
        self, fn: Callable[..., Coroutine[Any, Any, Any]], addr: Address, *args: Any
    ) -> None:
        """Run ``fn(*args)``; a malformed datagram must not surface as a task error.

        The coroutine is made here, inside the task, so a task cancelled before
        it ran (at shutdown) leaves no never-awaited coroutine behind.
        """
        try:
            await fn(*args)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            log.debug("dropped malformed datagram from %s: %r", addr, err)

    async def _accept_request(self, msg_id: bytes, data: Any, address: Address) -> None:
        await self._guarded(super()._accept_request, address, msg_id, data, address)

    # -- liveness ---------------------------------------------------------------------
    def is_dead(self, address: Address) -> bool:
        until = self._dead.get(address)
        if until is None:
            return False
        if until < time.monotonic():
            del self._dead[address]
            return False
        return True

    def handle_call_response(self, result: Any, node: Node) -> Any:
        if not result[0]:
            self._dead[(node.ip, node.port)] = time.monotonic() + self.dead_ttl
            self.router.remove_contact(node)
            return result
        self.welcome_if_new(node)
        return result

    def welcome_if_new(self, node: Node) -> None:
        """Add or refresh a contact; never pushes stored values (we store none)."""
        if not _is_id(node.id) or node.id == self.source_node.id:
            return
        self._dead.pop((node.ip, node.port), None)
        bucket = self.router.buckets[self.router.get_bucket_for(node)]
        if node.id in bucket.nodes or node.id in bucket.replacement_nodes:
            bucket.add_node(node)
            return
        self.router.add_contact(node)

    async def _call(self, node: Node, method: str, *args: Any) -> Any:
        address = (node.ip, node.port)
        if self.is_dead(address):
            return (False, None)
        result = await getattr(self, method)(address, self.source_node.id, *args)
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


async def resolve(host: str, port: int) -> Address:
    """Resolve a peer's host name to an IPv4 address (kademlia takes IPs only)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, family=socket.AF_INET, type=socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError) as err:
        raise ConfigError(f"cannot resolve peer host {host!r}: {err}") from err
    return (str(infos[0][4][0]), port)


class Dht:
    """A running DHT node with provider records."""

    def __init__(
        self, node_id: bytes, *, timeout: float = 1.5, dead_ttl: float = 300.0
    ) -> None:
        self.providers = ProviderStore()
        self._server = _Server(node_id, self.providers, timeout, dead_ttl)
        self.node_id = node_id

    @property
    def protocol(self) -> DhtProtocol:
        proto: DhtProtocol = self._server.protocol
        return proto

    async def listen(self, host: str, port: int) -> None:
        await self._server.listen(port, interface=host)

    def contacts(self) -> list[tuple[bytes, str, int]]:
        """Every contact in the routing table, for saving and status."""
        return [
            (n.id, n.ip, n.port) for b in self.protocol.router.buckets for n in b.get_nodes()
        ]

    async def bootstrap(self, peers: Iterable[tuple[str, int]]) -> int:
        """Join through ``peers`` (host names allowed); returns how many answered."""
        addrs = []
        for host, port in peers:
            try:
                addrs.append(await resolve(host, port))
            except ConfigError as err:
                log.warning("%s", err)
        if not addrs:
            return 0
        answered = [n for n in await asyncio.gather(*map(self._ping, addrs)) if n is not None]
        if answered:
            await self._lookup(self.node_id, "find_node")
        return len(answered)

    async def _ping(self, addr: Address) -> Node | None:
        result = await self.protocol.ping(addr, self.node_id)
        if not result[0] or not _is_id(result[1]):
            return None
        node = Node(result[1], addr[0], addr[1])
        self.protocol.welcome_if_new(node)
        return node

    async def _lookup(
        self, key: bytes, rpc: str
    ) -> tuple[list[tuple[Node, bytes]], dict[bytes, ProviderRecord]]:
        """Iterative lookup of ``key``.

        Returns the closest responding nodes (with the write token each gave,
        when ``rpc`` is ``get_providers``) and the union of every provider
        record any of them returned.  Unlike kademlia's value lookup it does
        not stop at the first node that has something.
        """
        proto = self.protocol
        target = Node(key)
        heap = NodeHeap(target, REPLICATION)
        heap.push(proto.router.find_neighbors(target, KSIZE))
        responded: dict[bytes, tuple[Node, bytes]] = {}
        found: dict[bytes, ProviderRecord] = {}
        pending: dict[asyncio.Future[Any], tuple[Node, float]] = {}
        loop = asyncio.get_running_loop()
        queries = 0
        stale: set[bytes] = set()
        while queries < MAX_QUERIES:
            now = loop.time()
            # A query unanswered for SOFT_TIMEOUT stops counting against ALPHA and
            # leaves the k closest (the next node takes its place): one dead node
            # must not stall the lookup for the whole RPC timeout.  If it answers
            # after all, its answer is still used.
            for node, t0 in pending.values():
                if now - t0 >= SOFT_TIMEOUT and node.id not in stale:
                    stale.add(node.id)
                    heap.remove([node.id])
            active = sum(1 for _n, t0 in pending.values() if now - t0 < SOFT_TIMEOUT)
            for node in heap.get_uncontacted():
                if active >= ALPHA:
                    break
                heap.mark_contacted(node)
                pending[asyncio.ensure_future(proto._call(node, rpc, key))] = (node, now)
                active += 1
                queries += 1
            if not pending or (active == 0 and not heap.get_uncontacted()):
                break  # done, or only stragglers left among the closest
            # Wake up at the first answer, or when the next query turns stale.
            stale_at = min(t0 + SOFT_TIMEOUT for _n, t0 in pending.values()
                           if now - t0 < SOFT_TIMEOUT)
            done, _ = await asyncio.wait(
                pending, timeout=max(0.01, stale_at - now), return_when=asyncio.FIRST_COMPLETED
            )
            for fut in done:
                node, _t0 = pending.pop(fut)
                ok, reply = fut.result()
                nodes_raw, token = self._parse_reply(rpc, reply, found, node) if ok else (None, b"")
                if nodes_raw is None:
                    heap.remove([node.id])
                    continue
                responded[node.id] = (node, token)
                heap.push(
                    [
                        Node(*t)
                        for t in nodes_raw
                        if isinstance(t, list | tuple)
                        and len(t) == 3
                        and _is_id(t[0])
                        and t[0] != self.node_id
                        and isinstance(t[1], str)
                        and isinstance(t[2], int)
                        and not proto.is_dead((t[1], t[2]))
                    ]
                )
        for fut in pending:  # stragglers finish (and mark their node dead) on their own
            proto.adopt(fut)
        closest = sorted(responded.values(), key=lambda nt: nt[0].distance_to(target))
        closest = closest[:REPLICATION]
        for rec in self.providers.get(key):
            found.setdefault(rec.node_id, rec)
        return closest, found

    @staticmethod
    def _parse_reply(
        rpc: str, reply: Any, found: dict[bytes, ProviderRecord], node: Node
    ) -> tuple[list[Any] | None, bytes]:
        if rpc == "find_node":
            return (reply if isinstance(reply, list) else None), b""
        if not (isinstance(reply, list) and len(reply) == 3):
            return None, b""
        records, nodes, token = reply
        if not isinstance(records, list) or not isinstance(nodes, list):
            return None, b""
        for raw in records[:64]:
            rec = ProviderRecord.from_wire(raw)
            if rec is not None and rec.host == SELF_HOST:
                # A node's record of itself: reachable where we just reached it.
                rec = replace(rec, host=node.ip) if rec.node_id == node.id else None
            if rec is not None and rec.ttl > 0:
                old = found.get(rec.node_id)
                if old is None or rec.ttl > old.ttl:
                    found[rec.node_id] = rec
        return nodes, token if isinstance(token, bytes) else b""

    async def announce(self, content_hash: bytes, ann: Announcement) -> int:
        """Register this node as a provider; returns how many DHT nodes confirmed.

        We also keep the record ourselves, so a peer that asks us directly
        finds us even before the other holders answer.
        """
        key = dht_key(PROVIDERS_NS, content_hash)
        closest, _ = await self._lookup(key, "get_providers")
        self.providers.add(key, self.node_id, ann.advertise or SELF_HOST, ann)
        wire = ann.to_wire()
        results = await asyncio.gather(
            *(
                self.protocol._call(node, "add_provider", key, token, wire)
                for node, token in closest
            )
        )
        stored = sum(1 for ok, reply in results if ok and reply is True)
        log.debug("announced %s to %d/%d DHT nodes", short(content_hash), stored, len(closest))
        return stored

    async def withdraw(self, content_hash: bytes) -> int:
        """Remove this node's record for ``content_hash`` where it is stored."""
        key = dht_key(PROVIDERS_NS, content_hash)
        closest, _ = await self._lookup(key, "get_providers")
        for rec in self.providers.get(key):
            if rec.node_id == self.node_id:
                self.providers.remove(key, self.node_id, rec.host)
        results = await asyncio.gather(
            *(self.protocol._call(n, "remove_provider", key, token) for n, token in closest)
        )
        return sum(1 for ok, reply in results if ok and reply is True)

    async def nodes_near(self, key: bytes) -> list[tuple[bytes, Address]]:
        """Live nodes closest to ``key`` (a lookup) plus every routing-table contact."""
        closest, _ = await self._lookup(key[:NODE_ID_LEN], "find_node")
        found = {n.id: (n.ip, n.port) for n, _token in closest}
        for nid, ip, port in self.contacts():
            found.setdefault(nid, (ip, port))
        return list(found.items())

    async def find_providers(self, content_hash: bytes) -> list[ProviderRecord]:
        """Every live provider the closest nodes know of (ours excluded)."""
        key = dht_key(PROVIDERS_NS, content_hash)
        _, found = await self._lookup(key, "get_providers")
        return [r for r in found.values() if r.node_id != self.node_id]

    def stop(self) -> None:
        self._server.stop()
        if self._server.protocol is not None:
            self.protocol.cancel_tasks()


def require_contacts(answered: int, peers: list[tuple[str, int]]) -> None:
    """Fail clearly when none of the given peers answered."""
    if peers and not answered:
        names = ", ".join(f"{h}:{p}" for h, p in peers)
        raise PeerUnreachable(f"no peer answered at {names}: is a dhtshare node running there?")
