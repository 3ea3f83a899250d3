"""Unit and property tests for the sans-IO peer session (dhtshare.core.session).

Most of them talk through :class:`tests.unit.session_pair.SessionPair`; the
hostile ones play the peer with raw frames, as a misbehaving node would.  The
same cases run end to end against a real node in ``tests/integration/test_hostile.py``
only where a process adds something (timing, the server, UDP).
"""

from __future__ import annotations

import ast
import itertools
import mmap
import random
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dhtshare.config import KIB, MIB, PROTOCOL_VERSION
from dhtshare.core import messages as m
from dhtshare.core import session as session_module
from dhtshare.core.framing import PREFIX, encode_frame
from dhtshare.core.session import (
    KINDS,
    MAX_INCOMING_REQUESTS,
    RECEIVE,
    SEND,
    Body,
    CancelRequest,
    Event,
    HandshakeDone,
    HaveUpdated,
    Kind,
    PeerLeaving,
    PlainCodec,
    Request,
    Response,
    Session,
    State,
)
from dhtshare.errors import FrameTooLarge, LocalProtocolError, RemoteProtocolError
from tests.unit.session_pair import (
    HELLO_A,
    HELLO_B,
    H,
    SessionPair,
    events,
    frame,
    joined,
    opened,
    receiver,
)
from tests.unit.test_messages import MESSAGE_STRATEGIES

FUZZ = settings(max_examples=150, deadline=None, database=None)


# --- the handshake -----------------------------------------------------------------------


def test_handshake_gives_each_side_the_others_hello() -> None:
    pair = SessionPair(handshake=False)
    assert pair.a.state is State.IDLE
    assert pair.handshake() == ([HandshakeDone(HELLO_B)], [HandshakeDone(HELLO_A)])
    assert pair.a.state is pair.b.state is State.OPEN
    assert (pair.a.peer_hello, pair.b.peer_hello) == (HELLO_B, HELLO_A)


def test_hello_goes_out_once() -> None:
    session = Session(HELLO_A, True)
    assert joined(session.start()) == frame(HELLO_A)
    assert session.state is State.AWAIT_HELLO
    with pytest.raises(LocalProtocolError):
        session.start()


def test_bytes_before_start_wait_for_it() -> None:
    session = Session(HELLO_A, True)
    session.receive_data(frame(HELLO_B))
    with pytest.raises(LocalProtocolError, match="start"):
        session.next_event()
    session.start()
    assert events(session) == [HandshakeDone(HELLO_B)]


def test_nothing_but_hello_may_be_sent_before_the_handshake() -> None:
    session = Session(HELLO_A, True)
    with pytest.raises(LocalProtocolError):
        session.start_request(m.GetManifest(1, H))
    session.start()
    for msg in (m.Data(1), m.HaveUpdate(H, (1,)), m.Bye()):
        with pytest.raises(LocalProtocolError):
            session.send(msg)
    with pytest.raises(LocalProtocolError):
        session.start_request(m.GetManifest(1, H))
    assert session.state is State.AWAIT_HELLO


# --- requests and answers ------------------------------------------------------------------


def test_request_and_answer_round_trip() -> None:
    pair = SessionPair()
    rid = pair.a.next_id()
    ask = m.GetChunk(rid, H, 3, H)
    assert pair.request(pair.a, ask) == [Request(ask, b"")]
    assert pair.a.outstanding == {rid}
    assert pair.b.incoming == 1
    assert pair.send(pair.b, m.Data(rid), b"payload") == [Response(m.Data(rid), b"payload")]
    assert pair.a.outstanding == frozenset()
    pair.b.incoming_done()
    assert pair.b.incoming == 0


