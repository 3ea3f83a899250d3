"""A node's long-term identity: an Ed25519 key, and the node id derived from it.

A node id that is whatever a node says it is lets anyone take any place in
the DHT and pose as any node.  Deriving the id from a public key means a node
can only claim the id of a key it holds, which the link handshake then proves
(it signs the handshake's static key, as libp2p-noise does).  The key math is
the `cryptography` package's; nothing here is hand-rolled.
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from dhtshare.core.ids import NODE_ID_LEN, NodeId
from dhtshare.errors import ConfigError

SEED_LEN = 32
PUBLIC_LEN = 32
_ID_DOMAIN = b"dhtshare/node-id/v1\0"


def node_id_of(public_key: bytes) -> NodeId:
    """The 160-bit DHT node id that belongs to ``public_key``."""
    return NodeId(hashlib.sha256(_ID_DOMAIN + public_key).digest()[:NODE_ID_LEN])


def fingerprint(public_key: bytes) -> str:
    """A short, readable name for a key: the first 16 bytes of its SHA-256, grouped."""
    digest = hashlib.sha256(public_key).hexdigest()[:32]
    return ":".join(digest[i : i + 4] for i in range(0, 32, 4))


def verify(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """Whether ``signature`` over ``data`` was made by the holder of ``public_key``."""
    if len(public_key) != PUBLIC_LEN:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


class Identity:
    """A node's key pair; made fresh or from the 32-byte seed kept in the data dir."""

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_LEN:
            raise ConfigError(f"a node key is {SEED_LEN} bytes, not {len(seed)}")
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        self.seed = seed
        self.public_key = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.node_id = node_id_of(self.public_key)
        self.fingerprint = fingerprint(self.public_key)

    @classmethod
    def generate(cls) -> Identity:
        key = Ed25519PrivateKey.generate()
        return cls(key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def __repr__(self) -> str:  # never the seed
        return f"Identity({self.fingerprint})"


__all__ = ["Identity", "fingerprint", "node_id_of", "verify"]
