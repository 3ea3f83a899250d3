"""Fuzzers for the message codec (dhtshare.core.messages.decode and encode).

``decode`` is the gate between a stranger's msgpack and every other module,
so it is fuzzed here against an *independent* reading of docs/PROTOCOL.md's
message table (:func:`spec_accepts`): for each message type, valid baselines
with one field swapped for a hostile value, wrong field counts, and bodies
where none may come.  ``decode`` must accept exactly what the spec accepts
and refuse everything else with :class:`RemoteProtocolError` only.  The
byte-level fuzzers of ``tests/unit/test_messages.py`` (random bytes, random
arrays, one-byte mutations) are not repeated; these add the differential
oracle, nested hostile lengths, and round trips through the frame layer.
"""

from __future__ import annotations

import random
import tracemalloc
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dhtshare.config import KIB, MAX_CHUNKS
from dhtshare.core.framing import FrameDecoder, encode_frame
from dhtshare.core.ids import HASH_LEN, NODE_ID_LEN
from dhtshare.core.messages import (
    MAX_HAVE_BATCH,
    MAX_MANIFEST_BODY,
    MAX_REPLICAS,
    MAX_REQ_ID,
    MAX_TEXT,
    Message,
    MsgType,
    decode,
    encode,
    payload,
)
from dhtshare.errors import RemoteProtocolError
from tests.unit.test_messages import MESSAGE_STRATEGIES

FUZZ = settings(max_examples=100, deadline=None, database=None, derandomize=True)

H = b"h" * HASH_LEN
NID = b"n" * NODE_ID_LEN


def pack(obj: Any) -> bytes:
    out: bytes = msgpack.packb(obj, use_bin_type=True)
    return out


# --- the spec, written out from docs/PROTOCOL.md (not from the code) ------------------------------


def is_int(v: Any, lo: int, hi: int) -> bool:
    """"Ints must not be booleans": an int, not a bool, within [lo, hi]."""
    return type(v) is int and lo <= v <= hi


def is_req(v: Any) -> bool:
    return is_int(v, 0, 2**32 - 1)


def is_hash(v: Any) -> bool:
    return type(v) is bytes and len(v) == 32


def is_text(v: Any) -> bool:
    return type(v) is str and len(v) <= 4096


def is_index(v: Any) -> bool:
    return is_int(v, 0, 4 * 1024 * 1024 - 1)


def is_str_map(v: Any) -> bool:
    return type(v) is dict and all(type(k) is str for k in v)


#: Per type, a check for each field in wire order (after the type).
SPEC: dict[int, list[Any]] = {
    1: [lambda v: is_int(v, 0, 65536), lambda v: type(v) is bytes and len(v) == 20,
        lambda v: is_int(v, 0, 65535), is_text],
    2: [is_req, is_hash],
    3: [is_req, is_hash, is_index, is_hash],
    4: [is_req],
    5: [is_req],
    6: [is_req, lambda v: is_int(v, 0, 65536), is_text],
    7: [is_req, is_hash],
    8: [is_req, lambda v: type(v) is bool, lambda v: type(v) is bool, lambda v: is_int(v, 0, 64)],
    9: [is_hash, lambda v: type(v) is list and len(v) <= 4096 and all(map(is_index, v))],
    10: [is_req],
    11: [is_req, is_hash, lambda v: is_int(v, 0, 64)],
    12: [is_req, is_hash, is_index, is_hash],
    13: [is_req],
    14: [is_text],
    32: [is_req, is_text, is_str_map],
    33: [is_req, is_text, is_str_map],
}
#: Types whose frame may carry a body, and the largest body each may carry here.
BODIES = {4: None, 8: 512 * KIB + 1, 11: 128 * 1024 * KIB + KIB, 12: None}


def has_ext(v: Any) -> bool:
    """Whether an ext value is anywhere in ``v`` (not part of the protocol's msgpack)."""
    if isinstance(v, msgpack.ExtType):
        return True
    if isinstance(v, list):
        return any(map(has_ext, v))
    if isinstance(v, dict):
        return any(has_ext(k) or has_ext(x) for k, x in v.items())
    return False


