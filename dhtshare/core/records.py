"""The record layer: what every byte of a peer session passes through, both ways.

:class:`SecureCodec` is the default: a Noise handshake
(:mod:`dhtshare.core.handshake`) and then AES-256-GCM records.
:class:`PlainCodec` passes frames as they are; it exists for benchmarks that
measure what the encryption costs, never as a default.

A record on the wire is ``u32 plaintext length | ciphertext | 16-byte tag``.
The length is the AEAD's associated data, so it cannot be changed unnoticed;
the nonce is a per-direction counter, never sent, so a record cannot be
replayed, dropped or moved without the next one failing.  Records carry at
most 64 KiB: a chunk's body is split into whole records that line up with it,
and each is decrypted straight into the buffer the frame decoder hands out
(the pooled chunk buffer), so receiving costs one pass over the bytes and no
copy.  Sending a file reads it into the records' places and encrypts them in
place (:meth:`SecureCodec.reserve`), off the event loop.  The key is renewed
(HKDF) every 2**20 records, about 64 GiB, far inside AES-GCM's limits.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Callable
from typing import Protocol, TypeAlias

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from dhtshare.config import KIB
from dhtshare.core.framing import Frame, FrameDecoder
from dhtshare.core.handshake import LENGTH, MAX_MESSAGE, Handshake, Secrets
from dhtshare.errors import LocalProtocolError, RemoteProtocolError

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

    @property
    def peer_key(self) -> bytes | None:
        """The peer's Ed25519 key, once the link proved it (``None`` on a plain link)."""
        ...

    def start(self) -> Wire:
        """What opens the link, before any frame (a dialer's first handshake message)."""
        ...

    def data_to_send(self) -> Wire:
        """What the codec itself has to send now (handshake answers, frames held for it)."""
        ...

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
    peer_key = None

    def start(self) -> Wire:
        return ()

    def data_to_send(self) -> Wire:
        return ()

    def seal(self, head: bytes, body: Body) -> Wire:
        return (head, body) if body else (head,)


#: Plaintext bytes in one record.
RECORD_MAX = 64 * KIB
TAG = 16
_LEN = struct.Struct(">I")
OVERHEAD = _LEN.size + TAG
_NONCE = struct.Struct(">4xQ")
#: Records sealed under one key before it is renewed.
REKEY_EVERY = 1 << 20
_REKEY_INFO = b"dhtshare/rekey/v1"
#: A body up to this size shares its head's record (copying it is cheaper than a record).
_MERGE = 4 * KIB
#: Ciphertext read from the socket at once, once the link is up (plus room for one record).
_CIPHER_BUFFER = 512 * KIB + RECORD_MAX + OVERHEAD
#: Before it: enough for two handshake messages.
_HANDSHAKE_BUFFER = 2 * (LENGTH.size + MAX_MESSAGE) + 64


class _Direction:
    """One direction's key and nonce counter (the counter is never sent)."""

    __slots__ = ("aead", "key", "left", "n", "rekey_every")

    def __init__(self, key: bytes, rekey_every: int) -> None:
        self.key = key
        self.aead = AESGCM(key)
        self.n = 0
        self.rekey_every = rekey_every
        self.left = rekey_every

    def nonces(self, count: int) -> list[tuple[AESGCM, bytes]]:
        """The next ``count`` (cipher, nonce) pairs, renewing the key on schedule."""
        out = []
        for _ in range(count):
            if not self.left:
                self.key = HKDF(hashes.SHA256(), 32, salt=None, info=_REKEY_INFO).derive(self.key)
                self.aead = AESGCM(self.key)
                self.left = self.rekey_every
            self.left -= 1
            out.append((self.aead, _NONCE.pack(self.n)))
            self.n += 1
        return out


def _spans(length: int) -> list[int]:
    """How ``length`` bytes split into records."""
    full, rest = divmod(length, RECORD_MAX)
    return [RECORD_MAX] * full + ([rest] if rest else [])


