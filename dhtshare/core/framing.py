"""Sans-IO framing: length-prefixed msgpack headers with optional raw bodies.

A frame is::

    u32 big-endian header length | u32 big-endian body length | header | body

The header is a small msgpack array (the message); the body carries raw
payload bytes (a chunk, a manifest).  Keeping payloads out of msgpack means a
1 MiB chunk is never packed, unpacked or copied: the decoder hands out a
buffer that the socket reads straight into (``get_buffer``/``buffer_updated``,
the shape of :class:`asyncio.BufferedProtocol`), and the sender writes the
body from wherever it already is.

Both lengths are checked against hard limits *before* anything is allocated,
so a hostile peer announcing a 4 GiB frame costs us eight bytes.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Callable
from dataclasses import dataclass

from dhtshare.config import KIB, MAX_BODY_SIZE, MAX_HEADER_SIZE
from dhtshare.errors import FrameTooLarge, LocalProtocolError

PREFIX = struct.Struct(">II")
PREFIX_LEN = PREFIX.size
#: Bodies up to this size are collected in the scratch buffer; larger ones get
#: a buffer of their own that the socket fills directly.
_SMALL_BODY = 64 * KIB
_SCRATCH_SIZE = 256 * KIB


Buffer = bytes | bytearray | mmap.mmap


@dataclass(frozen=True, slots=True)
class Frame:
    header: bytes
    body: Buffer


def encode_prefix(header: bytes, body_len: int = 0) -> bytes:
    """Prefix plus header; the caller sends ``body_len`` raw body bytes after it."""
    if len(header) > MAX_HEADER_SIZE:
        raise LocalProtocolError(f"header of {len(header)} bytes exceeds {MAX_HEADER_SIZE}")
    if not 0 <= body_len <= MAX_BODY_SIZE:
        raise LocalProtocolError(f"body of {body_len} bytes exceeds {MAX_BODY_SIZE}")
    return PREFIX.pack(len(header), body_len) + header


def encode_frame(header: bytes, body: bytes | bytearray | memoryview = b"") -> bytes:
    """A whole frame in one bytes object (for small frames and tests)."""
    return encode_prefix(header, len(body)) + bytes(body)


class FrameDecoder:
    """Turns a byte stream into :class:`Frame` objects, with bounded memory.

    Feed it either with :meth:`feed` (copies, simple) or by writing into
    :meth:`get_buffer` and calling :meth:`buffer_updated` (no copy of large
    bodies).  Raises :class:`FrameTooLarge` when a peer announces a frame above
    the limits; the decoder is unusable afterwards, as is the connection.
    """

    def __init__(
        self,
        max_header: int = MAX_HEADER_SIZE,
        max_body: int = MAX_BODY_SIZE,
        alloc: Callable[[int], bytearray | mmap.mmap] = bytearray,
    ) -> None:
        self.max_header = max_header
        self.max_body = max_body
        #: Where large bodies get their buffer (a pool, so they are recycled).
        self.alloc = alloc
        self._scratch = bytearray(max(_SCRATCH_SIZE, max_header + PREFIX_LEN + _SMALL_BODY))
        self._start = 0
        self._end = 0
        self._body: bytearray | mmap.mmap | None = None
        self._body_filled = 0
        self._body_header = b""
        #: The frame at ``_start`` whose small body is still coming: (offset, header).
        #: Kept so a body trickling in byte by byte does not re-copy its header each time.
        self._waiting: tuple[int, bytes] | None = None
        self._frames: list[Frame] = []
        self.bytes_received = 0
        #: Asked ``(header, body_len)`` before any body byte is kept; raises to refuse.
        #: The header alone says who may send how much (a session knows its
        #: outstanding requests), so a stranger's 128 MiB body is never buffered.
        self.admit_body: Callable[[bytes, int], None] | None = None

    # -- buffer interface -------------------------------------------------------
    def get_buffer(self) -> memoryview:
        """Where the next bytes from the stream should be written."""
        if self._body is not None:
            return memoryview(self._body)[self._body_filled :]
        if self._start and (self._end == len(self._scratch) or self._start == self._end):
            self._compact()
        return memoryview(self._scratch)[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` were written into the last buffer returned by :meth:`get_buffer`."""
        self.bytes_received += nbytes
        if self._body is not None:
            self._body_filled += nbytes
            if self._body_filled == len(self._body):
                self._frames.append(Frame(self._body_header, self._body))
                self._body = None
            return
        self._end += nbytes
        self._parse()

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` in (any length, any split)."""
        view = memoryview(data).cast("B")
        while view:
            buf = self.get_buffer()
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            view = view[n:]
            self.buffer_updated(n)

    def next_frame(self) -> Frame | None:
        """The oldest complete frame, or ``None`` when more bytes are needed."""
        return self._frames.pop(0) if self._frames else None

    def frames(self) -> list[Frame]:
        """Every complete frame so far, oldest first."""
        out, self._frames = self._frames, []
        return out

    @property
    def idle(self) -> bool:
        """True when no partial frame is buffered (a clean place to close)."""
        return self._body is None and self._start == self._end

    # -- internals ----------------------------------------------------------------
    def _compact(self) -> None:
        n = self._end - self._start
        self._scratch[:n] = self._scratch[self._start : self._end]
        if self._waiting is not None:
            self._waiting = (self._waiting[0] - self._start, self._waiting[1])
        self._start, self._end = 0, n

    def _parse(self) -> None:
        buf = self._scratch
        while self._end - self._start >= PREFIX_LEN:
            hlen, blen = PREFIX.unpack_from(buf, self._start)
            if hlen > self.max_header:
                raise FrameTooLarge(f"frame header of {hlen} bytes exceeds {self.max_header}")
            if blen > self.max_body:
                raise FrameTooLarge(f"frame body of {blen} bytes exceeds {self.max_body}")
            hstart = self._start + PREFIX_LEN
            bstart = hstart + hlen
            if self._end < bstart:
                break
            if self._waiting is not None and self._waiting[0] == self._start:
                header = self._waiting[1]  # copied and admitted when it first came
            else:
                header = bytes(buf[hstart:bstart])
                if blen and self.admit_body is not None:
                    self.admit_body(header, blen)
                self._waiting = (self._start, header)
            have = self._end - bstart
            if have >= blen:
                body = bytes(buf[bstart : bstart + blen])
                self._frames.append(Frame(header, body))
                self._start = bstart + blen
                self._waiting = None
                continue
            if blen <= _SMALL_BODY:
                if bstart + blen > len(buf):
                    self._compact()
                break
            body_buf = self.alloc(blen)
            body_buf[:have] = buf[bstart : self._end]
            self._body, self._body_filled = body_buf, have
            self._body_header = header
            self._start = self._end = 0
            self._waiting = None
            break
        if self._start == self._end:
            self._start = self._end = 0
            self._waiting = None
