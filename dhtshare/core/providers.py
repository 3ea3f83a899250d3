"""Provider records: who holds which content, as kept by DHT nodes (sans-IO).

kademlia's value store keeps one value per key and the last writer wins, so
it cannot hold "every peer that has this file".  Instead each DHT node keeps
a :class:`ProviderStore`: per key, one record per provider, each with its own
expiry, capped in count, unioned on lookup.  A record says where the
provider's chunk service listens and which chunks of the manifest it holds,
in a compact form (``complete``, or a small bitfield, or "partial, ask me").

The provider's host is taken from the UDP packet that announced it, never
from the payload, unless the node was started with ``--advertise``; a write
token bound to the sender's address (as in BitTorrent's BEP 5) proves the
announcer can receive packets there, so nobody can register someone else.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from dhtshare.core.ids import NODE_ID_LEN

#: Bitfields above this many bytes are not put in the DHT (a record must stay
#: well under the ~1.2 KB that is safe in one UDP datagram); such providers
#: are marked "partial" and asked for their chunk map directly.
MAX_DHT_BITFIELD = 512
MAX_PROVIDERS_PER_KEY = 64
MAX_KEYS = 200_000
#: A provider may ask for a record to live at most this long.
MAX_TTL = 24 * 3600.0
TOKEN_LEN = 8
TOKEN_ROTATE = 300.0


#: The host of a node's record about itself: "wherever you reached me".  A
#: node bound to 0.0.0.0 cannot know which of its addresses a peer used, but
#: the peer does, and substitutes it (see ``Dht._parse_reply``).
SELF_HOST = ""


@dataclass(frozen=True, slots=True)
class ProviderRecord:
    """One provider of one key, as returned by a lookup."""

    node_id: bytes
    host: str
    port: int
    ttl: float
    complete: bool
    bitfield: bytes = b""

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def to_wire(self) -> list[Any]:
        ttl = math.ceil(self.ttl)
        return [self.node_id, self.host, self.port, ttl, self.complete, self.bitfield]

    @classmethod
    def from_wire(cls, obj: Any) -> ProviderRecord | None:
        """Parse one record from a lookup answer; ``None`` when malformed."""
        if not isinstance(obj, list | tuple) or len(obj) != 6:
            return None
        node_id, host, port, ttl, complete, bitfield = obj
        if not (
            isinstance(node_id, bytes)
            and len(node_id) == NODE_ID_LEN
            and isinstance(host, str)
            and len(host) <= 255
            and isinstance(port, int)
            and not isinstance(port, bool)
            and 0 < port < 65536
            and isinstance(ttl, int | float)
            and math.isfinite(ttl)
            and isinstance(complete, bool)
            and isinstance(bitfield, bytes)
            and len(bitfield) <= MAX_DHT_BITFIELD
        ):
            return None
        return cls(node_id, host, port, float(ttl), complete, bitfield)


@dataclass(frozen=True, slots=True)
class Announcement:
    """What a provider sends about itself (the host comes from the packet)."""

    port: int
    ttl: float
    complete: bool
    bitfield: bytes = b""
    advertise: str | None = None

    def to_wire(self) -> list[Any]:
        bitfield = self.bitfield if len(self.bitfield) <= MAX_DHT_BITFIELD else b""
        return [self.port, self.advertise, math.ceil(self.ttl), self.complete, bitfield]

    @classmethod
    def from_wire(cls, obj: Any) -> Announcement | None:
        if not isinstance(obj, list | tuple) or len(obj) != 5:
            return None
        port, advertise, ttl, complete, bitfield = obj
        if not (
            isinstance(port, int)
            and not isinstance(port, bool)
            and 0 < port < 65536
            and (advertise is None or (isinstance(advertise, str) and 0 < len(advertise) <= 255))
            and isinstance(ttl, int | float)
            and not math.isnan(ttl)
            and ttl > 0
            and isinstance(complete, bool)
            and isinstance(bitfield, bytes)
            and len(bitfield) <= MAX_DHT_BITFIELD
        ):
            return None
        return cls(port, min(float(ttl), MAX_TTL), complete, bitfield, advertise)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@dataclass(slots=True)
class _Entry:
    host: str
    port: int
    expires: float
    complete: bool
    bitfield: bytes
    #: The IP address the record was registered from: only it may replace or remove it.
    origin: str


class ProviderStore:
    """Per-key provider sets with per-entry expiry and caps on keys and entries."""

    def __init__(
        self, max_per_key: int = MAX_PROVIDERS_PER_KEY, max_keys: int = MAX_KEYS
    ) -> None:
        self.max_per_key = max_per_key
        self.max_keys = max_keys
        self._data: OrderedDict[bytes, dict[bytes, _Entry]] = OrderedDict()
        #: The keys of the current budgeted :meth:`cull` pass, and how many it has seen.
        self._sweep: list[bytes] = []
        self._swept = 0

    def __len__(self) -> int:
        return len(self._data)

    def add(
        self,
        key: bytes,
        node_id: bytes,
        host: str,
        ann: Announcement,
        now: float | None = None,
        origin: str | None = None,
    ) -> bool:
        """Store or refresh a record; False when another address owns this node's record."""
        now = time.monotonic() if now is None else now
        origin = host if origin is None else origin
        current = self._data.get(key, {}).get(node_id)
        if current is not None and current.origin != origin and current.expires > now:
            return False
        entries = self._data.get(key)
        if entries is None:
            while len(self._data) >= self.max_keys:
                self._data.popitem(last=False)
            entries = self._data[key] = {}
        else:
            self._data.move_to_end(key)
        entries[node_id] = _Entry(host, ann.port, now + ann.ttl, ann.complete, ann.bitfield,
                                  origin)
        if len(entries) > self.max_per_key:
            # Drop whichever record would lapse first.
            oldest = min(entries, key=lambda nid: entries[nid].expires)
            del entries[oldest]
        return True

    def remove(self, key: bytes, node_id: bytes, origin: str) -> bool:
        """Remove ``node_id``'s record if it was registered from ``origin``."""
        entries = self._data.get(key)
        if not entries or node_id not in entries or entries[node_id].origin != origin:
            return False
        del entries[node_id]
        if not entries:
            del self._data[key]
        return True

    def get(self, key: bytes, now: float | None = None) -> list[ProviderRecord]:
        now = time.monotonic() if now is None else now
        entries = self._data.get(key)
        if not entries:
            return []
        for nid in [n for n, e in entries.items() if e.expires <= now]:
            del entries[nid]
        if not entries:
            del self._data[key]
            return []
        return [
            ProviderRecord(nid, e.host, e.port, e.expires - now, e.complete, e.bitfield)
            for nid, e in entries.items()
        ]

    def cull(self, now: float | None = None, budget: int | None = None) -> int:
        """Drop expired records; returns how many went.

        :meth:`get` drops a key's expired records when the key is read; this
        sweeps the keys nobody reads any more, which would otherwise keep
        their records until :attr:`max_keys` evicts them.  Without ``budget``
        it sweeps every key at once: O(records held), most of a second at
        :data:`MAX_KEYS`.  With it, it looks at no more than ``budget`` keys
        and the next call carries on where this one stopped, so a sweep can
        be spread over many small steps.
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
                del entries[nid]
            dropped += len(dead)
            if not entries:
                del self._data[key]
        return dropped


class TokenIssuer:
    """Write tokens bound to an IP address, valid for one to two rotation periods."""

    def __init__(self, rotate: float = TOKEN_ROTATE) -> None:
        self._rotate = rotate
        self._secrets = [os.urandom(16), os.urandom(16)]
        self._rotated_at = time.monotonic()

    def _maybe_rotate(self) -> None:
        now = time.monotonic()
        elapsed = now - self._rotated_at
        if elapsed >= 2 * self._rotate:
            self._secrets = [os.urandom(16), os.urandom(16)]  # idle: both are too old
            self._rotated_at = now
        elif elapsed >= self._rotate:
            self._secrets = [os.urandom(16), self._secrets[0]]
            self._rotated_at = now

    @staticmethod
    def _mac(secret: bytes, host: str) -> bytes:
        return hmac.new(secret, host.encode(), hashlib.sha256).digest()[:TOKEN_LEN]

    def issue(self, host: str) -> bytes:
        self._maybe_rotate()
        return self._mac(self._secrets[0], host)

    def check(self, host: str, token: object) -> bool:
        self._maybe_rotate()
        if not isinstance(token, bytes):
            return False
        return any(hmac.compare_digest(self._mac(s, host), token) for s in self._secrets)
