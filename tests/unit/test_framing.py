"""Unit and property tests for the sans-IO frame codec (dhtshare.core.framing)."""

from __future__ import annotations

import random
import struct
import tracemalloc
from collections.abc import Iterable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dhtshare.config import KIB, MAX_BODY_SIZE, MAX_HEADER_SIZE, MIB
from dhtshare.core.framing import (
    PREFIX,
    PREFIX_LEN,
    Frame,
    FrameDecoder,
    encode_frame,
    encode_prefix,
)
from dhtshare.errors import FrameTooLarge, LocalProtocolError, RemoteProtocolError

FUZZ = settings(max_examples=150, deadline=None, database=None)

Pair = tuple[bytes, bytes]


# --- helpers --------------------------------------------------------------------------


def _payload(n: int, seed: int = 0) -> bytes:
    return random.Random(seed * 7919 + n).randbytes(n)


def _stream(pairs: Iterable[Pair]) -> bytes:
    return b"".join(encode_frame(h, b) for h, b in pairs)


def _as_pairs(frames: Sequence[Frame]) -> list[Pair]:
    out = []
    for f in frames:
        assert isinstance(f, Frame)
        assert isinstance(f.header, bytes)
        out.append((f.header, bytes(f.body)))
    return out


def _decode_whole(data: bytes) -> list[Pair]:
    dec = FrameDecoder()
    dec.feed(data)
    assert dec.idle
    return _as_pairs(dec.frames())


def _decode_split(data: bytes, cuts: Iterable[int]) -> list[Pair]:
    """Feed ``data`` cut at the given offsets, collecting frames as they complete."""
    dec = FrameDecoder()
    out: list[Pair] = []
    prev = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        dec.feed(data[prev:cut])
        out.extend(_as_pairs(dec.frames()))
        prev = cut
    assert dec.idle
    return out


def _decode_via_buffer(data: bytes, limits: Iterable[int]) -> list[Pair]:
    """Drive the decoder like asyncio.BufferedProtocol: write into get_buffer()."""
    dec = FrameDecoder()
    out: list[Pair] = []
    pos = 0
    received = 0
    it = iter(limits)
    while pos < len(data):
        buf = dec.get_buffer()
        assert isinstance(buf, memoryview)
        assert len(buf) > 0, "decoder offered an empty buffer while bytes are pending"
        n = min(len(buf), len(data) - pos, next(it, len(data)))
        buf[:n] = data[pos : pos + n]
        del buf
        dec.buffer_updated(n)
        pos += n
        received += n
        assert dec.bytes_received == received
        out.extend(_as_pairs(dec.frames()))
    assert dec.idle
    return out


# --- strategies -----------------------------------------------------------------------

# Bodies are drawn as a length plus a seed so that large ones stay cheap to generate.
_body_len = st.one_of(
    st.integers(0, 300),
    st.sampled_from([64 * KIB - 1, 64 * KIB, 64 * KIB + 1, 200 * KIB, 300 * KIB]),
)
_header = st.binary(max_size=300) | st.sampled_from([b"", b"h" * MAX_HEADER_SIZE])


@st.composite
def _pairs(draw: st.DrawFn, max_frames: int = 6) -> list[Pair]:
    n = draw(st.integers(0, max_frames))
    out = []
    for i in range(n):
        header = draw(_header)
        out.append((header, _payload(draw(_body_len), seed=i)))
    return out


# --- encoding -------------------------------------------------------------------------


def test_encode_frame_layout() -> None:
    frame = encode_frame(b"head", b"body!")
    assert frame == struct.pack(">II", 4, 5) + b"head" + b"body!"
    assert PREFIX_LEN == 8
    assert encode_prefix(b"head", 5) == frame[: PREFIX_LEN + 4]


def test_encode_frame_accepts_buffer_types() -> None:
    body = bytearray(b"0123456789")
    expected = encode_frame(b"h", bytes(body))
    assert encode_frame(b"h", body) == expected
    assert encode_frame(b"h", memoryview(body)) == expected


