"""Content hashes and node ids: how they are made, parsed and printed.

Hashes travel as 32 raw bytes on the wire and as 64 lowercase hex characters
in front of users.  Keeping both forms behind these helpers means a malformed
hash from the command line fails here with a clear message, not deep inside
the network code.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import NewType

from dhtshare.errors import ConfigError, shown

HASH_LEN = 32
NODE_ID_LEN = 20

ChunkHash = NewType("ChunkHash", bytes)
ManifestHash = NewType("ManifestHash", bytes)
NodeId = NewType("NodeId", bytes)

_HEX64 = re.compile(r"[0-9a-f]{64}")


def parse_manifest_hash(text: str) -> ManifestHash:
    """Parse a user-supplied manifest hash (64 hex characters, any case)."""
    cleaned = text.strip().lower()
    if not _HEX64.fullmatch(cleaned):
        raise ConfigError(
            f"malformed hash {shown(text)}: expected 64 hexadecimal characters "
            "(the last line printed by 'dhtshare publish')"
        )
    return ManifestHash(bytes.fromhex(cleaned))


def new_node_id() -> NodeId:
    """A fresh random node id (160 bits, the Kademlia key space)."""
    return NodeId(os.urandom(NODE_ID_LEN))


def dht_key(namespace: bytes, content_hash: bytes) -> bytes:
    """The 160-bit DHT key under which records about ``content_hash`` live.

    Namespaced so that provider records and any future record kind never
    collide, and derived here rather than with kademlia's ``digest`` (which
    hashes ``str(key)`` and so makes ``1``, ``"1"`` and ``b"1"`` collide).
    """
    return hashlib.sha256(b"dhtshare/" + namespace + b"/" + content_hash).digest()[:NODE_ID_LEN]


def short(h: bytes) -> str:
    """The first 12 hex characters of a hash, for logs."""
    return h.hex()[:12]
