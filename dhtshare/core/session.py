"""The peer protocol's rules for one connection, with no I/O (the h11 shape).

A :class:`Session` is told which bytes arrived (:meth:`~Session.receive_data`, or
the zero-copy pair :meth:`~Session.get_buffer`/:meth:`~Session.buffer_updated`
that :class:`asyncio.BufferedProtocol` uses) and answers with typed events
(:meth:`~Session.next_event`); asked to send a message, it answers with the
buffers to write (:meth:`~Session.send`).  It owns all the protocol says about
one connection: the HELLO handshake, the ids of our outstanding requests, the
cap on the peer's, and which message may come when.  It never sees a socket, a
loop or a clock, so every rule is tested in memory, and
:class:`dhtshare.net.transport.Connection` is only the asyncio shell around it.

Errors follow h11: a peer breaking a rule makes :meth:`~Session.next_event`
raise :class:`RemoteProtocolError` and leaves the session ``BROKEN``; our code
breaking one (a request before the handshake, anything after BYE) raises
:class:`LocalProtocolError`, a bug in the caller.  If ``next_event`` raises
anything else, that is a bug here.

Every byte in either direction passes through the session's :class:`RecordCodec`.
By default that is :class:`~dhtshare.core.records.SecureCodec`: a Noise
handshake and then AES-GCM records, with the HELLO held until the keys exist;
the session checks that the peer's HELLO names the node its key belongs to,
and, for a dialer, that this is the node it meant to reach.  A
:class:`PlainCodec` (benchmarks only) passes frames as they are.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TypeAlias

from dhtshare.config import MAX_BODY_SIZE, MAX_CHUNK_SIZE, MAX_CHUNKS, PROTOCOL_VERSION
from dhtshare.core import messages as m
from dhtshare.core.framing import Buffer, encode_prefix
from dhtshare.core.identity import node_id_of
from dhtshare.core.records import Body, PlainCodec, RecordCodec, SealedBody, SecureCodec, Wire
from dhtshare.errors import LocalProtocolError, RemoteProtocolError

#: Requests a peer may have outstanding with us at once.
MAX_INCOMING_REQUESTS = 512
#: Where bytes go once nothing more is read from a connection.
_SINK_SIZE = 16 * 1024

RequestMessage: TypeAlias = m.GetManifest | m.GetChunk | m.GetHave | m.PutManifest | m.PutChunk
AnswerMessage: TypeAlias = m.Data | m.NotFound | m.Error | m.Have | m.Ok
_REQUESTS = (m.GetManifest, m.GetChunk, m.GetHave, m.PutManifest, m.PutChunk)


# --- events ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HandshakeDone:
    """The peer's HELLO arrived and fits: requests may now flow both ways."""

    hello: m.Hello


@dataclass(frozen=True, slots=True)
class Request:
    """The peer asks us something; call :meth:`Session.incoming_done` once it is settled."""

    msg: RequestMessage
    body: Buffer


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """The peer no longer wants the answer to its request ``msg.req`` (it may get one anyway)."""

    msg: m.Cancel


@dataclass(frozen=True, slots=True)
class Response:
    """The answer to one of our outstanding requests; its id is free again."""

    msg: AnswerMessage
    body: Buffer


@dataclass(frozen=True, slots=True)
class HaveUpdated:
    """The peer verified more chunks of a manifest we asked it about."""

    msg: m.HaveUpdate


@dataclass(frozen=True, slots=True)
class PeerLeaving:
    """The peer said BYE: it leaves the network, so forget it rather than retry it."""

    reason: str


Event: TypeAlias = HandshakeDone | Request | CancelRequest | Response | HaveUpdated | PeerLeaving


# --- states and the rules that move them ------------------------------------------------


class State(enum.Enum):
    """Where a session stands; what each state allows is in :data:`RECEIVE` and :data:`SEND`."""

    IDLE = "idle"  # created; start() not called yet
    AWAIT_HELLO = "await-hello"  # our HELLO is out, the peer's is not in
    OPEN = "open"  # both HELLOs exchanged
    CLOSED = "closed"  # a BYE went either way, or we closed: nothing more either way
    BROKEN = "broken"  # the peer broke a rule: nothing more either way


