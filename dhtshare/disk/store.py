"""What this node holds: manifests and where their chunks live on disk.

Three kinds of content, one index:

* ``published``: a user's file, served from where it is (its size and mtime
  are recorded; a file that changed under us is withdrawn, not served);
* ``fetched``: a file a fetch wrote for the user, served from there;
* ``replica``: chunks kept on behalf of the network (``--replicas``,
  ``pin``), in ``DATA_DIR/replicas/<hash>.data`` with a chunk journal (see
  :mod:`dhtshare.disk.chunkfile`), possibly only some chunks of the file.  Only
  replicas are *durable*: they count towards a file's replication factor,
  because only they are kept on purpose.

The data dir keeps the manifests (``manifests/<hash>``) and the index
(``content.msgpack``), rewritten atomically (temp file + rename), so a
restarted node knows what to serve and re-announce.

Descriptors are opened on demand: a replica still being filled gets its
writer (three descriptors) from :meth:`ContentStore.writer`, which keeps at
most :data:`MAX_OPEN_WRITERS` open and closes the least recently used;
read descriptors are capped likewise (:mod:`dhtshare.disk.entry`).  So a
node holding thousands of files (or offered them by strangers) keeps its
descriptors for its peers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import msgpack

from dhtshare.core.ids import ManifestHash, short
from dhtshare.core.manifest import Manifest
from dhtshare.disk.chunkfile import ChunkFile, journal_path
from dhtshare.disk.entry import Entry, Kind
from dhtshare.errors import StorageError, StorageFull, os_error

log = logging.getLogger(__name__)

INDEX_FILE = "content.msgpack"
#: Free disk space a node keeps for everything else, whatever --max-storage says.
DISK_RESERVE = 64 * 1024 * 1024
#: Replica writers kept open at once (each holds three descriptors).
MAX_OPEN_WRITERS = 16
def _stat_key(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns)


class ContentStore:
    """The index of held content, persisted in the data dir."""

    def __init__(self, data_dir: Path, max_storage: int = 0) -> None:
        self.data_dir = data_dir
        self.manifest_dir = data_dir / "manifests"
        self.replica_dir = data_dir / "replicas"
        #: Bytes of replica data this node may hold (0: no limit but the disk).
        self.max_storage = max_storage
        self.entries: dict[bytes, Entry] = {}
        #: Replicas whose writer is open, least recently used first.
        self._writers: OrderedDict[bytes, Entry] = OrderedDict()

    # -- persistence ----------------------------------------------------------------
    def load(self) -> None:
        """Read the index; entries whose file is gone or changed are dropped."""
        self.manifest_dir.mkdir(parents=True, exist_ok=True)
        index = self.data_dir / INDEX_FILE
        if not index.exists():
            return
        try:
            raw: Any = msgpack.unpackb(index.read_bytes(), raw=False)
        except (OSError, ValueError, msgpack.UnpackException) as err:
            log.warning("ignoring unreadable content index %s: %s", index, err)
            return
        if not isinstance(raw, dict):
            return
        for hexhash, rec in raw.items():
            try:
                entry = self._load_entry(hexhash, rec)
            except Exception as err:  # a damaged index entry must not stop the node
                log.warning("dropping index entry %s: %s", str(hexhash)[:12], err)
                continue
            if entry is not None:
                self.entries[entry.manifest.hash] = entry

    def _load_entry(self, hexhash: str, rec: dict[str, Any]) -> Entry | None:
        manifest = Manifest.decode_verified(
            (self.manifest_dir / hexhash).read_bytes(), ManifestHash(bytes.fromhex(hexhash))
        )
        kind = rec.get("kind", "published")
        if kind == "replica":
            path = self.replica_path(manifest.hash)
            if not journal_path(path).exists():
                # Written whole by a pin, journal removed once complete and synced.
                if os.stat(path).st_size != manifest.size:
                    raise StorageError(f"replica {path} is damaged")
                return Entry(manifest, path, None, None, "replica", int(rec["replicas"]))
            # Only the journal is read: the writer is opened when a chunk comes.
            cf = ChunkFile.open(path, manifest, preallocate=False)
            held = bytearray(cf.held)
            cf.close()
            return Entry(manifest, cf.path, held, None, "replica", int(rec["replicas"]),
                         origin=str(rec.get("origin", "")), opened=float(rec.get("opened", 0)))
        path = Path(rec["path"])
        size_mtime = tuple(rec["stat"])
        if _stat_key(path) != size_mtime:
            log.warning("%s changed since it was shared; dropping it", path)
            return None
        return Entry(manifest, path, None, (size_mtime[0], size_mtime[1]), kind,
                     int(rec.get("replicas", 0)))

    def save(self) -> None:
        """Persist what survives a restart: complete user files and all replicas."""
        data: dict[str, Any] = {}
        for h, e in self.entries.items():
            if e.durable:
                data[h.hex()] = {"kind": "replica", "replicas": e.replicas,
                                 "origin": e.origin, "opened": e.opened}
            elif e.complete and e.size_mtime is not None and e.valid:
                data[h.hex()] = {"kind": e.kind, "path": str(e.path),
                                 "stat": list(e.size_mtime), "replicas": e.replicas}
        index = self.data_dir / INDEX_FILE
        tmp = index.with_suffix(".tmp")
        try:
            tmp.write_bytes(msgpack.packb(data, use_bin_type=True))
            os.replace(tmp, index)
        except OSError as err:
            log.error("cannot save content index %s: %s", index, err)

    def save_manifest(self, manifest: Manifest) -> None:
        self.manifest_dir.mkdir(parents=True, exist_ok=True)
        path = self.manifest_dir / manifest.hash.hex()
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(manifest.encode())
            os.replace(tmp, path)

    # -- lookups ------------------------------------------------------------------------
    def get(self, h: bytes) -> Entry | None:
        entry = self.entries.get(h)
        if entry is not None and not entry.still_valid():
            return None
        return entry

    # -- user files ---------------------------------------------------------------------
    def add_complete(
        self, manifest: Manifest, path: Path, kind: Kind = "published", replicas: int = 0
    ) -> Entry:
        """Register a complete, verified user file at ``path`` and persist the index.

        A replica of the same content stays what it is: it is the durable copy.
        """
        try:
            stat = _stat_key(path)
            self.save_manifest(manifest)
        except OSError as err:
            raise os_error(err, "register", path) from err
        old = self.entries.get(manifest.hash)
        if old is not None and old.durable:
            return old
        if old is not None:
            old.close()
        entry = Entry(manifest, path.resolve(), None, stat, kind, replicas)
        self.entries[manifest.hash] = entry
        self.save()
        log.info("holding %s (%s, %d bytes)", short(manifest.hash), manifest.name, manifest.size)
        return entry

    def add_partial(self, manifest: Manifest, path: Path, held: bytearray) -> Entry:
        """Register a download in progress so verified chunks can be served at once."""
        old = self.entries.get(manifest.hash)
        if old is not None and (old.complete or old.durable):
            return old
        entry = Entry(manifest, path, held, None, "fetched")
        self.entries[manifest.hash] = entry
        return entry

    def import_copy(self, src: Path) -> Path:
        """Copy ``src`` into the data dir (under a temporary name); returns the copy."""
        tmp_dir = self.data_dir / "files" / ".incoming"
        try:
            tmp_dir.mkdir(parents=True, exist_ok=True)
            dst = tmp_dir / f"{os.getpid()}-{time.monotonic_ns()}"
            shutil.copyfile(src, dst)
        except OSError as err:
            raise os_error(err, f"copy {src} into", self.data_dir) from err
        return dst

    def place_copy(self, tmp: Path, manifest: Manifest) -> Path:
        """Move an imported copy to its final place, named after the manifest."""
        final_dir = self.data_dir / "files" / manifest.hash.hex()
        final_dir.mkdir(parents=True, exist_ok=True)
        final = final_dir / manifest.name
        os.replace(tmp, final)
        return final

    # -- replicas -----------------------------------------------------------------------
    def replica_path(self, h: bytes) -> Path:
        return self.replica_dir / f"{h.hex()}.data"

    def replica_bytes(self) -> int:
        return sum(e.held_bytes() for e in self.entries.values() if e.durable)

    def check_room(self, nbytes: int) -> None:
        """Raise :class:`StorageFull` unless ``nbytes`` more replica data fit."""
        if self.max_storage and self.replica_bytes() + nbytes > self.max_storage:
            raise StorageFull(f"--max-storage of {self.max_storage} bytes reached")
        with contextlib.suppress(OSError):
            if shutil.disk_usage(self.data_dir).free < nbytes + DISK_RESERVE:
                raise StorageFull(f"the disk of {self.data_dir} is nearly full")

    def writer(self, entry: Entry) -> ChunkFile:
        """The open writer of a replica being filled, opened if need be.

        Opening one may close the least recently used other writer (it waits
        for that one's write under way); a write that then finds its writer
        closed (:class:`~dhtshare.disk.chunkfile.ChunkFileClosed`) asks again.
        """
        h = entry.manifest.hash
        cf = entry.cf
        if cf is None or cf.closed:
            try:
                cf = ChunkFile.open(entry.path, entry.manifest, preallocate=False)
            except OSError as err:
                raise os_error(err, "open the replica", entry.path) from err
            entry.cf, entry.held = cf, cf.held
        self._writers[h] = entry
        self._writers.move_to_end(h)
        while len(self._writers) > MAX_OPEN_WRITERS:
            _, old = self._writers.popitem(last=False)
            if old.cf is not None:
                old.cf.close()
                old.cf = None
        return cf

    def open_replica(self, manifest: Manifest, replicas: int, origin: str = "") -> Entry:
        """Start (or keep) a durable copy of ``manifest``, to be filled chunk by chunk.

        For a file held whole as a user's file, use :meth:`copy_into_replica`
        instead: replacing it with an empty replica would stop serving it.
        """
        old = self.entries.get(manifest.hash)
        if old is not None and old.durable:
            old.replicas = max(old.replicas, replicas)
            self.save()
            return old
        self.replica_dir.mkdir(parents=True, exist_ok=True)
        cf = ChunkFile.open(self.replica_path(manifest.hash), manifest, preallocate=False)
        return self.install_replica(cf, replicas, origin)

    def copy_into_replica(self, src: Entry) -> ChunkFile:
        """A durable copy of a user's complete file, copied and verified chunk by chunk.

        Blocking (run it in a thread); the store is not changed until
        :meth:`install_replica`, so the user's copy is served meanwhile.
        """
        self.replica_dir.mkdir(parents=True, exist_ok=True)
        cf = ChunkFile.open(self.replica_path(src.manifest.hash), src.manifest)
        try:
            src.copy_into(cf)
            if cf.held_count != src.manifest.chunk_count:
                raise StorageError(f"{src.path} no longer matches what was published")
        except BaseException:
            cf.close()
            raise
        return cf

    def install_replica(self, cf: ChunkFile, replicas: int, origin: str = "") -> Entry:
        """Hold the durable copy filled in ``cf`` in place of whatever was held."""
        manifest = cf.manifest
        self.save_manifest(manifest)
        entry = Entry(manifest, cf.path, cf.held, None, "replica", replicas, cf,
                      origin=origin, opened=time.time())
        old = self.entries.get(manifest.hash)
        if old is not None:
            old.close()
        self.entries[manifest.hash] = entry
        self._writers.pop(manifest.hash, None)
        if cf.held_count < manifest.chunk_count:
            self.writer(entry)  # counted among the open writers
        else:
            cf.close()  # whole: served by its read descriptor alone
            entry.cf = None
        self.save()
        return entry

    def adopt_replica(self, h: bytes, path: Path, replicas: int) -> Entry:
        """Turn a complete file fetched into the replica store into a durable copy."""
        entry = self.entries[h]
        self._writers.pop(h, None)
        entry.close()
        entry = Entry(entry.manifest, path, None, None, "replica", replicas, opened=time.time())
        self.entries[h] = entry
        self.save()
        return entry

    def drop(self, h: bytes) -> None:
        """Forget ``h``; replica data is deleted, a user's file never is."""
        entry = self.entries.pop(h, None)
        if entry is None:
            return
        self._writers.pop(h, None)
        entry.close()
        if entry.durable:
            ChunkFile(self.replica_path(h), entry.manifest).discard()
        self.save()

    def close(self) -> None:
        for entry in self.entries.values():
            entry.close()
