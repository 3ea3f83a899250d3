"""The one error hierarchy of dhtshare.

Every exception the user may see derives from :class:`DhtshareError`; its
message is written for the user (the CLI prints it as one line), so it says
what went wrong and, where possible, what to do about it.  Foreign exceptions
(``OSError``, msgpack's, kademlia's) are translated at module boundaries with
``raise ... from err``.
"""

from __future__ import annotations

import errno
from pathlib import Path


class DhtshareError(Exception):
    """Base class: something the user can act on went wrong."""

    exit_code = 1


class ConfigError(DhtshareError):
    """A flag, environment variable or argument is invalid."""

    exit_code = 2


class ProtocolError(DhtshareError):
    """The wire protocol was violated."""


class LocalProtocolError(ProtocolError):
    """We tried to send something the protocol does not allow (a bug on our side)."""


class RemoteProtocolError(ProtocolError):
    """A peer sent something the protocol does not allow; its connection is closed."""


class FrameTooLarge(RemoteProtocolError):
    """A frame announced a length above the hard limit; nothing was allocated for it."""


class IntegrityError(DhtshareError):
    """Bytes did not match the hash they were supposed to have."""


class ManifestError(DhtshareError):
    """A manifest is malformed or hostile (bad name, inconsistent sizes, wrong types)."""


class NotFoundError(DhtshareError):
    """Something asked for is not known here or on the network."""


class ManifestNotFound(NotFoundError):
    """No reachable peer provides this manifest."""


class NoProviders(NotFoundError):
    """Some chunks have no reachable provider."""


class PeerError(DhtshareError):
    """A peer could not be reached or stopped answering."""


class NotFoundReply(DhtshareError):
    """A peer answered that it does not have what was asked (ask another)."""


class PeerUnreachable(PeerError):
    """Connecting to a peer failed."""


class PeerTimeout(PeerError):
    """A peer did not answer in time."""


class NotJoined(PeerError):
    """The node has not (yet) joined the network, so nothing can be found or announced."""


class NodeNotRunning(DhtshareError):
    """No node answers on the control socket of this data dir."""


class NodeNotResponding(DhtshareError):
    """The node on the control socket stopped answering in time."""


class ReplicationShort(DhtshareError):
    """Fewer durable copies than asked for could be placed."""

    exit_code = 3


class StorageError(DhtshareError):
    """Reading or writing local files failed (disk full, permissions, missing file)."""


class StorageFull(StorageError):
    """This node has no room for more replica data (``--max-storage`` or the disk)."""


class DataDirBusy(StorageError):
    """Another node process owns this data dir."""


#: What to tell the user, by errno, after "cannot <action> <path>: <strerror>".
_HINTS = {
    errno.ENOSPC: "the disk is full; free some space or choose another place",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EROFS: "that file system is read-only; choose another place",
    errno.EACCES: "check its owner and mode, or choose another place",
    errno.EPERM: "check its owner and mode, or choose another place",
    errno.EMFILE: "this process has too many open files; raise the limit (ulimit -n)",
}


#: Characters of an untrusted value quoted in an error message, at most.
SHOWN = 60


def shown(value: object) -> str:
    """An untrusted value as an error message may quote it: short, and never failing.

    ``repr`` of a stranger's value can be megabytes long (and then overflow
    the control socket's frame when the error is sent back), or fail
    outright (a list nested a thousand deep); so only scalars are quoted,
    truncated, and anything else is named by its type.
    """
    if isinstance(value, bool | int | float | str | bytes | None):
        text = repr(value) if not isinstance(value, int) or abs(value) < 10**40 else "a huge int"
        return text if len(text) <= SHOWN else text[: SHOWN - 3] + "..."
    return f"a {type(value).__name__}"


def os_error(err: OSError, action: str, path: Path | str | None = None) -> StorageError:
    """The user-facing error for an ``OSError`` met while doing ``action`` to ``path``.

    The one place where operating-system failures become messages: every
    boundary that touches the disk raises ``os_error(err, ...) from err``, so
    no ``OSError`` reaches a user as a traceback, and each says what to do.
    """
    where = f" {err.filename if path is None and err.filename else path or ''}".rstrip()
    reason = err.strerror or str(err)
    hint = _HINTS.get(err.errno or 0)
    full = StorageFull if err.errno in (errno.ENOSPC, errno.EDQUOT) else StorageError
    return full(f"cannot {action}{where}: {reason}" + (f" ({hint})" if hint else ""))
