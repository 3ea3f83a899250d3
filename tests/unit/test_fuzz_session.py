"""Fuzzers for a peer session fed hostile bytes (dhtshare.core.session.Session).

``tests/unit/test_session.py`` already fuzzes pure garbage, byte flips of a
valid stream and random splits of a valid stream.  These cover what it does
not: a violation *interleaved* with valid frames (the events before it must
be exactly those of the valid part), BYE in the middle of a stream (nothing
after it counts, nothing after it raises), what a broken or closed session
keeps of later bytes, request ids under wrap-around and exhaustion of the
peer's request cap (against a model), and the body limits each message type
is held to at its header, before anything is allocated.
"""

from __future__ import annotations

import mmap
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dhtshare.config import KIB, MAX_BODY_SIZE, MAX_CHUNK_SIZE, MAX_CHUNKS, MIB
from dhtshare.core import messages as m
from dhtshare.core import session as session_module
from dhtshare.core.framing import PREFIX, encode_frame
from dhtshare.core.session import (
    Event,
    PeerLeaving,
    PlainCodec,
    Response,
    Session,
    State,
)
from dhtshare.errors import FrameTooLarge, RemoteProtocolError
from tests.unit.session_pair import HELLO_A, HELLO_B, H, events, frame
from tests.unit.session_pair import receiver as _receiver
from tests.unit.test_messages import MESSAGE_STRATEGIES

FUZZ = settings(max_examples=100, deadline=None, database=None, derandomize=True)

SINK_SIZE = session_module._SINK_SIZE


def pack(obj: Any) -> bytes:
    out: bytes = msgpack.packb(obj, use_bin_type=True)
    return out


