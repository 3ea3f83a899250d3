"""Answers peers' requests from the content store.

Each connection's requests are served in arrival order by one task per
connection, with back-pressure: the next chunk is read only once the socket
has taken most of the previous ones, so a slow or greedy peer costs a bounded
amount of memory.  Large reads, hashes and writes run in worker threads so
the event loop keeps serving everyone else while the disk works.

Besides serving, a node accepts replicas (``PUT_MANIFEST``/``PUT_CHUNK``):
it verifies the manifest against its hash and every chunk against the
manifest before keeping them, and declines with ``FULL`` when
``--max-storage`` or the disk has no room.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
from collections import deque
from collections.abc import Awaitable, Callable

from dhtshare.activity import activity
from dhtshare.config import KIB, MIB
from dhtshare.core import messages as m
from dhtshare.core.bitfield import bitfield_from_indices
from dhtshare.core.framing import Buffer
from dhtshare.core.handshake import LinkSecurity
from dhtshare.core.manifest import Manifest
from dhtshare.disk.buffers import POOL
from dhtshare.disk.chunkfile import ChunkFileClosed
from dhtshare.disk.entry import Entry
from dhtshare.disk.intake import admit_replica
from dhtshare.disk.store import ContentStore
from dhtshare.errors import DhtshareError, StorageError, StorageFull
from dhtshare.net.ratelimit import Limiter
from dhtshare.net.transport import Connection, make_hello

log = logging.getLogger(__name__)

#: Reads up to this size are done inline: a thread hop costs more than the read.
INLINE_READ = 64 * KIB
HAVE_FLUSH_DELAY = 0.02
#: Bytes of pushed chunks one connection may have queued with us.
MAX_QUEUED_BYTES = 64 * MIB
#: Inbound links at once, at most (and never more than a quarter of the
#: descriptors the process may open: files and outbound links need the rest).
MAX_INBOUND = 512
#: Inbound links from one IP address at once: one host cannot take them all.
MAX_INBOUND_PER_ADDRESS = 16
#: A link quiet this long (seconds, nobody waiting on it) gives way to a new one at a limit.
QUIET_EVICT = 5.0


def _origin(conn: Connection) -> str:
    """Who asks, for quotas: the key the link proved (an address on a plaintext link)."""
    key = conn.peer_key
    return key.hex() if key is not None else f"address:{conn.peername[0]}"


def inbound_limit() -> int:
    """:data:`MAX_INBOUND`, or less when the descriptor limit is low."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_INBOUND
    return max(8, min(MAX_INBOUND, soft // 4))

Announce = Callable[[bytes], Awaitable[int]]
Closed = Callable[[Connection], None]


class _Queue:
    """Per-connection request queue served by one task."""

    def __init__(self) -> None:
        self.items: deque[tuple[m.Message, Buffer]] = deque()
        #: Ids of the requests waiting in ``items``; only those can be cancelled,
        #: so a peer sending CANCELs for made-up ids costs us nothing.
        self.queued: set[int] = set()
        self.cancelled: set[int] = set()
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.queued_bytes = 0


class ChunkServer:
    """The :class:`~dhtshare.net.transport.Handler` for every peer connection."""

    def __init__(self, store: ContentStore, announce: Announce | None = None,
                 max_inbound: int | None = None,
                 max_per_address: int = MAX_INBOUND_PER_ADDRESS,
                 limiter: Limiter | None = None) -> None:
        self.store = store
        #: The node's bandwidth limits, shared by every link (inbound and outbound).
        self.limiter = limiter
        self.max_inbound = inbound_limit() if max_inbound is None else max_inbound
        self.max_per_address = max_per_address
        #: Called once a pushed replica is held, so the node announces it.
        self.announce = announce
        self._listener: asyncio.Server | None = None
        self._inbound: set[Connection] = set()
        self._queues: dict[Connection, _Queue] = {}
        self._subscribers: dict[bytes, set[Connection]] = {}
        self._have_pending: dict[bytes, list[int]] = {}
        self._flush_handle: asyncio.TimerHandle | None = None
        self.bytes_served = 0
        self.chunks_served = 0
        self.bytes_stored = 0

    # -- the TCP listener ---------------------------------------------------------
    async def listen(self, host: str, port: int, node_id: bytes, on_close: Closed,
                     link: LinkSecurity | None) -> int:
        """Accept peer connections on ``host:port`` (0: any free port); returns the port.

        ``link`` is the node's key material for encrypted links (``None``: plaintext,
        for benchmarks only).

        Raises ``OSError`` when the address cannot be bound; the caller, which
        also needs the UDP port of the same number, says what to do about it.
        """
        loop = asyncio.get_running_loop()
        hello = None

        def closed(conn: Connection) -> None:
            self._inbound.discard(conn)
            on_close(conn)

        def accept() -> Connection:
            assert hello is not None  # set below, before the loop can call us
            conn = Connection(hello, self, closed, link=link, initiator=False,
                              admit=self._admit, limiter=self.limiter)
            self._inbound.add(conn)
            return conn

        self._listener = await loop.create_server(accept, host, port, reuse_address=True)
        bound = int(self._listener.sockets[0].getsockname()[1])
        hello = make_hello(node_id, bound)
        return bound

    def _admit(self, conn: Connection) -> str | None:
        """Why a new inbound link must be refused (its address is known now), or None.

        At a limit, the quietest link that nobody waits on and that moved
        nothing for :data:`QUIET_EVICT` seconds is closed to make room: a
        peer that fetched once and went quiet must not lock out the next (a
        link stays open for minutes after its last use, and many honest peers
        can share one address behind NAT).  Only when every link is busy is
        the new one refused.
        """
        others = [c for c in self._inbound if c is not conn]
        if len(others) >= self.max_inbound and not self._make_room(others):
            return f"at the limit of {self.max_inbound} inbound links"
        host = conn.peername[0]
        same = [c for c in others if c.peername[0] == host]
        if len(same) >= self.max_per_address and not self._make_room(same):
            return f"{host} has {len(same)} links open already"
        return None

    @staticmethod
    def _make_room(links: list[Connection]) -> bool:
        """Close the quietest of ``links`` if it is quiet enough; whether one was closed."""
        quietest = max(links, key=lambda c: c.quiet_for(), default=None)
        if quietest is None or quietest.quiet_for() < QUIET_EVICT:
            return False
        quietest.close_reason = "closed for a new link (quiet, at the inbound limit)"
        quietest.close()
        return True

    def inbound_links(self) -> list[Connection]:
        """The links peers opened to us that are open now."""
        return [c for c in self._inbound if c.is_open]

    def stop_listening(self, bye: str | None = None) -> None:
        """Stop accepting, and close every inbound link (saying ``bye`` first, if given)."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for conn in list(self._inbound):
            if bye is not None:
                conn.say_bye(bye)
            else:
                conn.close()

    # -- Handler protocol ---------------------------------------------------------
    def handle(self, conn: Connection, msg: m.Message, body: Buffer) -> None:
        q = self._queues.get(conn)
        if q is None:
            q = self._queues[conn] = _Queue()
            q.task = asyncio.get_running_loop().create_task(self._serve(conn, q))
        if isinstance(msg, m.Cancel):
            if msg.req in q.queued:
                q.cancelled.add(msg.req)
            return
        q.queued_bytes += len(body)
        if q.queued_bytes > MAX_QUEUED_BYTES:
            conn.abort("pushed more data than it waited for")
            return
        q.items.append((msg, body))
        q.queued.add(getattr(msg, "req", -1))
        q.wakeup.set()

    def closed(self, conn: Connection) -> None:
        q = self._queues.pop(conn, None)
        if q is not None and q.task is not None:
            q.task.cancel()
        for subs in self._subscribers.values():
            subs.discard(conn)

    # -- serving ----------------------------------------------------------------------
    async def _serve(self, conn: Connection, q: _Queue) -> None:
        try:
            while conn.is_open:
                if not q.items:
                    q.wakeup.clear()
                    await q.wakeup.wait()
                    continue
                msg, body = q.items.popleft()
                conn.session.incoming_done()
                q.queued_bytes -= len(body)
                req = getattr(msg, "req", -1)
                q.queued.discard(req)
                if req in q.cancelled:
                    q.cancelled.discard(req)
                    continue
                await self._answer(conn, msg, body)
                await conn.drain()
        except asyncio.CancelledError:
            pass
        except Exception:  # a bug must not take the node down
            log.exception("error serving %s", conn.label)
            conn.abort("internal error")

    async def _answer(self, conn: Connection, msg: m.Message, body: Buffer) -> None:
        match msg:
            case m.GetManifest(req=req, manifest=h):
                entry = self.store.get(h)
                if entry is None:
                    conn.send(m.NotFound(req))
                else:
                    conn.send(m.Data(req), entry.manifest.encode())
            case m.GetChunk(req=req, manifest=h, index=index, chunk=chunk):
                await self._get_chunk(conn, req, h, index, chunk)
            case m.GetHave(req=req, manifest=h):
                entry = self.store.get(h)
                if entry is None:
                    conn.send(m.NotFound(req))
                    return
                self._subscribers.setdefault(h, set()).add(conn)
                conn.subscribed = True
                activity("chunk_map_sent", "chunk map of %s sent to %s", h.hex()[:16],
                         conn.label, peer=conn.label, manifest=h,
                         chunks=entry.held_count())
                if entry.complete:
                    conn.send(m.Have(req, True, b"", entry.durable, entry.replicas))
                else:
                    n = entry.manifest.chunk_count
                    bits = bitfield_from_indices(n, entry.held_indices())
                    conn.send(m.Have(req, False, bits, entry.durable, entry.replicas))
            case m.PutManifest():
                await self._put_manifest(conn, msg)
            case m.PutChunk():
                await self._put_chunk(conn, msg, body)

    async def _get_chunk(
        self, conn: Connection, req: int, h: bytes, index: int, chunk: bytes
    ) -> None:
        entry = self.store.get(h)
        if entry is None or not entry.has(index) or entry.manifest.chunk_hash(index) != chunk:
            conn.send(m.NotFound(req))
            return
        length = entry.manifest.chunk_length(index)
        try:
            if length > INLINE_READ:
                # Large chunks go kernel to socket, never through Python; the
                # descriptor stays open until the kernel is done with it.
                offset = entry.manifest.chunk_offset(index)
                with entry.reading():
                    file = entry.file()
                    if os.fstat(file.fileno()).st_size < offset + length:
                        raise StorageError(f"{entry.path} is shorter than its manifest says")
                    await conn.send_file(m.Data(req), file, offset, length)
                self.bytes_served += length
                self.chunks_served += 1
                activity("chunk_sent", "chunk %d sent to %s", index, conn.label,
                         peer=conn.label, chunk=index, bytes=length, manifest=h)
                return
            data = entry.read_chunk(index)
        except (OSError, StorageError) as err:
            log.warning("cannot read chunk %d of %s: %s", index, entry.path, err)
            conn.send(m.Error(req, m.ErrorCode.INTERNAL, "chunk unreadable"))
            return
        self.bytes_served += len(data)
        self.chunks_served += 1
        conn.send(m.Data(req), data)
        activity("chunk_sent", "chunk %d sent to %s", index, conn.label,
                 peer=conn.label, chunk=index, bytes=len(data), manifest=h)

    async def _put_manifest(self, conn: Connection, msg: m.PutManifest) -> None:
        req = msg.req
        try:
            manifest = Manifest.decode_verified(msg.body, msg.manifest)  # type: ignore[arg-type]
        except DhtshareError as err:
            conn.send(m.Error(req, m.ErrorCode.BAD_REQUEST, f"bad manifest: {err}"))
            return
        entry = self.store.get(manifest.hash)
        if entry is not None and not entry.durable and not entry.complete:
            conn.send(m.Error(req, m.ErrorCode.BUSY, "a download of it is in progress"))
            return
        origin = _origin(conn)
        try:
            admit_replica(self.store, manifest, origin)
            if entry is not None and entry.complete and not entry.durable:
                # A user's copy: the durable one must not depend on it (the user
                # may delete it), so copy it, verified, and serve it meanwhile.
                self.store.check_room(manifest.size)
                cf = await asyncio.to_thread(self.store.copy_into_replica, entry)
                self.store.install_replica(cf, msg.replicas, origin)
            else:
                self.store.open_replica(manifest, msg.replicas, origin)
        except StorageFull as err:
            conn.send(m.Error(req, m.ErrorCode.FULL, str(err)))
            return
        except (OSError, StorageError) as err:
            conn.send(m.Error(req, m.ErrorCode.INTERNAL, f"cannot store: {err}"))
            return
        if self.announce is not None:
            await self.announce(manifest.hash)
        conn.send(m.Ok(req))

    async def _put_chunk(
        self, conn: Connection, msg: m.PutChunk, body: Buffer
    ) -> None:
        req, index = msg.req, msg.index
        entry = self.store.get(msg.manifest)
        if entry is None or not entry.durable or entry.complete:
            if entry is not None and entry.has(index):
                conn.send(m.Ok(req))
            else:
                conn.send(m.NotFound(req))
            return
        if entry.has(index):
            conn.send(m.Ok(req))
            return
        if entry.manifest.chunk_hash(index) != msg.chunk:
            conn.send(m.Error(req, m.ErrorCode.BAD_REQUEST, "chunk hash does not match"))
            return
        size = len(body)
        try:
            self.store.check_room(size)
            ok = await self._write_replica_chunk(entry, index, body)
            POOL.release(body)  # may be closed or reused at once: not touched after this
            del body
        except StorageFull as err:
            conn.send(m.Error(req, m.ErrorCode.FULL, str(err)))
            return
        except OSError as err:
            conn.send(m.Error(req, m.ErrorCode.INTERNAL, f"cannot store: {err.strerror}"))
            return
        if not ok:
            conn.abort("pushed a chunk that failed verification")
            return
        self.bytes_stored += size
        self.announce_chunk(msg.manifest, index)
        conn.send(m.Ok(req))

    async def _write_replica_chunk(self, entry: Entry, index: int, body: Buffer) -> bool:
        """Write a pushed chunk through the replica's writer, opened on demand.

        The writer may be closed under the write (another replica needed the
        slot): then it is asked for again, unless the replica itself was dropped.
        """
        h = entry.manifest.hash
        for _attempt in range(3):
            cf = self.store.writer(entry)
            try:
                return await asyncio.to_thread(cf.write_verified, index, body)
            except ChunkFileClosed:
                if self.store.entries.get(h) is not entry:
                    raise
        raise ChunkFileClosed(entry.path)

    # -- HAVE pushes ------------------------------------------------------------------
    def announce_chunk(self, manifest: bytes, index: int) -> None:
        """A chunk of ``manifest`` was just verified here: tell subscribed peers soon."""
        if not self._subscribers.get(manifest):
            return
        self._have_pending.setdefault(manifest, []).append(index)
        if self._flush_handle is None:
            loop = asyncio.get_running_loop()
            self._flush_handle = loop.call_later(HAVE_FLUSH_DELAY, self._flush_haves)

    def _flush_haves(self) -> None:
        self._flush_handle = None
        pending, self._have_pending = self._have_pending, {}
        for manifest, indices in pending.items():
            for conn in list(self._subscribers.get(manifest, ())):
                for i in range(0, len(indices), m.MAX_HAVE_BATCH):
                    conn.send(m.HaveUpdate(manifest, tuple(indices[i : i + m.MAX_HAVE_BATCH])))
                activity("chunk_map_update_sent", "told %s of %d new chunks", conn.label,
                         len(indices), peer=conn.label, chunks=len(indices),
                         manifest=manifest)

    def close(self) -> None:
        self.stop_listening()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        for q in self._queues.values():
            if q.task is not None:
                q.task.cancel()
