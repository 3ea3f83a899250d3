"""The bounded store of provider records each DHT node keeps for the others (sans-IO).

Strangers may send as many valid-looking records as they like, signed with
fresh keys (verifying them is :mod:`dhtshare.core.providers`' part, done
before :meth:`ProviderStore.add`).  So the store is bounded per key, per
source address and per provider key, and in all; when a key is full it
evicts from whoever holds the most records of that key, so a flood pushes
out the flooder's own records first, never the honest one that lapses soonest.
"""

from __future__ import annotations

import ipaddress
import sys
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from dhtshare.core.providers import MAX_TTL, SKEW_ALLOWANCE, ProviderRecord, SignedAnnouncement

# -- caps: what one node keeps for everyone else ---------------------------------------
#: Records per key.  A popular file has more providers than this; a lookup
#: unions the sets of the 8 closest nodes, and a fetch needs a few, not all.
MAX_PROVIDERS_PER_KEY = 64
#: Records of one key from one source address (an IPv4 address, an IPv6 /64).
#: One host seldom runs more than a few nodes; a flooder with one address
#: cannot fill a key, and needs 16 addresses that receive packets to do so.
MAX_PER_SOURCE_PER_KEY = 4
#: Records from one source address across all keys.  Honest nodes hold far
#: fewer here (a node stores only the keys near its id), except in a tiny
#: network where every node holds every key: a NAT-shared address with more
#: than this many files among its nodes then has only this many findable here.
MAX_PER_SOURCE = 4096
#: Records signed by one provider key across all keys (the same reasoning:
#: a node sharing more files than this in a network of a handful of nodes).
#: Beyond it a provider's new records are refused; it keeps those it has.
MAX_PER_PROVIDER = 4096
#: Records in all: at most about 50 MB (~1 KB a record when each has a key, a
#: provider and a source of its own).  The caps above bound one flooder, this
#: bounds a crowd of them: when full, the source holding the most records
#: loses its oldest one.
MAX_RECORDS = 50_000
#: Keys in all (never the binding limit while it is at least MAX_RECORDS).
MAX_KEYS = 200_000
#: IPv6 sources are counted per /64, the block one subscriber gets.
IPV6_SOURCE_PREFIX = 64

#: The source of this node's own records (exempt from the per-source caps).
OWN = "\0own"