def spec_accepts(obj: Any, body: bytes) -> bool:
    """Whether the spec allows header ``obj`` (a decoded msgpack value) with ``body``."""
    if has_ext(obj):
        return False
    if type(obj) is not list or not obj or not is_int(obj[0], 0, 255) or obj[0] not in SPEC:
        return False
    checks, fields = SPEC[obj[0]], obj[1:]
    if len(fields) != len(checks) or not all(c(v) for c, v in zip(checks, fields, strict=True)):
        return False
    if body:
        if obj[0] not in BODIES:
            return False
        limit = BODIES[obj[0]]
        if limit is not None and len(body) > limit:
            return False
        if obj[0] == 8 and fields[1]:  # a complete HAVE has no bitfield
            return False
    return True


def test_the_spec_table_names_every_message_type() -> None:
    """The oracle is only as good as its coverage: one entry per MsgType, same body limits."""
    assert set(SPEC) == {int(t) for t in MsgType}
    assert BODIES[8] == MAX_CHUNKS // 8 + 1
    assert BODIES[11] == MAX_MANIFEST_BODY
    assert (MAX_REQ_ID, MAX_TEXT, MAX_HAVE_BATCH, MAX_REPLICAS) == (2**32 - 1, 4096, 4096, 64)


# --- strategies -----------------------------------------------------------------------------------

BASELINES: dict[int, list[Any]] = {
    1: [1, NID, 4000, "agent"],
    2: [1, H],
    3: [1, H, 0, H],
    4: [1],
    5: [1],
    6: [1, 1, "oops"],
    7: [1, H],
    8: [1, False, False, 0],
    9: [H, [0, 1]],
    10: [1],
    11: [1, H, 2],
    12: [1, H, 0, H],
    13: [1],
    14: ["bye"],
    32: [1, "status", {"k": 1}],
    33: [1, "result", {"k": 1}],
}

_edge_ints = st.sampled_from(
    [0, 1, -1, 63, 64, 65, 255, 256, 65535, 65536, 65537, MAX_CHUNKS - 1, MAX_CHUNKS,
     2**31, MAX_REQ_ID, MAX_REQ_ID + 1, 2**63 - 1, 2**64 - 1, -(2**63)]
)
_edge_bytes = st.sampled_from([b"", b"x" * 19, NID, b"x" * 21, b"h" * 31, H, b"h" * 33])
_edge_texts = st.sampled_from(["", "x" * 4096, "x" * 4097, "é" * 4096, "é" * 4097, "\0", "../x"])
scalars = (
    st.none()
    | st.booleans()
    | _edge_ints
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=True)
    | _edge_bytes
    | st.binary(max_size=40)
    | _edge_texts
    | st.text(max_size=20)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8))
    # HAVE_UPDATE's batch limit, at and past it (prebuilt: drawing 4096 items is slow).
    | st.sampled_from([list(range(MAX_HAVE_BATCH)), [0] * (MAX_HAVE_BATCH + 1),
                       [*range(MAX_HAVE_BATCH - 1), MAX_CHUNKS]])
)
#: Nested values; keys as msgpack allows them under strict_map_key (str or bytes).
hostile = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.text(max_size=6) | st.binary(max_size=4), inner, max_size=4)
    ),
    max_leaves=10,
)
#: The same value as another type: what a sloppy encoder (or a probe) sends.
confusions = st.sampled_from(
    [True, False, 1.0, 0.0, "1", b"\x01", None, [], {}, [1], {"": 1}, 2**64 - 1, -1]
)
type_codes = st.sampled_from(sorted(SPEC))
#: Mostly no body (most messages take none), sometimes a short one.
bodies = st.one_of(st.just(b""), st.just(b""), st.just(b""), st.binary(min_size=1, max_size=40))
#: Every value some message allows somewhere: plausible, and often legal in place.
legal = st.sampled_from([v for fields in BASELINES.values() for v in fields])


def _decode_or_none(header: bytes, body: bytes = b"") -> Message | None:
    try:
        return decode(header, body)
    except RemoteProtocolError:
        return None


def _check_against_spec(obj: list[Any], body: bytes) -> None:
    header = pack(obj)
    msg = _decode_or_none(header, body)
    assert (msg is not None) == spec_accepts(msgpack.unpackb(header, raw=False), body), obj
    if msg is not None:
        assert int(msg.TYPE) == obj[0]
        # What decode accepts encodes back to the same header (one encoding per message),
        # compared as bytes: a NaN in a control map is not equal to itself.
        assert encode(msg) == header
        assert encode(decode(encode(msg), payload(msg))) == header