def test_encode_prefix_accepts_max_header() -> None:
    header = b"x" * MAX_HEADER_SIZE
    assert encode_prefix(header)[:PREFIX_LEN] == PREFIX.pack(MAX_HEADER_SIZE, 0)
    assert encode_prefix(b"", MAX_BODY_SIZE) == PREFIX.pack(0, MAX_BODY_SIZE)


def test_encode_prefix_refuses_oversize_header() -> None:
    with pytest.raises(LocalProtocolError):
        encode_prefix(b"x" * (MAX_HEADER_SIZE + 1))
    with pytest.raises(LocalProtocolError):
        encode_frame(b"x" * (MAX_HEADER_SIZE + 1), b"")


@pytest.mark.parametrize("body_len", [-1, MAX_BODY_SIZE + 1, 2**32])
def test_encode_prefix_refuses_bad_body_length(body_len: int) -> None:
    with pytest.raises(LocalProtocolError):
        encode_prefix(b"h", body_len)


# --- round trips ----------------------------------------------------------------------


@pytest.mark.parametrize("header_len", [0, 1, 100, MAX_HEADER_SIZE])
@pytest.mark.parametrize(
    "body_len", [0, 1, 1000, 64 * KIB - 1, 64 * KIB, 64 * KIB + 1, 256 * KIB + 3, MIB]
)
def test_round_trip_single_frame(header_len: int, body_len: int) -> None:
    header = _payload(header_len, seed=1)
    body = _payload(body_len, seed=2)
    assert _decode_whole(encode_frame(header, body)) == [(header, body)]


def test_round_trip_empty_frame() -> None:
    dec = FrameDecoder()
    dec.feed(encode_frame(b""))
    frame = dec.next_frame()
    assert frame is not None
    assert frame.header == b""
    assert bytes(frame.body) == b""
    assert dec.next_frame() is None
    assert dec.idle


def test_byte_at_a_time_matches_whole() -> None:
    pairs = [
        (b"", b""),
        (b"a", b""),
        (b"", b"b"),
        (b"hdr", _payload(70 * KIB, seed=3)),  # takes the large-body path
        (_payload(MAX_HEADER_SIZE, seed=4), _payload(64 * KIB, seed=5)),
        (b"tail", b"end"),
    ]
    data = _stream(pairs)
    assert _decode_whole(data) == pairs
    assert _decode_split(data, range(1, len(data))) == pairs


def test_one_mib_body_in_odd_splits() -> None:
    pairs = [(b"first", _payload(MIB, seed=6)), (b"second", b"x")]
    data = _stream(pairs)
    assert _decode_split(data, range(0, len(data), 8191)) == pairs
    assert _decode_via_buffer(data, iter(lambda: 4093, None)) == pairs


def test_many_frames_in_one_feed() -> None:
    pairs = [(f"h{i}".encode(), _payload(i % 50, seed=i)) for i in range(2000)]
    dec = FrameDecoder()
    dec.feed(_stream(pairs))
    assert _as_pairs(dec.frames()) == pairs
    assert dec.frames() == []
    assert dec.idle


def test_stream_larger_than_scratch_in_one_feed() -> None:
    # Far more than the 256 KiB scratch buffer, made of small frames only.
    pairs = [(b"h" * 100, _payload(60 * KIB, seed=i)) for i in range(20)]
    assert _decode_whole(_stream(pairs)) == pairs


def test_next_frame_is_fifo() -> None:
    dec = FrameDecoder()
    dec.feed(encode_frame(b"1") + encode_frame(b"2", b"x") + encode_frame(b"3"))
    got = []
    while (frame := dec.next_frame()) is not None:
        got.append(frame.header)
    assert got == [b"1", b"2", b"3"]
    assert dec.frames() == []


@FUZZ
@given(pairs=_pairs(), data=st.data())
def test_random_splits_give_same_frames(pairs: list[Pair], data: st.DataObject) -> None:
    stream = _stream(pairs)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=40), label="cuts")
    assert _decode_whole(stream) == pairs
    assert _decode_split(stream, cuts) == pairs


