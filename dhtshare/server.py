"""Answers peers' requests from the content store.

Each connection's requests are served in arrival order by one task per
connection, with back-pressure: the next chunk is read only once the socket
has taken most of the previous ones, so a slow or greedy peer costs a bounded
amount of memory.  Large reads run in a worker thread so the event loop keeps
serving everyone else while the disk works.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from dhtshare import messages as m
from dhtshare.config import KIB
from dhtshare.store import ContentStore
from dhtshare.transport import Connection

log = logging.getLogger(__name__)

#: Reads up to this size are done inline: a thread hop costs more than the read.
INLINE_READ = 64 * KIB
HAVE_FLUSH_DELAY = 0.02


class _Queue:
    """Per-connection request queue served by one task."""

    def __init__(self) -> None:
        self.items: deque[m.Message] = deque()
        self.cancelled: set[int] = set()
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class ChunkServer:
    """The :class:`~dhtshare.transport.Handler` for every peer connection."""

    def __init__(self, store: ContentStore) -> None:
        self.store = store
        self._queues: dict[Connection, _Queue] = {}
        self._subscribers: dict[bytes, set[Connection]] = {}
        self._have_pending: dict[bytes, list[int]] = {}
        self._flush_handle: asyncio.TimerHandle | None = None
        self.bytes_served = 0

    # -- Handler protocol ---------------------------------------------------------
    def handle(self, conn: Connection, msg: m.Message) -> None:
        q = self._queues.get(conn)
        if q is None:
            q = self._queues[conn] = _Queue()
            q.task = asyncio.get_running_loop().create_task(self._serve(conn, q))
        if isinstance(msg, m.Cancel):
            q.cancelled.add(msg.req)
            return
        q.items.append(msg)
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
                msg = q.items.popleft()
                conn.incoming -= 1
                req = getattr(msg, "req", -1)
                if req in q.cancelled:
                    q.cancelled.discard(req)
                    continue
                await self._answer(conn, msg)
                await conn.drain()
        except asyncio.CancelledError:
            pass
        except Exception:  # a bug must not take the node down
            log.exception("error serving %s", conn.label)
            conn.abort("internal error")

    async def _answer(self, conn: Connection, msg: m.Message) -> None:
        match msg:
            case m.GetManifest(req=req, manifest=h):
                entry = self.store.get(h)
                if entry is None:
                    conn.send(m.NotFound(req))
                else:
                    conn.send(m.Data(req), entry.manifest.encode())
            case m.GetChunk(req=req, manifest=h, index=index, chunk=chunk):
                entry = self.store.get(h)
                if (
                    entry is None
                    or not entry.has(index)
                    or entry.manifest.chunk_hash(index) != chunk
                ):
                    conn.send(m.NotFound(req))
                    return
                try:
                    if entry.manifest.chunk_length(index) <= INLINE_READ:
                        data = entry.read_chunk(index)
                    else:
                        data = await asyncio.to_thread(entry.read_chunk, index)
                except OSError as err:
                    log.warning("cannot read chunk %d of %s: %s", index, entry.path, err)
                    conn.send(m.Error(req, m.ErrorCode.INTERNAL, "chunk unreadable"))
                    return
                self.bytes_served += len(data)
                conn.send(m.Data(req), data)
            case m.GetHave(req=req, manifest=h):
                entry = self.store.get(h)
                if entry is None:
                    conn.send(m.NotFound(req))
                    return
                self._subscribers.setdefault(h, set()).add(conn)
                if entry.complete:
                    conn.send(m.Have(req, True))
                else:
                    n = entry.manifest.chunk_count
                    conn.send(m.Have(req, False, m.bitfield_from_indices(n, entry.held_indices())))

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

    def close(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        for q in self._queues.values():
            if q.task is not None:
                q.task.cancel()