# --- properties -----------------------------------------------------------------------------------


@FUZZ
@given(mtype=type_codes, data=st.data())
def test_one_hostile_field_is_accepted_exactly_when_the_spec_allows_it(
    mtype: int, data: st.DataObject
) -> None:
    """A valid message with one field replaced: decoded iff the field is legal, else refused.

    Each field's type and range is checked before the message exists, so no
    module past ``decode`` ever sees a 33-byte hash, a bool where an int
    goes, or a 5000-character reason.  The oracle is PROTOCOL.md's table.
    """
    fields = list(BASELINES[mtype])
    pos = data.draw(st.integers(0, len(fields) - 1), label="pos")
    fields[pos] = data.draw(legal | confusions | _edge_ints | _edge_bytes | _edge_texts | hostile,
                            label="value")
    body = data.draw(bodies, label="body")
    _check_against_spec([mtype, *fields], body)


SWEEP = sorted(
    {repr(v): v for v in [
        True, False, 1.0, 0.0, "1", b"\x01", None, [], {}, [1], {"": 1}, msgpack.ExtType(1, b""),
        0, 1, -1, 63, 64, 65, 65535, 65536, 65537, MAX_CHUNKS - 1, MAX_CHUNKS, MAX_REQ_ID,
        MAX_REQ_ID + 1, 2**63, 2**64 - 1, -(2**63), b"", NID, b"x" * 21, b"h" * 31, H, b"h" * 33,
        "", "x" * 4096, "x" * 4097, "é" * 4097, H.decode(), [0] * (MAX_HAVE_BATCH + 1),
        list(range(MAX_HAVE_BATCH)), [MAX_CHUNKS], [True], {"k": 1}, {b"k": 1},
    ]}.items()
)


def test_every_field_against_every_confusion_and_edge_value() -> None:
    """A sweep, not a sample: each field of each type, set to each value of :data:`SWEEP`.

    Random draws put a bool or a 4097-character text in a given field only
    now and then; this visits every (field, value) pair, about 1,500
    decodes, in well under a second.
    """
    for mtype, baseline in BASELINES.items():
        for pos in range(len(baseline)):
            for _, value in SWEEP:
                fields = list(baseline)
                fields[pos] = value
                _check_against_spec([mtype, *fields], b"")


@FUZZ
@given(donor=type_codes, data=st.data())
def test_wrong_field_counts_and_types_are_refused_as_the_spec_says(
    donor: int, data: st.DataObject
) -> None:
    """Any type code with some type's fields, cut short, run long or shuffled.

    The wrong arity, an unknown type or a field of another message's kind is
    a protocol violation; taking the fields from real messages makes
    plausible-looking headers (a HELLO with GET_CHUNK's fields, a DATA with
    two request ids).
    """
    mtype = data.draw(st.just(donor) | type_codes | st.integers(-300, 300) | scalars, label="t")
    fields = list(BASELINES[donor]) + data.draw(st.lists(legal | hostile, max_size=3))
    n = data.draw(st.integers(0, len(fields)) | st.just(len(BASELINES[donor])), label="n")
    fields = fields[:n]
    if data.draw(st.booleans(), label="shuffle"):
        fields = data.draw(st.permutations(fields), label="order")
    body = data.draw(bodies, label="body")
    _check_against_spec([mtype, *fields], body)


@FUZZ
@given(
    mtype=type_codes,
    size=st.sampled_from([1, 100, 512 * KIB, 512 * KIB + 1, 512 * KIB + 2]),
    complete=st.booleans(),
)
def test_bodies_are_accepted_only_where_and_as_large_as_the_spec_allows(
    mtype: int, size: int, complete: bool
) -> None:
    """A body on a bodyless message, a bitfield on a complete HAVE, an oversized bitfield.

    ``decode`` is the last check before a HAVE's bitfield is kept.
    """
    fields = list(BASELINES[mtype])
    if mtype == 8:
        fields[1] = complete
    _check_against_spec([mtype, *fields], bytes(size))


HOSTILE_HEADS = [
    b"\xdd\xff\xff\xff\xff",  # array32 of 4 Gi elements
    b"\xdf\xff\xff\xff\xff",  # map32 of 4 Gi pairs
    b"\xdb\xff\xff\xff\xff",  # str32 of 4 GiB
    b"\xc6\xff\xff\xff\xff",  # bin32 of 4 GiB
    b"\xc9\xff\xff\xff\xff\x01",  # ext32 of 4 GiB
    b"\xdc\xff\xff",  # array16 of 65535
    b"\xc5\xff\xff",  # bin16 of 65535
]


