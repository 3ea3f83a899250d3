"""Unit and property tests for the wire messages (dhtshare.core.messages)."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dhtshare.config import MAX_CHUNKS
from dhtshare.core.bitfield import bitfield_from_indices, indices_from_bitfield
from dhtshare.core.framing import FrameDecoder, encode_frame
from dhtshare.core.ids import HASH_LEN, NODE_ID_LEN
from dhtshare.core.messages import (
    MAX_HAVE_BATCH,
    MAX_REPLICAS,
    MAX_REQ_ID,
    MAX_TEXT,
    Bye,
    Cancel,
    Control,
    ControlEvent,
    Data,
    Error,
    ErrorCode,
    GetChunk,
    GetHave,
    GetManifest,
    Have,
    HaveUpdate,
    Hello,
    Message,
    MsgType,
    NotFound,
    Ok,
    PutChunk,
    PutManifest,
    decode,
    encode,
    payload,
)
from dhtshare.errors import RemoteProtocolError

FUZZ = settings(max_examples=200, deadline=None, database=None)

H = b"h" * HASH_LEN
NID = b"n" * NODE_ID_LEN


def _pack(obj: Any) -> bytes:
    out: bytes = msgpack.packb(obj, use_bin_type=True)
    return out


# --- strategies -----------------------------------------------------------------------

reqs = st.integers(0, MAX_REQ_ID)
hashes = st.binary(min_size=HASH_LEN, max_size=HASH_LEN)
texts = st.text(max_size=64) | st.sampled_from(["", "x" * MAX_TEXT, "é☃" * (MAX_TEXT // 2)])
indices = st.integers(0, MAX_CHUNKS - 1)

# Anything msgpack round-trips to an equal value (no NaN: it is not equal to itself).
msgpack_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
msgpack_values = st.recursive(
    msgpack_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
str_maps = st.dictionaries(st.text(max_size=12), msgpack_values, max_size=6)

MESSAGE_STRATEGIES: dict[MsgType, st.SearchStrategy[Message]] = {
    MsgType.HELLO: st.builds(
        Hello,
        version=st.integers(0, 2**16),
        node_id=st.binary(min_size=NODE_ID_LEN, max_size=NODE_ID_LEN),
        listen_port=st.integers(0, 65535),
        agent=texts,
    ),
    MsgType.GET_MANIFEST: st.builds(GetManifest, req=reqs, manifest=hashes),
    MsgType.GET_CHUNK: st.builds(GetChunk, req=reqs, manifest=hashes, index=indices, chunk=hashes),
    MsgType.DATA: st.builds(Data, req=reqs),
    MsgType.NOT_FOUND: st.builds(NotFound, req=reqs),
    MsgType.ERROR: st.builds(
        Error,
        req=reqs,
        code=st.sampled_from(list(ErrorCode)) | st.integers(0, 2**16),
        message=texts,
    ),
    MsgType.GET_HAVE: st.builds(GetHave, req=reqs, manifest=hashes),
    MsgType.HAVE: st.builds(
        Have, req=reqs, complete=st.just(True), durable=st.booleans(),
        replicas=st.integers(0, MAX_REPLICAS),
    )
    | st.builds(
        Have,
        req=reqs,
        complete=st.just(False),
        bitfield=st.binary(max_size=200) | st.just(b"\xff" * (MAX_CHUNKS // 8)),
        durable=st.booleans(),
        replicas=st.integers(0, MAX_REPLICAS),
    ),
    MsgType.PUT_MANIFEST: st.builds(
        PutManifest, req=reqs, manifest=hashes, replicas=st.integers(0, MAX_REPLICAS),
        body=st.binary(max_size=300),
    ),
    MsgType.PUT_CHUNK: st.builds(PutChunk, req=reqs, manifest=hashes, index=indices, chunk=hashes),
    MsgType.OK: st.builds(Ok, req=reqs),
    MsgType.HAVE_UPDATE: st.builds(
        HaveUpdate,
        manifest=hashes,
        indices=st.lists(indices, max_size=50).map(tuple) | st.just(tuple(range(MAX_HAVE_BATCH))),
    ),
    MsgType.CANCEL: st.builds(Cancel, req=reqs),
    MsgType.BYE: st.builds(Bye, reason=texts),
    MsgType.CONTROL: st.builds(Control, req=reqs, op=texts, args=str_maps),
    MsgType.CONTROL_EVENT: st.builds(ControlEvent, req=reqs, kind=texts, data=str_maps),
}
any_message = st.one_of(*MESSAGE_STRATEGIES.values())


def test_every_message_type_has_a_strategy() -> None:
    assert set(MESSAGE_STRATEGIES) == set(MsgType)


# --- round trips ----------------------------------------------------------------------


@pytest.mark.parametrize("mtype", list(MsgType), ids=lambda t: t.name)
@settings(FUZZ, max_examples=100)
@given(data=st.data())
def test_round_trip(mtype: MsgType, data: st.DataObject) -> None:
    msg = data.draw(MESSAGE_STRATEGIES[mtype], label="msg")
    assert msg.TYPE is mtype
    header = encode(msg)
    assert isinstance(header, bytes)
    assert msgpack.unpackb(header)[0] == int(mtype)
    body = payload(msg)
    assert isinstance(body, bytes)
    if not isinstance(msg, Have | PutManifest):
        assert body == b""
    back = decode(header, body)
    assert type(back) is type(msg)
    assert back == msg
    assert decode(bytearray(header), bytearray(body)) == msg
    if isinstance(msg, Have):
        assert len(header) < 18  # the bitfield never inflates the header


@pytest.mark.parametrize(
    "msg",
    [
        Hello(1, NID, 4000),
        GetManifest(0, H),
        GetChunk(MAX_REQ_ID, H, 0, H),
        Data(1),
        NotFound(2),
        Error(3, ErrorCode.BUSY, "busy"),
        GetHave(4, H),
        Have(5, True),
        Have(5, False, b"\x80"),
        HaveUpdate(H, ()),
        Cancel(6),
        PutManifest(9, H, 3, b"manifest bytes"),
        PutChunk(10, H, 7, H),
        Ok(11),
        Control(7, "status"),
        ControlEvent(8, "progress", {"done": 1, "total": 2, "nested": {"a": [1, b"x"]}}),
    ],
    ids=lambda m: type(m).__name__,
)
def test_round_trip_examples(msg: Message) -> None:
    assert decode(encode(msg), payload(msg)) == msg


def test_have_bitfield_travels_as_body() -> None:
    msg = Have(5, False, b"\x80\x01")
    assert payload(msg) == b"\x80\x01"
    assert msgpack.unpackb(encode(msg)) == [int(MsgType.HAVE), 5, False, False, 0]
    assert decode(encode(msg)) == Have(5, False, b"")
    assert payload(Have(5, True)) == b""


def test_data_body_is_left_to_the_caller() -> None:
    # DATA's payload is a chunk or manifest: accepted next to the header, not parsed.
    assert decode(encode(Data(9)), b"chunk bytes") == Data(9)
    assert payload(Data(9)) == b""


def test_error_text_is_truncated_on_encode() -> None:
    msg = decode(encode(Error(1, ErrorCode.INTERNAL, "x" * (MAX_TEXT + 100))))
    assert msg == Error(1, ErrorCode.INTERNAL, "x" * MAX_TEXT)


# --- rejection ------------------------------------------------------------------------

GARBAGE = [
    b"",
    b"\xc1",  # the one byte msgpack never uses
    b"\x91",  # array of one, nothing follows
    b"\x92\x04",  # truncated
    _pack([4, 1]) + b"\x00",  # trailing bytes
    b"\x92\x06\xa1\xff",  # invalid UTF-8 in a str
    b"\xd4\x01\x00",  # ext type
    b"\xd6\xff\x00\x00\x00\x00",  # timestamp ext
    b"\xdd\xff\xff\xff\xff",  # array announcing 4 Gi elements
    b"\xc6\xff\xff\xff\xff",  # bin announcing 4 GiB
    _pack({1: 2}),  # integer map key
    b"\x91" * 100_000,  # absurdly deep nesting
]


@pytest.mark.parametrize("header", GARBAGE)
def test_garbage_rejected(header: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode(header)


@pytest.mark.parametrize("obj", [1, "x", b"x", None, True, 1.5, {}, {"t": 4}, []])
def test_non_array_or_empty_rejected(obj: Any) -> None:
    with pytest.raises(RemoteProtocolError):
        decode(_pack(obj))


@pytest.mark.parametrize(
    "code", [0, 11, 31, 34, 99, 255, 256, -1, 2**64 - 1, "x", "1", b"\x01", 1.0, True, None, [1]]
)
def test_unknown_type_rejected(code: Any) -> None:
    with pytest.raises(RemoteProtocolError):
        decode(_pack([code, 1]))
    with pytest.raises(RemoteProtocolError):
        decode(_pack([code]))


VALID = {
    MsgType.HELLO: [1, NID, 4000, "agent"],
    MsgType.GET_MANIFEST: [1, H],
    MsgType.GET_CHUNK: [1, H, 0, H],
    MsgType.DATA: [1],
    MsgType.NOT_FOUND: [1],
    MsgType.ERROR: [1, 1, "oops"],
    MsgType.GET_HAVE: [1, H],
    MsgType.HAVE: [1, False, False, 0],
    MsgType.PUT_MANIFEST: [1, H, 2],
    MsgType.PUT_CHUNK: [1, H, 0, H],
    MsgType.OK: [1],
    MsgType.HAVE_UPDATE: [H, [0, 1]],
    MsgType.CANCEL: [1],
    MsgType.BYE: ["shutting down"],
    MsgType.CONTROL: [1, "op", {"k": 1}],
    MsgType.CONTROL_EVENT: [1, "kind", {"k": 1}],
}


def test_valid_baseline_decodes() -> None:
    assert set(VALID) == set(MsgType)
    for mtype, fields in VALID.items():
        assert decode(_pack([int(mtype), *fields])).TYPE is mtype


@pytest.mark.parametrize("mtype", list(MsgType), ids=lambda t: t.name)
def test_wrong_arity_rejected(mtype: MsgType) -> None:
    fields = VALID[mtype]
    for bad in (fields[:-1], [*fields, None], [*fields, *fields], []):
        with pytest.raises(RemoteProtocolError):
            decode(_pack([int(mtype), *bad]))


def _with(mtype: MsgType, pos: int, value: Any) -> list[Any]:
    fields = list(VALID[mtype])
    fields[pos] = value
    return [int(mtype), *fields]


BAD_REQS = [True, False, -1, MAX_REQ_ID + 1, 2**64 - 1, 1.0, "1", b"\x01", None, [1], {}]
BAD_HASHES = [b"h" * 31, b"h" * 33, b"", "h" * 32, None, 0, [0] * 32, True]
REQ_FIRST = [
    MsgType.GET_MANIFEST,
    MsgType.GET_CHUNK,
    MsgType.DATA,
    MsgType.NOT_FOUND,
    MsgType.ERROR,
    MsgType.GET_HAVE,
    MsgType.HAVE,
    MsgType.CANCEL,
    MsgType.CONTROL,
    MsgType.CONTROL_EVENT,
]

BAD_FIELDS: list[tuple[str, list[Any]]] = [
    *((f"{t.name}-req-{v!r}", _with(t, 0, v)) for t in REQ_FIRST for v in BAD_REQS),
    *((f"GET_MANIFEST-hash-{v!r}", _with(MsgType.GET_MANIFEST, 1, v)) for v in BAD_HASHES),
    *((f"GET_HAVE-hash-{v!r}", _with(MsgType.GET_HAVE, 1, v)) for v in BAD_HASHES),
    *((f"GET_CHUNK-manifest-{v!r}", _with(MsgType.GET_CHUNK, 1, v)) for v in BAD_HASHES),
    *((f"GET_CHUNK-chunk-{v!r}", _with(MsgType.GET_CHUNK, 3, v)) for v in BAD_HASHES),
    *((f"HAVE_UPDATE-hash-{v!r}", _with(MsgType.HAVE_UPDATE, 0, v)) for v in BAD_HASHES),
    *(
        (f"GET_CHUNK-index-{v!r}", _with(MsgType.GET_CHUNK, 2, v))
        for v in [True, -1, MAX_CHUNKS, MAX_CHUNKS + 1, 2**64 - 1, 0.0, "0", None]
    ),
    # HELLO
    ("HELLO-version-bool", _with(MsgType.HELLO, 0, True)),
    ("HELLO-version-neg", _with(MsgType.HELLO, 0, -1)),
    ("HELLO-version-big", _with(MsgType.HELLO, 0, 2**16 + 1)),
    ("HELLO-version-str", _with(MsgType.HELLO, 0, "1")),
    ("HELLO-node-str", _with(MsgType.HELLO, 1, "n" * NODE_ID_LEN)),
    ("HELLO-node-short", _with(MsgType.HELLO, 1, b"n" * (NODE_ID_LEN - 1))),
    ("HELLO-node-long", _with(MsgType.HELLO, 1, b"n" * (NODE_ID_LEN + 1))),
    ("HELLO-node-hash", _with(MsgType.HELLO, 1, H)),
    ("HELLO-port-bool", _with(MsgType.HELLO, 2, True)),
    ("HELLO-port-neg", _with(MsgType.HELLO, 2, -1)),
    ("HELLO-port-big", _with(MsgType.HELLO, 2, 65536)),
    ("HELLO-port-float", _with(MsgType.HELLO, 2, 4000.0)),
    ("HELLO-agent-bytes", _with(MsgType.HELLO, 3, b"agent")),
    ("HELLO-agent-long", _with(MsgType.HELLO, 3, "a" * (MAX_TEXT + 1))),
    ("HELLO-agent-none", _with(MsgType.HELLO, 3, None)),
    # ERROR
    ("ERROR-code-bool", _with(MsgType.ERROR, 1, True)),
    ("ERROR-code-neg", _with(MsgType.ERROR, 1, -1)),
    ("ERROR-code-big", _with(MsgType.ERROR, 1, 2**16 + 1)),
    ("ERROR-code-str", _with(MsgType.ERROR, 1, "1")),
    ("ERROR-text-bytes", _with(MsgType.ERROR, 2, b"oops")),
    ("ERROR-text-long", _with(MsgType.ERROR, 2, "x" * (MAX_TEXT + 1))),
    # HAVE
    ("HAVE-complete-int", _with(MsgType.HAVE, 1, 1)),
    ("HAVE-complete-zero", _with(MsgType.HAVE, 1, 0)),
    ("HAVE-complete-none", _with(MsgType.HAVE, 1, None)),
    ("HAVE-bitfield-in-header", [int(MsgType.HAVE), 1, False, b"\x00"]),
    # HAVE_UPDATE
    ("HAVE_UPDATE-too-many", _with(MsgType.HAVE_UPDATE, 1, [0] * (MAX_HAVE_BATCH + 1))),
    ("HAVE_UPDATE-not-list-bytes", _with(MsgType.HAVE_UPDATE, 1, b"\x00\x01")),
    ("HAVE_UPDATE-not-list-map", _with(MsgType.HAVE_UPDATE, 1, {"0": 0})),
    ("HAVE_UPDATE-not-list-int", _with(MsgType.HAVE_UPDATE, 1, 3)),
    ("HAVE_UPDATE-bool-index", _with(MsgType.HAVE_UPDATE, 1, [0, True])),
    ("HAVE_UPDATE-neg-index", _with(MsgType.HAVE_UPDATE, 1, [-1])),
    ("HAVE_UPDATE-big-index", _with(MsgType.HAVE_UPDATE, 1, [MAX_CHUNKS + 1])),
    ("HAVE_UPDATE-index-max-chunks", _with(MsgType.HAVE_UPDATE, 1, [0, MAX_CHUNKS])),
    ("HAVE_UPDATE-str-index", _with(MsgType.HAVE_UPDATE, 1, ["0"])),
    ("HAVE_UPDATE-float-index", _with(MsgType.HAVE_UPDATE, 1, [0.0])),
    # CONTROL / CONTROL_EVENT
    ("CONTROL-op-bytes", _with(MsgType.CONTROL, 1, b"op")),
    ("CONTROL-op-long", _with(MsgType.CONTROL, 1, "o" * (MAX_TEXT + 1))),
    ("CONTROL-args-list", _with(MsgType.CONTROL, 2, [])),
    ("CONTROL-args-none", _with(MsgType.CONTROL, 2, None)),
    ("CONTROL-args-bytes-key", _with(MsgType.CONTROL, 2, {b"k": 1})),
    ("CONTROL_EVENT-kind-int", _with(MsgType.CONTROL_EVENT, 1, 1)),
    ("CONTROL_EVENT-data-str", _with(MsgType.CONTROL_EVENT, 2, "data")),
    ("CONTROL_EVENT-data-bytes-key", _with(MsgType.CONTROL_EVENT, 2, {"ok": 1, b"k": 1})),
]


@pytest.mark.parametrize("obj", [obj for _, obj in BAD_FIELDS], ids=[i for i, _ in BAD_FIELDS])
def test_wrong_field_rejected(obj: list[Any]) -> None:
    with pytest.raises(RemoteProtocolError):
        decode(_pack(obj))


def test_field_limits_are_inclusive() -> None:
    assert decode(_pack(_with(MsgType.DATA, 0, MAX_REQ_ID))) == Data(MAX_REQ_ID)
    assert decode(_pack(_with(MsgType.DATA, 0, 0))) == Data(0)
    assert decode(_pack(_with(MsgType.HELLO, 2, 65535))) == Hello(1, NID, 65535, "agent")
    assert decode(_pack(_with(MsgType.ERROR, 2, "x" * MAX_TEXT))) == Error(1, 1, "x" * MAX_TEXT)
    big_batch = list(range(MAX_HAVE_BATCH))
    assert decode(_pack(_with(MsgType.HAVE_UPDATE, 1, big_batch))) == HaveUpdate(
        H, tuple(big_batch)
    )


def test_highest_chunk_index_accepted() -> None:
    last = MAX_CHUNKS - 1
    assert decode(_pack(_with(MsgType.GET_CHUNK, 2, last))) == GetChunk(1, H, last, H)
    assert decode(_pack(_with(MsgType.HAVE_UPDATE, 1, [last]))) == HaveUpdate(H, (last,))


@pytest.mark.parametrize("body", [b"\x00", b"\xff" * 10])
@pytest.mark.parametrize(
    "mtype",
    [t for t in MsgType if t not in (MsgType.DATA, MsgType.HAVE, MsgType.PUT_MANIFEST,
                                     MsgType.PUT_CHUNK)],
    ids=lambda t: t.name,
)
def test_unexpected_body_rejected(mtype: MsgType, body: bytes) -> None:
    header = _pack([int(mtype), *VALID[mtype]])
    decode(header)  # fine without a body
    with pytest.raises(RemoteProtocolError):
        decode(header, body)


def test_complete_have_with_bitfield_rejected() -> None:
    with pytest.raises(RemoteProtocolError):
        decode(encode(Have(1, True)), b"\x80")


def test_oversized_have_bitfield_rejected() -> None:
    header = encode(Have(1, False))
    assert decode(header, bytes(MAX_CHUNKS // 8 + 1)) == Have(1, False, bytes(MAX_CHUNKS // 8 + 1))
    with pytest.raises(RemoteProtocolError):
        decode(header, bytes(MAX_CHUNKS // 8 + 2))


@pytest.mark.parametrize("n_chunks", [524_000, 524_288, MAX_CHUNKS])
def test_have_for_large_manifest_fits_in_a_frame(n_chunks: int) -> None:
    # Regression: the bitfield used to ride in the msgpack header, which framing
    # caps at 64 KiB, so a HAVE for more than ~524,200 chunks could not be sent.
    msg = Have(MAX_REQ_ID, False, bitfield_from_indices(n_chunks, [0, n_chunks - 1]))
    dec = FrameDecoder()
    dec.feed(encode_frame(encode(msg), payload(msg)))
    frame = dec.next_frame()
    assert frame is not None
    back = decode(frame.header, frame.body)
    assert back == msg
    assert isinstance(back, Have)
    assert indices_from_bitfield(n_chunks, back.bitfield) == [0, n_chunks - 1]


# --- fuzzing --------------------------------------------------------------------------

_type_codes = st.sampled_from([int(t) for t in MsgType]) | st.integers(-300, 300) | msgpack_scalars
_field_values = msgpack_values | st.sampled_from(
    [0, 1, -1, 2**16, 65535, 65536, MAX_REQ_ID, MAX_REQ_ID + 1, MAX_CHUNKS, H, NID, b"h" * 31, "x"]
)
message_like = st.builds(
    lambda t, fields: [t, *fields], _type_codes, st.lists(_field_values, max_size=5)
)


def _decode_or_reject(header: bytes, body: bytes = b"") -> Message | None:
    try:
        return decode(header, body)
    except RemoteProtocolError:
        return None


@FUZZ
@given(obj=message_like | msgpack_values)
def test_arbitrary_msgpack_only_raises_remote_protocol_error(obj: Any) -> None:
    msg = _decode_or_reject(_pack(obj))
    if msg is not None:
        # Whatever decode accepts is a well-formed message that survives a round trip.
        assert decode(encode(msg), payload(msg)) == msg


@FUZZ
@given(obj=message_like, body=st.binary(max_size=20))
def test_arbitrary_msgpack_with_body_only_raises_remote_protocol_error(
    obj: Any, body: bytes
) -> None:
    msg = _decode_or_reject(_pack(obj), body)
    if msg is not None:
        assert decode(encode(msg), payload(msg)) == msg


@FUZZ
@given(header=st.binary(max_size=200))
def test_arbitrary_bytes_only_raise_remote_protocol_error(header: bytes) -> None:
    msg = _decode_or_reject(header)
    if msg is not None:
        assert decode(encode(msg), payload(msg)) == msg


@FUZZ
@given(msg=any_message, data=st.data())
def test_mutated_messages_only_raise_remote_protocol_error(
    msg: Message, data: st.DataObject
) -> None:
    header = bytearray(encode(msg))
    pos = data.draw(st.integers(0, len(header) - 1), label="pos")
    header[pos] = data.draw(st.integers(0, 255), label="byte")
    cut = data.draw(st.integers(0, len(header)), label="cut")
    _decode_or_reject(bytes(header))
    _decode_or_reject(bytes(header[:cut]))


# --- bitfields ------------------------------------------------------------------------


def test_bitfield_layout_is_msb_first() -> None:
    assert bitfield_from_indices(8, [0]) == b"\x80"
    assert bitfield_from_indices(8, [7]) == b"\x01"
    assert bitfield_from_indices(9, [0, 8]) == b"\x80\x80"
    assert bitfield_from_indices(0, []) == b""
    assert bitfield_from_indices(17, range(17)) == b"\xff\xff\x80"
    assert indices_from_bitfield(9, b"\x80\x80") == [0, 8]
    assert indices_from_bitfield(0, b"") == []


@FUZZ
@given(data=st.data())
def test_bitfield_round_trip(data: st.DataObject) -> None:
    n = data.draw(st.integers(0, 3000), label="n")
    held = data.draw(st.sets(st.integers(0, n - 1)) if n else st.just(set()), label="held")
    bitfield = bitfield_from_indices(n, held)
    assert len(bitfield) == (n + 7) // 8
    assert indices_from_bitfield(n, bitfield) == sorted(held)
    assert bitfield_from_indices(n, iter(held)) == bitfield


@pytest.mark.parametrize(("n", "length"), [(0, 1), (1, 0), (8, 2), (9, 1), (9, 3), (16, 1)])
def test_bitfield_wrong_length_rejected(n: int, length: int) -> None:
    with pytest.raises(RemoteProtocolError):
        indices_from_bitfield(n, b"\x00" * length)


@pytest.mark.parametrize(
    ("n", "bitfield"),
    [
        (1, b"\x40"),
        (1, b"\x01"),
        (7, b"\x01"),
        (9, b"\x00\x40"),
        (9, b"\xff\xff"),
        (15, b"\x00\x01"),
    ],
)
def test_bitfield_bits_past_end_rejected(n: int, bitfield: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        indices_from_bitfield(n, bitfield)


@FUZZ
@given(data=st.data())
def test_bitfield_arbitrary_bytes(data: st.DataObject) -> None:
    n = data.draw(st.integers(0, 200), label="n")
    bitfield = data.draw(st.binary(min_size=(n + 7) // 8, max_size=(n + 7) // 8), label="bits")
    try:
        got = indices_from_bitfield(n, bitfield)
    except RemoteProtocolError:
        # Only a claim on padding bits may be refused.
        padding = bitfield_from_indices((n + 7) // 8 * 8, range(n, (n + 7) // 8 * 8))
        assert any(a & b for a, b in zip(bitfield, padding, strict=True))
        return
    assert got == sorted(set(got))
    assert all(0 <= i < n for i in got)
    assert bitfield_from_indices(n, got) == bitfield