class SealedBody:
    """A frame whose body is still to be put in place: made on the loop, filled anywhere.

    :meth:`SecureCodec.reserve` takes the nonces in order, so the frame keeps
    its place in the stream however long the filling takes; the caller writes
    the body's bytes into :meth:`slots` (a file read with ``preadv``), calls
    :meth:`encrypt` (both may run in a thread: they touch only this object),
    then sends :attr:`wire`.
    """

    def __init__(self, head: bytes, body_len: int, send: _Direction) -> None:
        spans = [len(head), *_spans(body_len)]
        self.wire = bytearray(sum(spans) + OVERHEAD * len(spans))
        self._records: list[tuple[int, int, AESGCM, bytes]] = []
        view = memoryview(self.wire)
        pos = 0
        for length, (aead, nonce) in zip(spans, send.nonces(len(spans)), strict=True):
            _LEN.pack_into(self.wire, pos, length)
            self._records.append((pos, length, aead, nonce))
            pos += OVERHEAD + length
        view[_LEN.size : _LEN.size + len(head)] = head

    def slots(self) -> list[memoryview]:
        """Where the body's bytes go, in order (every record but the head's)."""
        view = memoryview(self.wire)
        return [view[pos + _LEN.size : pos + _LEN.size + n] for pos, n, _, _ in self._records[1:]]

    def encrypt(self) -> None:
        view = memoryview(self.wire)
        for pos, length, aead, nonce in self._records:
            start = pos + _LEN.size
            aead.encrypt_into(nonce, view[start : start + length], view[pos:start],
                              view[start : start + length + TAG])