class Alloc:
    """The codec's allocator, remembering sizes (anonymous mmaps: large ones cost nothing)."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __call__(self, size: int) -> mmap.mmap:
        self.sizes.append(size)
        return mmap.mmap(-1, size)


def receiver(waiting: tuple[int, ...] = (), alloc: Alloc | None = None,
             max_incoming: int = session_module.MAX_INCOMING_REQUESTS) -> Session:
    """:func:`tests.unit.session_pair.receiver`, its large bodies from ``alloc``."""
    codec = PlainCodec(alloc=alloc) if alloc is not None else None
    return _receiver(waiting, codec, max_incoming)


# --- streams --------------------------------------------------------------------------------------

ids = st.integers(1, 12)


@st.composite
def valid_frames(draw: st.DrawFn) -> bytes:
    """One frame a well-behaved peer may send once the handshake is done."""
    rid = draw(ids)
    body = random.Random(rid).randbytes(draw(st.sampled_from([0, 3, 70 * KIB])))
    choices: list[m.Message] = [
        m.GetChunk(rid, H, rid, H), m.GetManifest(rid, H), m.GetHave(rid, H),
        m.PutChunk(rid, H, 0, H), m.PutManifest(rid, H, 2, b"manifest"),
        m.Data(rid), m.NotFound(rid), m.Error(rid, 1, "e"), m.Have(rid, True),
        m.Have(rid, False, b"\xa0"), m.Ok(rid), m.Cancel(rid), m.HaveUpdate(H, (rid,)),
    ]
    msg = draw(st.sampled_from(choices))
    if isinstance(msg, m.Data | m.PutChunk):
        return encode_frame(m.encode(msg), body)
    return frame(msg)


#: Frames that are certainly violations after the handshake, each self-delimiting.
VIOLATIONS = {
    "undecodable": encode_frame(b"\xc1"),
    "not-an-array": encode_frame(pack("GET")),
    "empty-array": encode_frame(pack([])),
    "unknown-type": encode_frame(pack([99, 1])),
    "wrong-arity": encode_frame(pack([2, 1])),
    "short-hash": encode_frame(pack([2, 1, b"short"])),
    "bool-req": encode_frame(pack([4, True])),
    "trailing-bytes": encode_frame(m.encode(m.Data(1)) + b"\x00"),
    "second-hello": frame(HELLO_A),
    "control": frame(m.Control(1, "status")),
    "control-event": frame(m.ControlEvent(1, "result")),
    "body-on-bodyless": encode_frame(m.encode(m.GetManifest(1, H)), b"x"),
    "complete-have-with-bitfield": encode_frame(m.encode(m.Have(1, True)), b"\x80"),
    "oversized-body": PREFIX.pack(0, 2**32 - 1),
    "oversized-header": PREFIX.pack(2**32 - 1, 0),
}

tails = st.one_of(
    st.binary(max_size=300),
    st.lists(valid_frames(), max_size=3).map(b"".join),
    st.sampled_from(list(VIOLATIONS.values())),
)


@dataclass
class Run:
    events: list[Event]
    error: RemoteProtocolError | None


def read(session: Session, stream: bytes, data: st.DataObject) -> Run:
    """Feed ``stream`` in drawn pieces (copied in, or written into the session's buffer).

    Events are read after each piece, one ``next_event`` at a time, so none
    is lost when a later call raises.
    """
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(stream)), max_size=8), label="cuts")))
    got: list[Event] = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        piece = memoryview(stream)[a:b]
        if data.draw(st.booleans(), label="zero_copy"):
            read_size = data.draw(st.integers(1, 80 * KIB), label="read_size")
            read_size = max(read_size, len(piece) // 256)  # tiny reads, but not 70,000 of them
            while piece:
                buf = session.get_buffer(-1)
                n = min(len(buf), len(piece), read_size)
                buf[:n] = piece[:n]
                del buf
                session.buffer_updated(n)  # never raises, even for garbage
                piece = piece[n:]
        else:
            session.receive_data(piece)  # never raises, even for garbage
        try:
            while (event := session.next_event()) is not None:
                got.append(event)
        except RemoteProtocolError as err:
            return Run(got, err)
    return Run(got, None)


def assert_deaf(session: Session, data: st.DataObject) -> None:
    """Later bytes are dropped: nothing more reaches the codec, the sink stays small."""
    before = session.codec.bytes_received  # type: ignore[attr-defined]
    junk = data.draw(st.binary(min_size=1, max_size=40 * KIB) | tails, label="later")
    session.receive_data(junk)
    session.receive_data(frame(m.GetManifest(1, H)))
    assert session.codec.bytes_received == before  # type: ignore[attr-defined]
    assert len(session.get_buffer(-1)) <= SINK_SIZE
    assert session._sink is None or len(session._sink) == SINK_SIZE


# --- properties -----------------------------------------------------------------------------------


@FUZZ
@given(
    waiting=st.sets(ids, max_size=4).map(tuple),
    before=st.lists(valid_frames(), max_size=6),
    violation=st.sampled_from(sorted(VIOLATIONS)),
    after=tails,
    data=st.data(),
)
def test_a_violation_among_valid_frames_ends_the_session_right_there(
    waiting: tuple[int, ...], before: list[bytes], violation: str, after: bytes,
    data: st.DataObject,
) -> None:
    """Valid frames, then one violation, then anything: events stop exactly at the violation.

    The events are those the valid frames alone give (the codec reads ahead,
    but nothing after the bad frame may become an event, and nothing before
    it may be lost); then ``RemoteProtocolError``, again on every later call,
    the session ``BROKEN``; and bytes arriving later are not even buffered.
    """
    prefix = b"".join(before)
    expected = read(receiver(waiting), prefix, data)
    assert expected.error is None
    session = receiver(waiting)
    run = read(session, prefix + VIOLATIONS[violation] + after, data)
    assert run.events == expected.events
    assert run.error is not None
    if violation.startswith("oversized"):
        assert isinstance(run.error, FrameTooLarge)
    assert session.state is State.BROKEN
    with pytest.raises(RemoteProtocolError):
        session.next_event()
    assert_deaf(session, data)
    with pytest.raises(RemoteProtocolError):
        session.next_event()


@FUZZ
@given(
    waiting=st.sets(ids, max_size=4).map(tuple),
    before=st.lists(valid_frames(), max_size=6),
    reason=st.text(max_size=30),
    after=st.lists(tails, max_size=3).map(b"".join),
    data=st.data(),
)
def test_bye_mid_stream_ends_it_quietly_whatever_follows(
    waiting: tuple[int, ...], before: list[bytes], reason: str, after: bytes,
    data: st.DataObject,
) -> None:
    """After BYE nothing counts and nothing raises, even a violation in the same read.

    The peer is leaving: its requests and answers after BYE are not events,
    garbage after it is not a violation (it would be logged as one), and the
    session is ``CLOSED``, reading nothing more.
    """
    prefix = b"".join(before)
    expected = read(receiver(waiting), prefix, data)
    session = receiver(waiting)
    run = read(session, prefix + frame(m.Bye(reason)) + after, data)
    assert run.error is None
    assert run.events == [*expected.events, PeerLeaving(reason)]
    assert session.state is State.CLOSED
    assert session.next_event() is None
    assert_deaf(session, data)
    assert session.next_event() is None


def next_free(last: int, taken: set[int]) -> int:
    """The model: the first id after ``last`` (mod 2^32) that is not taken."""
    rid = (last + 1) % 2**32
    while rid in taken:
        rid = (rid + 1) % 2**32
    return rid


@FUZZ
@given(
    last=st.sampled_from([0, 1, 2**32 - 3, 2**32 - 2, 2**32 - 1]) | st.integers(0, 2**32 - 1),
    offsets=st.sets(st.integers(-3, 40), max_size=30),
    steps=st.lists(st.sampled_from(["ask", "ask", "answer", "stray"]), max_size=40),
    data=st.data(),
)
def test_request_ids_wrap_and_never_collide_with_outstanding_ones(
    last: int, offsets: set[int], steps: list[str], data: st.DataObject
) -> None:
    """``next_id`` skips every id in use, across the 2^32 wrap, as the model says.

    Ids in use are packed right after the counter (white box: ``_last_id``),
    as after four billion requests with some still unanswered.  Answers
    from the peer free exactly their id; answers to ids not outstanding
    (stray) are dropped without breaking the session.
    """
    session = receiver()
    taken = {(last + d) % 2**32 for d in offsets}
    for rid in sorted(taken):
        session.start_request(m.GetManifest(rid, H))
    session._last_id = last
    for step in steps:
        if step == "ask":
            rid = session.next_id()
            assert rid == next_free(last, taken)
            assert rid not in session.outstanding
            session.start_request(m.GetChunk(rid, H, 0, H))
            taken.add(rid)
            last = rid
        else:
            pool = sorted(taken) if step == "answer" and taken else [next_free(last, taken)]
            rid = data.draw(st.sampled_from(pool), label="answered")
            session.receive_data(frame(m.NotFound(rid)))
            got = events(session)
            assert got == ([Response(m.NotFound(rid), b"")] if rid in taken else [])
            taken.discard(rid)
        assert session.outstanding == taken
    assert session.state is State.OPEN


@FUZZ
@given(
    cap=st.integers(0, 6),
    steps=st.lists(st.sampled_from(["request", "request", "cancel", "done", "answer"]),
                   max_size=40),
)
def test_the_peer_request_cap_holds_under_any_interleaving(cap: int, steps: list[str]) -> None:
    """The peer may have ``cap`` requests unsettled, and the next one is a violation.

    Against a model counting requests handed out minus ``incoming_done``
    calls: CANCELs and answers do not count, and the violation comes exactly
    at the request that would exceed the cap, not before and not later.
    """
    session = receiver(max_incoming=cap)
    unsettled = 0
    for i, step in enumerate(steps):
        if step == "done":
            if unsettled:
                session.incoming_done()
                unsettled -= 1
            continue
        sent: dict[str, m.Message] = {
            "request": m.GetHave(i, H), "cancel": m.Cancel(i), "answer": m.Ok(i)
        }
        msg = sent[step]
        session.receive_data(frame(msg))
        if step == "request" and unsettled == cap:
            with pytest.raises(RemoteProtocolError, match="too many"):
                events(session)
            assert session.state is State.BROKEN
            return
        got = events(session)
        assert len(got) == (0 if step == "answer" else 1)
        unsettled += step == "request"
        assert session.incoming == unsettled


#: What the spec lets each message type carry as a body (PROTOCOL.md), judged at the header.
SPEC_BODY_LIMIT = {
    m.MsgType.DATA: MAX_CHUNK_SIZE,  # a chunk; a manifest only for our GET_MANIFEST
    m.MsgType.HAVE: MAX_CHUNKS // 8 + 1,
    m.MsgType.PUT_MANIFEST: 128 * MIB + KIB,
    m.MsgType.PUT_CHUNK: MAX_CHUNK_SIZE,
}
body_lens = st.sampled_from(sorted({
    1, 64 * KIB, 64 * KIB + 1, MAX_CHUNK_SIZE, MAX_CHUNK_SIZE + 1,
    MAX_CHUNKS // 8 + 1, MAX_CHUNKS // 8 + 2, 128 * MIB + KIB, 128 * MIB + KIB + 1,
    MAX_BODY_SIZE, MAX_BODY_SIZE + 1, 2**32 - 1,
}))


@FUZZ
@given(msg=st.one_of(*MESSAGE_STRATEGIES.values()), body_len=body_lens, asked=st.booleans())
def test_each_body_is_refused_at_its_header_when_its_type_may_not_carry_that_much(
    msg: m.Message, body_len: int, asked: bool
) -> None:
    """A frame's body is judged by its header alone, before one byte of it is buffered.

    Only DATA, HAVE, PUT_MANIFEST and PUT_CHUNK carry bodies, each up to its
    own limit; a DATA beyond a chunk only answers a GET_MANIFEST we sent.
    Refused: a ``RemoteProtocolError`` and no allocation; over the frame
    limit: ``FrameTooLarge``; admitted: a buffer of exactly the declared
    size once it is larger than the decoder's scratch threshold.
    """
    req = getattr(msg, "req", None)
    alloc = Alloc()
    session = receiver((req,) if asked and req is not None else (), alloc=alloc)
    header = m.encode(msg)
    session.receive_data(PREFIX.pack(len(header), body_len) + header)
    limit = SPEC_BODY_LIMIT.get(msg.TYPE, 0)
    if msg.TYPE is m.MsgType.DATA and asked:
        limit = MAX_BODY_SIZE
    if body_len > MAX_BODY_SIZE:
        with pytest.raises(FrameTooLarge):
            events(session)
    elif body_len > limit:
        with pytest.raises(RemoteProtocolError, match="body"):
            events(session)
    else:
        assert events(session) == []  # waiting for the body
        assert session.state is State.OPEN
        assert alloc.sizes == ([body_len] if body_len > 64 * KIB else [])
        return
    assert session.state is State.BROKEN
    assert alloc.sizes == []


@FUZZ
@given(header=st.binary(max_size=40), body_len=st.integers(1, 2**32 - 1), asked=st.booleans())
def test_no_header_bytes_get_a_body_past_the_limits(
    header: bytes, body_len: int, asked: bool
) -> None:
    """Arbitrary header bytes with a body: only protocol errors, never an oversized buffer.

    The header is judged before it is decoded (it may not decode at all), so
    the admission check itself must be safe on any bytes: it reads a type
    byte and maybe a request id from fixed offsets.
    """
    alloc = Alloc()
    session = receiver((1, 4) if asked else (), alloc=alloc)
    session.receive_data(PREFIX.pack(len(header), body_len) + header)
    try:
        events(session)
    except RemoteProtocolError:
        assert session.state is State.BROKEN
    assert all(n <= MAX_BODY_SIZE for n in alloc.sizes)
    assert all(n <= MAX_CHUNK_SIZE or asked for n in alloc.sizes)


# --- found by these fuzzers -----------------------------------------------------------------------


@pytest.mark.parametrize("handshake", [True, False], ids=["after-hello", "first-frame"])
def test_a_deeply_nested_field_breaks_the_session_cleanly(handshake: bool) -> None:
    """1 KiB of header, ``[4, [[[...]]]]``, must be a violation like any other.

    Session's contract: ``next_event`` raises ``RemoteProtocolError`` and the
    session is ``BROKEN``; "if next_event raises anything else, that is a bug
    here".  The transport only catches ``RemoteProtocolError``, so asyncio's
    ``buffer_updated`` guard logs a traceback and kills the connection.
    """
    if handshake:
        session = receiver()
    else:
        session = Session(HELLO_B, True)
        session.start()
    session.receive_data(encode_frame(b"\x92\x04" + b"\x91" * 1023 + b"\xc0"))
    with pytest.raises(RemoteProtocolError):
        events(session)
    assert session.state is State.BROKEN


def _answer_prefix(asked: Callable[[int], m.Message], body_len: int) -> tuple[Alloc, Session]:
    alloc = Alloc()
    session = receiver(alloc=alloc)
    session.start_request(asked(7))
    header = m.encode(m.Data(7))
    session.receive_data(PREFIX.pack(len(header), body_len) + header)
    return alloc, session


def test_a_manifest_sized_answer_to_a_manifest_request_is_admitted() -> None:
    """The documented exception: the answer to our GET_MANIFEST may be up to 128 MiB."""
    alloc, session = _answer_prefix(lambda r: m.GetManifest(r, H), 100 * MIB)
    assert events(session) == []
    assert alloc.sizes == [100 * MIB]


def test_a_manifest_sized_answer_to_a_chunk_request_is_refused() -> None:
    """The docstring: 'a DATA body larger than a chunk must answer ... (a manifest)'.

    The session keeps only the ids of outstanding requests, not their kinds,
    so a peer asked for one chunk may make us allocate (and then fill) 8x the
    largest chunk on each of its answers.
    """
    alloc, session = _answer_prefix(lambda r: m.GetChunk(r, H, 0, H), 100 * MIB)
    with pytest.raises(RemoteProtocolError):
        events(session)
    assert alloc.sizes == []
