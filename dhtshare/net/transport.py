"""One TCP connection speaking the peer protocol: the asyncio shell around a session.

Every protocol rule (the handshake, request ids, the cap on a peer's requests,
which message may come when) lives in the sans-IO
:class:`~dhtshare.core.session.Session`; :class:`Connection` only moves bytes
and turns the session's events into futures and handler calls.  It is an
:class:`asyncio.BufferedProtocol`: the socket reads straight into the buffers
the session hands out, so a chunk's bytes land once, in the pooled buffer that
is then hashed and written.  Many requests share one long-lived connection
(each answer names its request id), and every misbehaviour becomes a closed
connection with a logged reason.  Nothing above it sees a socket.

The I/O concerns stay here: the handshake timeout, write back-pressure,
sending a file's range, and a future per request.  Links are encrypted and
authenticated by default (the session's :class:`~dhtshare.core.records.SecureCodec`,
given the node's :class:`~dhtshare.core.handshake.LinkSecurity`): a file's
range is then read into its records' places and encrypted in a thread,
holding later writes until it is written.  Only a node started with the
benchmarking switch (``link=None``) sends plaintext, with ``sendfile``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import BinaryIO, Protocol

from dhtshare.config import PROTOCOL_VERSION
from dhtshare.core import messages as m
from dhtshare.core.framing import Buffer
from dhtshare.core.handshake import LinkSecurity
from dhtshare.core.records import RecordCodec, SecureCodec
from dhtshare.core.session import (
    MAX_INCOMING_REQUESTS,
    Body,
    CancelRequest,
    Event,
    HandshakeDone,
    HaveUpdated,
    PeerLeaving,
    PlainCodec,
    Request,
    Response,
    SealedBody,
    Session,
    Wire,
)
from dhtshare.disk.buffers import POOL
from dhtshare.errors import (
    LocalProtocolError,
    NotFoundReply,
    PeerError,
    PeerTimeout,
    PeerUnreachable,
    RemoteProtocolError,
)
from dhtshare.net.ratelimit import Limiter

log = logging.getLogger(__name__)

SOCKET_BUFFER = 4 * 1024 * 1024
#: Bytes queued in the transport before writers wait (``drain``).  The kernel's
#: send buffer (4 MiB asked, 8 MiB granted) keeps the pipe full; a small
#: queue above it keeps sealed chunks, which pass through it, from piling up
#: in memory: 1 MiB measured 4.5-4.9 s at 1->4 512 MiB against 5.0-5.4 s for
#: 8 MiB, with 5 MB less anonymous memory per fetcher.
WRITE_HIGH_WATER = 1024 * 1024
#: A peer must finish the link handshake and say HELLO within this many seconds.
HANDSHAKE_TIMEOUT = 10.0
#: Bytes we queue for a peer before we decide it does not read (a request
#: window is 16 MiB; HAVE pushes are small): past this the link is dropped,
#: so a peer that never reads cannot make us buffer without bound.
OUTGOING_CAP = 64 * 1024 * 1024
#: How long a writer waits for a peer that stopped reading before dropping it.
WRITE_STALL_TIMEOUT = 60.0
#: Byte-count samples kept per link: rates are over the last RATE_SAMPLES - 1 seconds.
RATE_SAMPLES = 6
#: Most bytes read at once while a download limit is set.
LIMITED_READ = 64 * 1024
#: A link with nothing in flight either way for this long is closed (it is
#: reopened on demand); it frees the descriptor and buffers of peers gone quiet.
IDLE_TIMEOUT = 300.0

Reply = tuple[m.Message, Buffer]


class Handler(Protocol):
    """Serves requests a peer sends us (see :mod:`dhtshare.net.server`).

    Each request it is handed counts against the peer's cap until it calls
    ``conn.session.incoming_done()``; CANCELs are handed over too, uncounted.
    """

    def handle(self, conn: Connection, msg: m.Message, body: Buffer) -> None: ...

    def closed(self, conn: Connection) -> None: ...


class Connection(asyncio.BufferedProtocol):
    """A peer-protocol connection, initiated by either side."""

    def __init__(
        self,
        hello: m.Hello,
        handler: Handler | None = None,
        on_close: Callable[[Connection], None] | None = None,
        *,
        link: LinkSecurity | None,
        initiator: bool,
        expect: bytes | None = None,
        admit: Callable[[Connection], str | None] | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
        limiter: Limiter | None = None,
    ) -> None:
        codec: RecordCodec
        if link is None:  # the benchmarking switch: plaintext, unauthenticated
            codec = PlainCodec(alloc=POOL.get)
        else:
            codec = SecureCodec(link.handshake(initiator, expect), POOL.get, link.learn)
        #: The protocol state; the server settles requests with ``session.incoming_done()``.
        self.session = Session(hello, handler is not None, MAX_INCOMING_REQUESTS, codec, expect)
        self._handler = handler
        self._on_close = on_close
        #: We dialed this link (outbound); False: the peer did (inbound).
        self.initiator = initiator
        #: Asked once the peer's address is known: a reason to refuse it, or None.
        self._admit = admit
        self._idle_timeout = idle_timeout
        self._idle: asyncio.TimerHandle | None = None
        #: The node's bandwidth limits (shared by all its links), if any.
        self.limiter = limiter
        self._throttled: asyncio.TimerHandle | None = None
        self.bytes_sent = 0
        #: When the link was opened (``time.monotonic()``), for rates.
        self.opened_at = time.monotonic()
        #: (time, bytes sent, bytes received) samples, a second apart (see :meth:`sample`).
        self._samples: collections.deque[tuple[float, int, int]] = collections.deque(
            [(self.opened_at, 0, 0)], maxlen=RATE_SAMPLES)
        self.transport: asyncio.Transport | None = None
        self.peername: tuple[str, int] = ("?", 0)
        self._loop = asyncio.get_running_loop()
        #: When bytes last moved either way (``loop.time()``): the idle timer and
        #: :meth:`quiet_for` go by it.
        self.last_active = self._loop.time()
        self._handshake: asyncio.Future[m.Hello] = self._loop.create_future()
        self._deadline: asyncio.TimerHandle | None = None
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._pending: dict[int, asyncio.Future[Reply]] = {}
        self._can_write = asyncio.Event()
        self._can_write.set()
        self.close_reason: str | None = None
        self.have_listeners: dict[bytes, Callable[[tuple[int, ...]], None]] = {}
        #: The peer waits for our HAVE pushes (set by the server): the link is not idle.
        self.subscribed = False
        self.bytes_received = 0
        #: Why the peer said it was leaving (its BYE), if it did.
        self.farewell: str | None = None
        #: While a body goes out with sendfile, other writes wait here.
        self._held: list[Body] | None = None

    @property
    def handler(self) -> Handler | None:
        """Who serves the peer's requests; without one, the session refuses them."""
        return self._handler

    @handler.setter
    def handler(self, handler: Handler | None) -> None:
        self._handler = handler
        self.session.serves_requests = handler is not None

    @property
    def peer_hello(self) -> m.Hello | None:
        """The peer's HELLO, once the handshake is done."""
        return self.session.peer_hello

    @property
    def peer_key(self) -> bytes | None:
        """The peer's Ed25519 key, proved by the link (``None`` on a plaintext link)."""
        return self.session.peer_key

    # -- asyncio protocol callbacks ------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                with contextlib.suppress(OSError):  # kernel limits
                    sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peername = (str(peer[0]), int(peer[1]))
        refusal = self._admit(self) if self._admit is not None else None
        if refusal is not None:
            self.close_reason = f"refused: {refusal}"
            log.debug("refusing a connection from %s: %s", self.label, refusal)
            transport.abort()
            return
        self._write(self.session.start())
        # A peer that never says HELLO must not hold a connection open forever.
        self._deadline = self._loop.call_later(HANDSHAKE_TIMEOUT, self._handshake_deadline)
        self._idle = self._loop.call_later(self._idle_timeout, self._idle_check)

    def _handshake_deadline(self) -> None:
        if self.peer_hello is None:
            self.abort("no HELLO in time")

    def _resume_reading(self) -> None:
        self._throttled = None
        if self.transport is None or self.transport.is_closing():
            return
        assert self.limiter is not None
        pause = self.limiter.download_delay()
        if pause > 0:  # other links took the tokens meanwhile
            self._throttled = self._loop.call_later(pause, self._resume_reading)
        else:
            self.transport.resume_reading()

    def _idle_check(self) -> None:
        """Close a link that moved nothing and waits for nothing for a whole period."""
        busy = (self._loop.time() - self.last_active < self._idle_timeout
                or self._waited_on())
        if busy:
            self._idle = self._loop.call_later(self._idle_timeout, self._idle_check)
        else:
            self.close_reason = self.close_reason or "idle"
            self.close()

    def _waited_on(self) -> bool:
        """Someone waits on this link: a request either way, HAVE pushes, a body going out."""
        return bool(self._pending or self.session.incoming or self.have_listeners
                    or self.subscribed or self._held is not None)

    def quiet_for(self) -> float:
        """Seconds since bytes last moved, or 0 while anyone waits on the link.

        The server's admission closes the quietest link, past a few seconds,
        to make room for a new one at its limits.
        """
        if self._waited_on() or not self.is_open:
            return 0.0
        return self._loop.time() - self.last_active

    def get_buffer(self, sizehint: int) -> memoryview:
        buf = self.session.get_buffer(sizehint)
        if self.limiter is not None and self.limiter.download_limited:
            # Small reads under a download limit: links that resume together
            # then take a little each, not a socket buffer's worth each.
            return buf[:LIMITED_READ]
        return buf

    def buffer_updated(self, nbytes: int) -> None:
        self.bytes_received += nbytes
        self.last_active = self._loop.time()
        if self.limiter is not None:
            pause = self.limiter.received(nbytes)
            if pause > 0 and self._throttled is None and self.transport is not None:
                # Over the download rate: stop reading; TCP slows the sender.
                self.transport.pause_reading()
                self._throttled = self._loop.call_later(pause, self._resume_reading)
        session = self.session
        session.buffer_updated(nbytes)
        out = session.data_to_send()
        if out:
            self._write(out)
        try:
            while (event := session.next_event()) is not None:
                self._on_event(event)
                if self.transport is None or self.transport.is_closing():
                    return
        except RemoteProtocolError as err:
            self.abort(f"protocol violation: {err}")

    def eof_received(self) -> bool:
        self.abort("peer closed the connection")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        reason = self.close_reason or (f"connection lost: {exc}" if exc else "connection closed")
        self.close_reason = reason
        if self.peer_hello is not None:
            log.info("peer %s disconnected: %s", self.label, reason,
                     extra={"event": "peer_disconnected", "peer": self.label,
                            "node": self.peer_hello.node_id.hex(), "reason": reason})
        self.session.close()
        if self._deadline is not None:
            self._deadline.cancel()
        if self._idle is not None:
            self._idle.cancel()
        if self._throttled is not None:
            self._throttled.cancel()
        error = PeerError(f"peer {self.label}: {reason}")
        if not self._handshake.done():
            self._handshake.set_exception(error)
            self._handshake.exception()  # mark retrieved
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(error)
        self._pending.clear()
        self._can_write.set()
        if not self._closed.done():
            self._closed.set_result(None)
        if self._handler is not None:
            self._handler.closed(self)
        if self._on_close is not None:
            self._on_close(self)
        self.transport = None

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    # -- events from the session ------------------------------------------------------
    def _on_event(self, event: Event) -> None:
        match event:
            case Response(msg, body):
                fut = self._pending.pop(msg.req, None)
                if fut is not None and not fut.done():
                    fut.set_result((msg, body))
            case Request(msg, body):
                if self._handler is not None:  # else the session refused it
                    self._handler.handle(self, msg, body)
            case CancelRequest(msg):
                if self._handler is not None:
                    self._handler.handle(self, msg, b"")
            case HaveUpdated(msg):
                listener = self.have_listeners.get(msg.manifest)
                if listener is not None:
                    listener(msg.indices)
            case HandshakeDone(hello):
                log.info("peer %s (node %s) connected, %s", self.label, hello.node_id.hex()[:16],
                         "outbound" if self.initiator else "inbound",
                         extra={"event": "peer_connected", "peer": self.label,
                                "node": hello.node_id.hex()})
                if self._deadline is not None:
                    self._deadline.cancel()
                if not self._handshake.done():
                    self._handshake.set_result(hello)
            case PeerLeaving(reason):
                self.farewell = reason
                self.close_reason = f"peer left the network ({reason})"
                log.info("peer %s is leaving: %s", self.label, reason)
                self.close()

    # -- helpers ------------------------------------------------------------------
    @property
    def label(self) -> str:
        return f"{self.peername[0]}:{self.peername[1]}"

    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def abort(self, reason: str) -> None:
        """Close at once (hostile or broken peer); pending requests fail."""
        if self.transport is None:
            return
        if self.close_reason is None:
            self.close_reason = reason
            log.info("closing connection to %s: %s", self.label, reason)
        self.transport.abort()

    def close(self) -> None:
        if self.transport is not None:
            self.close_reason = self.close_reason or "closed by us"
            self.session.close()
            self.transport.close()

    def say_bye(self, reason: str = "shutting down") -> None:
        """Tell the peer we are leaving the network, then close (queued data still goes)."""
        if self.peer_hello is not None:
            self.send(m.Bye(reason))
        self.close_reason = self.close_reason or f"we left ({reason})"
        self.close()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    async def wait_handshake(self, timeout: float) -> m.Hello:
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(self._handshake)
        except TimeoutError as err:
            self.abort("no handshake in time")
            raise PeerTimeout(f"peer {self.label} did not complete the handshake") from err

    def send(self, msg: m.Message, body: Body = b"") -> None:
        """Queue a message (never blocks; see :meth:`drain` for back-pressure)."""
        if self.is_open:
            self._write(self.session.send(msg, body))

    def _write(self, wire: Wire) -> None:
        self.last_active = self._loop.time()
        if self._held is not None:
            self._held.extend(bytes(piece) for piece in wire)
            return
        transport = self.transport
        if transport is not None:
            n = 0
            for piece in wire:
                transport.write(piece)
                n += len(piece)
            self._sent(n)
            if transport.get_write_buffer_size() > OUTGOING_CAP:
                self.abort(f"peer does not read: over {OUTGOING_CAP >> 20} MiB queued for it")

    async def send_file(self, msg: m.Message, file: BinaryIO, offset: int, count: int) -> None:
        """Send ``msg`` with ``count`` bytes of ``file`` as its body.

        Other messages sent meanwhile are held and follow the body.  On an
        encrypted link the range is read straight into its records' places
        and encrypted there, in a thread (both let go of the GIL); on a plain
        one ``loop.sendfile`` copies it kernel to socket.
        """
        if self.transport is None or self.transport.is_closing():
            return
        if self._held is not None:
            raise LocalProtocolError("send_file while another send_file is running")
        if self.limiter is not None:
            await self.limiter.upload_turn(count)  # the body's bytes are taken here
            if self.transport is None or self.transport.is_closing():
                return
        if not self.session.codec.raw_bodies:
            await self._send_sealed_file(msg, file, offset, count)
            return
        self._write(self.session.send_prefix(msg, count))
        self._held = []
        try:
            sent = await self._loop.sendfile(self.transport, file, offset, count)
            self._sent(sent, charged=sent)  # taken in send_file
        except (OSError, RuntimeError) as err:
            self.abort(f"sending a file failed: {err}")
            return
        finally:
            held, self._held = self._held, None
            if self.transport is not None and not self.transport.is_closing():
                for data in held:
                    self.transport.write(data)
                    self._sent(len(data))
        if sent != count:
            # The frame promised ``count`` bytes: the stream cannot be repaired.
            self.abort(f"file ended after {sent} of {count} bytes")

    async def _send_sealed_file(
        self, msg: m.Message, file: BinaryIO, offset: int, count: int
    ) -> None:
        sealed = self.session.reserve(msg, count)  # its place in the stream is taken now
        self._held = []
        try:
            got = await asyncio.to_thread(_fill, sealed, file.fileno(), offset)
        except OSError as err:
            self.abort(f"reading a file to send failed: {err}")
            return
        except asyncio.CancelledError:
            self.abort("stopped while sending a file")  # its records' nonces are spent
            raise
        finally:
            held, self._held = self._held, None
        if got != count:
            self.abort(f"file ended after {got} of {count} bytes")
            return
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(sealed.wire)
            self._sent(len(sealed.wire), charged=len(sealed.wire))  # taken in send_file
            for data in held:
                transport.write(data)
                self._sent(len(data))

    def sample(self, now: float) -> None:
        """Note the byte counts now (called about once a second by the node)."""
        self._samples.append((now, self.bytes_sent, self.bytes_received))

    def rates(self, now: float) -> tuple[float, float]:
        """Bytes per second sent and received over the last few seconds."""
        t0, sent0, received0 = self._samples[0]
        age = max(now - t0, 1e-3)
        return (self.bytes_sent - sent0) / age, (self.bytes_received - received0) / age

    def _sent(self, nbytes: int, charged: int = 0) -> None:
        """Count bytes handed to the transport; the limiter takes those not taken before."""
        self.bytes_sent += nbytes
        if self.limiter is not None and nbytes > charged:
            self.limiter.sent(nbytes - charged)

    async def drain(self) -> None:
        """Wait until the kernel has taken most of what we queued, and for the upload rate.

        A peer that takes nothing for :data:`WRITE_STALL_TIMEOUT` seconds is
        dropped (its requests fail), so no writer waits on it forever.
        """
        if self.limiter is not None:
            await self.limiter.upload_turn()
        if self._can_write.is_set():
            return
        try:
            async with asyncio.timeout(WRITE_STALL_TIMEOUT):
                await self._can_write.wait()
        except TimeoutError:
            self.abort(f"peer stopped reading for {WRITE_STALL_TIMEOUT:.0f} s")

    # -- requests -------------------------------------------------------------------
    def next_id(self) -> int:
        return self.session.next_id()

    def start_request(self, msg: m.Message, req: int, body: Body = b"") -> asyncio.Future[Reply]:
        """Send ``msg`` (whose request id is ``req``) and return the answer's future."""
        if not self.is_open:
            raise PeerError(f"peer {self.label}: connection is closed")
        wire = self.session.start_request(msg, body)
        fut: asyncio.Future[Reply] = self._loop.create_future()
        self._pending[req] = fut
        self._write(wire)
        return fut

    def forget(self, req: int) -> None:
        """Stop waiting for ``req`` and tell the peer not to bother."""
        fut = self._pending.pop(req, None)
        if fut is not None:
            fut.cancel()
            wire = self.session.cancel(req)
            if self.is_open:
                self._write(wire)

    async def request(self, msg: m.Message, req: int, timeout: float, body: Body = b"") -> Reply:
        fut = self.start_request(msg, req, body)
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError as err:
            self.forget(req)
            raise PeerTimeout(f"peer {self.label} did not answer in {timeout:.0f} s") from err
        except asyncio.CancelledError:
            self.forget(req)  # nobody waits for it any more: don't keep its future
            raise

    async def get_manifest(self, manifest: bytes, timeout: float) -> Buffer:
        req = self.next_id()
        reply, body = await self.request(m.GetManifest(req, manifest), req, timeout)
        return self._payload(reply, body)

    async def get_have(self, manifest: bytes, timeout: float) -> m.Have:
        req = self.next_id()
        reply, _ = await self.request(m.GetHave(req, manifest), req, timeout)
        if isinstance(reply, m.Have):
            return reply
        self._payload(reply, b"")
        raise RemoteProtocolError("unexpected answer to GET_HAVE")

    def _payload(self, reply: m.Message, body: Buffer) -> Buffer:
        if isinstance(reply, m.Data):
            return body
        if isinstance(reply, m.NotFound):
            raise NotFoundReply(f"peer {self.label} does not have it")
        if isinstance(reply, m.Error):
            raise PeerError(f"peer {self.label} answered with an error: {reply.message}")
        raise RemoteProtocolError(f"unexpected answer {type(reply).__name__}")


