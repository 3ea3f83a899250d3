"""Copies from what this node already holds: no network involved.

A complete local copy (a file this node published or fetched before) is
copied and verified chunk by chunk; the chunks a durable replica holds are
copied into a new download instead of being downloaded.  Both run in a worker
thread and check ``stop`` between chunks, so a cancelled fetch ends quickly
(and only after the thread did: see :func:`~dhtshare.transfer.tasks.in_thread`).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import threading
from pathlib import Path

from dhtshare.core.ids import short
from dhtshare.core.manifest import Manifest
from dhtshare.disk.chunkfile import ChunkFile
from dhtshare.disk.entry import Entry
from dhtshare.errors import DhtshareError, IntegrityError, StorageError
from dhtshare.transfer.services import FetchServices
from dhtshare.transfer.tasks import in_thread

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """A copy was stopped half-way because its fetch was cancelled (never seen outside)."""


async def copy_local(
    services: FetchServices, manifest: Manifest, local: Entry, target: Path
) -> bool:
    """Copy this node's complete copy of ``manifest`` to ``target``, verified.

    False when the local copy turned out unusable: it is then forgotten, so a
    verified copy comes from the network instead.
    """
    stop = threading.Event()
    try:
        if not local.still_valid():
            raise StorageError(f"{local.path} changed or vanished")
        await in_thread(functools.partial(_copy_file, local, target, stop), interrupt=stop)
    except (OSError, DhtshareError) as err:
        # The user deleted or edited the file this node had: stop offering it
        # and get a verified copy from the network instead.
        log.warning("local copy %s of %s is unusable (%s); fetching it again",
                    local.path, short(manifest.hash), err)
        services.store.drop(manifest.hash)
        return False
    services.store.add_complete(manifest, target, "fetched")
    return True


async def copy_held(src: Entry, dst: ChunkFile) -> None:
    """Copy (and verify) the chunks ``src`` holds that ``dst`` lacks."""
    stop = threading.Event()
    await in_thread(functools.partial(src.copy_into, dst, stop), interrupt=stop)


def _copy_file(entry: Entry, target: Path, stop: threading.Event) -> None:
    if target.resolve() == entry.path.resolve():
        return
    tmp = target.with_name(f".{target.name}.dhtshare-tmp")
    man = entry.manifest
    try:
        with open(tmp, "wb") as out:
            for i in range(man.chunk_count):
                if stop.is_set():
                    raise Interrupted
                data = entry.read_chunk(i)
                if hashlib.sha256(data).digest() != man.chunk_hash(i):
                    raise IntegrityError(f"local copy {entry.path} is damaged at chunk {i}")
                out.write(data)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
