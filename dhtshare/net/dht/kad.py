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
* Provider records are signed by their provider (:mod:`dhtshare.core.providers`)
  and checked before they are stored; the store is bounded per key, per
  source address and per provider key.
* It does not amplify: an asker that shows no write token for its address
  gets at most :data:`AMPLIFICATION` times its request's bytes back (a
  truncated answer with a token), as QUIC does before an address is validated.
* It runs on :class:`~dhtshare.net.dht.datagram.DatagramRpc`, rpcudp's wire
  format decoded with msgpack's C codec and answered inline, and on
  :class:`~dhtshare.net.dht.routing.RoutingTable`, which answers
  ``find_node`` with the truly closest contacts and never lets a packet from
  a new address take over a live contact's id.
* Contacts that time out are evicted at once (replaced from the bucket's
  waiting list, as in the paper), not asked again for a while, and never
  handed to other nodes.
* Every provider record stored sweeps a few keys' expired records out, so
  records nobody asks for again do not stay until their key is evicted.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, ClassVar

from kademlia.network import Server as _KadServer
from kademlia.node import Node
from kademlia.storage import ForgetfulStorage

from dhtshare.core.identity import PUBLIC_LEN, Identity, node_id_of, verify
from dhtshare.core.lookup import RttEstimator
from dhtshare.core.provider_store import ProviderStore
from dhtshare.core.providers import ProviderRecord, SignedAnnouncement, Withdrawal, is_loopback
from dhtshare.core.tokens import TOKEN_ROTATE, TokenIssuer
from dhtshare.net.dht.datagram import HEADER_LEN, Address, DatagramRpc, Packed, pack
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
#: Liveness notes kept on contacts (when last heard from, last checked): a
#: flood of fresh ids must not grow them past what the table could hold.
MAX_SEEN = 10_000
#: Keys checked for expired provider records on each store: more than the one
#: record a store adds, so the sweep keeps ahead of what stores bring in.
CULL_STEP = 8

#: An answer to an asker whose address is not validated (no write token for
#: it) is at most this many times the request's bytes: whoever forges a
#: victim's address gets no more than this out of us towards it.
AMPLIFICATION = 3
#: The largest ``get_providers`` answer, to anyone (fragmented UDP beyond this
#: is lost too often to be worth sending).
MAX_ANSWER = 16 * 1024
#: A first ``get_providers`` to a node (no token yet) is padded to this many
#: bytes, so that its answer may be three times that: the closest contacts and
#: a dozen records, usually the whole answer, in one round trip.
PADDED_REQUEST = 1024
#: The padding that makes such a request (21-byte header, 64 bytes of msgpack
#: besides the padding's bytes) exactly that long.
PAD = bytes(PADDED_REQUEST - HEADER_LEN - 64)
#: Tokens received, kept per address for this long (they are good for one
#: to two of the issuer's rotation periods), and for this many addresses.
TOKEN_KEEP = TOKEN_ROTATE * 0.9
MAX_PEER_TOKENS = 4096
#: A ``ping`` with a nonce of this size is answered with a signature over it.
NONCE_LEN = 16
PING_DOMAIN = b"dhtshare/ping/v1\0"


