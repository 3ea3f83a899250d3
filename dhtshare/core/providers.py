"""Provider records: who holds which content, as kept by DHT nodes (sans-IO).

kademlia's value store keeps one value per key and the last writer wins, so
it cannot hold "every peer that has this file".  Instead each DHT node keeps
a :class:`~dhtshare.core.provider_store.ProviderStore` of these records: per
key, one record per provider, unioned on lookup.  A record says where the
provider's chunk service listens and which chunks of the manifest it holds,
in a compact form (``complete``, or a small bitfield, or "partial, ask me").

Every record is **signed** by its provider's Ed25519 key (see
:mod:`dhtshare.core.identity`): the signature covers the DHT key, the node
id, the port, what it holds and when it was issued, for how long.  A holder
checks it before storing and a fetcher before using, so nobody can announce
in another node's name, and a holder cannot make records up either.

The provider's host is not signed: it is taken from the UDP packet that
announced it, never from the payload; a write token bound to the sender's
address (as in BitTorrent's BEP 5) proves the announcer can receive packets
there, so nobody can register someone else's address.

How many records a node keeps, and for whom, is :mod:`dhtshare.core.provider_store`'s
business; write tokens are :mod:`dhtshare.core.tokens`'.
"""

from __future__ import annotations

import ipaddress
import math
import time
from dataclasses import dataclass
from typing import Any

import msgpack

from dhtshare.core.identity import PUBLIC_LEN, Identity, node_id_of, verify
from dhtshare.core.ids import NODE_ID_LEN

#: Bitfields above this many bytes are not put in the DHT (a record must stay
#: well under the ~1.2 KB that is safe in one UDP datagram); such providers
#: are marked "partial" and asked for their chunk map directly.
MAX_DHT_BITFIELD = 512
#: A provider may ask for a record to live at most this long.
MAX_TTL = 24 * 3600.0
SIGNATURE_LEN = 64

#: How far apart two nodes' wall clocks may be.  A record's signed issue time
#: is only used to refuse stale replays (issued + ttl + this < now), never to
#: time its expiry, which runs on the holder's own monotonic clock: a node
#: whose clock is minutes off still has its records kept for their whole ttl.
SKEW_ALLOWANCE = 3600.0

#: The host of a node's record about itself: "wherever you reached me".  A
#: node bound to 0.0.0.0 cannot know which of its addresses a peer used, but
#: the peer does, and substitutes it (see ``lookups._parse_reply``).
SELF_HOST = ""
PROVIDER_DOMAIN = b"dhtshare/provider/v1\0"
WITHDRAW_DOMAIN = b"dhtshare/withdraw/v1\0"


def _pack(obj: Any) -> bytes:
    out: bytes = msgpack.packb(obj, use_bin_type=True)
    return out


def provider_payload(
    key: bytes, node_id: bytes, port: int, complete: bool, bitfield: bytes,
    issued_at: int, ttl: int,
) -> bytes:
    """The bytes a provider signs: domain-separated, every field but the host."""
    return PROVIDER_DOMAIN + _pack([key, node_id, port, complete, bitfield, issued_at, ttl])


def withdraw_payload(key: bytes, node_id: bytes, issued_at: int) -> bytes:
    return WITHDRAW_DOMAIN + _pack([key, node_id, issued_at])


def stale(issued_at: int, ttl: float, wall: float) -> bool:
    """Whether a record issued at ``issued_at`` (ms) for ``ttl`` s is past any skew."""
    return issued_at / 1000 + ttl + SKEW_ALLOWANCE < wall


