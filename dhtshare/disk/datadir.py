"""A node's data dir: the lock that makes it one node's, its key, and what it saves.

Everything a node keeps between runs lives here (the content store keeps its
own index beside these files).  :meth:`DataDir.open` either returns a data dir
that is created, private to its user (0700), locked and has a node key, or
raises an error that says what to do; it never leaves a half-opened one
behind.  The key (``node_key``, 0600) is the node's identity: its node id is
derived from it, so keeping the file keeps the id.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from pathlib import Path
from types import TracebackType

import msgpack

from dhtshare.core.identity import SEED_LEN, Identity
from dhtshare.errors import DataDirBusy, StorageError, os_error

log = logging.getLogger(__name__)

STATE_FILE = "state.msgpack"
ID_FILE = "node_id"
KEY_FILE = "node_key"
LOCK_FILE = "lock"
INFO_FILE = "node.json"
#: Routing-table contacts saved at exit, to rejoin through when every --peer is gone.
MAX_SAVED_CONTACTS = 64

Contact = tuple[str, int]


class DataDir:
    """An opened, locked data dir (``close`` releases the lock)."""

    def __init__(self, path: Path, lock_fd: int, identity: Identity) -> None:
        self.path = path
        self._lock_fd: int | None = lock_fd
        self.identity = identity
        self.node_id: bytes = identity.node_id

    @classmethod
    def open(cls, path: Path) -> DataDir:
        """Create (if needed, private to this user) and lock ``path``; load or make the key."""
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            if path.stat().st_mode & 0o077:
                os.chmod(path, 0o700)  # manifests and the index are nobody else's business
        except OSError as err:
            raise os_error(err, "create the data dir", path) from err
        lock = path / LOCK_FILE
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise os_error(err, "open the lock file", lock) from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            raise DataDirBusy(f"another dhtshare node is using data dir {path}") from err
        try:
            identity = _load_or_make_key(path / KEY_FILE)
            _write_id(path / ID_FILE, identity)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, identity)

    def close(self) -> None:
        """Forget the running node's info file and release the lock."""
        with contextlib.suppress(OSError):
            (self.path / INFO_FILE).unlink()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> DataDir:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- what a node saves between runs ----------------------------------------------------
    def saved_contacts(self) -> list[Contact]:
        """The contacts saved by the last run (none if the file is missing or damaged)."""
        try:
            state = msgpack.unpackb((self.path / STATE_FILE).read_bytes(), raw=False)
            return [
                (str(c[1]), int(c[2]))
                for c in state["contacts"][:MAX_SAVED_CONTACTS]
                if isinstance(c, list) and len(c) == 3
            ]
        except (OSError, ValueError, KeyError, TypeError, msgpack.UnpackException):
            return []

    def save_contacts(self, contacts: list[tuple[bytes, str, int]]) -> None:
        """Keep ``contacts`` for the next run (best effort: a full disk only loses them)."""
        rows = [[i, h, p] for i, h, p in contacts][:MAX_SAVED_CONTACTS]
        if not rows:
            return
        tmp = self.path / (STATE_FILE + ".tmp")
        try:
            tmp.write_bytes(msgpack.packb({"contacts": rows}, use_bin_type=True))
            os.replace(tmp, self.path / STATE_FILE)
        except OSError as err:
            log.warning("could not save routing contacts: %s", os_error(err, "write", tmp))

    def write_info(self, host: str, port: int) -> None:
        """``node.json``: how tools find the running node (pid, address, id)."""
        info = {"pid": os.getpid(), "host": host, "port": port, "node_id": self.node_id.hex()}
        with contextlib.suppress(OSError):
            (self.path / INFO_FILE).write_text(json.dumps(info) + "\n")


def _load_or_make_key(path: Path) -> Identity:
    """The node's key from ``path`` (made, mode 0600, on first start)."""
    try:
        seed = path.read_bytes()
    except FileNotFoundError:
        identity = Identity.generate()
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.unlink(missing_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, identity.seed)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as err:
            raise os_error(err, "write the node key", path) from err
        log.debug("made a new node key %s", identity.fingerprint)
        return identity
    except OSError as err:
        raise os_error(err, "read the node key", path) from err
    if len(seed) != SEED_LEN:
        raise StorageError(
            f"the node key {path} is damaged ({len(seed)} bytes, not {SEED_LEN}): restore it, "
            "or move it away to start with a new identity (the node id changes)"
        )
    with contextlib.suppress(OSError):
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
    return Identity(seed)


def _write_id(path: Path, identity: Identity) -> None:
    """``node_id``: the id derived from the key, in hex, for people and tools."""
    text = identity.node_id.hex() + "\n"
    with contextlib.suppress(OSError):
        if path.read_text() == text:
            return
    try:
        path.write_text(text)
    except OSError as err:
        raise os_error(err, "write the node id", path) from err


__all__ = ["DataDir"]