@pytest.mark.parametrize(
    "answer",
    [m.Data(7), m.NotFound(7), m.Error(7, m.ErrorCode.FULL, "full"),
     m.Have(7, False, b"\xa0", True, 2), m.Have(7, True), m.Ok(7)],
    ids=lambda msg: type(msg).__name__,
)
def test_every_answer_type_resolves_a_request(answer: m.Message) -> None:
    pair = SessionPair()
    pair.request(pair.a, m.GetHave(7, H))
    [event] = pair.send(pair.b, answer)
    assert isinstance(event, Response)
    assert event.msg == answer
    assert pair.a.outstanding == frozenset()


def test_second_answer_to_one_request_is_dropped() -> None:
    pair = SessionPair()
    pair.request(pair.a, m.GetManifest(5, H))
    assert len(pair.send(pair.b, m.NotFound(5))) == 1
    assert pair.send(pair.b, m.NotFound(5)) == []
    assert pair.a.state is State.OPEN


def test_request_bodies_travel_with_the_request() -> None:
    pair = SessionPair()
    put = m.PutManifest(1, H, 2, b"manifest bytes")
    assert pair.request(pair.a, put) == [Request(put, b"manifest bytes")]
    chunk = m.PutChunk(2, H, 0, H)
    assert pair.request(pair.a, chunk, b"chunk bytes") == [Request(chunk, b"chunk bytes")]


def test_cancel_tells_the_peer_and_drops_a_late_answer() -> None:
    pair = SessionPair()
    pair.request(pair.a, m.GetManifest(9, H))
    assert pair.deliver(pair.a, pair.a.cancel(9)) == [CancelRequest(m.Cancel(9))]
    assert pair.a.outstanding == frozenset()
    assert pair.b.incoming == 1  # the CANCEL itself does not count
    assert pair.send(pair.b, m.Data(9), b"too late") == []


def test_cancel_of_an_id_not_outstanding_says_nothing() -> None:
    pair = SessionPair()
    assert pair.a.cancel(123) == ()
    pair.request(pair.a, m.GetManifest(4, H))
    pair.a.close()
    assert pair.a.cancel(4) == ()
    assert pair.a.outstanding == frozenset()


def test_next_id_skips_ids_in_use() -> None:
    pair = SessionPair()
    pair.request(pair.a, m.GetManifest(1, H))
    pair.request(pair.a, m.GetManifest(2, H))
    ids = [pair.a.next_id() for _ in range(100)]
    assert ids == list(range(3, 103))


def test_next_id_wraps_around_and_never_returns_an_outstanding_one() -> None:
    session = opened()
    session.start_request(m.GetManifest(0, H))
    session.start_request(m.GetManifest(1, H))
    session._last_id = m.MAX_REQ_ID - 1  # white box: skip four billion requests
    assert [session.next_id() for _ in range(3)] == [m.MAX_REQ_ID, 2, 3]


def test_request_ids_may_not_be_reused_while_outstanding() -> None:
    session = opened()
    session.start_request(m.GetManifest(1, H))
    with pytest.raises(LocalProtocolError, match="outstanding"):
        session.start_request(m.GetChunk(1, H, 0, H))


@pytest.mark.parametrize(
    ("method", "msg"),
    [
        ("send", m.GetManifest(1, H)),
        ("send", m.Cancel(1)),
        ("send", HELLO_A),
        ("send", m.Control(1, "status")),
        ("send", m.ControlEvent(1, "result")),
        ("start_request", m.Data(1)),
        ("start_request", m.Cancel(1)),
        ("start_request", m.Bye()),
    ],
)
def test_each_message_goes_out_through_its_own_door(method: str, msg: m.Message) -> None:
    session = opened()
    with pytest.raises(LocalProtocolError):
        getattr(session, method)(msg)
    assert session.state is State.OPEN


def test_settling_more_requests_than_arrived_is_a_bug() -> None:
    with pytest.raises(LocalProtocolError):
        opened().incoming_done()


# --- leaving --------------------------------------------------------------------------------