class Kind(enum.Enum):
    """What a message is for; the rules below are written per kind, not per type."""

    HELLO = "hello"
    REQUEST = "request"
    CANCEL = "cancel"
    ANSWER = "answer"
    PUSH = "push"
    BYE = "bye"
    CONTROL = "control"  # the local control socket's: never on a peer connection


KINDS: dict[m.MsgType, Kind] = {
    m.MsgType.HELLO: Kind.HELLO,
    m.MsgType.GET_MANIFEST: Kind.REQUEST,
    m.MsgType.GET_CHUNK: Kind.REQUEST,
    m.MsgType.GET_HAVE: Kind.REQUEST,
    m.MsgType.PUT_MANIFEST: Kind.REQUEST,
    m.MsgType.PUT_CHUNK: Kind.REQUEST,
    m.MsgType.CANCEL: Kind.CANCEL,
    m.MsgType.DATA: Kind.ANSWER,
    m.MsgType.NOT_FOUND: Kind.ANSWER,
    m.MsgType.ERROR: Kind.ANSWER,
    m.MsgType.HAVE: Kind.ANSWER,
    m.MsgType.OK: Kind.ANSWER,
    m.MsgType.HAVE_UPDATE: Kind.PUSH,
    m.MsgType.BYE: Kind.BYE,
    m.MsgType.CONTROL: Kind.CONTROL,
    m.MsgType.CONTROL_EVENT: Kind.CONTROL,
}

# Rule 1 (after h11's _state.py): every transition of the state machine is in these
# two tables, by state and kind of message, to the state it leads to.  What is
# missing is refused.  The encrypted handshake adds its states here.
_OPEN_TRAFFIC = {
    Kind.REQUEST: State.OPEN,
    Kind.CANCEL: State.OPEN,
    Kind.ANSWER: State.OPEN,
    Kind.PUSH: State.OPEN,
    Kind.BYE: State.CLOSED,
}
#: What the peer may send us.
RECEIVE: dict[State, dict[Kind, State]] = {
    State.IDLE: {},
    State.AWAIT_HELLO: {Kind.HELLO: State.OPEN},
    State.OPEN: _OPEN_TRAFFIC,
    State.CLOSED: {},
    State.BROKEN: {},
}
#: What we may send the peer.
SEND: dict[State, dict[Kind, State]] = {
    State.IDLE: {Kind.HELLO: State.AWAIT_HELLO},
    State.AWAIT_HELLO: {},
    State.OPEN: _OPEN_TRAFFIC,
    State.CLOSED: {},
    State.BROKEN: {},
}
#: Kinds that :meth:`Session.send` leaves to the method that keeps their books.
_SENT_BY = {Kind.HELLO: "start()", Kind.REQUEST: "start_request()", Kind.CANCEL: "cancel()"}


#: The largest body each message type may carry (DATA: one chunk, unless asked for more).
_BODY_LIMITS: dict[int, int] = {
    m.MsgType.DATA: MAX_CHUNK_SIZE,
    m.MsgType.HAVE: MAX_CHUNKS // 8 + 1,
    m.MsgType.PUT_MANIFEST: m.MAX_MANIFEST_BODY,
    m.MsgType.PUT_CHUNK: MAX_CHUNK_SIZE,
}


def _req_of(header: bytes) -> int:
    """The request id in a header ``[type, req, ...]`` (msgpack uint), or -1."""
    first = header[2]
    if first < 0x80:
        return first
    width = {0xCC: 1, 0xCD: 2, 0xCE: 4}.get(first)
    if width is None or len(header) < 3 + width:
        return -1
    return int.from_bytes(header[3 : 3 + width], "big")


# --- the session ----------------------------------------------------------------------------


