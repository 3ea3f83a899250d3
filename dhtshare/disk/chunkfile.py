"""A file filled chunk by chunk, with a journal of the chunks verified in it.

Downloads and replica copies are written out of order, so next to the data
file (``NAME``) lives ``NAME.have``: a short header naming the manifest, then
one byte per chunk, set to 1 right after that chunk's verified bytes were
written.  A download that is killed and rerun reads the journal and fetches
only what is missing, without rehashing what it already has: every byte the
journal vouches for was hashed before it was written.

The journal byte is written after the data, so a killed process never leaves
a chunk marked that was not fully written.  (After a power cut the page cache
may lose data the journal still claims; ``finish`` syncs the data before the
file is renamed into place, and the journal is removed with it.)

Writes run in worker threads, and a thread cannot be stopped: a write may
still be under way when its owner gives up and closes the file.  A closed
descriptor's number is soon handed to the next file opened, so a late
``pwrite`` through it would land in some other file.  Each use of the
descriptors is therefore registered under a lock, and :meth:`ChunkFile.close`
marks the file closed and waits for the uses in progress before it closes
anything; a write that comes later is refused (:class:`ChunkFileClosed`).
The lock is held only to register and to close, not while hashing or
writing, so writes of different chunks still run in parallel.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import mmap
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from dhtshare.core.framing import Buffer
from dhtshare.core.manifest import Manifest
from dhtshare.errors import os_error

MAGIC = b"DHTSHAVE1\n"
#: Alignment O_DIRECT needs for buffers, offsets and lengths.
DIRECT_ALIGN = 4096


class ChunkFileClosed(OSError):
    """A chunk file was used after it was closed: nothing was written.

    An ``OSError`` (``EBADF``, what the closed descriptor itself would give),
    so callers that handle a failed write already handle this one too.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(errno.EBADF, "chunk file is closed", str(path))


def journal_path(path: Path) -> Path:
    return path.with_name(path.name + ".have")


def _preallocate(fd: int, size: int) -> None:
    """Reserve the whole file up front: a full disk fails now, not at 90 %."""
    os.ftruncate(fd, size)
    if size and hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as err:
            if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise


class ChunkFile:
    """The data file and journal of one manifest being filled in."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.path = path
        self.manifest = manifest
        self.journal = journal_path(path)
        self.held = bytearray(manifest.chunk_count)
        self.fd = -1
        self._jfd = -1
        #: An O_DIRECT descriptor for whole, aligned chunks (-1: not available).
        self._dfd = -1
        #: Guards ``_closed`` and ``_users`` (the threads using the descriptors now).
        self._guard = threading.Condition()
        self._users = 0
        self._closed = False

    @classmethod
    def open(cls, path: Path, manifest: Manifest, preallocate: bool = True) -> ChunkFile:
        """Open (resuming when a matching journal exists) or create.

        ``preallocate`` reserves the whole file up front (downloads); replicas,
        which may only ever hold some chunks, stay sparse.
        """
        cf = cls(path, manifest)
        created = [p for p in (path, cf.journal) if not p.exists()]
        try:
            cf._open(preallocate)
        except OSError as err:
            cf.close()
            # What this call created holds nothing verified, but maybe reserved space.
            for p in created:
                with contextlib.suppress(OSError):
                    os.unlink(p)
            raise os_error(err, "open", path) from err
        return cf

    def _open(self, preallocate: bool) -> None:
        n = self.manifest.chunk_count
        header = MAGIC + self.manifest.hash
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        resumed = False
        if self.journal.exists() and self.path.exists():
            with contextlib.suppress(OSError):
                raw = self.journal.read_bytes()
                body = raw[len(header) :]
                if (
                    raw.startswith(header)
                    and len(body) == n
                    and not body.translate(None, b"\x00\x01")
                    and os.stat(self.path).st_size == self.manifest.size
                ):
                    self.held[:] = body
                    resumed = True
        self.fd = os.open(self.path, flags, 0o644)
        self._jfd = os.open(self.journal, flags, 0o644)
        if self.manifest.chunk_size % DIRECT_ALIGN == 0 and hasattr(os, "O_DIRECT"):
            # Whole chunks skip the page cache: allocating cache pages for data we
            # only pass through is the costliest part of a download on some
            # machines (virtual ones especially); O_DIRECT writes cost ~nothing.
            with contextlib.suppress(OSError):  # tmpfs and some others refuse it
                self._dfd = os.open(self.path, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
        if not resumed:
            os.ftruncate(self._jfd, 0)
            os.pwrite(self._jfd, header + bytes(n), 0)
            if preallocate:
                _preallocate(self.fd, self.manifest.size)
            else:
                os.ftruncate(self.fd, self.manifest.size)
        self._base = len(header)

    @property
    def closed(self) -> bool:
        return self._closed

    @contextlib.contextmanager
    def _fds_in_use(self) -> Iterator[None]:
        """Keep the descriptors open for the ``with`` block (or refuse if closed)."""
        with self._guard:
            if self._closed:
                raise ChunkFileClosed(self.path)
            self._users += 1
        try:
            yield
        finally:
            with self._guard:
                self._users -= 1
                if not self._users:
                    self._guard.notify_all()

    @property
    def held_count(self) -> int:
        return self.held.count(1)

    def held_indices(self) -> list[int]:
        return [i for i, b in enumerate(self.held) if b]

    def held_bytes(self) -> int:
        m = self.manifest
        return sum(m.chunk_length(i) for i in self.held_indices())

    def write_verified(self, index: int, data: Buffer) -> bool:
        """Hash ``data``; if it is chunk ``index``, write it and journal it.

        Runs in worker threads (hashlib and the syscalls release the GIL).
        Returns False, writing nothing, when the hash does not match; raises
        :class:`ChunkFileClosed` once the file is closed.
        """
        m = self.manifest
        if len(data) != m.chunk_length(index):
            return False
        if hashlib.sha256(data).digest() != m.chunk_hash(index):
            return False
        with self._fds_in_use():
            view = memoryview(data)
            offset = m.chunk_offset(index)
            fd = self.fd
            if self._dfd >= 0 and isinstance(data, mmap.mmap) and len(data) % DIRECT_ALIGN == 0:
                fd = self._dfd  # page-aligned buffer, aligned offset and length
            while view:
                try:
                    n = os.pwrite(fd, view, offset)
                except OSError as err:
                    if fd != self._dfd or err.errno != errno.EINVAL:
                        raise
                    fd = self.fd  # the file system turned the direct write down
                    continue
                view, offset = view[n:], offset + n
            os.pwrite(self._jfd, b"\x01", self._base + index)
            self.held[index] = 1
        return True

    def finish(self, target: Path) -> None:
        """Sync the complete file, move it to ``target`` and drop the journal."""
        with self._fds_in_use():
            os.fsync(self.fd)
            os.replace(self.path, target)
            self.path = target
            with contextlib.suppress(OSError):
                os.unlink(self.journal)
        self.close()

    def close(self) -> None:
        """Close for good, once the writes under way are done; later ones are refused.

        Waits (briefly: one ``pwrite``) for writes in other threads, so their
        descriptor numbers cannot be reused under them.  Idempotent.
        """
        with self._guard:
            self._closed = True
            while self._users:
                self._guard.wait()
            fds = (self.fd, self._jfd, self._dfd)
            self.fd = self._jfd = self._dfd = -1
        for fd in fds:
            if fd >= 0:
                os.close(fd)

    def discard(self) -> None:
        """Close and remove both files (an abandoned copy)."""
        self.close()
        for p in (self.path, self.journal):
            with contextlib.suppress(OSError):
                os.unlink(p)