def test_bye_closes_both_sides() -> None:
    pair = SessionPair()
    pair.request(pair.b, m.GetManifest(1, H))
    wire = pair.a.send(m.Bye("upgrading"))
    assert pair.a.state is State.CLOSED
    assert pair.deliver(pair.a, wire) == [PeerLeaving("upgrading")]
    assert pair.b.state is State.CLOSED
    # Whatever still arrives is dropped, answers and garbage alike.
    pair.b.receive_data(frame(m.Data(1)) + random.Random(1).randbytes(1000))
    assert events(pair.b) == []
    for sender in (pair.a, pair.b):
        with pytest.raises(LocalProtocolError):
            sender.send(m.HaveUpdate(H, ()))
        with pytest.raises(LocalProtocolError):
            sender.start_request(m.GetManifest(2, H))


def test_frames_after_a_bye_are_not_read() -> None:
    session = opened()
    session.receive_data(frame(m.Bye("done")) + frame(m.GetManifest(1, H)))
    assert events(session) == [PeerLeaving("done")]
    assert session.incoming == 0


def test_closing_drops_what_arrives_later() -> None:
    session = opened()
    session.close()
    session.receive_data(frame(m.GetManifest(1, H)) + PREFIX.pack(0xFFFFFFFF, 0))
    assert session.next_event() is None
    assert session.state is State.CLOSED


# --- no copies on the hot path -------------------------------------------------------------


class RecordingAlloc:
    """An allocator that remembers what it handed out (like the buffer pool)."""

    def __init__(self) -> None:
        self.given: list[mmap.mmap] = []

    def __call__(self, size: int) -> mmap.mmap:
        buf = mmap.mmap(-1, size)
        self.given.append(buf)
        return buf


def test_large_bodies_are_neither_copied_out_nor_in() -> None:
    alloc = RecordingAlloc()
    sender = opened(HELLO_A, HELLO_B)
    receiver = Session(HELLO_B, True, codec=PlainCodec(alloc=alloc))
    receiver.start()
    receiver.receive_data(frame(HELLO_A))
    events(receiver)
    receiver.start_request(m.GetChunk(1, H, 0, H))

    body = bytearray(random.Random(2).randbytes(MIB + 5))
    wire = sender.send(m.Data(1), body)
    assert wire[-1] is body
    # The socket's way in: write into the buffer the session hands out, in bits.
    stream = memoryview(joined(wire))
    while stream:
        buf = receiver.get_buffer(-1)
        n = min(len(buf), len(stream), 100_000)
        buf[:n] = stream[:n]
        receiver.buffer_updated(n)
        stream = stream[n:]
    [event] = events(receiver)
    assert isinstance(event, Response)
    assert event.body is alloc.given[0]
    assert event.body == body


def test_a_body_sent_raw_after_its_prefix() -> None:
    pair = SessionPair()
    pair.request(pair.b, m.GetChunk(3, H, 1, H))
    prefix = pair.a.send_prefix(m.Data(3), 70 * KIB)
    assert len(prefix) == 1
    assert pair.deliver(pair.a, [*prefix, b"x" * 70 * KIB]) == [
        Response(m.Data(3), b"x" * 70 * KIB)
    ]


# --- the record codec is where every byte passes --------------------------------------------


# The encrypted record layer, with a session on each end: tests/unit/test_records.py.


# --- hostile peers (the process-free cases of tests/integration/test_hostile.py) -------------


GARBAGE = {
    "http": b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "random": random.Random(7).randbytes(4096),
    "bad-msgpack": PREFIX.pack(4, 0) + b"\xc1\xc1\xc1\xc1",
    "not-an-array": encode_frame(msgpack.packb("hello")),
    "empty-array": encode_frame(msgpack.packb([])),
    "empty-header": encode_frame(b""),
    "hello-bad-arity": encode_frame(msgpack.packb([1, PROTOCOL_VERSION, b"x" * 20])),
    "hello-short-id": encode_frame(msgpack.packb([1, PROTOCOL_VERSION, b"x", 1, "a"])),
    "hello-with-body": encode_frame(m.encode(HELLO_A), b"body"),
    "hello-trailing-bytes": encode_frame(m.encode(HELLO_A) + b"\x00"),
}