class Session:
    """One peer connection's protocol state, driven by bytes in and messages out."""

    def __init__(
        self,
        hello: m.Hello,
        serves_requests: bool,
        max_incoming: int = MAX_INCOMING_REQUESTS,
        codec: RecordCodec | None = None,
        expect: bytes | None = None,
    ) -> None:
        self.hello = hello
        #: The node id a dialer meant to reach; a peer that is another node is refused.
        self.expect = expect
        #: Whether the peer may send us requests; a link that only fetches refuses them.
        self.serves_requests = serves_requests
        self.max_incoming = max_incoming
        self.codec: RecordCodec = codec if codec is not None else PlainCodec()
        #: The peer's HELLO, once the handshake is done.
        self.peer_hello: m.Hello | None = None
        self._state = State.IDLE
        #: Our requests awaiting an answer, with the largest DATA body each may get.
        self._outstanding: dict[int, int] = {}
        self._last_id = 0
        self._incoming = 0
        #: A violation the codec found; raised once the frames before it are read.
        self._error: RemoteProtocolError | None = None
        #: False once nothing more is read (terminal): incoming bytes then go to ``_sink``.
        self._reading = True
        self._sink: bytearray | None = None
        self.codec.admit_body = self._admit_body

    @property
    def state(self) -> State:
        return self._state

    @property
    def incoming(self) -> int:
        """The peer's requests handed out as events and not yet :meth:`incoming_done`."""
        return self._incoming

    @property
    def outstanding(self) -> frozenset[int]:
        """Ids of our requests that await an answer."""
        return frozenset(self._outstanding)  # the ids

    # -- opening and closing ---------------------------------------------------------
    @property
    def peer_key(self) -> bytes | None:
        """The peer's Ed25519 key, proved by the link's handshake (``None`` on a plain link)."""
        return self.codec.peer_key

    def start(self) -> Wire:
        """What opens the connection: the codec's opening, then our HELLO (both sides at once).

        On an encrypted link the HELLO is held by the codec until the keys
        exist; it comes out of :meth:`data_to_send` then.
        """
        opening = self.codec.start()
        return opening + self.codec.seal(self._head(self.hello, 0), b"")

    def data_to_send(self) -> Wire:
        """What the link has to send on its own after bytes came in (handshake messages)."""
        return self.codec.data_to_send()

    def close(self) -> None:
        """We are done: nothing more is sent, and whatever still arrives is dropped."""
        if self._state is not State.BROKEN:
            self._enter(State.CLOSED)

    def _enter(self, state: State) -> None:
        self._state = state
        self._reading = state not in (State.CLOSED, State.BROKEN) and self._error is None

    # -- receiving ------------------------------------------------------------------------
    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Where the next bytes from the peer go (then call :meth:`buffer_updated`)."""
        if self._reading:
            return self.codec.get_buffer()
        if self._sink is None:
            self._sink = bytearray(_SINK_SIZE)
        return memoryview(self._sink)

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` arrived in the last buffer from :meth:`get_buffer`; never raises."""
        if not self._reading:
            return  # they went to the sink
        try:
            self.codec.buffer_updated(nbytes)
        except RemoteProtocolError as err:
            # The frames before the bad one still count; the error comes after them.
            self._error = err
            self._reading = False

    def receive_data(self, data: Body) -> None:
        """Copy ``data`` in: any length, any split.  Never raises."""
        view = memoryview(data).cast("B")
        while view:
            buf = self.get_buffer(len(view))
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            self.buffer_updated(n)
            view = view[n:]

    def _admit_body(self, header: bytes, body_len: int) -> None:
        """Refuse a body before it is buffered unless this message, now, may carry that much.

        Called by the codec with the frame's header as soon as it is complete,
        which may be before the frames ahead of it (a HELLO) became events, so
        it judges the header alone: only DATA, HAVE, PUT_MANIFEST and PUT_CHUNK
        carry bodies, each within its own bound, and a DATA body is bounded by
        the request it answers (a chunk, or for GET_MANIFEST a manifest of up
        to 4 Mi hashes).  Whether the message may come at all is decided when
        it becomes an event.
        """
        if len(header) < 3 or not 0x91 <= header[0] <= 0x9F:  # [type, ...], short
            raise RemoteProtocolError(f"a body of {body_len} bytes where none may come")
        kind = header[1]
        limit = _BODY_LIMITS.get(kind, 0)
        if kind == m.MsgType.DATA:
            limit = self._outstanding.get(_req_of(header), limit)
        if body_len > limit:
            raise RemoteProtocolError(
                f"message type {kind} may not carry a body of {body_len} bytes (at most {limit})"
            )

    def next_event(self) -> Event | None:
        """What the peer did next, or ``None`` until more bytes arrive (or ever, once closed).

        Raises :class:`RemoteProtocolError` when the peer broke a rule, and
        again on every later call: the session is ``BROKEN``.  Answers to
        requests we are not waiting for (cancelled, or never made) are dropped.
        """
        while True:
            state = self._state
            if state is not State.OPEN and state is not State.AWAIT_HELLO:
                if state is State.BROKEN:
                    raise RemoteProtocolError("the peer broke the protocol") from self._error
                if state is State.IDLE:
                    raise LocalProtocolError("start() the session before reading its events")
                return None
            frame = self.codec.next_frame()
            if frame is None:
                if self._error is not None:
                    self._enter(State.BROKEN)
                    raise self._error
                return None
            try:
                event = self._receive(m.decode(frame.header, frame.body), frame.body)
            except RemoteProtocolError as err:
                self._error = err
                self._enter(State.BROKEN)
                raise
            if event is not None:
                return event

    def _receive(self, msg: m.Message, body: Buffer) -> Event | None:
        after = RECEIVE[self._state].get(KINDS[msg.TYPE])
        if after is None:
            raise RemoteProtocolError(self._refusal(msg))
        event: Event | None
        match msg:
            case m.Data() | m.NotFound() | m.Error() | m.Have() | m.Ok():
                if msg.req not in self._outstanding:
                    return None  # we cancelled it, or never asked: not the peer's fault
                del self._outstanding[msg.req]
                event = Response(msg, body)
            case m.GetManifest() | m.GetChunk() | m.GetHave() | m.PutManifest() | m.PutChunk():
                self._check_serving()
                if self._incoming >= self.max_incoming:
                    raise RemoteProtocolError("too many outstanding requests")
                self._incoming += 1
                event = Request(msg, body)
            case m.Cancel():
                self._check_serving()
                event = CancelRequest(msg)
            case m.HaveUpdate():
                event = HaveUpdated(msg)
            case m.Bye():
                event = PeerLeaving(msg.reason)
            case m.Hello():
                if msg.version != PROTOCOL_VERSION:
                    raise RemoteProtocolError(f"unsupported protocol version {msg.version}")
                self._check_identity(msg)
                self.peer_hello = msg
                event = HandshakeDone(msg)
            case _:  # pragma: no cover - RECEIVE refuses every other kind
                raise RemoteProtocolError(self._refusal(msg))
        if after is not self._state:
            self._enter(after)
        return event

    def _check_identity(self, hello: m.Hello) -> None:
        key = self.codec.peer_key
        if key is not None and node_id_of(key) != hello.node_id:
            raise RemoteProtocolError(
                f"the peer says it is node {hello.node_id.hex()[:16]}, "
                f"but its key belongs to node {node_id_of(key).hex()[:16]}"
            )
        if self.expect is not None and hello.node_id != self.expect:
            raise RemoteProtocolError(
                f"the peer is node {hello.node_id.hex()[:16]}, "
                f"not node {self.expect.hex()[:16]} that we meant to reach"
            )

    def _refusal(self, msg: m.Message) -> str:
        name = type(msg).__name__
        if self._state is State.AWAIT_HELLO:
            return f"expected HELLO, got {name}"
        if isinstance(msg, m.Hello):
            return "second HELLO"
        return f"{name} is not a peer message"

    def _check_serving(self) -> None:
        if not self.serves_requests:
            raise RemoteProtocolError("requests are not accepted on this connection")

    # -- sending ----------------------------------------------------------------------------
    def send(self, msg: m.Message, body: Body = b"") -> Wire:
        """What to write for ``msg`` (an answer, HAVE_UPDATE or BYE); ``body`` is not copied."""
        via = _SENT_BY.get(KINDS[msg.TYPE])
        if via is not None:
            raise LocalProtocolError(f"{type(msg).__name__} is sent with {via}")
        body = body or m.payload(msg)
        return self.codec.seal(self._head(msg, len(body)), body)

    def send_prefix(self, msg: m.Message, body_len: int) -> Wire:
        """What to write before a body of ``body_len`` bytes that the caller writes raw.

        For ``sendfile``: the kernel copies file to socket, so only a codec
        that passes bodies through unchanged allows it.
        """
        if not self.codec.raw_bodies:
            raise LocalProtocolError("this link seals its bodies: pass the body to send()")
        via = _SENT_BY.get(KINDS[msg.TYPE])
        if via is not None:
            raise LocalProtocolError(f"{type(msg).__name__} is sent with {via}")
        return self.codec.seal(self._head(msg, body_len), b"")

    def reserve(self, msg: m.Message, body_len: int) -> SealedBody:
        """``msg`` with a body of ``body_len`` bytes still to be filled in (a file's range).

        The sealed link's counterpart of :meth:`send_prefix`: the frame takes
        its place in the stream now, and the caller fills and encrypts it
        wherever it likes (a thread) before writing it, ahead of anything sent
        after this call.
        """
        if not isinstance(self.codec, SecureCodec):
            raise LocalProtocolError("this link sends bodies raw: use send_prefix()")
        via = _SENT_BY.get(KINDS[msg.TYPE])
        if via is not None:
            raise LocalProtocolError(f"{type(msg).__name__} is sent with {via}")
        return self.codec.reserve(self._head(msg, body_len), body_len)

    def next_id(self) -> int:
        """A request id that is not outstanding (they count up from 1 and wrap around)."""
        rid = (self._last_id + 1) & m.MAX_REQ_ID
        while rid in self._outstanding:
            rid = (rid + 1) & m.MAX_REQ_ID
        self._last_id = rid
        return rid

    def start_request(self, msg: m.Message, body: Body = b"") -> Wire:
        """What to write for request ``msg``; its answer becomes a :class:`Response` event."""
        if not isinstance(msg, _REQUESTS):
            raise LocalProtocolError(f"{type(msg).__name__} is not a request")
        if msg.req in self._outstanding:
            raise LocalProtocolError(f"request id {msg.req} is already outstanding")
        body = body or m.payload(msg)
        wire = self.codec.seal(self._head(msg, len(body)), body)
        # Only a manifest may be larger than a chunk (up to 4 Mi hashes).
        self._outstanding[msg.req] = (
            MAX_BODY_SIZE if isinstance(msg, m.GetManifest) else MAX_CHUNK_SIZE
        )
        return wire

    def cancel(self, req: int) -> Wire:
        """Stop waiting for ``req``: the CANCEL to write, or nothing when there is no one to tell.

        Its answer, should it come anyway, is dropped.
        """
        if req not in self._outstanding:
            return ()
        del self._outstanding[req]
        if self._state is not State.OPEN:
            return ()
        return self.codec.seal(self._head(m.Cancel(req), 0), b"")

    def incoming_done(self) -> None:
        """One of the peer's requests is answered or dropped: it no longer counts to the cap."""
        if not self._incoming:
            raise LocalProtocolError("more requests settled than the peer sent")
        self._incoming -= 1

    def _head(self, msg: m.Message, body_len: int) -> bytes:
        after = SEND[self._state].get(KINDS[msg.TYPE])
        if after is None:
            raise LocalProtocolError(
                f"cannot send {type(msg).__name__} while the session is {self._state.value}"
            )
        head = encode_prefix(m.encode(msg), body_len)
        if after is not self._state:
            self._enter(after)
        return head


__all__ = [
    "MAX_INCOMING_REQUESTS",
    "AnswerMessage",
    "Body",
    "CancelRequest",
    "Event",
    "HandshakeDone",
    "HaveUpdated",
    "Kind",
    "PeerLeaving",
    "PlainCodec",
    "RecordCodec",
    "Request",
    "RequestMessage",
    "Response",
    "SealedBody",
    "Session",
    "State",
    "Wire",
]
