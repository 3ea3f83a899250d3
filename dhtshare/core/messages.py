"""Every message of the peer protocol and of the control socket, as data.

This module owns the wire format: each message is a frozen dataclass that
turns into a msgpack array ``[type, field, ...]`` and back.  ``decode``
validates types and sizes of every field, so the rest of the code only ever
sees well-formed messages; anything else raises :class:`RemoteProtocolError`.

Payload bytes (chunks, manifests) never go through msgpack: they are the
frame's raw body, carried next to the header (see :mod:`dhtshare.core.framing`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, ClassVar, TypeAlias

import msgpack

from dhtshare.config import MAX_CHUNKS
from dhtshare.core.fields import MAX_REQ_ID as MAX_REQ_ID
from dhtshare.core.fields import MAX_TEXT as MAX_TEXT
from dhtshare.core.fields import arity, hash32, int_in, raw_bytes, req_id, str_map, text
from dhtshare.core.framing import Buffer
from dhtshare.core.ids import HASH_LEN, NODE_ID_LEN
from dhtshare.errors import RemoteProtocolError, shown

#: HAVE updates are batched; one message names at most this many chunks.
MAX_HAVE_BATCH = 4096
MAX_REPLICAS = 64
MAX_MANIFEST_BODY = MAX_CHUNKS * HASH_LEN + 1024


class MsgType(IntEnum):
    HELLO = 1
    GET_MANIFEST = 2
    GET_CHUNK = 3
    DATA = 4
    NOT_FOUND = 5
    ERROR = 6
    GET_HAVE = 7
    HAVE = 8
    HAVE_UPDATE = 9
    CANCEL = 10
    PUT_MANIFEST = 11
    PUT_CHUNK = 12
    OK = 13
    BYE = 14
    CONTROL = 32
    CONTROL_EVENT = 33


class ErrorCode(IntEnum):
    INTERNAL = 1
    BUSY = 2
    BAD_REQUEST = 3
    #: The node's --max-storage (or its disk) has no room: ask another node.
    FULL = 4


@dataclass(frozen=True, slots=True)
class Hello:
    """First message each way: who I am and where my chunk service listens."""

    TYPE: ClassVar[MsgType] = MsgType.HELLO
    version: int
    node_id: bytes
    listen_port: int
    agent: str = "dhtshare"


@dataclass(frozen=True, slots=True)
class GetManifest:
    TYPE: ClassVar[MsgType] = MsgType.GET_MANIFEST
    req: int
    manifest: bytes


@dataclass(frozen=True, slots=True)
class GetChunk:
    """Ask for chunk ``chunk`` (its hash); ``manifest``/``index`` tell where it lives."""

    TYPE: ClassVar[MsgType] = MsgType.GET_CHUNK
    req: int
    manifest: bytes
    index: int
    chunk: bytes


@dataclass(frozen=True, slots=True)
class Data:
    """The answer to GetManifest/GetChunk; the payload is the frame body."""

    TYPE: ClassVar[MsgType] = MsgType.DATA
    req: int


@dataclass(frozen=True, slots=True)
class NotFound:
    TYPE: ClassVar[MsgType] = MsgType.NOT_FOUND
    req: int


@dataclass(frozen=True, slots=True)
class Error:
    TYPE: ClassVar[MsgType] = MsgType.ERROR
    req: int
    code: int
    message: str


@dataclass(frozen=True, slots=True)
class GetHave:
    """Ask which chunks of ``manifest`` the peer holds, and subscribe to updates."""

    TYPE: ClassVar[MsgType] = MsgType.GET_HAVE
    req: int
    manifest: bytes


@dataclass(frozen=True, slots=True)
class Have:
    """Answer to GetHave: ``complete`` or a bitfield (bit i set: chunk i held).

    The bitfield travels as the frame body: for millions of chunks it is far
    larger than a header may be.  ``durable`` says the holder keeps its copy
    as a replica (it counts towards the file's replication factor,
    ``replicas``); a copy that was merely downloaded does not.
    """

    TYPE: ClassVar[MsgType] = MsgType.HAVE
    req: int
    complete: bool
    bitfield: bytes = b""
    durable: bool = False
    replicas: int = 0


@dataclass(frozen=True, slots=True)
class HaveUpdate:
    """Pushed to subscribers: these chunks of ``manifest`` were just verified."""

    TYPE: ClassVar[MsgType] = MsgType.HAVE_UPDATE
    manifest: bytes
    indices: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class PutManifest:
    """Ask a node to keep a replica of a file; the manifest is the body.

    The node answers OK once it holds the manifest and has announced itself
    as a provider, or ERROR FULL.  ``replicas`` is the file's replication
    factor, which the holder then helps maintain.
    """

    TYPE: ClassVar[MsgType] = MsgType.PUT_MANIFEST
    req: int
    manifest: bytes
    replicas: int
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class PutChunk:
    """Hand a node chunk ``index`` of a manifest it replicates; the chunk is the body."""

    TYPE: ClassVar[MsgType] = MsgType.PUT_CHUNK
    req: int
    manifest: bytes
    index: int
    chunk: bytes


@dataclass(frozen=True, slots=True)
class Ok:
    """A PUT was verified and stored."""

    TYPE: ClassVar[MsgType] = MsgType.OK
    req: int


@dataclass(frozen=True, slots=True)
class Cancel:
    TYPE: ClassVar[MsgType] = MsgType.CANCEL
    req: int


@dataclass(frozen=True, slots=True)
class Bye:
    """The sender is leaving the network (stopped politely): forget it now."""

    TYPE: ClassVar[MsgType] = MsgType.BYE
    reason: str = "shutting down"


@dataclass(frozen=True, slots=True)
class Control:
    """A request on the local control socket (``op`` with keyword arguments)."""

    TYPE: ClassVar[MsgType] = MsgType.CONTROL
    req: int
    op: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ControlEvent:
    """Progress, result or error for a control request (``kind`` says which)."""

    TYPE: ClassVar[MsgType] = MsgType.CONTROL_EVENT
    req: int
    kind: str
    data: dict[str, Any] = field(default_factory=dict)


Message: TypeAlias = (
    Hello
    | GetManifest
    | GetChunk
    | Data
    | NotFound
    | Error
    | GetHave
    | Have
    | HaveUpdate
    | Cancel
    | PutManifest
    | PutChunk
    | Ok
    | Bye
    | Control
    | ControlEvent
)


def encode(msg: Message) -> bytes:
    """The msgpack header bytes for ``msg``."""
    fields: list[Any]
    match msg:
        case Hello():
            fields = [msg.version, msg.node_id, msg.listen_port, msg.agent]
        case GetManifest():
            fields = [msg.req, msg.manifest]
        case GetChunk():
            fields = [msg.req, msg.manifest, msg.index, msg.chunk]
        case Data() | NotFound() | Cancel() | Ok():
            fields = [msg.req]
        case Error():
            fields = [msg.req, msg.code, msg.message[:MAX_TEXT]]
        case GetHave():
            fields = [msg.req, msg.manifest]
        case Have():
            fields = [msg.req, msg.complete, msg.durable, msg.replicas]
        case PutManifest():
            fields = [msg.req, msg.manifest, msg.replicas]
        case PutChunk():
            fields = [msg.req, msg.manifest, msg.index, msg.chunk]
        case HaveUpdate():
            fields = [msg.manifest, list(msg.indices)]
        case Bye():
            fields = [msg.reason[:MAX_TEXT]]
        case Control():
            fields = [msg.req, msg.op, msg.args]
        case ControlEvent():
            fields = [msg.req, msg.kind, msg.data]
    out: bytes = msgpack.packb([int(msg.TYPE), *fields], use_bin_type=True)
    return out


# --- decoding and validation ----------------------------------------------------------


def payload(msg: Message) -> bytes:
    """The frame body a message carries besides its header (HAVE's bitfield, a manifest).

    DATA's payload is not here: it is passed next to the message so that large
    chunks are written from where they already are, never copied into one.
    """
    if isinstance(msg, Have):
        return msg.bitfield
    if isinstance(msg, PutManifest):
        return msg.body
    return b""


def decode(header: bytes | bytearray, body: Buffer = b"") -> Message:
    """Parse and validate an untrusted header; :class:`RemoteProtocolError` on anything odd.

    ``body`` is the frame's body; only HAVE's is read here (DATA's stays with
    the caller, uncopied), and any other message must come without one.
    """
    try:
        obj = msgpack.unpackb(
            header,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as err:
        raise RemoteProtocolError(f"undecodable message: {err}") from err
    if not isinstance(obj, list) or not obj:
        raise RemoteProtocolError("message is not a non-empty array")
    try:
        mtype = MsgType(int_in(obj[0], 0, 255, "message type"))
    except ValueError as err:
        raise RemoteProtocolError(f"unknown message type {shown(obj[0])}") from err
    f = obj[1:]
    arity(f, _ARITY[mtype], mtype.name)
    if body and mtype not in _BODIES:
        raise RemoteProtocolError(f"{mtype.name} must not carry a body")
    match mtype:
        case MsgType.HELLO:
            return Hello(
                int_in(f[0], 0, 2**16, "version"),
                raw_bytes(f[1], NODE_ID_LEN, "node id"),
                int_in(f[2], 0, 65535, "port"),
                text(f[3], "agent"),
            )
        case MsgType.GET_MANIFEST:
            return GetManifest(req_id(f[0]), hash32(f[1]))
        case MsgType.GET_CHUNK:
            index = int_in(f[2], 0, MAX_CHUNKS - 1, "index")
            return GetChunk(req_id(f[0]), hash32(f[1]), index, hash32(f[3]))
        case MsgType.DATA:
            return Data(req_id(f[0]))
        case MsgType.NOT_FOUND:
            return NotFound(req_id(f[0]))
        case MsgType.ERROR:
            code = int_in(f[1], 0, 2**16, "error code")
            return Error(req_id(f[0]), code, text(f[2], "error text"))
        case MsgType.GET_HAVE:
            return GetHave(req_id(f[0]), hash32(f[1]))
        case MsgType.HAVE:
            if not isinstance(f[1], bool) or not isinstance(f[2], bool):
                raise RemoteProtocolError("bad HAVE flags")
            if len(body) > MAX_CHUNKS // 8 + 1 or (f[1] and body):
                raise RemoteProtocolError("bad HAVE bitfield")
            replicas = int_in(f[3], 0, MAX_REPLICAS, "replicas")
            return Have(req_id(f[0]), f[1], bytes(body), f[2], replicas)
        case MsgType.PUT_MANIFEST:
            if len(body) > MAX_MANIFEST_BODY:
                raise RemoteProtocolError("manifest body too large")
            replicas = int_in(f[2], 0, MAX_REPLICAS, "replicas")
            return PutManifest(req_id(f[0]), hash32(f[1]), replicas, bytes(body))
        case MsgType.PUT_CHUNK:
            index = int_in(f[2], 0, MAX_CHUNKS - 1, "index")
            return PutChunk(req_id(f[0]), hash32(f[1]), index, hash32(f[3]))
        case MsgType.OK:
            return Ok(req_id(f[0]))
        case MsgType.HAVE_UPDATE:
            idx = f[1]
            if not isinstance(idx, list) or len(idx) > MAX_HAVE_BATCH:
                raise RemoteProtocolError("bad HAVE_UPDATE index list")
            indices = tuple(int_in(i, 0, MAX_CHUNKS - 1, "index") for i in idx)
            return HaveUpdate(hash32(f[0]), indices)
        case MsgType.CANCEL:
            return Cancel(req_id(f[0]))
        case MsgType.BYE:
            return Bye(text(f[0], "reason"))
        case MsgType.CONTROL:
            return Control(req_id(f[0]), text(f[1], "control op"), str_map(f[2], "control args"))
        case MsgType.CONTROL_EVENT:
            return ControlEvent(req_id(f[0]), text(f[1], "event kind"), str_map(f[2], "event data"))
    raise RemoteProtocolError(f"unhandled message type {mtype!r}")  # pragma: no cover


_ARITY = {
    MsgType.HELLO: 4,
    MsgType.GET_MANIFEST: 2,
    MsgType.GET_CHUNK: 4,
    MsgType.DATA: 1,
    MsgType.NOT_FOUND: 1,
    MsgType.ERROR: 3,
    MsgType.GET_HAVE: 2,
    MsgType.HAVE: 4,
    MsgType.PUT_MANIFEST: 3,
    MsgType.PUT_CHUNK: 4,
    MsgType.OK: 1,
    MsgType.HAVE_UPDATE: 2,
    MsgType.CANCEL: 1,
    MsgType.BYE: 1,
    MsgType.CONTROL: 3,
    MsgType.CONTROL_EVENT: 3,
}


#: Messages whose frame may carry a body (PUT_CHUNK's is the chunk, kept uncopied).
_BODIES = frozenset({MsgType.DATA, MsgType.HAVE, MsgType.PUT_MANIFEST, MsgType.PUT_CHUNK})