def assert_broken(session: Session, match: str | None = None) -> None:
    """The next event is a violation, and the session stays broken after it."""
    with pytest.raises(RemoteProtocolError, match=match):
        events(session)
    assert session.state is State.BROKEN
    with pytest.raises(RemoteProtocolError):
        session.next_event()
    with pytest.raises(LocalProtocolError):
        session.send(m.NotFound(1))
    session.receive_data(frame(m.GetManifest(1, H)))  # dropped, never raises


def awaiting() -> Session:
    session = Session(HELLO_B, True)
    session.start()
    return session


@pytest.mark.parametrize("garbage", list(GARBAGE.values()), ids=list(GARBAGE))
def test_garbage_breaks_the_session(garbage: bytes) -> None:
    session = awaiting()
    session.receive_data(garbage)
    assert_broken(session)


def test_garbage_after_a_valid_hello() -> None:
    session = opened()
    session.receive_data(random.Random(8).randbytes(2048))
    assert_broken(session)


@pytest.mark.parametrize(
    "header",
    [msgpack.packb([99, 1]), msgpack.packb([0, 1]), msgpack.packb([255]), msgpack.packb(["2"])],
    ids=["type-99", "type-0", "type-255", "type-str"],
)
def test_unknown_message_type_after_hello(header: bytes) -> None:
    session = opened()
    session.receive_data(encode_frame(header))
    assert_broken(session, "message type")


@pytest.mark.parametrize(
    "msg",
    [m.GetManifest(1, H), m.GetChunk(1, H, 0, H), m.GetHave(1, H), m.Cancel(1), m.NotFound(1),
     m.Bye()],
    ids=lambda msg: type(msg).__name__,
)
def test_request_before_hello(msg: m.Message) -> None:
    session = awaiting()
    session.receive_data(frame(msg) + frame(HELLO_A))
    assert_broken(session, "expected HELLO")
    assert session.incoming == 0
    assert session.peer_hello is None


@pytest.mark.parametrize("version", [0, PROTOCOL_VERSION + 1, 2**16])
def test_hello_with_wrong_version(version: int) -> None:
    session = awaiting()
    hello = m.Hello(version, HELLO_A.node_id, 1, "old")
    session.receive_data(frame(hello) + frame(m.GetManifest(3, H)))
    assert_broken(session, "version")
    assert session.peer_hello is None
    assert session.incoming == 0


def test_second_hello() -> None:
    session = opened()
    session.receive_data(frame(HELLO_A))
    assert_broken(session, "second HELLO")


@pytest.mark.parametrize(
    "msg", [m.Control(5, "status", {}), m.ControlEvent(5, "result", {})],
    ids=lambda msg: type(msg).__name__,
)
def test_control_messages_on_the_peer_port(msg: m.Message) -> None:
    session = opened()
    session.receive_data(frame(msg))
    assert_broken(session, "not a peer message")


def test_unsolicited_answers_are_dropped() -> None:
    session = opened()
    session.receive_data(
        frame(m.Data(77), b"unasked-for bytes")
        + frame(m.NotFound(78))
        + frame(m.Have(79, True))
        + frame(m.GetManifest(80, H))
    )
    assert events(session) == [Request(m.GetManifest(80, H), b"")]


@pytest.mark.parametrize("msg", [m.GetManifest(1, H), m.Cancel(1)], ids=["request", "cancel"])
def test_requests_on_a_link_that_does_not_serve(msg: m.Message) -> None:
    session = opened(serves=False)
    session.receive_data(frame(msg))
    assert_broken(session, "not accepted")