@FUZZ
@given(
    mtype=type_codes,
    head=st.sampled_from(HOSTILE_HEADS),
    filler=st.binary(max_size=64),
    data=st.data(),
)
def test_huge_declared_lengths_inside_a_message_allocate_nothing(
    mtype: int, head: bytes, filler: bytes, data: st.DataObject
) -> None:
    """A field announcing gigabytes is refused without allocating for it.

    The header is a valid message cut after some of its fields, then a
    container head announcing up to 4 Gi elements and a little filler: a
    decoder that trusted the declared length would allocate it up front.
    """
    fields = BASELINES[mtype]
    keep = data.draw(st.integers(0, len(fields) - 1), label="keep")
    head_byte = bytes([0x90 | (len(fields) + 1)])
    header = head_byte + b"".join(pack(v) for v in [mtype, *fields[:keep]]) + head + filler
    tracemalloc.start()
    try:
        with pytest.raises(RemoteProtocolError):
            decode(header)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * KIB, f"refusing a {len(header)}-byte header took {peak} bytes"


@FUZZ
@given(msgs=st.lists(st.one_of(*MESSAGE_STRATEGIES.values()), max_size=8), data=st.data())
def test_messages_round_trip_through_frames_cut_anywhere(
    msgs: list[Message], data: st.DataObject
) -> None:
    """encode, frame, cut the stream anywhere, unframe, decode: the same messages.

    This is the whole receive path minus the socket; DATA and PUT_CHUNK carry
    raw bodies next to their header (here random bytes, some above the
    decoder's 64 KiB scratch threshold) that must come back untouched.
    """
    wire, expected = [], []
    for i, msg in enumerate(msgs):
        body = payload(msg)
        if int(msg.TYPE) in (4, 12):
            body = random.Random(i).randbytes(data.draw(st.sampled_from([0, 5, 70 * KIB])))
        wire.append(encode_frame(encode(msg), body))
        expected.append((msg, body))
    stream = b"".join(wire)
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(stream)), max_size=10))))
    dec = FrameDecoder()
    got = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        dec.feed(stream[a:b])
        got += [(decode(f.header, f.body), bytes(f.body)) for f in dec.frames()]
    assert got == expected
    for msg in msgs:
        assert encode(decode(encode(msg), payload(msg))) == encode(msg)


# --- found by these fuzzers -----------------------------------------------------------------------


def nested(depth: int) -> bytes:
    """msgpack for ``[[[...[nil]...]]]``, ``depth`` arrays deep (msgpack allows 1024)."""
    return b"\x91" * depth + b"\xc0"


@FUZZ
@given(mtype=type_codes, depth=st.integers(1, 400), data=st.data())
def test_moderately_nested_fields_are_refused(mtype: int, depth: int, data: st.DataObject) -> None:
    """Nesting that stays well below the interpreter's recursion limit is refused cleanly.

    The deep case (about 1000 levels) is the test below.
    """
    fields = [pack(v) for v in BASELINES[mtype]]
    pos = data.draw(st.integers(0, len(fields) - 1), label="pos")
    fields[pos] = nested(depth)
    header = bytes([0x90 | (len(fields) + 1)]) + pack(mtype) + b"".join(fields)
    assert _decode_or_none(header) is None or spec_accepts(msgpack.unpackb(header), b"")


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (b"\x91", b""),
        (b"\x92\x04", b""),
        (b"\x95\x01\x01\xc4\x14" + NID, b"\xa1a"),
        (b"\x95\x03\x01\xc4\x20" + H, b"\xc4\x20" + H),
    ],
    ids=["type", "DATA-req", "HELLO-port", "GET_CHUNK-index"],
)
def test_a_deeply_nested_int_field_is_a_protocol_error(before: bytes, after: bytes) -> None:
    """A 1023-deep array where an int goes (1 KiB of header) must be a RemoteProtocolError.

    Reachable from any stranger before HELLO: the session lets it escape
    ``next_event`` (see test_fuzz_session.py), and the transport's
    ``buffer_updated`` then fails with a traceback instead of a clean abort.
    """
    with pytest.raises(RemoteProtocolError):
        decode(before + nested(1023) + after)
