"""A node's data dir: the lock that makes it one node's, its id, and what it saves.

Everything a node keeps between runs lives here (the content store keeps its
own index beside these files).  :meth:`DataDir.open` either returns a data dir
that is created, locked and has a node id, or raises an error that says what
to do; it never leaves a half-opened one behind.
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

from dhtshare.core.ids import NODE_ID_LEN, new_node_id
from dhtshare.errors import DataDirBusy, os_error

log = logging.getLogger(__name__)

STATE_FILE = "state.msgpack"
ID_FILE = "node_id"
LOCK_FILE = "lock"
INFO_FILE = "node.json"
#: Routing-table contacts saved at exit, to rejoin through when every --peer is gone.
MAX_SAVED_CONTACTS = 64

Contact = tuple[str, int]


class DataDir:
    """An opened, locked data dir (``close`` releases the lock)."""

    def __init__(self, path: Path, lock_fd: int, node_id: bytes) -> None:
        self.path = path
        self._lock_fd: int | None = lock_fd
        self.node_id = node_id

    @classmethod
    def open(cls, path: Path) -> DataDir:
        """Create (if needed) and lock ``path``, and load or make the node id."""
        try:
            path.mkdir(parents=True, exist_ok=True)
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
            node_id = _load_or_make_id(path / ID_FILE)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, node_id)

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


def _load_or_make_id(path: Path) -> bytes:
    with contextlib.suppress(OSError, ValueError):
        raw = bytes.fromhex(path.read_text().strip())
        if len(raw) == NODE_ID_LEN:
            return raw
    node_id = new_node_id()
    try:
        path.write_text(node_id.hex() + "\n")
    except OSError as err:
        raise os_error(err, "write the node id", path) from err
    return node_id


__all__ = ["DataDir"]
