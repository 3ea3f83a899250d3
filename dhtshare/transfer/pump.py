"""One peer's pump: a window of chunk requests in flight, and the chunks it sends stored.

Reply futures and finished writes become typed events (:mod:`.events`) on
one queue, handled in arrival order.  Every chunk is hashed before it is
written (``pwrite`` into the part file, in a worker thread when large, so the
loop keeps receiving); the pump waits for each write it started before it
ends, so none lands after the file is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging

from dhtshare.activity import activity
from dhtshare.config import KIB
from dhtshare.core import messages as m
from dhtshare.core.framing import Buffer
from dhtshare.disk.buffers import POOL
from dhtshare.errors import PeerError, os_error
from dhtshare.net.transport import Connection, Reply
from dhtshare.transfer.events import (
    ChunkRejected,
    ChunkReply,
    ChunkStored,
    PumpEvent,
    RequestCancelled,
    RequestFailed,
    StoreFailed,
)
from dhtshare.transfer.services import Address, label
from dhtshare.transfer.state import Download
from dhtshare.transfer.tasks import wait_done

log = logging.getLogger(__name__)

#: Chunks up to this size are verified and written inline (a thread hop costs more).
INLINE_CHUNK = 64 * KIB


class Pump:
    """Keeps ``window`` chunk requests in flight to one peer until the file is done.

    A chunk counts against the window from its request until it is verified
    and written, so memory stays bounded by ``window`` chunks per peer while
    hashing and writing of several chunks overlap with receiving the next.
    """

    def __init__(self, dl: Download, addr: Address, conn: Connection, node_id: bytes) -> None:
        self.dl = dl
        self.addr = addr
        self.conn = conn
        self.node_id = node_id
        self.label = label(addr)
        self.events: asyncio.Queue[PumpEvent] = asyncio.Queue()
        #: Request id -> chunk index, from the request until the chunk is stored.
        self.inflight: dict[int, int] = {}
        #: Writes running in threads.
        self.writes: set[asyncio.Future[bool]] = set()

    async def run(self) -> None:
        try:
            await self._pump()
        finally:
            # A thread cannot be stopped: wait for its write before letting go
            # (the file is closed after the last pump is gone).
            await wait_done(self.writes)
            self._settle()

    async def _pump(self) -> None:
        dl, picker = self.dl, self.dl.picker
        wake = dl.wakeups[self.addr]
        timeout = dl.services.config.peer_stall_timeout
        while not picker.complete and dl.fatal is None:
            self._request_more()
            if not self.inflight:
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await wake.wait()
                continue
            try:
                async with asyncio.timeout(timeout):
                    event = await self.events.get()
            except TimeoutError as err:
                log.warning("peer %s sent nothing for %.0f s with %d requests in flight",
                            self.label, timeout, len(self.inflight))
                # The link is wedged (a lossy path in TCP back-off, with the chunks the
                # peer already queued for us still ahead in the stream): close it, so the
                # next fetch from this peer dials afresh instead of queueing behind them.
                self.conn.abort(f"no chunk in {timeout:.0f} s")
                raise PeerError(f"no chunk in {timeout:.0f} s") from err
            if not self._handle(event):
                return

    def _request_more(self) -> None:
        dl, picker, conn = self.dl, self.dl.picker, self.conn
        # Fair share: with several peers, none may grab more than its part
        # of what is left, so small files are spread too.
        limit = min(dl.window, max(2, -(-picker.missing // max(1, len(picker.peers())))))
        while len(self.inflight) < limit:
            idx = picker.next_request(self.addr)
            if idx is None:
                break
            req = conn.next_id()
            msg = m.GetChunk(req, dl.manifest.hash, idx, dl.manifest.chunk_hash(idx))
            fut = conn.start_request(msg, req)
            activity("chunk_requested", "chunk %d requested from %s", idx, self.label,
                     peer=self.label, chunk=idx, manifest=dl.manifest.hash)
            self.inflight[req] = idx
            dl.requests[(self.addr, idx)] = (conn, req)
            fut.add_done_callback(functools.partial(self._replied, req, idx))

    def _replied(self, req: int, idx: int, fut: asyncio.Future[Reply]) -> None:
        event: PumpEvent
        if fut.cancelled():
            event = RequestCancelled(req, idx)
        elif (error := fut.exception()) is not None:
            event = RequestFailed(req, idx, error)
        else:
            reply, body = fut.result()
            event = ChunkReply(req, idx, reply, body)
        self.events.put_nowait(event)

    def _handle(self, event: PumpEvent) -> bool:
        """Act on one event; False when the peer got banned (the pump stops)."""
        dl, inflight = self.dl, self.inflight
        match event:
            case ChunkReply():
                self._on_reply(event)
            case RequestCancelled(req=req):
                inflight.pop(req, None)
            case RequestFailed(error=error):
                raise error  # the connection's PeerError; anything else is a bug
            case ChunkStored(req=req, index=index, size=size):
                inflight.pop(req, None)
                activity("chunk_verified", "chunk %d from %s verified and written", index,
                         self.label, peer=self.label, chunk=index, bytes=size,
                         manifest=dl.manifest.hash)
                dl.stored(index, size, self.label)
            case ChunkRejected(req=req, index=index):
                inflight.pop(req, None)
                activity("chunk_rejected", "chunk %d from %s failed verification", index,
                         self.label, peer=self.label, chunk=index,
                         manifest=dl.manifest.hash)
                log.warning("peer %s sent corrupt chunk %d; banned for this fetch",
                            self.label, index)
                dl.ban(self.addr, self.node_id, self.conn)
                return False
            case StoreFailed(req=req, error=error):
                inflight.pop(req, None)
                if not isinstance(error, OSError):
                    raise error
                user = os_error(error, "write", dl.entry.path)
                dl.fail(type(user)(f"{user}{dl.kept()}"))
        return True

    def _on_reply(self, event: ChunkReply) -> None:
        dl, picker = self.dl, self.dl.picker
        req, idx, reply = event.req, event.index, event.reply
        if dl.requests.get((self.addr, idx), (None, None))[1] == req:
            del dl.requests[(self.addr, idx)]
        if isinstance(reply, m.Data) and not picker.has(idx):
            size = len(event.body)
            dl.peers_bytes[self.label] = dl.peers_bytes.get(self.label, 0) + size
            dl.downloaded += size
            self._store(req, idx, event.body)
            return
        self.inflight.pop(req, None)
        if isinstance(reply, m.NotFound):
            picker.failed(self.addr, idx, peer_lacks=True)
            dl.wake_all()
        elif not isinstance(reply, m.Data):
            picker.failed(self.addr, idx)
            dl.wake_all()

    def _store(self, req: int, idx: int, body: Buffer) -> None:
        """Verify and write a chunk; the outcome arrives as an event."""
        cf = self.dl.cf
        size = len(body)
        if size != self.dl.manifest.chunk_length(idx):
            self.events.put_nowait(ChunkRejected(req, idx))
            return
        if size <= INLINE_CHUNK:
            try:
                ok = cf.write_verified(idx, body)
            except OSError as err:
                self.events.put_nowait(StoreFailed(req, idx, err))
                return
            POOL.release(body)
            self.events.put_nowait(ChunkStored(req, idx, size) if ok else ChunkRejected(req, idx))
            return
        fut = asyncio.get_running_loop().run_in_executor(None, cf.write_verified, idx, body)
        self.writes.add(fut)
        fut.add_done_callback(functools.partial(self._written, req, idx, size, body))

    def _written(
        self, req: int, idx: int, size: int, body: Buffer, fut: asyncio.Future[bool]
    ) -> None:
        self.writes.discard(fut)
        # Written (or not): the buffer is free again.  It may be closed or
        # handed to another reader at once, so it is not touched after this.
        POOL.release(body)
        if fut.cancelled():
            return
        event: PumpEvent
        if (error := fut.exception()) is not None:
            event = StoreFailed(req, idx, error)
        elif fut.result():
            event = ChunkStored(req, idx, size)
        else:
            event = ChunkRejected(req, idx)
        self.events.put_nowait(event)

    def _settle(self) -> None:
        """Account for the writes that finished after the pump stopped asking.

        Their chunks are on disk and journaled: telling the picker saves
        downloading them again.  Skipped when the fetch is being cancelled.
        """
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            return
        while not self.events.empty():
            event = self.events.get_nowait()
            if isinstance(event, ChunkStored | ChunkRejected | StoreFailed):
                self._handle(event)
