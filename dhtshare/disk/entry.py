"""One file a node can serve chunks of, and the descriptors it reads it through.

A file's read descriptors are opened when a chunk is first read and kept
while reads use them (:meth:`Entry.reading`: close waits for the last one, so
no read goes to a recycled descriptor); at most :data:`MAX_OPEN_READERS`
idle files keep theirs, the least recently read closing first.  Which files
a node holds, and their index, is :mod:`dhtshare.disk.store`'s.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

from dhtshare.core.manifest import Manifest
from dhtshare.disk.chunkfile import ChunkFile
from dhtshare.errors import DhtshareError, StorageError

log = logging.getLogger(__name__)

#: How often (seconds) a served user file's size and mtime are re-checked.
STAT_INTERVAL = 2.0
#: Files kept open for serving at once (one or two descriptors each): beyond
#: this, the least recently read file that no read is using is closed, and
#: opened again when it is next asked for.
MAX_OPEN_READERS = 256

Kind = Literal["published", "fetched", "replica"]
#: Guards every entry's reader count and :data:`_OPEN_READERS` (held briefly).
_READERS = threading.Lock()
#: Entries with read descriptors open, least recently used first (by ``id``).
_OPEN_READERS: OrderedDict[int, Entry] = OrderedDict()


@dataclass
class Entry:
    """One file this node can serve chunks of."""

    manifest: Manifest
    path: Path
    #: ``None`` when every chunk is held; else one byte per chunk (1 = held).
    held: bytearray | None = None
    size_mtime: tuple[int, int] | None = None
    kind: Kind = "published"
    #: Replication factor this node helps maintain (0: none).
    replicas: int = 0
    #: Open writer for replica data (replicas only; see :meth:`ContentStore.writer`).
    cf: ChunkFile | None = field(default=None, repr=False)
    #: Who asked for this replica (its key, hex; "" for our own), and when (Unix time).
    origin: str = ""
    opened: float = 0.0
    _fd: int | None = field(default=None, repr=False)
    _file: BinaryIO | None = field(default=None, repr=False)
    _checked: float = field(default=0.0, repr=False)
    valid: bool = True
    #: Reads and sendfiles under way (see :meth:`reading`), and whether close waits on them.
    _readers: int = field(default=0, repr=False)
    _closing: bool = field(default=False, repr=False)

    @property
    def durable(self) -> bool:
        return self.kind == "replica"

    @property
    def complete(self) -> bool:
        return self.held is None or self.held.count(0) == 0

    def has(self, index: int) -> bool:
        if not 0 <= index < self.manifest.chunk_count:
            return False
        return self.held is None or bool(self.held[index])

    def held_count(self) -> int:
        return self.manifest.chunk_count if self.held is None else self.held.count(1)

    def held_indices(self) -> list[int]:
        if self.held is None:
            return list(range(self.manifest.chunk_count))
        return [i for i, b in enumerate(self.held) if b]

    def held_bytes(self) -> int:
        if self.held is None:
            return self.manifest.size
        return sum(self.manifest.chunk_length(i) for i in self.held_indices())

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Keep the read descriptors open while a read or a sendfile uses them.

        ``close`` may come from the event loop (a download finished, a file
        was removed) while a worker thread preads or the kernel sendfiles
        from our descriptor; closing it then would let the read go to
        whatever file gets that descriptor number next, and an honest node
        would send a chunk that fails verification.  So the last reader out
        closes, and a reader that arrives after ``close`` is refused.
        """
        with _READERS:
            if self._closing:
                raise StorageError(f"{self.path} is no longer served")
            self._readers += 1
        try:
            yield
        finally:
            with _READERS:
                self._readers -= 1
                last = self._closing and self._readers == 0
            if last:
                self._close_now()

    def fd(self) -> int:
        """A read-only descriptor on the content file (opened on demand; use in :meth:`reading`)."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self._used()
        return self._fd

    def file(self) -> BinaryIO:
        """An unbuffered file object on the content, for sendfile (use in :meth:`reading`)."""
        if self._file is None:
            self._file = open(self.path, "rb", buffering=0)  # noqa: SIM115 - closed in close()
        self._used()
        return self._file

    def _used(self) -> None:
        """Mark this entry's read descriptors recently used; close the idlest beyond the cap.

        Only an entry no read is using (no :meth:`reading` block) is closed,
        and that count is checked under the same lock that :meth:`reading`
        takes, so no read ever loses its descriptor.
        """
        with _READERS:
            _OPEN_READERS[id(self)] = self
            _OPEN_READERS.move_to_end(id(self))
            if len(_OPEN_READERS) <= MAX_OPEN_READERS:
                return
            for key, victim in list(_OPEN_READERS.items()):
                if len(_OPEN_READERS) <= MAX_OPEN_READERS:
                    break
                if victim._readers == 0 and victim is not self:
                    del _OPEN_READERS[key]
                    victim._close_readers()

    def _close_readers(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def close(self) -> None:
        """Stop serving: close now, or when the last read under way is done."""
        with _READERS:
            self._closing = True
            if self._readers:
                return
        self._close_now()

    def _close_now(self) -> None:
        with _READERS:
            _OPEN_READERS.pop(id(self), None)
            self._close_readers()
        if self.cf is not None:
            self.cf.close()
            self.cf = None

    def still_valid(self) -> bool:
        """False once a user's file changed on disk since it was hashed."""
        if not self.valid or self.size_mtime is None:
            return self.valid
        now = time.monotonic()
        if now - self._checked < STAT_INTERVAL:
            return True
        self._checked = now
        try:
            st = os.stat(self.path)
        except OSError:
            st = None
        if st is None or (st.st_size, st.st_mtime_ns) != self.size_mtime:
            log.warning("%s changed or vanished since it was shared; not serving it", self.path)
            self.valid = False
        return self.valid

    def copy_into(self, dst: ChunkFile, stop: threading.Event | None = None) -> None:
        """Copy the chunks held here that ``dst`` lacks, each verified by ``dst``.

        Best effort and blocking (run it in a thread): a chunk that cannot be
        read or does not verify is left out; ``stop`` ends it early.
        """
        for i in self.held_indices():
            if stop is not None and stop.is_set():
                return
            if not dst.held[i]:
                with contextlib.suppress(OSError, DhtshareError):
                    dst.write_verified(i, self.read_chunk(i))

    def read_chunk(self, index: int) -> bytes:
        m = self.manifest
        length = m.chunk_length(index)
        with self.reading():
            data = os.pread(self.fd(), length, m.chunk_offset(index))
        if len(data) != length:
            raise StorageError(f"{self.path} is shorter than its manifest says")
        return data
