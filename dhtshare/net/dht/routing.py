"""k-buckets with a correct nearest-neighbour query, and the id arithmetic around them.

kademlia's ``find_neighbors`` walks buckets in index order and stops at the
first k contacts it meets, so it can answer a ``find_node`` with nodes that
are not the closest it knows: lookups then converge on the wrong nodes and
miss records.  :class:`RoutingTable` answers with the true k closest.  It
also pings a full bucket's least recently seen contact only when that one
has been quiet for a while (the protocol's ``check_alive``), with a tracked
task instead of a stray one, and keeps a contact's address when a packet
from elsewhere claims its id.
"""

from __future__ import annotations

import heapq
import os
from typing import Any

from kademlia.node import Node
from kademlia.routing import RoutingTable as _KadRoutingTable

from dhtshare.core.ids import NODE_ID_LEN


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
    _homes: dict[tuple[str, int], Node] | None = None

    def contacts(self) -> list[Node]:
        """Every contact (not the waiting lists); cached until the table changes."""
        if self._flat is None:
            self._flat = [n for b in self.buckets for n in b.nodes.values()]
            self._homes = None
        return self._flat

    def at_address(self, ip: str, port: int) -> Node | None:
        """The contact living at ``ip:port``, if any (one node, one address)."""
        contacts = self.contacts()
        if self._homes is None:
            self._homes = {(n.ip, n.port): n for n in contacts}
        return self._homes.get((ip, port))

    def touch(self, node: Node) -> bool:
        """``node`` was heard from: move it to its bucket's tail, or add it.

        False, and nothing changes, when ``node``'s id is known at another
        address: one packet from a new address never takes a contact over
        (anyone can put any id in a packet).  A live contact's old address is
        pinged instead; once it fails to answer it is evicted, and the id is
        free for whoever claims it next.  Likewise for a new id at the address
        of a live contact: one address is one node, so a sender cannot fill
        the table with ids of its own making; the contact there is pinged
        and kept while it answers with its id.
        """
        bucket = self.buckets[self.get_bucket_for(node)]
        known = bucket.nodes.get(node.id)
        waiting = bucket.replacement_nodes.get(node.id)
        contact = known if known is not None else waiting
        if contact is not None:
            if not contact.same_home_as(node):
                if known is not None:
                    self.protocol.check_alive(known, quiet=0.0)
                return False
            # To the tail.  A waiting contact moves in only if there is room:
            # otherwise the table is unchanged and its cached views stay valid.
            if bucket.add_node(contact) and known is None:
                self._flat = None
        else:
            there = self.at_address(node.ip, node.port)
            if there is not None:
                self.protocol.check_alive(there, quiet=0.0)
                return False
            self.add_contact(node)
        return True

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
        """Add ``node``, or put it on its full bucket's waiting list.

        The cached :meth:`contacts` are dropped only when the contacts change:
        in a network larger than the table, most packets come from nodes
        that wait (or would) in a full bucket, and rebuilding the cache for
        each of them cost every answered RPC a pass over the whole table.
        """
        index = self.get_bucket_for(node)
        bucket = self.buckets[index]
        if bucket.add_node(node):
            self._flat = None
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


__all__ = ["Node", "RoutingTable", "id_in_range", "is_id", "shared_bits"]
