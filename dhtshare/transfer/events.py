"""What can happen to a chunk request, as the one queue of a peer's pump sees it.

Reply futures and finished writes both turn into these events as they
complete (in done callbacks), so the pump handles them in arrival order, one
by one, with a ``match`` on their type.
"""

from __future__ import annotations

from dataclasses import dataclass

from dhtshare.core import messages as m
from dhtshare.core.framing import Buffer


@dataclass(frozen=True)
class ChunkReply:
    """The peer answered request ``req`` for chunk ``index`` (DATA, NOT_FOUND or ERROR)."""

    req: int
    index: int
    reply: m.Message
    body: Buffer


@dataclass(frozen=True)
class RequestCancelled:
    """Request ``req`` was withdrawn: another peer delivered chunk ``index`` first."""

    req: int
    index: int


@dataclass(frozen=True)
class RequestFailed:
    """Request ``req`` failed without an answer (the connection went down)."""

    req: int
    index: int
    error: BaseException


@dataclass(frozen=True)
class ChunkStored:
    """Chunk ``index`` matched its hash and was written and journaled."""

    req: int
    index: int
    size: int


@dataclass(frozen=True)
class ChunkRejected:
    """The bytes sent for chunk ``index`` did not match its hash (or length)."""

    req: int
    index: int


@dataclass(frozen=True)
class StoreFailed:
    """Writing chunk ``index`` raised ``error`` (an ``OSError``: the disk; else a bug)."""

    req: int
    index: int
    error: BaseException


PumpEvent = (
    ChunkReply | RequestCancelled | RequestFailed | ChunkStored | ChunkRejected | StoreFailed
)
