"""Which chunks a peer holds, as a bitfield: one bit per chunk, most significant first.

HAVE carries one as its frame body and provider records carry one for small
files.  A bitfield is a peer's claim, so reading one checks its length and
that no bit is set past the last chunk.
"""

from __future__ import annotations

from dhtshare.errors import RemoteProtocolError


def bitfield_from_indices(n: int, indices: object) -> bytes:
    """Pack the set of held chunk indices into ``ceil(n/8)`` bytes, MSB first."""
    out = bytearray((n + 7) // 8)
    for i in indices:  # type: ignore[attr-defined]
        out[i >> 3] |= 0x80 >> (i & 7)
    return bytes(out)


def indices_from_bitfield(n: int, bitfield: bytes) -> list[int]:
    """The chunk indices set in ``bitfield`` (a peer's claim; length must fit ``n``)."""
    if len(bitfield) != (n + 7) // 8:
        raise RemoteProtocolError(f"bitfield of {len(bitfield)} bytes does not fit {n} chunks")
    out = [
        (byte_i << 3) + bit
        for byte_i, byte in enumerate(bitfield)
        if byte
        for bit in range(8)
        if byte & (0x80 >> bit)
    ]
    if out and out[-1] >= n:
        raise RemoteProtocolError("bitfield has bits set past the last chunk")
    return out


__all__ = ["bitfield_from_indices", "indices_from_bitfield"]