def signed_pong(reply: Any, node_id: bytes, nonce: bytes) -> bool:
    """Whether ``reply`` to a nonce ping proves the answerer holds ``node_id``'s key."""
    if not (isinstance(reply, list) and len(reply) == 3):
        return False
    rid, pub, sig = reply
    return (rid == node_id and isinstance(pub, bytes) and len(pub) == PUBLIC_LEN
            and isinstance(sig, bytes) and node_id_of(pub) == rid
            and verify(pub, sig, PING_DOMAIN + nonce))


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
        identity: Identity,
    ) -> None:
        super().__init__(source_node, storage, ksize, timeout)
        self.router = RoutingTable(self, ksize, source_node)
        self.providers = providers
        self.identity = identity
        self.tokens = TokenIssuer()
        self.dead_ttl = dead_ttl
        self.rtt = RttEstimator()
        self._dead: dict[Address, float] = {}
        #: When each contact was last heard from (any message or answer).
        self.seen: dict[bytes, float] = {}
        self._checked: dict[bytes, float] = {}
        #: Write tokens other nodes gave us, and when.
        self._peer_tokens: OrderedDict[Address, tuple[bytes, float]] = OrderedDict()
        #: Provider records whose signatures verified (see ``lookups._Checker``).
        self.known_good: OrderedDict[tuple[bytes, ...], None] = OrderedDict()

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

    def disown(self, node: Node) -> None:
        """Whoever answers at ``node``'s address is not ``node.id``: drop that pairing.

        The address is not marked dead: a node that lied to us about who
        lives there must not be able to make us shun an honest one.
        """
        known = self.router.get_contact(node.id)
        if known is not None and known.same_home_as(node):
            self.router.remove_contact(known)
            self.seen.pop(node.id, None)

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
        if len(self._checked) > MAX_SEEN:
            self._prune_notes()
        self.spawn(self.call_ping(node))

    def handle_call_response(self, result: Any, node: Node) -> Any:
        if not result[0]:
            self.forget(node)
            return result
        self.welcome_if_new(node)
        return result

    def welcome_if_new(self, node: Node) -> None:
        """Add or refresh a contact; never pushes stored values (we store none).

        A contact's id at a new address is not believed while the old address
        answers (Kademlia's rule: keep the old one): the routing table pings
        the old one, and only once that failed may the new one come in.
        """
        if not is_id(node.id) or node.id == self.source_node.id:
            return
        if not self.router.touch(node):
            return
        self._dead.pop((node.ip, node.port), None)
        self.seen[node.id] = time.monotonic()
        if len(self.seen) > MAX_SEEN:
            self._prune_notes()

    def _prune_notes(self) -> None:
        """Drop liveness notes on ids no longer in the table (they pile up in a flood)."""
        known = self.router.get_contact
        self.seen = {k: t for k, t in self.seen.items() if known(k) is not None}
        self._checked = {k: t for k, t in self._checked.items() if known(k) is not None}

    async def _call(
        self, node: Node, method: str, *args: Any, check: Callable[[Any], bool] | None = None
    ) -> Any:
        """Ask ``node``; an answer ``check`` refuses means someone else lives there."""
        address = (node.ip, node.port)
        if self.is_dead(address):
            return (False, None)
        t0 = time.monotonic()
        result = await self.request(address, method, self.source_node.id, *args)
        if result[0]:
            self.rtt.sample(time.monotonic() - t0)
            if check is not None and not check(result[1]):
                self.disown(node)
                return (False, None)
        return self.handle_call_response(result, node)

    async def call_find_node(self, node_to_ask: Node, node_to_find: Node) -> Any:
        return await self._call(node_to_ask, "find_node", node_to_find.id)

    async def call_ping(self, node_to_ask: Node) -> Any:
        return await self._call(node_to_ask, "ping", check=lambda r: r == node_to_ask.id)

    async def call_find_value(self, node_to_ask: Node, node_to_find: Node) -> Any:
        return await self._call(node_to_ask, "find_node", node_to_find.id)

    async def call_store(self, node_to_ask: Node, key: bytes, value: Any) -> Any:
        return (False, None)

    # -- tokens other nodes gave us -------------------------------------------------------
    def token_for(self, address: Address) -> bytes | None:
        """The write token ``address`` gave us lately, if any."""
        kept = self._peer_tokens.get(address)
        if kept is None:
            return None
        if time.monotonic() - kept[1] > TOKEN_KEEP:
            del self._peer_tokens[address]
            return None
        return kept[0]

    def keep_token(self, address: Address, token: Any) -> None:
        if not isinstance(token, bytes) or not token:
            return
        self._peer_tokens[address] = (token, time.monotonic())
        self._peer_tokens.move_to_end(address)
        while len(self._peer_tokens) > MAX_PEER_TOKENS:
            self._peer_tokens.popitem(last=False)

    async def call_get_providers(self, node: Node, key: bytes) -> Any:
        """``get_providers``, shown our token for ``node`` if we have one.

        Without one the request is padded (:data:`PADDED_REQUEST`) so the
        answer may be large enough; if it still came back truncated, it is
        asked again at once with the token it carried.  The answer must carry
        a public key that is ``node``'s id.
        """
        address = (node.ip, node.port)

        def check(reply: Any) -> bool:
            return (isinstance(reply, list) and len(reply) == 5
                    and isinstance(reply[4], bytes) and node_id_of(reply[4]) == node.id)

        token = self.token_for(address)
        if token is not None:
            result = await self._call(node, "get_providers", key, token, check=check)
        else:
            result = await self._call(node, "get_providers", key, None, PAD, check=check)
        ok, reply = result
        if not ok:
            return result
        self.keep_token(address, reply[2])
        if reply[3] is True and isinstance(reply[2], bytes) and reply[2] != token:
            retry = await self._call(node, "get_providers", key, reply[2], check=check)
            if retry[0]:
                return retry
        return result

    # -- stock RPCs, validated ----------------------------------------------------------
    def rpc_ping(self, sender: Address, nodeid: Any, nonce: Any = None) -> Any:
        """Our id; with a nonce, also our public key and a signature over the nonce."""
        if not is_id(nodeid):
            return None
        self.welcome_if_new(Node(nodeid, sender[0], sender[1]))
        if nonce is None:
            return self.source_node.id
        if not (isinstance(nonce, bytes) and len(nonce) == NONCE_LEN):
            return None
        return [self.source_node.id, self.identity.public_key,
                self.identity.sign(PING_DOMAIN + nonce)]

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
    def rpc_get_providers(
        self, sender: Address, nodeid: Any, key: Any, token: Any = None, pad: Any = None
    ) -> Any:
        """``[records, closest nodes, write token, truncated, our public key]``.

        An asker that shows a valid token for its address gets every record
        (up to :data:`MAX_ANSWER` bytes); any other gets at most
        :data:`AMPLIFICATION` times its request's size, and when the whole
        answer is larger, only the token and the closest contacts that fit,
        flagged truncated.  ``pad`` is ignored: it makes a request big enough.
        """
        if not (is_id(nodeid) and is_id(key)):
            return None
        self.welcome_if_new(Node(nodeid, sender[0], sender[1]))
        records = self.providers.get(key)
        if not is_loopback(sender[0]):
            # A loopback address means nothing to a peer on another host.
            records = [r for r in records if not is_loopback(r.host)]
        validated = token is not None and self.tokens.check(sender[0], token)
        budget = MAX_ANSWER if validated else min(MAX_ANSWER,
                                                  AMPLIFICATION * self.request_size)
        return providers_answer(records, self._neighbors(key, nodeid, sender),
                                self.tokens.issue(sender[0]), self.identity.public_key,
                                budget - HEADER_LEN, validated)

    def rpc_add_provider(
        self, sender: Address, nodeid: Any, key: Any, token: Any, announcement: Any
    ) -> bool:
        """Store a signed record; the host is the packet's source, whatever it says.

        The cheap checks (token, shape, key matches id, age, would it be
        taken) come before the signature's (~50 us), so refused floods cost
        little.
        """
        if not (is_id(nodeid) and is_id(key)) or not self.tokens.check(sender[0], token):
            return False
        ann = SignedAnnouncement.from_wire(nodeid, announcement)
        if ann is None or not ann.owned() or ann.stale():
            return False
        if not self.providers.may_replace(key, nodeid, ann.issued_at, sender[0]):
            return False
        if not ann.verify(key):
            return False
        self.welcome_if_new(Node(nodeid, sender[0], sender[1]))
        # Before the add, so that keys this step empties make room before a
        # full store evicts a live one.
        self.providers.cull(budget=CULL_STEP)
        return self.providers.add(key, ann, sender[0], sender[0])

    def rpc_remove_provider(
        self, sender: Address, nodeid: Any, key: Any, token: Any, withdrawal: Any = None
    ) -> bool:
        """Remove the sender's record, on its signed word (issued after the record)."""
        if not (is_id(nodeid) and is_id(key)) or not self.tokens.check(sender[0], token):
            return False
        proof = Withdrawal.from_wire(withdrawal)
        issued = self.providers.issued(key, nodeid)
        if proof is None or issued is None or proof.issued_at < issued:
            return False
        if not proof.verify(key, nodeid):
            return False
        return self.providers.remove(key, nodeid, proof.issued_at)


