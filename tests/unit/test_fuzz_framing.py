"""Fuzzers for the frame decoder (dhtshare.core.framing.FrameDecoder).

Every byte a node reads from a TCP peer or the control socket goes through a
``FrameDecoder`` first, so it is fed here what a stranger may send: valid
frames cut anywhere, declared lengths around and far past the limits, and
garbage, through both ways in (``feed`` and ``get_buffer``/``buffer_updated``,
mixed in one stream).  ``tests/unit/test_framing.py`` already covers fixed
limits with either way in alone; these add custom limits, mixed driving,
zero-byte updates, the ``admit_body`` hook, and white-box checks that the
decoder's buffers never exceed what its limits allow.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dhtshare.config import KIB
from dhtshare.core import framing
from dhtshare.core.framing import PREFIX, PREFIX_LEN, FrameDecoder, encode_frame
from dhtshare.errors import FrameTooLarge, RemoteProtocolError

FUZZ = settings(max_examples=120, deadline=None, database=None, derandomize=True)

#: The decoder's own thresholds (white box): bodies up to this go through scratch.
SMALL_BODY = framing._SMALL_BODY

Pair = tuple[bytes, bytes]


# --- a decoder that records what it allocates -----------------------------------------------------


@dataclass
class Recorder:
    """An ``alloc`` and an ``admit_body`` hook that log every call, in order."""

    refuse: Callable[[bytes, int], bool] = lambda _h, _n: False
    log: list[tuple[str, bytes, int]] = field(default_factory=list)

    def alloc(self, size: int) -> bytearray:
        self.log.append(("alloc", b"", size))
        return bytearray(size)

    def admit(self, header: bytes, body_len: int) -> None:
        self.log.append(("admit", header, body_len))
        if self.refuse(header, body_len):
            raise RemoteProtocolError(f"refused {body_len} body bytes")

    @property
    def allocs(self) -> list[int]:
        return [n for what, _, n in self.log if what == "alloc"]


def decoder(max_header: int, max_body: int, rec: Recorder | None = None,
            hook: bool = False) -> FrameDecoder:
    rec = rec or Recorder()
    dec = FrameDecoder(max_header=max_header, max_body=max_body, alloc=rec.alloc)
    if hook:
        dec.admit_body = rec.admit
    return dec


def check_bounded(dec: FrameDecoder, scratch_len: int) -> None:
    """The decoder's memory, white box: a fixed scratch, at most one body of at most max_body."""
    assert len(dec._scratch) == scratch_len, "the scratch buffer grew"
    assert 0 <= dec._start <= dec._end <= scratch_len
    if dec._body is not None:
        assert SMALL_BODY < len(dec._body) <= dec.max_body
        assert 0 <= dec._body_filled < len(dec._body)
        assert len(dec.get_buffer()) == len(dec._body) - dec._body_filled
    else:
        assert 0 < len(dec.get_buffer()) <= scratch_len


def assert_allocs_within(allocs: list[int], body_lens: list[int]) -> None:
    """Each allocation is for one of the bodies above the scratch threshold, at most once."""
    left = sorted(n for n in body_lens if n > SMALL_BODY)
    for n in allocs:
        assert n in left, f"allocated {n} bytes for no body of that size"
        left.remove(n)


# --- driving a decoder like a socket would --------------------------------------------------------


@dataclass
class Driver:
    """Feeds a stream in pieces, each piece by ``feed`` or by the buffer interface."""

    dec: FrameDecoder
    frames: list[Pair] = field(default_factory=list)
    #: Stream offset at the start and end of the piece that raised, if one did.
    error: Exception | None = None
    error_span: tuple[int, int] | None = None
    sent: int = 0

    def collect(self) -> None:
        self.frames += [(f.header, bytes(f.body)) for f in self.dec.frames()]

    def push(self, piece: bytes, zero_copy: bool, limit: int) -> None:
        start = self.sent
        limit = max(limit, len(piece) // 512)  # tiny reads, but not 200,000 of them
        try:
            if zero_copy:
                view = memoryview(piece)
                while view:
                    buf = self.dec.get_buffer()
                    n = min(len(buf), len(view), limit)
                    buf[:n] = view[:n]
                    del buf
                    self.dec.buffer_updated(n)
                    self.sent += n
                    view = view[n:]
                    if limit % 3 == 0:  # a socket may also report an empty read
                        self.dec.buffer_updated(0)
            else:
                self.dec.feed(piece)
                self.sent += len(piece)
        except RemoteProtocolError as err:
            self.error = err
            self.error_span = (start, start + len(piece))
        self.collect()


def drive(dec: FrameDecoder, stream: bytes, data: st.DataObject, check: bool = True,
          min_read: int = 1) -> Driver:
    """Feed ``stream`` in drawn pieces and read sizes (``min_read``: the smallest read)."""
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(stream)), max_size=12), label="cuts")))
    modes = data.draw(st.lists(st.booleans(), min_size=1, max_size=6), label="zero_copy")
    limits = data.draw(
        st.lists(st.integers(min_read, 80 * KIB), min_size=1, max_size=6), label="limits"
    )
    drv = Driver(dec)
    scratch_len = len(dec._scratch)
    prev = 0
    for i, cut in enumerate([*cuts, len(stream)]):
        drv.push(stream[prev:cut], modes[i % len(modes)], limits[i % len(limits)])
        prev = cut
        if drv.error is not None:
            break
        if check:
            check_bounded(dec, scratch_len)
    return drv