def source_of(ip: str) -> str:
    """What the per-source caps count by: an IPv4 address, or an IPv6 address's /64."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, IPV6_SOURCE_PREFIX), strict=False))
    return str(addr)


@dataclass(slots=True)
class _Entry:
    host: str
    port: int
    #: On this node's monotonic clock.
    expires: float
    complete: bool
    bitfield: bytes
    #: The IP address the record was registered from, and what the caps count it by.
    origin: str
    source: str
    issued_at: int
    signed_ttl: int
    public_key: bytes
    signature: bytes

    def record(self, node_id: bytes, now: float) -> ProviderRecord:
        return ProviderRecord(node_id, self.host, self.port, self.expires - now, self.complete,
                              self.bitfield, self.issued_at, self.signed_ttl, self.public_key,
                              self.signature)


class ProviderStore:
    """Per-key provider sets with per-entry expiry, bounded per key, source and provider.

    Callers check signatures (:meth:`SignedAnnouncement.verify`) before
    :meth:`add`; the store decides what to keep.
    """

    def __init__(
        self,
        max_per_key: int = MAX_PROVIDERS_PER_KEY,
        max_keys: int = MAX_KEYS,
        *,
        max_per_source_per_key: int = MAX_PER_SOURCE_PER_KEY,
        max_per_source: int = MAX_PER_SOURCE,
        max_per_provider: int = MAX_PER_PROVIDER,
        max_records: int = MAX_RECORDS,
    ) -> None:
        self.max_per_key = max_per_key
        self.max_keys = max_keys
        self.max_per_source_per_key = max_per_source_per_key
        self.max_per_source = max_per_source
        self.max_per_provider = max_per_provider
        self.max_records = max_records
        #: Keys in write order (the least recently written first).
        self._data: OrderedDict[bytes, dict[bytes, _Entry]] = OrderedDict()
        #: Each source's records, oldest write first (plain dicts: an OrderedDict
        #: of one record costs twice as much, and finding the oldest after
        #: deletions scans at most a cap's worth).
        self._by_source: dict[str, dict[tuple[bytes, bytes], None]] = {}
        #: How many records each provider has here.
        self._by_provider: dict[bytes, int] = {}
        #: Sources by how many records they hold, to find the largest at once.
        self._tiers: dict[int, dict[str, None]] = {}
        self._top = 0
        self._records = 0
        #: The keys of the current budgeted :meth:`cull` pass, and how many it has seen.
        self._sweep: list[bytes] = []
        self._swept = 0

    def __len__(self) -> int:
        """How many keys have records."""
        return len(self._data)

    @property
    def records(self) -> int:
        return self._records

    def held_from(self, origin: str) -> int:
        """How many records the source of ``origin`` holds here."""
        return len(self._by_source.get(source_of(origin), ()))

    def issued(self, key: bytes, node_id: bytes) -> int | None:
        """When ``node_id``'s record of ``key`` here was issued (``None``: there is none)."""
        current = self._data.get(key, {}).get(node_id)
        return None if current is None else current.issued_at

    def held_by(self, node_id: bytes) -> int:
        """How many records provider ``node_id`` has here."""
        return self._by_provider.get(node_id, 0)

    # -- bookkeeping -------------------------------------------------------------------
    def _retier(self, source: str, before: int, after: int) -> None:
        if before:
            tier = self._tiers[before]
            del tier[source]
            if not tier:
                del self._tiers[before]
        if after:
            self._tiers.setdefault(after, {})[source] = None
        if after > self._top:
            self._top = after
        while self._top and self._top not in self._tiers:
            self._top -= 1

    def _insert(self, key: bytes, node_id: bytes, entry: _Entry) -> None:
        entries = self._data.get(key)
        if entries is None:
            entries = self._data[key] = {}
        else:
            self._data.move_to_end(key)
        entries[node_id] = entry
        mine = self._by_source.setdefault(entry.source, {})
        mine[(key, node_id)] = None
        self._retier(entry.source, len(mine) - 1, len(mine))
        self._by_provider[node_id] = self._by_provider.get(node_id, 0) + 1
        self._records += 1

    def _delete(self, key: bytes, node_id: bytes) -> None:
        entries = self._data[key]
        entry = entries.pop(node_id)
        if not entries:
            del self._data[key]
        mine = self._by_source[entry.source]
        del mine[(key, node_id)]
        self._retier(entry.source, len(mine) + 1, len(mine))
        if not mine:
            del self._by_source[entry.source]
        left = self._by_provider[node_id] - 1
        if left:
            self._by_provider[node_id] = left
        else:
            del self._by_provider[node_id]
        self._records -= 1

    def _evict_oldest_of(self, source: str) -> None:
        key, node_id = next(iter(self._by_source[source]))
        self._delete(key, node_id)

    def _evict_in_key(self, key: bytes, source: str) -> None:
        """Key full: the oldest record of whichever source holds the most of it goes.

        Counting the newcomer's source as holding one more, so that a source
        writing to a key where it is the largest replaces its own records.
        """
        entries = self._data[key]
        counts: dict[str, int] = {source: 1}
        for e in entries.values():
            counts[e.source] = counts.get(e.source, 0) + 1
        top = max(counts.values())
        for nid, e in entries.items():  # oldest write first
            if counts[e.source] == top:
                self._delete(key, nid)
                return
        self._delete(key, next(iter(entries)))  # only the newcomer's source is largest

    # -- the interface -----------------------------------------------------------------
    def may_replace(self, key: bytes, node_id: bytes, issued_at: int, origin: str,
                    now: float | None = None) -> bool:
        """Whether a record issued at ``issued_at`` from ``origin`` would be taken.

        A live record is replaced only by one issued later, or issued at the
        same time from the same address (a repeat): a record replayed from
        another address cannot displace the provider's own.  Cheap: called
        before a signature is checked.
        """
        now = time.monotonic() if now is None else now
        current = self._data.get(key, {}).get(node_id)
        if current is None or current.expires <= now:
            return True
        if issued_at != current.issued_at:
            return issued_at > current.issued_at
        return current.origin == origin

    def add(
        self,
        key: bytes,
        ann: SignedAnnouncement,
        host: str,
        origin: str,
        *,
        own: bool = False,
        now: float | None = None,
        wall: float | None = None,
    ) -> bool:
        """Store or refresh a verified record; False when refused (stale, older, capped out).

        ``host`` is where the provider is reached (the packet's source, or
        :data:`SELF_HOST`), ``origin`` the IP the announcement came from, and
        ``own`` marks this node's own records (exempt from per-source caps).
        """
        now = time.monotonic() if now is None else now
        wall = time.time() if wall is None else wall
        # Expiry runs on our clock; the signed time only caps how long a replay can live.
        ttl = min(float(ann.ttl), MAX_TTL, ann.issued_at / 1000 + ann.ttl + SKEW_ALLOWANCE - wall)
        if ttl <= 0 or not self.may_replace(key, ann.node_id, ann.issued_at, origin, now):
            return False
        node_id = ann.node_id
        replacing = node_id in self._data.get(key, {})
        if not (own or replacing) and self.held_by(node_id) >= self.max_per_provider:
            return False  # its own records are all it can lose: it keeps the ones it has
        # One string object per address, however many records it sends.
        origin = sys.intern(origin)
        host = origin if host == origin else sys.intern(host)
        source = OWN if own else sys.intern(source_of(origin))
        if replacing:
            self._delete(key, node_id)
        entries = self._data.get(key, {})
        if not own:
            mine = [nid for nid, e in entries.items() if e.source == source]
            if len(mine) >= self.max_per_source_per_key:
                self._delete(key, mine[0])
            if len(self._by_source.get(source, ())) >= self.max_per_source:
                self._evict_oldest_of(source)
        if len(self._data.get(key, ())) >= self.max_per_key:
            self._evict_in_key(key, source)
        while self._records >= self.max_records:
            self._evict_oldest_of(next(iter(self._tiers[self._top])))
        if key not in self._data:
            while len(self._data) >= self.max_keys:
                oldest = next(iter(self._data))
                for nid in list(self._data[oldest]):
                    self._delete(oldest, nid)
        self._insert(key, node_id, _Entry(
            host, ann.port, now + ttl, ann.complete, ann.bitfield, origin, source,
            ann.issued_at, ann.ttl, ann.public_key, ann.signature))
        return True

    def remove(self, key: bytes, node_id: bytes, issued_at: int | None = None) -> bool:
        """Remove ``node_id``'s record, if it was issued no later than ``issued_at``.

        ``None`` removes it whatever its age (this node's own records).
        """
        current = self._data.get(key, {}).get(node_id)
        if current is None or (issued_at is not None and issued_at < current.issued_at):
            return False
        self._delete(key, node_id)
        return True

    def get(self, key: bytes, now: float | None = None) -> list[ProviderRecord]:
        """The live records of ``key``, one source at a time in turn (fair to truncate)."""
        now = time.monotonic() if now is None else now
        entries = self._data.get(key)
        if not entries:
            return []
        for nid in [n for n, e in entries.items() if e.expires <= now]:
            self._delete(key, nid)
        entries = self._data.get(key)
        if not entries:
            return []
        return [e.record(nid, now) for nid, e in _round_robin(entries)]

    def cull(self, now: float | None = None, budget: int | None = None) -> int:
        """Drop expired records; returns how many went.

        :meth:`get` drops a key's expired records when the key is read; this
        sweeps the keys nobody reads any more, which would otherwise keep
        their records until the caps evict them.  Without ``budget``
        it sweeps every key at once: O(records held).  With it, it looks at no
        more than ``budget`` keys and the next call carries on where this one
        stopped, so a sweep can be spread over many small steps.
        """
        now = time.monotonic() if now is None else now
        if budget is None:
            keys = list(self._data)
        else:
            if self._swept >= len(self._sweep):  # a pass is over: start the next
                self._sweep = list(self._data)
                self._swept = 0
            keys = self._sweep[self._swept : self._swept + budget]
            self._swept += len(keys)
        dropped = 0
        for key in keys:
            entries = self._data.get(key)
            if entries is None:
                continue  # gone since the pass began
            dead = [nid for nid, e in entries.items() if e.expires <= now]
            for nid in dead:
                self._delete(key, nid)
            dropped += len(dead)
        return dropped


def _round_robin(entries: dict[bytes, _Entry]) -> Iterable[tuple[bytes, _Entry]]:
    """Entries with each source's first, then each one's second, and so on."""
    rank: dict[str, int] = {}
    ranked = []
    for i, (nid, e) in enumerate(entries.items()):
        r = rank.get(e.source, 0)
        rank[e.source] = r + 1
        ranked.append((r, i, nid, e))
    ranked.sort(key=lambda t: (t[0], t[1]))
    return [(nid, e) for _, _, nid, e in ranked]
