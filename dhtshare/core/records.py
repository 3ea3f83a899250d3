"""The record layer: what every byte of a peer session passes through, both ways.

Today's :class:`PlainCodec` passes frames as they are.  The authenticated,
encrypted link replaces it with an AEAD codec (large records, counter nonces,
decryption into the pooled receive buffers) behind the same interface, so the
session's rules and the connection's I/O loop do not change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeAlias

from dhtshare.core.framing import Frame, FrameDecoder

Body: TypeAlias = bytes | bytearray | memoryview
#: What goes on the wire for one message, in order; a body is passed on as given.
Wire: TypeAlias = tuple[Body, ...]


class RecordCodec(Protocol):
    """The layer every byte of a session passes through, both ways.

    Incoming, it sits behind the socket's buffer (``get_buffer`` then
    ``buffer_updated``, as in :class:`asyncio.BufferedProtocol`) and yields
    whole frames; outgoing, it turns a frame's head (prefix and header) and
    body into what goes on the wire.  ``raw_bodies`` says a body may follow
    its head untouched, so a file can go out by ``sendfile``; a codec that
    encrypts says no.
    """

    #: Asked ``(header, body_len)`` before a body is buffered (see FrameDecoder).
    admit_body: Callable[[bytes, int], None] | None

    @property
    def raw_bodies(self) -> bool: ...

    def get_buffer(self) -> memoryview: ...

    def buffer_updated(self, nbytes: int) -> None: ...

    def next_frame(self) -> Frame | None: ...

    def seal(self, head: bytes, body: Body) -> Wire: ...


class PlainCodec(FrameDecoder):
    """Frames as they are: the plaintext record layer is the frame decoder itself.

    It is one (not a wrapper around one) so that the receive path, run for
    every read from the socket, costs no extra call.  ``alloc`` gives large
    bodies their buffer: a pool, so that they are recycled.
    """

    raw_bodies = True

    def seal(self, head: bytes, body: Body) -> Wire:
        return (head, body) if body else (head,)


__all__ = ["Body", "PlainCodec", "RecordCodec", "Wire"]
