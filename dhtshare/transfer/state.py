"""The state one download's supervisor and peer workers share, built whole at its start."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from dhtshare.core.manifest import Manifest
from dhtshare.core.picker import Picker
from dhtshare.disk.chunkfile import ChunkFile
from dhtshare.disk.entry import Entry
from dhtshare.errors import DhtshareError
from dhtshare.net.transport import Connection
from dhtshare.transfer.manifest_source import PeerBook
from dhtshare.transfer.services import Address, FetchServices, Progress

#: A peer whose last chunk came this recently counts as sending now.
SENDING_WINDOW = 3.0
#: Progress reports name at most this many peers (the fastest).
PROGRESS_PEERS = 16


@dataclass
class PeerTally:
    """What one peer delivered in this download: verified chunks and their bytes."""

    bytes: int = 0
    chunks: int = 0
    first: float = 0.0
    last: float = 0.0

    def add(self, size: int, now: float) -> None:
        if not self.chunks:
            self.first = now
        self.bytes += size
        self.chunks += 1
        self.last = now

    def rate(self, now: float) -> float:
        """Bytes per second since its first chunk (0 once it stopped sending)."""
        if now - self.last > SENDING_WINDOW:
            return 0.0
        return self.bytes / max(now - self.first, 0.5)


@dataclass(eq=False)
class Download:
    """What the supervisor and the peer workers of one download share."""

    services: FetchServices
    manifest: Manifest
    cf: ChunkFile
    #: The store entry serving the verified chunks meanwhile (a replica's, if one exists).
    entry: Entry
    picker: Picker[Address]
    book: PeerBook
    progress: Progress
    #: Chunk requests in flight to one peer at most.
    window: int
    #: Bytes already verified on disk when the download started.
    reused: int
    done_bytes: int
    downloaded: int = 0
    peers_bytes: dict[str, int] = field(default_factory=dict)
    #: Per peer label: the verified chunks it delivered (for the progress display).
    tallies: dict[str, PeerTally] = field(default_factory=dict)
    #: Set on completion or on a fatal error.
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    fatal: DhtshareError | None = None
    #: (peer, chunk) -> the request for it, so the losers of a race can be cancelled.
    requests: dict[tuple[Address, int], tuple[Connection, int]] = field(default_factory=dict)
    #: Per peer: set when that peer's worker may have something new to do.
    wakeups: dict[Address, asyncio.Event] = field(default_factory=dict)
    #: The first peers, until each answered HAVE (they start requesting together).
    starting: set[Address] = field(default_factory=set)
    verified_any: bool = False

    @property
    def held_count(self) -> int:
        """Chunks verified on disk (for messages that say what is kept)."""
        return self.manifest.chunk_count - self.picker.missing

    def kept(self) -> str:
        """What a failure message says stays on disk for a resume ("" when nothing does)."""
        n = self.held_count
        return f"; {n} verified chunks are kept in {self.entry.path}" if n else ""

    def wake_all(self) -> None:
        for ev in self.wakeups.values():
            ev.set()

    def fail(self, error: DhtshareError) -> None:
        """Stop the whole download with ``error`` (a local problem, not a peer's)."""
        if self.fatal is None:
            self.fatal = error
        self.finished.set()
        self.wake_all()

    def ban(self, addr: Address, node_id: bytes, conn: Connection) -> None:
        """``addr`` sent data that failed verification: never ask it again in this fetch."""
        self.book.ban(addr, node_id)
        self.picker.ban(addr)
        self.wake_all()
        conn.abort("sent data that failed verification")

    def forget(self, addr: Address, index: int) -> None:
        """Withdraw the request for chunk ``index`` from ``addr``, if one is out."""
        conn_req = self.requests.pop((addr, index), None)
        if conn_req is not None:
            conn_req[0].forget(conn_req[1])

    def stored(self, index: int, size: int, peer: str | None = None) -> None:
        """Chunk ``index`` (``size`` bytes, from ``peer``) was verified and written."""
        picker = self.picker
        if picker.has(index):
            return
        if peer is not None:
            self.tallies.setdefault(peer, PeerTally()).add(size, time.monotonic())
        for addr in picker.received(index):
            self.forget(addr, index)
        self.done_bytes += size
        first = not self.verified_any
        self.verified_any = True
        self.services.chunk_verified(self.manifest, index, first)
        self.progress(self.done_bytes, self.manifest.size, self.senders())
        if picker.complete:
            self.finished.set()
            self.wake_all()

    def senders(self) -> dict[str, Any]:
        """Who sends: how many peers now, and the fastest few with their tallies."""
        now = time.monotonic()
        rows = sorted(((t.rate(now), label, t) for label, t in self.tallies.items()),
                      key=lambda r: (-r[0], r[1]))
        return {
            "sending": sum(1 for r in rows if r[0] > 0),
            "peers": [{"address": label, "bytes": t.bytes, "chunks": t.chunks,
                       "rate": round(rate)} for rate, label, t in rows[:PROGRESS_PEERS]],
        }
