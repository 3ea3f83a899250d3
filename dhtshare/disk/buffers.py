"""Reusable, page-aligned buffers for chunk payloads.

A 1 MiB ``bytearray`` per received chunk costs an allocation, a zero-fill and,
whenever the allocator hands the memory back to the kernel, 256 page faults,
which on a virtual machine are the slowest part of the whole receive path.
Chunks of one download all have the same size, so their buffers are recycled
here instead.  The buffers are anonymous ``mmap`` regions: page-aligned, which
is what ``O_DIRECT`` writes need (see :mod:`dhtshare.disk.chunkfile`).

A buffer goes back to the pool only through :meth:`BufferPool.release`, by the
one owner that is done with it; anything not released is simply freed.
"""

from __future__ import annotations

import contextlib
import mmap
import threading

#: Most bytes kept idle in the pool.
POOL_BYTES = 32 * 1024 * 1024
#: Bodies smaller than this are not worth pooling.
MIN_POOLED = 64 * 1024


class BufferPool:
    """Buffers of exact sizes, recycled (thread-safe: writers release from threads)."""

    def __init__(self, capacity: int = POOL_BYTES) -> None:
        self.capacity = capacity
        self._free: dict[int, list[mmap.mmap]] = {}
        self._idle = 0
        self._lock = threading.Lock()

    def get(self, size: int) -> mmap.mmap | bytearray:
        if size < MIN_POOLED:
            return bytearray(size)
        with self._lock:
            free = self._free.get(size)
            if free:
                self._idle -= size
                return free.pop()
        return mmap.mmap(-1, size)

    def release(self, buf: object) -> None:
        """Hand a buffer back; only its single owner may do this, once."""
        if not isinstance(buf, mmap.mmap) or buf.closed:
            return
        size = len(buf)
        with self._lock:
            if self._idle + size <= self.capacity:
                self._free.setdefault(size, []).append(buf)
                self._idle += size
                return
        with contextlib.suppress(BufferError):  # a view of it is still alive: let GC free it
            buf.close()


#: The process-wide pool (buffers are plain memory; sharing them is safe).
POOL = BufferPool()