def _is_int(v: object, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _is_proof(issued_at: object, public_key: object, signature: object) -> bool:
    return (
        _is_int(issued_at, 0, 2**63 - 1)
        and isinstance(public_key, bytes)
        and len(public_key) == PUBLIC_LEN
        and isinstance(signature, bytes)
        and len(signature) == SIGNATURE_LEN
    )


@dataclass(frozen=True, slots=True)
class ProviderRecord:
    """One provider of one key, as returned by a lookup (with its provider's signature)."""

    node_id: bytes
    host: str
    port: int
    #: Seconds left, as the holder that returned it counts (at most ``signed_ttl``).
    ttl: float
    complete: bool
    bitfield: bytes = b""
    #: When the provider signed it (ms since the epoch, its clock) and for how long (s).
    issued_at: int = 0
    signed_ttl: int = 0
    public_key: bytes = b""
    signature: bytes = b""

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def to_wire(self) -> list[Any]:
        ttl = min(math.ceil(self.ttl), self.signed_ttl)
        return [self.node_id, self.host, self.port, ttl, self.complete, self.bitfield,
                self.issued_at, self.signed_ttl, self.public_key, self.signature]

    @classmethod
    def from_wire(cls, obj: Any) -> ProviderRecord | None:
        """Parse one record from a lookup answer; ``None`` when malformed.

        Only the shape is checked here: :meth:`verify` checks the signature.
        """
        if not isinstance(obj, list | tuple) or len(obj) != 10:
            return None
        node_id, host, port, ttl, complete, bitfield, issued_at, signed_ttl, pub, sig = obj
        if not (
            isinstance(node_id, bytes)
            and len(node_id) == NODE_ID_LEN
            and isinstance(host, str)
            and len(host) <= 255
            and _is_int(port, 1, 65535)
            and isinstance(ttl, int | float)
            and math.isfinite(ttl)
            and isinstance(complete, bool)
            and isinstance(bitfield, bytes)
            and len(bitfield) <= MAX_DHT_BITFIELD
            and _is_int(signed_ttl, 1, int(MAX_TTL))
            and _is_proof(issued_at, pub, sig)
        ):
            return None
        return cls(node_id, host, port, float(min(ttl, signed_ttl)), complete, bitfield,
                   issued_at, signed_ttl, pub, sig)

    def payload(self, key: bytes) -> bytes:
        return provider_payload(key, self.node_id, self.port, self.complete, self.bitfield,
                                self.issued_at, self.signed_ttl)

    def verify(self, key: bytes, wall: float | None = None) -> bool:
        """Whether this record is ``node_id``'s own, signed for ``key``, and not a stale replay."""
        wall = time.time() if wall is None else wall
        return (
            not stale(self.issued_at, self.signed_ttl, wall)
            and node_id_of(self.public_key) == self.node_id
            and verify(self.public_key, self.signature, self.payload(key))
        )


@dataclass(frozen=True, slots=True)
class Announcement:
    """What a provider says about itself before it is signed (the host comes from the packet).

    ``advertise`` is the host this node tells others to use (``--advertise``);
    only its own store uses it: other holders take the packet's source address.
    """

    port: int
    ttl: float
    complete: bool
    bitfield: bytes = b""
    advertise: str | None = None


@dataclass(frozen=True, slots=True)
class SignedAnnouncement:
    """An announcement as ``add_provider`` carries it, signed by the provider.

    On the wire: ``[port, advertise or nil, ttl, complete, bitfield,
    issued_at, public_key, signature]``; the node id is the request's sender
    id and the key the request's key, both covered by the signature.
    """

    node_id: bytes
    port: int
    ttl: int
    complete: bool
    bitfield: bytes
    issued_at: int
    public_key: bytes
    signature: bytes
    advertise: str | None = None

    @classmethod
    def make(cls, identity: Identity, key: bytes, ann: Announcement,
             issued_at: int) -> SignedAnnouncement:
        bitfield = ann.bitfield if len(ann.bitfield) <= MAX_DHT_BITFIELD else b""
        ttl = max(1, min(math.ceil(ann.ttl), int(MAX_TTL)))
        payload = provider_payload(key, identity.node_id, ann.port, ann.complete, bitfield,
                                   issued_at, ttl)
        return cls(identity.node_id, ann.port, ttl, ann.complete, bitfield, issued_at,
                   identity.public_key, identity.sign(payload), ann.advertise)

    def to_wire(self) -> list[Any]:
        return [self.port, self.advertise, self.ttl, self.complete, self.bitfield,
                self.issued_at, self.public_key, self.signature]

    @classmethod
    def from_wire(cls, node_id: bytes, obj: Any) -> SignedAnnouncement | None:
        """Parse the shape (the signature is :meth:`verify`'s); ``None`` when malformed."""
        if not isinstance(obj, list | tuple) or len(obj) != 8:
            return None
        port, advertise, ttl, complete, bitfield, issued_at, pub, sig = obj
        if not (
            isinstance(node_id, bytes)
            and len(node_id) == NODE_ID_LEN
            and _is_int(port, 1, 65535)
            and (advertise is None or (isinstance(advertise, str) and 0 < len(advertise) <= 255))
            and _is_int(ttl, 1, int(MAX_TTL))
            and isinstance(complete, bool)
            and isinstance(bitfield, bytes)
            and len(bitfield) <= MAX_DHT_BITFIELD
            and _is_proof(issued_at, pub, sig)
        ):
            return None
        return cls(node_id, port, ttl, complete, bitfield, issued_at, pub, sig, advertise)

    def owned(self) -> bool:
        """Whether the key is the node id's (a hash: cheap, checked before the signature)."""
        return node_id_of(self.public_key) == self.node_id

    def verify(self, key: bytes) -> bool:
        payload = provider_payload(key, self.node_id, self.port, self.complete, self.bitfield,
                                   self.issued_at, self.ttl)
        return self.owned() and verify(self.public_key, self.signature, payload)

    def stale(self, wall: float | None = None) -> bool:
        return stale(self.issued_at, self.ttl, time.time() if wall is None else wall)


@dataclass(frozen=True, slots=True)
class Withdrawal:
    """A provider's signed "forget my record of this key" (``[issued_at, public_key, sig]``).

    It removes a record issued no later than itself, so replaying an old
    withdrawal cannot remove a newer announcement.
    """

    issued_at: int
    public_key: bytes
    signature: bytes

    @classmethod
    def make(cls, identity: Identity, key: bytes, issued_at: int) -> Withdrawal:
        sig = identity.sign(withdraw_payload(key, identity.node_id, issued_at))
        return cls(issued_at, identity.public_key, sig)

    def to_wire(self) -> list[Any]:
        return [self.issued_at, self.public_key, self.signature]

    @classmethod
    def from_wire(cls, obj: Any) -> Withdrawal | None:
        if not isinstance(obj, list | tuple) or len(obj) != 3 or not _is_proof(*obj):
            return None
        return cls(*obj)

    def verify(self, key: bytes, node_id: bytes) -> bool:
        return (node_id_of(self.public_key) == node_id
                and verify(self.public_key, self.signature,
                           withdraw_payload(key, node_id, self.issued_at)))


class Signer:
    """Signs this node's announcements and withdrawals, with issue times that only go up."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self._last = 0

    def _issue_time(self) -> int:
        self._last = max(int(time.time() * 1000), self._last + 1)
        return self._last

    def announcement(self, key: bytes, ann: Announcement) -> SignedAnnouncement:
        return SignedAnnouncement.make(self.identity, key, ann, self._issue_time())

    def withdrawal(self, key: bytes) -> Withdrawal:
        return Withdrawal.make(self.identity, key, self._issue_time())


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
