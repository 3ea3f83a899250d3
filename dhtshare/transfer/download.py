"""One download's life on disk: claim the part file, fill it, rename it into place.

The chunks are written into ``.NAME.HASH.part`` next to the target, with a
journal of the verified ones (:class:`~dhtshare.disk.chunkfile.ChunkFile`),
so an interrupted download resumes where it stopped.  While it runs, the part
file is registered in the store, so its verified chunks are served at once.
When complete, the file is synced and renamed into place.  The state its
parts share (:class:`~dhtshare.transfer.state.Download`) is built whole,
once what this node already holds is in the part file, before any request.

Ownership: :func:`download` opens the chunk file, runs the
:class:`~dhtshare.transfer.supervisor.Supervisor` (which awaits every peer
worker, which awaits every write it started), and only then closes the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from dhtshare.core.manifest import Manifest
from dhtshare.core.picker import Picker
from dhtshare.disk.chunkfile import ChunkFile
from dhtshare.errors import ConfigError, os_error
from dhtshare.transfer.local import copy_held
from dhtshare.transfer.manifest_source import PeerBook, ProviderSource
from dhtshare.transfer.services import FetchServices, Progress
from dhtshare.transfer.state import Download
from dhtshare.transfer.supervisor import Supervisor
from dhtshare.transfer.tasks import in_thread

log = logging.getLogger(__name__)

#: Most requests in flight to one peer, whatever the chunk size.
MAX_WINDOW = 256
#: How long a fetch waits for an interrupted fetch of the same file to wind down.
PREVIOUS_FETCH_GRACE = 15.0
#: The window is at least this many chunks, however large they are.
MIN_WINDOW = 4


async def download(
    services: FetchServices,
    source: ProviderSource,
    manifest: Manifest,
    target: Path,
    progress: Progress,
) -> Download:
    """Download ``manifest`` into ``target``; returns the finished download's state."""
    part = target.with_name(f".{target.name}.{manifest.hash.hex()[:16]}.part")
    async with _claim(services, part, target):
        cf = await in_thread(functools.partial(ChunkFile.open, part, manifest),
                             abandon=ChunkFile.close)
        finished = False
        try:
            if cf.held_count:
                log.info("resuming %s: %d of %d chunks already verified",
                         target, cf.held_count, manifest.chunk_count)
            dl = await _start(services, source.book, manifest, cf, progress)
            own_entry = dl.entry.cf is None and not dl.entry.durable
            try:
                if not dl.picker.complete:
                    await Supervisor(dl, source).run()
                if dl.fatal is not None:
                    raise dl.fatal
                await in_thread(functools.partial(cf.finish, target))
                finished = True
            except OSError as err:
                user = os_error(err, "write", part)
                raise type(user)(f"{user}{dl.kept()}") from err
            finally:
                for conn, req in list(dl.requests.values()):
                    conn.forget(req)
                store = services.store
                if own_entry and store.entries.get(manifest.hash) is dl.entry:
                    store.entries.pop(manifest.hash, None)
                    dl.entry.close()
        finally:
            if not finished and not cf.held_count:
                # Nothing verified in it: a part file would only hold disk space
                # (a hostile manifest may claim any size).
                cf.discard()
            else:
                cf.close()
    services.store.add_complete(manifest, target, "fetched")
    return dl


async def _start(
    services: FetchServices,
    book: PeerBook,
    manifest: Manifest,
    cf: ChunkFile,
    progress: Progress,
) -> Download:
    """The download's state, once what this node already has is in ``cf``."""
    replica = services.store.get(manifest.hash)
    if replica is not None and replica.durable:
        # This node keeps some chunks for the network: copy those, don't download them.
        await copy_held(replica, cf)
    reused = cf.held_bytes()
    window = max(MIN_WINDOW,
                 min(MAX_WINDOW, services.config.window_bytes // manifest.chunk_size))
    return Download(
        services=services,
        manifest=manifest,
        cf=cf,
        entry=services.store.add_partial(manifest, cf.path, cf.held),
        picker=Picker(manifest.chunk_count, cf.held_indices()),
        book=book,
        progress=progress,
        window=window,
        reused=reused,
        done_bytes=reused,
    )


@contextlib.asynccontextmanager
async def _claim(services: FetchServices, part: Path, target: Path) -> AsyncIterator[None]:
    """Be the one fetch of this node writing ``part``, for the ``with`` block."""
    previous = services.active_parts.get(part)
    if previous is not None:
        # An interrupted fetch of the same file may still be winding down.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(PREVIOUS_FETCH_GRACE):
                await previous.wait()
        if part in services.active_parts:
            raise ConfigError(f"{target} is already being fetched by this node")
    finished = services.active_parts[part] = asyncio.Event()
    try:
        yield
    finally:
        del services.active_parts[part]
        finished.set()