@FUZZ
@given(pairs=_pairs(), limits=st.lists(st.integers(1, 70 * KIB), max_size=40))
def test_buffer_interface_matches_feed(pairs: list[Pair], limits: list[int]) -> None:
    stream = _stream(pairs)
    assert _decode_via_buffer(stream, limits) == pairs
    assert _decode_via_buffer(stream, iter(lambda: 1 << 30, None)) == pairs


# --- idle and accounting --------------------------------------------------------------


def test_idle_tracks_partial_frames() -> None:
    dec = FrameDecoder()
    assert dec.idle
    small = encode_frame(b"header", b"body")
    big = encode_frame(b"big", _payload(100 * KIB, seed=7))

    dec.feed(small[:3])  # part of the prefix
    assert not dec.idle
    dec.feed(small[3:10])  # prefix plus part of the header
    assert not dec.idle
    dec.feed(small[10:-1])  # all but the last body byte
    assert not dec.idle
    assert dec.next_frame() is None
    dec.feed(small[-1:])
    assert dec.idle
    assert dec.next_frame() == Frame(b"header", b"body")

    dec.feed(big[: len(big) // 2])  # inside a large body
    assert not dec.idle
    dec.feed(big[len(big) // 2 :])
    assert dec.idle
    assert dec.bytes_received == len(small) + len(big)
    assert len(dec.frames()) == 1


# --- hostile lengths ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hlen", "blen"),
    [
        (0, 4 * 1024 * MIB - 1),  # a 4 GiB body
        (0, MAX_BODY_SIZE + 1),
        (MAX_HEADER_SIZE + 1, 0),
        (2**32 - 1, 2**32 - 1),
    ],
)
def test_oversize_frame_rejected_after_prefix_only(hlen: int, blen: int) -> None:
    dec = FrameDecoder()
    prefix = PREFIX.pack(hlen, blen)
    tracemalloc.start()
    try:
        dec.feed(prefix[:-1])  # seven bytes: not yet decidable
        with pytest.raises(FrameTooLarge):
            dec.feed(prefix[-1:])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * KIB, f"rejecting a hostile prefix allocated {peak} bytes"
    assert issubclass(FrameTooLarge, RemoteProtocolError)


def test_oversize_frame_rejected_through_buffer_interface() -> None:
    dec = FrameDecoder()
    buf = dec.get_buffer()
    buf[:PREFIX_LEN] = PREFIX.pack(1, 2**32 - 1)
    del buf
    with pytest.raises(FrameTooLarge):
        dec.buffer_updated(PREFIX_LEN)


def test_oversize_frame_after_good_frames() -> None:
    dec = FrameDecoder()
    with pytest.raises(FrameTooLarge):
        dec.feed(encode_frame(b"ok", b"fine") + PREFIX.pack(0, 2**32 - 1))


def test_custom_limits_are_inclusive() -> None:
    dec = FrameDecoder(max_header=16, max_body=200 * KIB)
    header, body = b"h" * 16, _payload(200 * KIB, seed=8)
    dec.feed(encode_frame(header, body))
    assert _as_pairs(dec.frames()) == [(header, body)]

    with pytest.raises(FrameTooLarge):
        FrameDecoder(max_header=16).feed(PREFIX.pack(17, 0))
    with pytest.raises(FrameTooLarge):
        FrameDecoder(max_body=200 * KIB).feed(PREFIX.pack(0, 200 * KIB + 1))


@FUZZ
@given(garbage=st.binary(max_size=2000), data=st.data())
def test_garbage_only_raises_frame_too_large(garbage: bytes, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(garbage)), max_size=10), label="cuts")
    dec = FrameDecoder()
    prev = 0
    try:
        for cut in [*sorted(set(cuts)), len(garbage)]:
            dec.feed(garbage[prev:cut])
            prev = cut
            for frame in dec.frames():
                assert isinstance(frame.header, bytes)
    except FrameTooLarge:
        pass
    assert dec.bytes_received <= len(garbage)
