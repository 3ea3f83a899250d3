"""The one error hierarchy of dhtshare.

Every exception the user may see derives from :class:`DhtshareError`; its
message is written for the user (the CLI prints it as one line), so it says
what went wrong and, where possible, what to do about it.  Foreign exceptions
(``OSError``, msgpack's, kademlia's) are translated at module boundaries with
``raise ... from err``.
"""

from __future__ import annotations


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
