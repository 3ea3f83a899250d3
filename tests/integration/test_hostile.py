"""Hostile peers against a real node process: raw TCP frames and raw UDP datagrams.

A raw peer completes the link's Noise handshake with a key of its own (any
stranger can) and then sends whatever bytes it likes inside valid records, so
the frame layer behind the encryption is attacked as before; a few tests send
garbage where the handshake should be.

The protocol's rules (handshake, message kinds, the request cap, garbage) are
tested without a process against the session in ``tests/unit/test_session.py``.
What is left here needs a real node: that a violation closes the connection
promptly and costs the node nothing, that a slow peer blocks no one, what the
server answers, the UDP side, and a truncated file on disk.  Each test talks
to a node started with :mod:`tests.conftest` over plain sockets on 127.0.0.1.
The module's nodes are shared; its last test checks that, after every abuse
above, a normal publish and fetch still work and neither node logged a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

from dhtshare.config import PROTOCOL_VERSION
from dhtshare.core import messages as m
from dhtshare.core.framing import PREFIX, Frame, encode_frame
from dhtshare.core.handshake import LinkSecurity
from dhtshare.core.identity import Identity
from dhtshare.core.manifest import Manifest
from dhtshare.core.records import SecureCodec
from dhtshare.core.session import MAX_INCOMING_REQUESTS
from dhtshare.net.dht.client import Dht
from dhtshare.net.transport import make_hello
from tests.conftest import (
    LOOPBACK,
    Cluster,
    NodeProc,
    fetch_json,
    free_port,
    make_file,
    publish,
    sha256_file,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

CLOSE_TIMEOUT = 5.0
READ_TIMEOUT = 10.0
UNKNOWN = hashlib.sha256(b"nobody has this").digest()


# --- raw peer ----------------------------------------------------------------------------


class RawPeer:
    """A TCP socket to a node with its own key: any bytes it sends go inside valid records.

    With ``secure=False`` it stops before the link handshake, and
    :meth:`send_unsealed` puts bytes on the wire as they are.
    """

    def __init__(self, port: int, secure: bool = True) -> None:
        self.sock = socket.create_connection((LOOPBACK, port), timeout=CLOSE_TIMEOUT)
        self.local_port = int(self.sock.getsockname()[1])
        identity = Identity.generate()
        self.node_id = identity.node_id
        self.codec = SecureCodec(LinkSecurity(identity).handshake(True))
        if secure:
            self._secure()

    def _secure(self) -> None:
        self.send_unsealed(b"".join(bytes(p) for p in self.codec.start()))
        deadline = time.monotonic() + READ_TIMEOUT
        while not self.codec.secure:
            left = deadline - time.monotonic()
            assert left > 0, "no link handshake in time"
            self.sock.settimeout(left)
            data = self.sock.recv(1 << 16)
            assert data, "node closed the connection during the link handshake"
            self._feed(data)
            reply = b"".join(bytes(p) for p in self.codec.data_to_send())
            if reply:
                self.send_unsealed(reply)

    def _feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            buf = self.codec.get_buffer()
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            self.codec.buffer_updated(n)
            view = view[n:]

    def frames(self) -> list[Frame]:
        out = []
        while (frame := self.codec.next_frame()) is not None:
            out.append(frame)
        return out

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        """``data`` as the node's frame layer will see it, sealed in records."""
        self.sock.sendall(b"".join(bytes(p) for p in self.codec.seal(data, b"")))

    def send_unsealed(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_msg(self, msg: m.Message, body: bytes = b"") -> None:
        self.send(encode_frame(m.encode(msg), body))

    def hello_frame(self, version: int = PROTOCOL_VERSION) -> bytes:
        hello = make_hello(self.node_id, 1)
        if version != PROTOCOL_VERSION:
            hello = m.Hello(version, self.node_id, 1, hello.agent)
        return encode_frame(m.encode(hello))

    def read(self, n: int, timeout: float = READ_TIMEOUT) -> list[tuple[m.Message, bytes]]:
        """The next ``n`` messages from the node (fails on EOF or timeout)."""
        out: list[tuple[m.Message, bytes]] = []
        deadline = time.monotonic() + timeout
        while True:
            while len(out) < n and (frame := self.codec.next_frame()) is not None:
                out.append((m.decode(frame.header, frame.body), bytes(frame.body)))
            if len(out) == n:
                return out
            left = deadline - time.monotonic()
            assert left > 0, f"got {len(out)} of {n} messages in {timeout} s"
            self.sock.settimeout(left)
            data = self.sock.recv(1 << 16)
            assert data, f"node closed the connection after {len(out)} of {n} messages"
            self._feed(data)

    def handshake(self) -> m.Hello:
        """Send a valid HELLO and return the node's."""
        self.send(self.hello_frame())
        ((hello, body),) = self.read(1)
        assert isinstance(hello, m.Hello)
        assert hello.version == PROTOCOL_VERSION
        assert body == b""
        return hello

    def wait_closed(self, timeout: float = CLOSE_TIMEOUT) -> bool:
        """True once the node has closed the connection (EOF or reset) within ``timeout``.

        What the node sent meanwhile is kept for :meth:`frames`.
        """
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(1 << 16)
            except (ConnectionResetError, ConnectionAbortedError):
                return True
            except TimeoutError:
                return False
            if not data:
                return True
            self._feed(data)
        return False


@contextlib.contextmanager
def raw(node: NodeProc) -> Iterator[RawPeer]:
    peer = RawPeer(node.port)
    try:
        yield peer
    finally:
        peer.close()


def send_quietly(peer: RawPeer, data: bytes) -> None:
    """Send, tolerating a node that already hung up on us."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        peer.send(data)


def send_quietly_unsealed(peer: RawPeer, data: bytes) -> None:
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        peer.send_unsealed(data)


def wait_log(node: NodeProc, text: str, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        log = node.log()
        if text in log or time.monotonic() > deadline:
            return log
        time.sleep(0.05)


def assert_still_serves(node: NodeProc) -> None:
    """The node is up and answers a well-behaved peer."""
    assert node.alive()
    with raw(node) as peer:
        peer.handshake()
        peer.send_msg(m.GetManifest(4242, UNKNOWN))
        ((reply, _),) = peer.read(1)
        assert reply == m.NotFound(4242)


def assert_closed_for_violation(node: NodeProc, peer: RawPeer) -> None:
    assert peer.wait_closed(), "node kept a misbehaving connection open"
    log = wait_log(node, f"{LOOPBACK}:{peer.local_port}: protocol violation")
    assert f"{LOOPBACK}:{peer.local_port}: protocol violation" in log
    assert_still_serves(node)


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProc]]:
    c = Cluster(tmp_path_factory.mktemp("hostile"))
    try:
        yield c.start(2)
    finally:
        c.stop_all()


@pytest.fixture(scope="module")
def target(nodes: list[NodeProc]) -> NodeProc:
    """The node every hostile test attacks (it is also the one that serves later)."""
    return nodes[1]


@pytest.fixture(scope="module")
def published(
    target: NodeProc, tmp_path_factory: pytest.TempPathFactory
) -> tuple[bytes, Path]:
    src = make_file(tmp_path_factory.mktemp("pub") / "served.bin", 100_000, seed=42)
    return bytes.fromhex(publish(target, src, "--chunk-size", "16K")), src


# --- oversized frames and garbage ----------------------------------------------------------


@pytest.mark.parametrize("after_hello", [True, False], ids=["after-hello", "before-hello"])
@pytest.mark.parametrize(
    "prefix",
    [PREFIX.pack(16, 0xFFFFFFFF), PREFIX.pack(0xFFFFFFFF, 0), PREFIX.pack(65537, 0)],
    ids=["4GiB-body", "4GiB-header", "header-just-over"],
)
def test_oversized_frame_prefix_closes_promptly(
    target: NodeProc, prefix: bytes, after_hello: bool
) -> None:
    with raw(target) as peer:
        if after_hello:
            peer.handshake()
        t0 = time.monotonic()
        send_quietly(peer, prefix)
        assert peer.wait_closed()
        assert time.monotonic() - t0 < CLOSE_TIMEOUT
        log = wait_log(target, f"{LOOPBACK}:{peer.local_port}: protocol violation")
        assert f"{LOOPBACK}:{peer.local_port}: protocol violation: frame" in log
    assert_still_serves(target)


#: A few kinds of garbage; every case is unit-tested against the session.
GARBAGE = {
    "http": b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "random": random.Random(7).randbytes(4096),
    "bad-msgpack": PREFIX.pack(4, 0) + b"\xc1\xc1\xc1\xc1",
    "request-before-hello": encode_frame(m.encode(m.GetManifest(1, UNKNOWN))),
}


@pytest.mark.parametrize("garbage", list(GARBAGE.values()), ids=list(GARBAGE))
def test_garbage_bytes_close_the_connection(target: NodeProc, garbage: bytes) -> None:
    with raw(target) as peer:
        send_quietly(peer, garbage)
        assert_closed_for_violation(target, peer)
        # Nothing but the node's HELLO came back.
        frames = peer.frames()
        assert all(m.decode(f.header, f.body).TYPE is m.MsgType.HELLO for f in frames)


@pytest.mark.parametrize(
    "garbage",
    [GARBAGE["http"], GARBAGE["random"], encode_frame(m.encode(make_hello(b"x" * 20, 1)))],
    ids=["http", "random", "plaintext-hello"],
)
def test_garbage_instead_of_the_link_handshake_closes_the_connection(
    target: NodeProc, garbage: bytes
) -> None:
    """A peer that skips the encryption (an old or plaintext node, or a scanner) gets nothing."""
    peer = RawPeer(target.port, secure=False)
    try:
        send_quietly_unsealed(peer, garbage)
        assert peer.wait_closed(), "node kept a connection without a handshake open"
        log = wait_log(target, f"{LOOPBACK}:{peer.local_port}: protocol violation")
        assert f"{LOOPBACK}:{peer.local_port}: protocol violation" in log
    finally:
        peer.close()
    assert_still_serves(target)


# --- well-formed requests ------------------------------------------------------------------


def test_unknown_manifest_is_not_found(target: NodeProc) -> None:
    with raw(target) as peer:
        peer.handshake()
        peer.send_msg(m.GetChunk(11, UNKNOWN, 0, UNKNOWN))
        assert peer.read(1) == [(m.NotFound(11), b"")]
        peer.send_msg(m.GetManifest(12, UNKNOWN))
        peer.send_msg(m.GetHave(13, UNKNOWN))
        assert peer.read(2) == [(m.NotFound(12), b""), (m.NotFound(13), b"")]
        # The connection stays usable after NOT_FOUND answers.
        peer.send_msg(m.GetChunk(m.MAX_REQ_ID, UNKNOWN, 5, UNKNOWN))
        assert peer.read(1) == [(m.NotFound(m.MAX_REQ_ID), b"")]


def test_published_manifest_and_chunks_are_served(
    target: NodeProc, published: tuple[bytes, Path]
) -> None:
    mh, src = published
    content = src.read_bytes()
    with raw(target) as peer:
        peer.handshake()
        peer.send_msg(m.GetManifest(21, mh))
        ((reply, body),) = peer.read(1)
        assert reply == m.Data(21)
        assert hashlib.sha256(body).digest() == mh
        manifest = Manifest.decode(body)
        assert manifest.size == len(content)
        assert manifest.chunk_count == 7

        last = manifest.chunk_count - 1
        for i in (0, last):
            peer.send_msg(m.GetChunk(30 + i, mh, i, manifest.chunk_hash(i)))
            ((reply, body),) = peer.read(1)
            assert reply == m.Data(30 + i)
            assert hashlib.sha256(body).digest() == manifest.chunk_hash(i)
            off = manifest.chunk_offset(i)
            assert body == content[off : off + manifest.chunk_length(i)]

        # A chunk hash that does not match that index, or an index out of range.
        peer.send_msg(m.GetChunk(40, mh, 1, manifest.chunk_hash(0)))
        peer.send_msg(m.GetChunk(41, mh, manifest.chunk_count, manifest.chunk_hash(0)))
        peer.send_msg(m.GetHave(42, mh))
        got = peer.read(3)
        assert got[:2] == [(m.NotFound(40), b""), (m.NotFound(41), b"")]
        have, bitfield = got[2]
        assert isinstance(have, m.Have)
        assert (have.req, have.complete, bitfield) == (42, True, b"")


def test_cancelled_request_is_not_answered(
    target: NodeProc, published: tuple[bytes, Path]
) -> None:
    mh, _ = published
    with raw(target) as peer:
        peer.handshake()
        # One write: the node queues all three before serving any.
        peer.send(
            encode_frame(m.encode(m.GetManifest(51, UNKNOWN)))
            + encode_frame(m.encode(m.GetManifest(52, UNKNOWN)))
            + encode_frame(m.encode(m.Cancel(52)))
            + encode_frame(m.encode(m.GetManifest(53, mh)))
        )
        got = peer.read(2)
        assert [msg for msg, _ in got] == [m.NotFound(51), m.Data(53)]


def test_pipelined_requests_beyond_the_cap_close_the_connection(
    target: NodeProc, published: tuple[bytes, Path]
) -> None:
    """A peer may have MAX_INCOMING_REQUESTS requests outstanding; one more is a violation."""
    mh, _ = published
    n = MAX_INCOMING_REQUESTS + 88  # 600
    # One write of about 24 KB: the node reads it at once, before it answers any.
    burst = b"".join(encode_frame(m.encode(m.GetManifest(i, mh))) for i in range(n))
    with raw(target) as peer:
        peer.handshake()
        send_quietly(peer, burst)
        assert peer.wait_closed(READ_TIMEOUT), "node kept a peer over the cap open"
        reason = f"{LOOPBACK}:{peer.local_port}: protocol violation: too many outstanding requests"
        assert reason in wait_log(target, reason)
    assert_still_serves(target)


def test_slow_partial_frame_does_not_block_others(target: NodeProc) -> None:
    with raw(target) as slow:
        slow.handshake()
        # Half a frame, then silence.
        slow.send(PREFIX.pack(1000, 0) + b"\x93" + b"\x00" * 10)
        assert_still_serves(target)
        with raw(target) as other:
            other.handshake()
        assert not slow.wait_closed(0.2)
    assert_still_serves(target)


# --- UDP -----------------------------------------------------------------------------------


async def test_oversized_and_garbage_udp_datagrams(nodes: list[NodeProc]) -> None:
    target = nodes[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOPBACK, 0))
        for data in (
            b"\x00" * 65507,  # the largest IPv4 UDP payload
            os.urandom(65507),
            os.urandom(100),
            b"\x00" * 30,
            b"\x00" + os.urandom(20) + msgpack.packb(["find_node", [1, 2]]),
            b"\x00" + os.urandom(20) + msgpack.packb(["get_providers", ["x", None]]),
            b"\x00" + os.urandom(20) + b"\x91" * 4000,
            b"\x01" + os.urandom(20) + msgpack.packb(None),
        ):
            s.sendto(data, (LOOPBACK, target.port))
    await asyncio.sleep(0.2)
    assert target.alive()

    # A fresh DHT node can still join through the attacked node.
    probe = Dht(Identity.generate(), timeout=1.0)
    try:
        await probe.listen(LOOPBACK, free_port())
        answered = await asyncio.wait_for(probe.bootstrap([(LOOPBACK, target.port)]), 10)
        assert answered == 1
        assert {c[2] for c in probe.contacts()} >= {target.port}
    finally:
        probe.stop()
        await asyncio.sleep(0)


# --- a server-side failure -----------------------------------------------------------------


def test_truncated_file_is_answered_with_error(cluster: Cluster, tmp_path: Path) -> None:
    (node,) = cluster.start(1)
    src = make_file(tmp_path / "shrinks.bin", 50_000, seed=5)
    mh = bytes.fromhex(publish(node, src, "--chunk-size", "16K"))
    with raw(node) as peer:
        peer.handshake()
        peer.send_msg(m.GetManifest(1, mh))
        ((_, body),) = peer.read(1)
        manifest = Manifest.decode(body)
        last = manifest.chunk_count - 1
        with open(src, "r+b") as fh:
            fh.truncate(manifest.chunk_offset(last))
        peer.send_msg(m.GetChunk(2, mh, last, manifest.chunk_hash(last)))
        ((reply, _),) = peer.read(1)
        assert isinstance(reply, m.Error)
        assert reply.req == 2
    assert "Traceback" not in node.log()


# --- and after all that ----------------------------------------------------------------------


def test_node_still_serves_after_the_abuse(
    nodes: list[NodeProc], target: NodeProc, tmp_path: Path
) -> None:
    """Runs last in this module: the attacked node publishes, the other fetches."""
    other = nodes[0]
    src = make_file(tmp_path / "after.bin", 300_000, seed=77)
    h = publish(target, src, "--chunk-size", "64K")
    result = fetch_json(other, h, tmp_path / "copy.bin")
    assert result["hash"] == h
    assert sha256_file(tmp_path / "copy.bin") == sha256_file(src)
    # The attacked node serves the new file's manifest and chunks itself, too.
    mh = bytes.fromhex(h)
    with raw(target) as peer:
        peer.handshake()
        peer.send_msg(m.GetManifest(1, mh))
        ((reply, body),) = peer.read(1)
        assert reply == m.Data(1)
        manifest = Manifest.decode(body)
        assert manifest.hash == mh
        for i in range(manifest.chunk_count):
            peer.send_msg(m.GetChunk(100 + i, mh, i, manifest.chunk_hash(i)))
        got = peer.read(manifest.chunk_count)
        assert [msg for msg, _ in got] == [m.Data(100 + i) for i in range(len(got))]
        assert b"".join(chunk for _, chunk in got) == src.read_bytes()
    assert target.alive()
    assert other.alive()
    for node in nodes:
        assert "Traceback" not in node.log(), node.log()[-3000:]