# --- strategies -----------------------------------------------------------------------------------


def payload(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


limits = st.tuples(
    st.sampled_from([0, 1, 16, 300, 64 * KIB]),
    st.sampled_from([0, 1, 300, SMALL_BODY, SMALL_BODY + 1, 200 * KIB]),
)


@st.composite
def frames_within(draw: st.DrawFn, max_header: int, max_body: int) -> list[Pair]:
    """Up to six frames that respect the limits, bodies around the decoder's thresholds."""
    out = []
    for i in range(draw(st.integers(0, 6))):
        hlen = draw(st.integers(0, min(max_header, 40)) | st.just(max_header))
        blen = draw(
            st.sampled_from([0, 1, 100, SMALL_BODY, SMALL_BODY + 1, 150 * KIB, max_body])
            | st.integers(0, 300)
        )
        blen = min(blen, max_body)
        out.append((payload(hlen, i), payload(blen, 1000 + i)))
    return out


def stream_of(pairs: list[Pair]) -> bytes:
    return b"".join(encode_frame(h, b) for h, b in pairs)


def too_large(max_header: int, max_body: int) -> st.SearchStrategy[tuple[int, int]]:
    """Declared (header, body) lengths of which at least one is over its limit."""
    over_h = st.sampled_from([max_header + 1, max_header + 2, 2**31, 2**32 - 1])
    over_b = st.sampled_from([max_body + 1, max_body + 2, 2**31, 2**32 - 1])
    ok_h = st.integers(0, max_header)
    ok_b = st.integers(0, max_body)
    return st.tuples(over_h, ok_b | over_b) | st.tuples(ok_h, over_b)


# --- properties -----------------------------------------------------------------------------------


@FUZZ
@given(lim=limits, data=st.data())
def test_any_driving_of_valid_frames_gives_them_back(lim: tuple[int, int],
                                                     data: st.DataObject) -> None:
    """Valid frames come back whole and in order, however the stream is cut and fed.

    Custom limits (inclusive), pieces fed by copy or written into the decoder's
    own buffer, mixed in one stream, with empty reads in between: a socket can
    do any of that, and a frame lost or torn at a boundary would corrupt every
    message after it.  Memory is checked after every piece.
    """
    max_header, max_body = lim
    pairs = data.draw(frames_within(max_header, max_body), label="frames")
    stream = stream_of(pairs)
    rec = Recorder()
    drv = drive(decoder(max_header, max_body, rec), stream, data)
    assert drv.error is None
    assert drv.frames == pairs
    assert drv.dec.idle
    assert drv.dec.bytes_received == len(stream)
    # Only bodies too big for the scratch may get a buffer of their own, of exactly their
    # size (one that arrived whole in the scratch is taken from there).
    assert_allocs_within(rec.allocs, [len(b) for _, b in pairs])


@FUZZ
@given(lim=limits, data=st.data())
def test_an_oversized_frame_is_refused_at_its_eighth_byte_with_nothing_allocated(
    lim: tuple[int, int], data: st.DataObject
) -> None:
    """A frame announcing more than the limits costs its 8 prefix bytes, nothing more.

    Whatever valid frames came before it are still delivered; the
    ``FrameTooLarge`` comes from the very piece of the stream that completed
    the prefix (not later, after buffering what follows; not earlier); and no
    buffer is allocated for it, whatever its declared size (up to 4 GiB).
    """
    max_header, max_body = lim
    good = data.draw(frames_within(max_header, max_body), label="good")
    hlen, blen = data.draw(too_large(max_header, max_body), label="declared")
    tail = data.draw(st.binary(max_size=200), label="tail")
    prefix_at = len(stream_of(good))
    stream = stream_of(good) + PREFIX.pack(hlen, blen) + tail
    rec = Recorder()
    drv = drive(decoder(max_header, max_body, rec), stream, data)
    assert isinstance(drv.error, FrameTooLarge)
    assert drv.error_span is not None
    start, end = drv.error_span
    assert start < prefix_at + PREFIX_LEN <= end
    assert drv.frames == good
    assert_allocs_within(rec.allocs, [len(b) for _, b in good])


@st.composite
def hostile_streams(draw: st.DrawFn, max_header: int, max_body: int) -> bytes:
    """Plausible-looking junk: valid frames, prefixes of any declared size, random bytes."""
    parts = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["frame", "prefix", "bytes"]))
        if kind == "frame":
            parts.append(stream_of(draw(frames_within(max_header, max_body))))
        elif kind == "prefix":
            # Often a short header that arrives whole, so that the body length is acted on.
            hlen = draw(st.integers(0, min(max_header, 60)) | st.integers(0, max_header + 2)
                        | st.integers(0, 2**32 - 1))
            blen = draw(st.integers(0, max_body + 2) | st.integers(0, 2**32 - 1))
            parts.append(PREFIX.pack(hlen, blen) + draw(st.binary(min_size=60, max_size=100)))
        else:
            parts.append(draw(st.binary(max_size=300)))
    return b"".join(parts)