def providers_answer(
    records: list[ProviderRecord], nodes: list[tuple[Any, ...]], token: bytes,
    public_key: bytes, budget: int, validated: bool,
) -> Packed:
    """A ``get_providers`` answer of at most ``budget`` bytes of msgpack, packed.

    Whole when it fits; for a validated asker, the records that fit (in the
    store's order, one source at a time); otherwise none, and as many of the
    closest contacts as fit, flagged truncated so the asker asks again with
    the token.
    """
    wires = [r.to_wire() for r in records]
    whole = pack([wires, nodes, token, False, public_key])
    if len(whole) <= budget:
        return Packed(whole)
    if validated:
        fixed = len(pack([[], nodes, token, False, public_key]))
        wires = wires[:_fitting(wires, fixed, budget)]
        return Packed(pack([wires, nodes, token, False, public_key]))
    fixed = len(pack([[], [], token, True, public_key]))
    return Packed(pack([[], nodes[:_fitting(nodes, fixed, budget)], token, True, public_key]))


def _fitting(items: list[Any], fixed: int, budget: int) -> int:
    """How many of ``items`` fit in ``budget`` bytes as the one list of a ``fixed``-byte answer.

    msgpack spends one byte on an array of up to 15 items (counted in
    ``fixed``) and three on a longer one.
    """
    size = fixed
    for n, item in enumerate(items):
        size += len(pack(item)) + (2 if n == 15 else 0)
        if size > budget:
            return n
    return len(items)


class Server(_KadServer):  # type: ignore[misc]
    protocol_class = DhtProtocol

    def __init__(self, identity: Identity, providers: ProviderStore, timeout: float,
                 dead_ttl: float):
        super().__init__(ksize=KSIZE, alpha=ALPHA, node_id=identity.node_id,
                         storage=ForgetfulStorage())
        self._identity = identity
        self._providers = providers
        self._timeout = timeout
        self._dead_ttl = dead_ttl

    def _create_protocol(self) -> DhtProtocol:
        return DhtProtocol(self.node, self.storage, self.ksize, self._providers, self._timeout,
                           self._dead_ttl, self._identity)

    def refresh_table(self, interval: int = 3600) -> None:
        """Disabled: :meth:`Dht.refresh` keeps the table full with our own lookups."""


def new_nonce() -> bytes:
    return os.urandom(NONCE_LEN)


__all__ = ["ALPHA", "AMPLIFICATION", "CULL_STEP", "KSIZE", "MAX_ANSWER", "DhtProtocol",
           "Server", "new_nonce", "providers_answer", "signed_pong"]