def test_pipelined_requests_beyond_the_cap() -> None:
    session = opened()
    n = MAX_INCOMING_REQUESTS + 88
    session.receive_data(b"".join(frame(m.GetManifest(i, H)) for i in range(n)))
    got = [session.next_event() for _ in range(MAX_INCOMING_REQUESTS)]
    assert got == [Request(m.GetManifest(i, H), b"") for i in range(MAX_INCOMING_REQUESTS)]
    with pytest.raises(RemoteProtocolError, match="too many outstanding requests"):
        session.next_event()


def test_the_cap_counts_only_unsettled_requests() -> None:
    session = opened(max_incoming=3)
    for i in range(20):
        session.receive_data(frame(m.GetManifest(i, H)) + frame(m.Cancel(i)))
        assert len(events(session)) == 2
        session.incoming_done()
    session.receive_data(b"".join(frame(m.GetHave(i, H)) for i in range(3)))
    assert len(events(session)) == 3
    session.receive_data(frame(m.GetHave(4, H)))
    assert_broken(session, "too many")


@pytest.mark.parametrize("after_hello", [True, False], ids=["after-hello", "before-hello"])
@pytest.mark.parametrize(
    "prefix",
    [PREFIX.pack(16, 0xFFFFFFFF), PREFIX.pack(0xFFFFFFFF, 0), PREFIX.pack(65537, 0)],
    ids=["4GiB-body", "4GiB-header", "header-just-over"],
)
def test_oversized_frame_prefix(prefix: bytes, after_hello: bool) -> None:
    alloc = RecordingAlloc()
    session = Session(HELLO_B, True, codec=PlainCodec(alloc=alloc))
    session.start()
    if after_hello:
        session.receive_data(frame(HELLO_A))
    session.receive_data(prefix)  # eight bytes are enough to tell
    with pytest.raises(FrameTooLarge):
        events(session)
    assert alloc.given == []
    assert session.state is State.BROKEN


def test_frames_before_a_violation_still_count() -> None:
    session = opened()
    session.receive_data(frame(m.GetManifest(1, H)) + PREFIX.pack(0, 0xFFFFFFFF))
    assert session.next_event() == Request(m.GetManifest(1, H), b"")
    with pytest.raises(FrameTooLarge):
        session.next_event()


def test_a_partial_frame_only_waits() -> None:
    session = opened()
    session.receive_data(PREFIX.pack(1000, 0) + b"\x93" + b"\x00" * 10)
    assert session.next_event() is None
    assert session.state is State.OPEN


# --- every state against every message type (after h2's test_state_machines) ------------------

#: What receiving each kind of message does in each state, written out independently
#: of the session's tables: an event class, ``None`` (dropped) or a violation.
EXPECTED: dict[State, dict[Kind, type[Event] | type[RemoteProtocolError] | None]] = {
    State.AWAIT_HELLO: {
        Kind.HELLO: HandshakeDone, Kind.REQUEST: RemoteProtocolError,
        Kind.CANCEL: RemoteProtocolError, Kind.ANSWER: RemoteProtocolError,
        Kind.PUSH: RemoteProtocolError, Kind.BYE: RemoteProtocolError,
        Kind.CONTROL: RemoteProtocolError,
    },
    State.OPEN: {
        Kind.HELLO: RemoteProtocolError, Kind.REQUEST: Request, Kind.CANCEL: CancelRequest,
        Kind.ANSWER: None, Kind.PUSH: HaveUpdated, Kind.BYE: PeerLeaving,
        Kind.CONTROL: RemoteProtocolError,
    },
    State.CLOSED: dict.fromkeys(Kind),
    State.BROKEN: dict.fromkeys(Kind, RemoteProtocolError),
}


def session_in(state: State) -> Session:
    session = Session(HELLO_B, True)
    if state is State.AWAIT_HELLO:
        session.start()
    elif state is not State.IDLE:
        session = opened()
    if state is State.CLOSED:
        session.close()
    elif state is State.BROKEN:
        session.receive_data(frame(HELLO_A))
        with pytest.raises(RemoteProtocolError):
            session.next_event()
    assert session.state is state
    return session