@FUZZ
@given(lim=limits, data=st.data())
def test_hostile_streams_only_raise_frame_too_large_and_stay_bounded(
    lim: tuple[int, int], data: st.DataObject
) -> None:
    """Junk raises nothing but ``FrameTooLarge``, and the decoder's memory stays bounded.

    After every piece: the scratch buffer has its initial size, at most one
    body buffer exists and it is at most ``max_body``, and ``get_buffer``
    never offers more than that (a decoder that grew with what a peer
    declares would let one connection take the node's memory).
    """
    max_header, max_body = lim
    stream = data.draw(hostile_streams(max_header, max_body), label="stream")
    rec = Recorder()
    drv = drive(decoder(max_header, max_body, rec), stream, data)
    assert drv.error is None or isinstance(drv.error, FrameTooLarge)
    assert all(SMALL_BODY < n <= max_body for n in rec.allocs)
    for header, body in drv.frames:
        assert len(header) <= max_header
        assert len(body) <= max_body
    assert drv.dec.bytes_received <= len(stream)


@FUZZ
@given(lim=limits, data=st.data())
def test_admit_body_is_asked_before_any_body_byte_is_kept(
    lim: tuple[int, int], data: st.DataObject
) -> None:
    """The ``admit_body`` hook decides about a body before a buffer exists for it.

    A session uses the hook to refuse a stranger's 128 MiB body at its
    header.  So: it is asked only for frames with a body and with their whole
    header; every allocation follows a question about exactly that body; a
    refusal propagates as the hook's ``RemoteProtocolError`` and leaves the
    frames before it intact; and asking again for the same frame (the hook is
    documented as pure, asked as bytes arrive) passes the same arguments.
    """
    max_header, max_body = lim
    pairs = data.draw(frames_within(max_header, max_body), label="frames")
    refuse_at = data.draw(st.none() | st.integers(0, 5), label="refuse_at")
    bad = pairs[refuse_at] if refuse_at is not None and refuse_at < len(pairs) else None
    bad = bad if bad is not None and bad[1] else None
    rec = Recorder(refuse=lambda h, n: bad is not None and (h, n) == (bad[0], len(bad[1])))
    # Reads of at least 1 KiB: the hook is asked again on every read while a small
    # body is pending, so single-byte reads would only make this test slow.
    drv = drive(decoder(max_header, max_body, rec, hook=True), stream_of(pairs), data,
                min_read=KIB)

    with_body = squeeze([(h, len(b)) for h, b in pairs if b])
    asked = squeeze([(h, n) for what, h, n in rec.log if what == "admit"])
    assert all(n > 0 for _, n in asked)
    assert asked == with_body[: len(asked)]
    for i, (what, _, n) in enumerate(rec.log):
        if what == "alloc":
            assert i > 0
            assert rec.log[i - 1][0] == "admit"
            assert rec.log[i - 1][2] == n
    if bad is None:
        assert drv.error is None
        assert drv.frames == pairs
    else:
        assert type(drv.error) is RemoteProtocolError
        key = (bad[0], len(bad[1]))
        first_bad = next(j for j, (h, b) in enumerate(pairs) if (h, len(b)) == key)
        assert drv.frames == pairs[:first_bad]
        assert rec.log[-1] == ("admit", *key), "something was kept after the refusal"


def squeeze(items: list[tuple[bytes, int]]) -> list[tuple[bytes, int]]:
    """Consecutive repeats merged (the hook may be asked again for the same frame)."""
    return [x for i, x in enumerate(items) if i == 0 or items[i - 1] != x]


@pytest.mark.parametrize("declared", [SMALL_BODY + 1, 100 * KIB, 2**31])
def test_a_refused_large_body_is_never_allocated(declared: int) -> None:
    """Regression guard for the hook's purpose: refusing at the header allocates nothing."""
    rec = Recorder(refuse=lambda _h, _n: True)
    dec = decoder(64 * KIB, 2**32 - 1, rec, hook=True)
    with pytest.raises(RemoteProtocolError):
        dec.feed(PREFIX.pack(3, declared) + b"hdr" + b"x" * 10)
    assert rec.allocs == []
