"""The state one download's supervisor and peer workers share, built whole at its start."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from dhtshare.core.manifest import Manifest
from dhtshare.core.picker import Picker
from dhtshare.disk.chunkfile import ChunkFile
from dhtshare.disk.entry import Entry
from dhtshare.errors import DhtshareError
from dhtshare.net.transport import Connection
from dhtshare.transfer.manifest_source import PeerBook
from dhtshare.transfer.services import Address, FetchServices, Progress


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

    def stored(self, index: int, size: int) -> None:
        """Chunk ``index`` (``size`` bytes) was verified and written."""
        picker = self.picker
        if picker.has(index):
            return
        for peer in picker.received(index):
            self.forget(peer, index)
        self.done_bytes += size
        first = not self.verified_any
        self.verified_any = True
        self.services.chunk_verified(self.manifest, index, first)
        self.progress(self.done_bytes, self.manifest.size)
        if picker.complete:
            self.finished.set()
            self.wake_all()