def test_every_message_type_has_a_kind() -> None:
    assert set(KINDS) == set(m.MsgType)
    assert set(RECEIVE) == set(SEND) == set(State)


@pytest.mark.parametrize("state", list(EXPECTED), ids=lambda s: s.name)
@pytest.mark.parametrize("mtype", list(m.MsgType), ids=lambda t: t.name)
@settings(max_examples=8, deadline=None, database=None)
@given(data=st.data())
def test_state_by_message_type(state: State, mtype: m.MsgType, data: st.DataObject) -> None:
    msg = data.draw(MESSAGE_STRATEGIES[mtype], label="msg")
    session = session_in(state)
    session.receive_data(frame(msg))
    expected = EXPECTED[state][KINDS[mtype]]
    if isinstance(msg, m.Hello) and expected is HandshakeDone and msg.version != PROTOCOL_VERSION:
        expected = RemoteProtocolError
    if expected is RemoteProtocolError:
        with pytest.raises(RemoteProtocolError):
            session.next_event()
        assert session.state is State.BROKEN
        return
    event = session.next_event()
    if expected is None:
        assert event is None
    else:
        assert type(event) is expected
    assert session.next_event() is None


# --- properties -----------------------------------------------------------------------------

#: Bodies around the decoder's thresholds: inline, collected in scratch, own buffer.
body_sizes = st.sampled_from([0, 1, 100, 64 * KIB, 64 * KIB + 1, 200 * KIB])


@st.composite
def peer_streams(draw: st.DrawFn) -> tuple[list[int], bytes]:
    """Ids the receiver waits for, and a valid stream of what a peer sends after its HELLO."""
    waiting = draw(st.lists(st.integers(1, 50), max_size=10, unique=True))
    sender = opened(HELLO_A, HELLO_B)
    wire: list[Body] = []
    for _ in range(draw(st.integers(0, 12))):
        choice = draw(st.sampled_from(["answer", "request", "cancel", "have-update"]))
        rid = draw(st.integers(1, 60))
        if choice == "answer":
            size = draw(body_sizes)
            wire += sender.send(m.Data(rid), random.Random(rid).randbytes(size))
        elif choice == "request":
            wire += sender.start_request(m.GetChunk(sender.next_id(), H, rid, H))
        elif choice == "cancel":
            wire += sender.cancel(draw(st.sampled_from(sorted(sender.outstanding) or [0])))
        else:
            wire += sender.send(m.HaveUpdate(H, (rid, rid + 1)))
    if draw(st.booleans()):
        wire += sender.send(m.Bye("bye"))
    return waiting, joined(wire)


def read_all(session: Session, chunks: list[bytes]) -> list[Event]:
    out: list[Event] = []
    for chunk in chunks:
        session.receive_data(chunk)
        out += events(session)
    return out


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


@FUZZ
@given(stream=peer_streams(), data=st.data())
def test_any_split_of_a_valid_stream_gives_the_same_events(
    stream: tuple[list[int], bytes], data: st.DataObject
) -> None:
    waiting, raw = stream
    whole = read_all(receiver(waiting), [raw])
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=20), label="cuts")
    assert read_all(receiver(waiting), cut(raw, cuts)) == whole
    # The zero-copy way in, with the socket filling less than it is offered.
    session = receiver(waiting)
    limits = data.draw(st.lists(st.integers(1, 70_000), min_size=1, max_size=8), label="limits")
    view, i, zero_copy = memoryview(raw), 0, []
    while view:
        buf = session.get_buffer(-1)
        n = min(len(buf), len(view), limits[i % len(limits)])
        buf[:n] = view[:n]
        session.buffer_updated(n)
        view, i = view[n:], i + 1
        zero_copy += events(session)
    assert zero_copy == whole


def _only_remote_errors(session: Session, chunks: list[bytes]) -> None:
    try:
        read_all(session, chunks)
    except RemoteProtocolError:
        assert session.state is State.BROKEN


