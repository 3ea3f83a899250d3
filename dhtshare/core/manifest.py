"""The manifest: what a file is, in canonical, self-verifying bytes.

A manifest names a file (base name only), its size, its chunk size and the
ordered SHA-256 of every chunk.  Its hash, the SHA-256 of its canonical
msgpack encoding, is the one handle a user passes to ``fetch``: whoever holds
the hash can check the manifest, and the manifest checks every chunk.

Decoding is strict because the bytes come from strangers: a manifest decodes
only if re-encoding it gives the very same bytes, so there is exactly one
encoding per manifest and nothing smuggled in unknown fields.
"""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import msgpack

from dhtshare.config import MAX_CHUNK_SIZE, MAX_CHUNKS, MAX_FILE_SIZE, MIB, MIN_CHUNK_SIZE
from dhtshare.core.ids import HASH_LEN, ChunkHash, ManifestHash
from dhtshare.errors import ConfigError, ManifestError, shown

FORMAT_VERSION = 1
MAX_NAME_BYTES = 255
#: Largest encoded manifest accepted from the wire.
MAX_MANIFEST_BYTES = MAX_CHUNKS * HASH_LEN + 1024

_FIELDS = ("v", "name", "size", "chunk_size", "hashes")
#: Bidirectional-text controls: they make a name display as something else.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def chunk_count(size: int, chunk_size: int) -> int:
    """How many chunks a file of ``size`` bytes has (0 for an empty file)."""
    return -(-size // chunk_size)


def check_chunk_size(chunk_size: int) -> int:
    """Validate a user-chosen chunk size (512 B to 16 MiB)."""
    if (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, int)
        or not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE
    ):
        raise ConfigError(
            f"chunk size {chunk_size} is out of range: "
            f"use {MIN_CHUNK_SIZE} bytes to {MAX_CHUNK_SIZE // MIB} MiB"
        )
    return chunk_size


def check_name(name: str) -> str:
    """Refuse names that could escape the target directory or confuse a terminal."""
    if not isinstance(name, str) or not name:
        raise ManifestError("manifest has an empty or non-text file name")
    if name in (".", "..") or any(c in name for c in "/\\\0"):
        raise ManifestError(f"manifest file name {shown(name)} is not a plain base name")
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") or c in _BIDI for c in name):
        raise ManifestError(f"manifest file name {shown(name)} contains control characters")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise ManifestError("manifest file name is longer than 255 bytes")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ManifestError(f"manifest file name {shown(name)} is not valid UTF-8") from err
    return name


@dataclass(frozen=True)
class Manifest:
    """A file's description; ``hashes`` is the concatenation of every chunk's SHA-256."""

    name: str
    size: int
    chunk_size: int
    hashes: bytes

    def __post_init__(self) -> None:
        check_name(self.name)
        if isinstance(self.size, bool) or not isinstance(self.size, int):
            raise ManifestError("manifest size is not an integer")
        if not 0 <= self.size <= MAX_FILE_SIZE:
            raise ManifestError(f"manifest size {self.size} is out of range")
        if isinstance(self.chunk_size, bool) or not isinstance(self.chunk_size, int):
            raise ManifestError("manifest chunk size is not an integer")
        if not MIN_CHUNK_SIZE <= self.chunk_size <= MAX_CHUNK_SIZE:
            raise ManifestError(f"manifest chunk size {self.chunk_size} is out of range")
        if not isinstance(self.hashes, bytes):
            raise ManifestError("manifest chunk hashes are not bytes")
        n = chunk_count(self.size, self.chunk_size)
        if n > MAX_CHUNKS:
            raise ManifestError(f"manifest has {n} chunks, more than the limit of {MAX_CHUNKS}")
        if len(self.hashes) != n * HASH_LEN:
            raise ManifestError(
                f"manifest lists {len(self.hashes) // HASH_LEN} chunk hashes "
                f"but size and chunk size imply {n}"
            )

    @property
    def chunk_count(self) -> int:
        return len(self.hashes) // HASH_LEN

    def chunk_hash(self, index: int) -> ChunkHash:
        return ChunkHash(self.hashes[index * HASH_LEN : (index + 1) * HASH_LEN])

    def chunk_length(self, index: int) -> int:
        """Length of chunk ``index``: ``chunk_size``, except a shorter last chunk."""
        if not 0 <= index < self.chunk_count:
            raise IndexError(index)
        return min(self.chunk_size, self.size - index * self.chunk_size)

    def chunk_offset(self, index: int) -> int:
        return index * self.chunk_size

    def encode(self) -> bytes:
        """The canonical bytes: a msgpack map with fixed key order."""
        out: bytes = msgpack.packb(
            {
                "v": FORMAT_VERSION,
                "name": self.name,
                "size": self.size,
                "chunk_size": self.chunk_size,
                "hashes": self.hashes,
            },
            use_bin_type=True,
        )
        return out

    @cached_property
    def hash(self) -> ManifestHash:
        return ManifestHash(hashlib.sha256(self.encode()).digest())

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        """Parse untrusted bytes; raises :class:`ManifestError` on anything unexpected."""
        if len(data) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"manifest of {len(data)} bytes is larger than any valid one")
        try:
            obj: Any = msgpack.unpackb(
                data,
                raw=False,
                strict_map_key=True,
                max_bin_len=MAX_MANIFEST_BYTES,
                max_str_len=4 * MAX_NAME_BYTES,
                max_array_len=0,
                max_map_len=len(_FIELDS),
                max_ext_len=0,
            )
        except (ValueError, TypeError, msgpack.UnpackException) as err:
            raise ManifestError(f"manifest is not valid msgpack: {err}") from err
        if not isinstance(obj, dict) or tuple(obj) != _FIELDS:
            raise ManifestError("manifest does not have the expected fields")
        if obj["v"] != FORMAT_VERSION or isinstance(obj["v"], bool):
            raise ManifestError(f"unsupported manifest format version {shown(obj['v'])}")
        manifest = cls(
            name=obj["name"], size=obj["size"], chunk_size=obj["chunk_size"], hashes=obj["hashes"]
        )
        if manifest.encode() != bytes(data):
            raise ManifestError("manifest is not in canonical encoding")
        return manifest

    @classmethod
    def decode_verified(cls, data: bytes, expected: ManifestHash) -> Manifest:
        """Decode bytes that must hash to ``expected`` (checked before parsing)."""
        from dhtshare.errors import IntegrityError

        if hashlib.sha256(data).digest() != expected:
            raise IntegrityError("manifest bytes do not match the requested hash")
        return cls.decode(data)
