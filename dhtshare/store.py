"""What this node holds: manifests and where their chunks live on disk.

Content is not copied into the data dir: a published file is served from
where it is (its size and mtime are recorded, and a file that changed under
us is withdrawn instead of served), a fetched file from the file the fetch
wrote.  The data dir keeps the manifests (``manifests/<hash>``) and a small
index (``content.msgpack``) so a restarted node knows what to re-announce.

The index is rewritten atomically (temp file + rename), so a crash never
leaves it half-written.  Only this module and :mod:`dhtshare.fetcher` (which
writes the file being downloaded) touch content files.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from dhtshare.errors import ManifestError, StorageError
from dhtshare.ids import ManifestHash, short
from dhtshare.manifest import Manifest

log = logging.getLogger(__name__)

INDEX_FILE = "content.msgpack"
#: How often (seconds) a served file's size and mtime are re-checked.
STAT_INTERVAL = 2.0


@dataclass
class Entry:
    """One file this node can serve chunks of."""

    manifest: Manifest
    path: Path
    #: ``None`` when every chunk is held; else one byte per chunk (1 = held).
    held: bytearray | None = None
    size_mtime: tuple[int, int] | None = None
    _fd: int | None = field(default=None, repr=False)
    _checked: float = field(default=0.0, repr=False)
    valid: bool = True

    @property
    def complete(self) -> bool:
        return self.held is None

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

    def fd(self) -> int:
        """An open read-only descriptor on the content file (opened once)."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def still_valid(self) -> bool:
        """False once a complete file changed on disk since it was hashed."""
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

    def read_chunk(self, index: int) -> bytes:
        m = self.manifest
        length = m.chunk_length(index)
        data = os.pread(self.fd(), length, m.chunk_offset(index))
        if len(data) != length:
            raise StorageError(f"{self.path} is shorter than its manifest says")
        return data


def _stat_key(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns)


class ContentStore:
    """The index of held content, persisted in the data dir."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.manifest_dir = data_dir / "manifests"
        self.entries: dict[bytes, Entry] = {}

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
                manifest = Manifest.decode_verified(
                    (self.manifest_dir / hexhash).read_bytes(),
                    ManifestHash(bytes.fromhex(hexhash)),
                )
                path = Path(rec["path"])
                size_mtime = tuple(rec["stat"])
                if _stat_key(path) != size_mtime:
                    log.warning("%s changed since it was shared; dropping it", path)
                    continue
            except (OSError, ValueError, KeyError, TypeError, ManifestError, StorageError) as err:
                log.warning("dropping index entry %s: %s", hexhash[:12], err)
                continue
            except Exception as err:  # IntegrityError and anything odd in a damaged index
                log.warning("dropping index entry %s: %s", hexhash[:12], err)
                continue
            key = (size_mtime[0], size_mtime[1])
            self.entries[manifest.hash] = Entry(manifest, path, None, key)

    def save(self) -> None:
        """Persist the complete entries (partial downloads are not served after restart)."""
        data = {
            h.hex(): {"path": str(e.path), "stat": list(e.size_mtime)}
            for h, e in self.entries.items()
            if e.complete and e.size_mtime is not None and e.valid
        }
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

    def import_copy(self, src: Path) -> Path:
        """Copy ``src`` into the data dir (under a temporary name); returns the copy."""
        tmp_dir = self.data_dir / "files" / ".incoming"
        try:
            tmp_dir.mkdir(parents=True, exist_ok=True)
            dst = tmp_dir / f"{os.getpid()}-{time.monotonic_ns()}"
            shutil.copyfile(src, dst)
        except OSError as err:
            raise StorageError(f"cannot copy {src} into {self.data_dir}: {err.strerror}") from err
        return dst

    def place_copy(self, tmp: Path, manifest: Manifest) -> Path:
        """Move an imported copy to its final place, named after the manifest."""
        final_dir = self.data_dir / "files" / manifest.hash.hex()
        final_dir.mkdir(parents=True, exist_ok=True)
        final = final_dir / manifest.name
        os.replace(tmp, final)
        return final

    def get(self, h: bytes) -> Entry | None:
        entry = self.entries.get(h)
        if entry is not None and not entry.still_valid():
            return None
        return entry

    def add_complete(self, manifest: Manifest, path: Path) -> Entry:
        """Register a complete, verified file at ``path`` and persist the index."""
        try:
            stat = _stat_key(path)
            self.save_manifest(manifest)
        except OSError as err:
            raise StorageError(f"cannot register {path}: {err.strerror or err}") from err
        old = self.entries.get(manifest.hash)
        if old is not None:
            old.close()
        entry = Entry(manifest, path.resolve(), None, stat)
        self.entries[manifest.hash] = entry
        self.save()
        log.info("holding %s (%s, %d bytes)", short(manifest.hash), manifest.name, manifest.size)
        return entry

    def add_partial(self, manifest: Manifest, path: Path, held: bytearray) -> Entry:
        """Register a download in progress so verified chunks can be served at once."""
        old = self.entries.get(manifest.hash)
        if old is not None and old.complete:
            return old
        entry = Entry(manifest, path, held)
        self.entries[manifest.hash] = entry
        return entry

    def remove(self, h: bytes) -> None:
        entry = self.entries.pop(h, None)
        if entry is not None:
            entry.close()
            self.save()

    def close(self) -> None:
        for entry in self.entries.values():
            entry.close()