@FUZZ
@given(garbage=st.binary(max_size=3000), after_hello=st.booleans())
def test_garbage_only_raises_remote_protocol_error(garbage: bytes, after_hello: bool) -> None:
    prefix = frame(HELLO_A) if after_hello else b""
    _only_remote_errors(receiver([]) if after_hello else awaiting(), [prefix + garbage])
    # And byte at a time (h11's fuzz/afl-server.py does both).
    session = awaiting()
    _only_remote_errors(session, [prefix] + [garbage[i : i + 1] for i in range(len(garbage))])


@FUZZ
@given(stream=peer_streams(), data=st.data())
def test_a_mutated_stream_only_raises_remote_protocol_error(
    stream: tuple[list[int], bytes], data: st.DataObject
) -> None:
    _, raw = stream
    mutated = bytearray(frame(HELLO_A) + raw)
    for _ in range(data.draw(st.integers(1, 4), label="flips")):
        mutated[data.draw(st.integers(0, len(mutated) - 1), label="pos")] = data.draw(
            st.integers(0, 255), label="byte"
        )
    _only_remote_errors(awaiting(), [bytes(mutated)])


# --- sans-IO -----------------------------------------------------------------------------------

ALLOWED_IMPORTS = {"__future__", "enum", "dataclasses", "typing"}
ALLOWED_OWN = ("dhtshare.core", "dhtshare.errors", "dhtshare.config")


def test_session_imports_no_io() -> None:
    tree = ast.parse(Path(session_module.__file__).read_text())
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append(node.module or "")
    own = [n for n in names if n.split(".")[0] == "dhtshare"]
    assert all(n.startswith(ALLOWED_OWN) for n in own), own
    assert {n.split(".")[0] for n in names if n not in own} <= ALLOWED_IMPORTS


# -- bodies are refused before they are buffered ------------------------------------------
def _head_only(msg: m.Message, body_len: int) -> bytes:
    """A frame's prefix and header announcing ``body_len`` body bytes that never come."""
    header = m.encode(msg)
    return PREFIX.pack(len(header), body_len) + header


@pytest.mark.parametrize(
    ("msg", "body_len"),
    [
        (m.GetChunk(7, H, 0, H), 1),  # requests without bodies carry none
        (m.Cancel(7), 100 * MIB),
        (m.HaveUpdate(H, ()), 1 * MIB),
        (m.PutChunk(7, H, 0, H), 16 * MIB + 1),  # above the largest chunk
        (m.Data(99), 16 * MIB + 1),  # a manifest-sized answer nobody asked for
    ],
)
def test_a_body_too_large_for_its_message_is_refused_at_its_header(
    msg: m.Message, body_len: int
) -> None:
    session = opened()
    session.receive_data(_head_only(msg, body_len))
    with pytest.raises(RemoteProtocolError, match=r"may not carry a body|where none may come"):
        events(session)
    assert session.state is State.BROKEN


def test_a_large_answer_to_our_manifest_request_is_let_in() -> None:
    session = opened()
    req = session.next_id()
    session.start_request(m.GetManifest(req, H))
    session.receive_data(_head_only(m.Data(req), 20 * MIB))  # a manifest of 20 MiB of hashes
    assert events(session) == []  # waiting for the body, not refusing it
    assert session.state is State.OPEN


def test_bodies_right_behind_the_hello_are_judged_by_their_header_alone() -> None:
    """The codec reads ahead of the events: a PUT_CHUNK in the same read as HELLO is fine."""
    session = Session(HELLO_B, True)
    session.start()
    chunk = b"c" * 1000
    session.receive_data(frame(HELLO_A) + frame(m.PutChunk(3, H, 0, H), chunk))
    got = events(session)
    assert got[0] == HandshakeDone(HELLO_A)
    assert isinstance(got[1], Request)
    assert bytes(got[1].body) == chunk
