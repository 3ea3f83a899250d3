"""One iterative lookup, driven over the network.

:class:`~dhtshare.core.lookup.Lookup` decides whom to ask and when a lookup is
done (sans-IO: it ends when the closest answers are in, never waiting out a
dead node); :func:`run_lookup` is its I/O loop.  It sends the queries the
state machine asks for, feeds it the validated answers, unions the provider
records every answering node returned (kademlia would keep the first), and
when a query times out tells the nodes near that contact to check it, so the
next node looking there is not handed it.

Every provider record is checked against its provider's signature before it
is used: a holder can drop records, but not make them up or alter them
(:data:`MAX_VERIFIED` bounds the work of one lookup).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from dhtshare.core.lookup import Contact, Lookup
from dhtshare.core.providers import SELF_HOST, ProviderRecord, stale
from dhtshare.net.dht.datagram import is_peer_address
from dhtshare.net.dht.kad import ALPHA, KSIZE, DhtProtocol
from dhtshare.net.dht.routing import Node, is_id

log = logging.getLogger(__name__)

#: How many of the closest nodes hold each provider record.
REPLICATION = 8
#: Upper bound on queries of one lookup, whatever the network answers.
MAX_QUERIES = 64
#: Most nodes told that one contact of a lookup did not answer.
MAX_HINTED = 12
#: Most records one answer may carry, and most signatures one lookup checks
#: (about 100 us each); records beyond are dropped unchecked.
MAX_RECORDS_PER_ANSWER = 64
MAX_VERIFIED = 1024
#: Records remembered as verified, across lookups.
MAX_KNOWN_GOOD = 4096

OnRecords = Callable[[list[ProviderRecord]], None]


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


async def run_lookup(
    proto: DhtProtocol, key: bytes, rpc: str, on_records: OnRecords | None = None
) -> LookupResult:
    """Iterative lookup of ``key`` (see :mod:`dhtshare.core.lookup` for when it ends).

    Returns the closest answering nodes (with the write token each gave,
    when ``rpc`` is ``get_providers``) and the union of every provider
    record any of them returned, and of those this node holds itself.
    ``on_records`` is called with each batch of newly seen records as
    answers arrive, so a fetch can start before the lookup ends.
    """
    self_id: bytes = proto.source_node.id
    target = Node(key)
    seeds = [Contact(n.id, n.ip, n.port) for n in proto.router.find_neighbors(target, KSIZE)]
    lookup = Lookup(key, seeds, want=REPLICATION, alpha=ALPHA, max_queries=MAX_QUERIES,
                    self_id=self_id)
    found: dict[bytes, ProviderRecord] = {}
    tokens: dict[bytes, bytes] = {}
    pending: dict[asyncio.Future[Any], Contact] = {}
    checker = _Checker(key, proto.known_good)
    loop = asyncio.get_running_loop()
    if on_records is not None:
        own = [r for r in proto.providers.get(key) if r.node_id != self_id]
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
                node = Node(c.id, c.ip, c.port)
                query: asyncio.Future[Any] = asyncio.ensure_future(
                    proto.call_get_providers(node, key) if rpc == "get_providers"
                    else proto._call(node, rpc, key))
                query.add_done_callback(_suspect_on_failure(proto, lookup, c))
                pending[query] = c
        if lookup.done or not pending:
            break
        expiry = lookup.next_expiry(stale_after)
        wait = max(0.005, expiry - now) if expiry is not None else None
        try:
            done, _ = await asyncio.wait(pending, timeout=wait,
                                         return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # Nobody wants the answer any more: the queries end with the lookup.
            for query in pending:
                query.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            raise
        for fut in done:
            c = pending.pop(fut)
            ok, reply = fut.result()
            parsed = _parse_reply(rpc, reply, c, self_id, checker) if ok else None
            if parsed is None:
                lookup.failed(c.id)
                continue
            nodes, records, token = parsed
            tokens[c.id] = token
            fresh = _merge(found, records)
            if fresh and on_records is not None:
                on_records(fresh)
            lookup.answered(c.id, [n for n in nodes if not proto.is_dead(n.addr)])
    for straggler in pending:  # they finish (and evict their node if dead) on their own
        proto.adopt(straggler)
    closest = [(Node(c.id, c.ip, c.port), tokens.get(c.id, b"")) for c in lookup.closest()]
    for rec in proto.providers.get(key):
        found.setdefault(rec.node_id, rec)
    return LookupResult(closest, found, lookup.queries, lookup.hops, lookup.stale_count,
                        lookup.failures)


def _suspect_on_failure(
    proto: DhtProtocol, lookup: Lookup, contact: Contact
) -> Callable[[asyncio.Future[Any]], None]:
    """When a query times out, tell the nodes near it to check that contact.

    Those are the nodes that named it and the others that answered this
    lookup: they sit near the same key, so they are the ones that would
    hand it to the next node looking there.
    """

    def done(fut: asyncio.Future[Any]) -> None:
        if fut.cancelled() or fut.result()[0]:
            return
        if not proto.open or proto.leaving:
            return
        near = dict.fromkeys([*lookup.referrers(contact.id),
                              *(c.id for c in lookup.answered_contacts())])
        for ref in list(near)[:MAX_HINTED]:
            node = proto.router.get_contact(ref)
            if node is not None:
                proto.adopt(proto.request((node.ip, node.port), "suspect", proto.source_node.id,
                                          [contact.id]))

    return done


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


class _Checker:
    """Signature checks of one lookup: each record once, at most :data:`MAX_VERIFIED`.

    Records that verified are remembered by the protocol across lookups (a
    fetch looks the same key up again and again), by their whole signed
    content: the same signature on other fields is another record.
    """

    def __init__(self, key: bytes, known_good: OrderedDict[tuple[bytes, ...], None]) -> None:
        self.key = key
        self.wall = time.time()
        self._good = known_good
        self._seen: dict[tuple[bytes, ...], bool] = {}

    def stale(self, rec: ProviderRecord) -> bool:
        """Past its signed life by our clock (a holder's clock may differ: not a forgery)."""
        return stale(rec.issued_at, rec.signed_ttl, self.wall)

    def good(self, rec: ProviderRecord) -> bool | None:
        """Whether ``rec`` verifies; ``None`` when the lookup's budget is spent."""
        which = (rec.payload(self.key), rec.public_key, rec.signature)
        if which in self._good:
            self._good.move_to_end(which)
            return True
        known = self._seen.get(which)
        if known is not None:
            return known
        if len(self._seen) >= MAX_VERIFIED:
            return None
        ok = self._seen[which] = rec.verify(self.key, self.wall)
        if ok:
            self._good[which] = None
            while len(self._good) > MAX_KNOWN_GOOD:
                self._good.popitem(last=False)
        return ok


def _parse_reply(
    rpc: str, reply: Any, node: Contact, self_id: bytes, checker: _Checker
) -> tuple[list[Contact], list[ProviderRecord], bytes] | None:
    """The contacts, verified records and token of an answer; ``None`` when it is malformed.

    An answer with a record that fails its signature came from a node that
    stores or makes up forgeries (holders check before storing): the rest of
    its records are not even looked at.
    """
    if rpc == "find_node":
        return (_contacts(reply, self_id), [], b"") if isinstance(reply, list) else None
    if not (isinstance(reply, list) and len(reply) == 5):
        return None
    raw_records, raw_nodes, token, _truncated, _key = reply
    if not isinstance(raw_records, list) or not isinstance(raw_nodes, list):
        return None
    records = []
    for raw in raw_records[:MAX_RECORDS_PER_ANSWER]:
        rec = ProviderRecord.from_wire(raw)
        if rec is None or rec.ttl <= 0 or checker.stale(rec):
            continue
        good = checker.good(rec)
        if good is None:
            break
        if not good:
            log.debug("%s:%d returned a forged provider record", node.ip, node.port)
            break
        if rec.host == SELF_HOST:
            # A node's record of itself: reachable where we just reached it.
            if rec.node_id != node.id:
                continue
            rec = replace(rec, host=node.ip)
        records.append(rec)
    return _contacts(raw_nodes, self_id), records, token if isinstance(token, bytes) else b""


def _contacts(raw: list[Any], self_id: bytes) -> list[Contact]:
    """The well-formed contacts of an answer: an id, an IPv4 literal, a port."""
    return [
        Contact(t[0], t[1], t[2])
        for t in raw[: 2 * KSIZE]
        if isinstance(t, list | tuple)
        and len(t) == 3
        and is_id(t[0])
        and t[0] != self_id
        and is_peer_address((t[1], t[2]))
    ]


__all__ = ["LookupResult", "OnRecords", "run_lookup"]