def _fill(sealed: SealedBody, fd: int, offset: int) -> int:
    """Read the file's range into the sealed frame's records and encrypt them (in a thread)."""
    slots = sealed.slots()
    want = sum(len(s) for s in slots)
    got = os.preadv(fd, slots, offset) if slots else 0
    while 0 < got < want:  # a short read (rare): go on where it stopped
        rest, skip = [], got
        for s in slots:
            if skip >= len(s):
                skip -= len(s)
                continue
            rest.append(s[skip:])
            skip = 0
        more = os.preadv(fd, rest, offset + got)
        if more <= 0:
            break
        got += more
    if got == want:
        sealed.encrypt()
    return got


async def connect(
    host: str,
    port: int,
    hello: m.Hello,
    handler: Handler | None,
    timeout: float,
    on_close: Callable[[Connection], None] | None = None,
    *,
    link: LinkSecurity | None,
    expect: bytes | None = None,
    limiter: Limiter | None = None,
    local_host: str | None = None,
) -> Connection:
    """Open a connection and complete the handshake, or raise :class:`PeerError`.

    With ``expect``, the peer must prove it is that node (its key), or the
    connection is refused as a :class:`RemoteProtocolError`.  With
    ``local_host``, the connection comes from that address (see
    :func:`source_host`).
    """
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            _, conn = await loop.create_connection(
                lambda: Connection(hello, handler, on_close, link=link, initiator=True,
                                   expect=expect, limiter=limiter),
                host, port, local_addr=(local_host, 0) if local_host else None,
            )
    except TimeoutError as err:
        raise PeerTimeout(f"connecting to {host}:{port} timed out") from err
    except OSError as err:
        raise PeerUnreachable(f"cannot connect to {host}:{port}: {err.strerror or err}") from err
    await conn.wait_handshake(timeout)
    return conn


def source_host(bind_host: str) -> str | None:
    """The address a node's outbound links come from: the one it listens on, if it names one.

    A node bound to one address of a host with several speaks from it on UDP
    already (the DHT socket is bound there); its TCP links must too, or peers
    see them come from whatever address the route picks, and count them
    against that address's limits.  A wildcard bind leaves it to the route.
    """
    return None if bind_host in ("", "0.0.0.0", "::") else bind_host


def make_hello(node_id: bytes, port: int) -> m.Hello:
    return m.Hello(PROTOCOL_VERSION, node_id, port, "dhtshare/0.1")


__all__ = ["Body", "Connection", "Handler", "NotFoundReply", "Reply", "connect", "make_hello",
           "source_host"]
