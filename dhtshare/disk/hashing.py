"""Hashing whole files: the blocking reads behind publish and the integrity checks.

Kept apart from :mod:`dhtshare.core.manifest` (the sans-IO codec) because this
is where the disk is read, in a small pool of threads, so callers in asyncio run
it with ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dhtshare.config import MAX_CHUNKS, MAX_FILE_SIZE, MIB
from dhtshare.core.manifest import Manifest, check_chunk_size, check_name, chunk_count
from dhtshare.errors import ConfigError, StorageError, os_error

#: Bytes read per block when hashing: large blocks keep Python overhead low even
#: at 512-byte chunks.
_BLOCK_TARGET = 4 * MIB
#: Worker threads: each reads (pread) and hashes its own blocks, and both calls
#: release the GIL, so the file is hashed on every core at once.
_WORKERS = max(1, min(4, os.cpu_count() or 1))


def _hash_blocks(
    fd: int, size: int, block_size: int, chunk_size: int, first: int, step: int,
    out: list[bytes], progress: Callable[[int], None],
) -> None:
    """Hash blocks ``first``, ``first + step``, ... of the file into ``out``."""
    buf = bytearray(block_size)
    view = memoryview(buf)
    for b in range(first, len(out), step):
        offset = b * block_size
        want = min(block_size, size - offset)
        got = 0
        while got < want:
            n = os.preadv(fd, [view[got:want]], offset + got)
            if n == 0:
                raise StorageError("file shrank while it was being read")
            got += n
        out[b] = b"".join(
            hashlib.sha256(view[i : min(i + chunk_size, want)]).digest()
            for i in range(0, want, chunk_size)
        )
        progress(want)


def hash_file(
    path: Path,
    chunk_size: int,
    progress: Callable[[int], None] | None = None,
    name: str | None = None,
) -> Manifest:
    """Read ``path`` through SHA-256 chunk by chunk and return its manifest.

    Memory stays bounded (one block per worker) whatever the file size; the
    blocking work runs in this thread plus a small pool, so callers in asyncio
    run it with ``asyncio.to_thread``.
    """
    check_chunk_size(chunk_size)
    name = check_name(name if name is not None else path.name)
    block_size = max(chunk_size, (_BLOCK_TARGET // chunk_size) * chunk_size)
    lock = threading.Lock()
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        with lock:
            done += n
            if progress:
                progress(done)

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise os_error(err, "read", path) from err
    try:
        size = os.fstat(fd).st_size
        if size > MAX_FILE_SIZE or chunk_count(size, chunk_size) > MAX_CHUNKS:
            raise ConfigError(
                f"{path} is too large for chunk size {chunk_size}: use a larger --chunk-size"
            )
        with contextlib.suppress(OSError, AttributeError):
            os.posix_fadvise(fd, 0, size, os.POSIX_FADV_SEQUENTIAL)
        out: list[bytes] = [b""] * (-(-size // block_size))
        workers = min(_WORKERS, len(out)) or 1
        with ThreadPoolExecutor(workers, "dhtshare-hash") as pool:
            futures = [
                pool.submit(_hash_blocks, fd, size, block_size, chunk_size, k, workers, out,
                            advance)
                for k in range(workers)
            ]
            for fut in futures:
                fut.result()
        if os.fstat(fd).st_size != size:
            raise StorageError(f"{path} changed size while it was being read")
    except OSError as err:
        raise os_error(err, "read", path) from err
    finally:
        os.close(fd)
    if progress and not size:
        progress(0)
    return Manifest(name=name, size=size, chunk_size=chunk_size, hashes=b"".join(out))


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a whole file, read in 1 MiB blocks (for checks and the demo)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()