class SecureCodec:
    """The authenticated, encrypted record layer (see the module docstring)."""

    raw_bodies = False

    def __init__(
        self,
        handshake: Handshake,
        alloc: Callable[[int], bytearray | mmap.mmap] = bytearray,
        on_secure: Callable[[Secrets], None] | None = None,
        rekey_every: int = REKEY_EVERY,
    ) -> None:
        self._hs = handshake
        self._alloc = alloc
        self._on_secure = on_secure
        self._rekey_every = rekey_every
        # Small until the handshake is done: a stranger who never finishes it costs little.
        self._buf = bytearray(_HANDSHAKE_BUFFER)
        self._start = self._end = 0
        self._inner: FrameDecoder | None = None
        self._send: _Direction | None = None
        self._recv: _Direction | None = None
        self._plain: memoryview | None = None
        self._out: list[Body] = []
        self._held: list[tuple[bytes, bytes]] = []
        self._admit: Callable[[bytes, int], None] | None = None
        self.peer_key: bytes | None = None
        self.bytes_received = 0

    @property
    def admit_body(self) -> Callable[[bytes, int], None] | None:
        return self._admit

    @admit_body.setter
    def admit_body(self, hook: Callable[[bytes, int], None] | None) -> None:
        self._admit = hook
        if self._inner is not None:
            self._inner.admit_body = hook

    @property
    def secure(self) -> bool:
        """Whether the handshake is done (frames flow)."""
        return self._recv is not None

    # -- out ------------------------------------------------------------------------
    def start(self) -> Wire:
        return (self._hs.start(),) if self._hs.initiator else ()

    def data_to_send(self) -> Wire:
        out, self._out = self._out, []
        return tuple(out)

    def seal(self, head: bytes, body: Body) -> Wire:
        send = self._send
        if send is None:  # the handshake is not done: the frame waits for its keys
            self._held.append((bytes(head), bytes(body)))
            return ()
        if len(body) <= _MERGE:
            pieces: list[Body] = [head + bytes(body)] if body else [head]
        else:
            view = memoryview(body).cast("B")
            pieces = [head, *(view[i : i + RECORD_MAX] for i in range(0, len(view), RECORD_MAX))]
        if len(pieces[0]) > RECORD_MAX:  # a header near its 64 KiB limit
            first = memoryview(pieces[0])
            pieces[:1] = [first[i : i + RECORD_MAX] for i in range(0, len(first), RECORD_MAX)]
        wire = bytearray(sum(len(p) for p in pieces) + OVERHEAD * len(pieces))
        view_out = memoryview(wire)
        pos = 0
        for piece, (aead, nonce) in zip(pieces, send.nonces(len(pieces)), strict=True):
            n = len(piece)
            _LEN.pack_into(wire, pos, n)
            start = pos + _LEN.size
            aead.encrypt_into(nonce, piece, view_out[pos:start], view_out[start : start + n + TAG])
            pos = start + n + TAG
        return (wire,)

    def reserve(self, head: bytes, body_len: int) -> SealedBody:
        """A frame of ``head`` and a body still to be read: its place in the stream is now."""
        if self._send is None:
            raise LocalProtocolError("a body cannot be reserved before the link is secure")
        return SealedBody(head, body_len, self._send)

    # -- in -------------------------------------------------------------------------
    def get_buffer(self) -> memoryview:
        return memoryview(self._buf)[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        self.bytes_received += nbytes
        self._end += nbytes
        try:
            if self._recv is None:
                self._handshake()
            if self._recv is not None:
                self._open()
        finally:
            self._make_room()

    def next_frame(self) -> Frame | None:
        return None if self._inner is None else self._inner.next_frame()

    def _make_room(self) -> None:
        if self._start == self._end:
            self._start = self._end = 0
        elif len(self._buf) - self._end < OVERHEAD + RECORD_MAX or self._recv is None:
            n = self._end - self._start
            self._buf[:n] = self._buf[self._start : self._end]
            self._start, self._end = 0, n

    def _handshake(self) -> None:
        buf = self._buf
        while self._recv is None and self._end - self._start >= LENGTH.size:
            (n,) = LENGTH.unpack_from(buf, self._start)
            if not 0 < n <= MAX_MESSAGE:
                raise RemoteProtocolError(f"a link handshake message of {n} bytes")
            end = self._start + LENGTH.size + n
            if end > self._end:
                return
            reply = self._hs.receive(memoryview(buf)[self._start + LENGTH.size : end])
            self._start = end
            if reply:
                self._out.append(reply)
            if self._hs.secrets is not None:
                self._secure(self._hs.secrets)

    def _secure(self, secrets: Secrets) -> None:
        self._send = _Direction(secrets.send_key, self._rekey_every)
        self._recv = _Direction(secrets.recv_key, self._rekey_every)
        self.peer_key = secrets.peer_key
        self._inner = FrameDecoder(alloc=self._alloc)
        self._inner.admit_body = self._admit
        self._plain = memoryview(bytearray(RECORD_MAX))
        rest = self._buf[self._start : self._end]
        self._buf = bytearray(_CIPHER_BUFFER)
        self._buf[: len(rest)] = rest
        self._start, self._end = 0, len(rest)
        held, self._held = self._held, []
        for head, body in held:
            self._out.extend(self.seal(head, body))
        if self._on_secure is not None:
            self._on_secure(secrets)

    def _open(self) -> None:
        assert self._recv is not None
        assert self._inner is not None
        assert self._plain is not None
        buf, recv, inner = self._buf, self._recv, self._inner
        view = memoryview(buf)
        start, end = self._start, self._end
        try:
            while end - start >= _LEN.size:
                (n,) = _LEN.unpack_from(buf, start)
                if not 0 < n <= RECORD_MAX:
                    raise RemoteProtocolError(f"a record of {n} bytes")
                stop = start + OVERHEAD + n
                if stop > end:
                    break
                ((aead, nonce),) = recv.nonces(1)
                sealed = view[start + _LEN.size : stop]
                dest = inner.get_buffer()
                try:
                    if len(dest) >= n:  # straight into the decoder's buffer: no copy
                        aead.decrypt_into(nonce, sealed, view[start : start + _LEN.size],
                                          dest[:n])
                        start = stop
                        inner.buffer_updated(n)
                    else:
                        plain = self._plain[:n]
                        aead.decrypt_into(nonce, sealed, view[start : start + _LEN.size], plain)
                        start = stop
                        inner.feed(plain)
                except InvalidTag as err:
                    raise RemoteProtocolError(
                        "a record failed authentication: the link was tampered with"
                    ) from err
        finally:
            self._start = start


__all__ = [
    "OVERHEAD",
    "RECORD_MAX",
    "Body",
    "PlainCodec",
    "RecordCodec",
    "SealedBody",
    "SecureCodec",
    "Wire",
]
