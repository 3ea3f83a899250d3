"""Two peer-protocol connections over a real loopback socket, in process.

The protocol rules are tested without sockets in ``tests/unit/test_session.py``;
these check the asyncio shell around them: futures per request, CANCEL on
``forget``, bodies received into pooled buffers, a file's range sent sealed
(encrypted links, the default) or by ``sendfile`` (the plaintext benchmarking
switch), who the peer proves to be, and violations turned into closed connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO

import pytest

from dhtshare.config import MIB
from dhtshare.core import messages as m
from dhtshare.core.framing import Buffer
from dhtshare.core.handshake import LinkSecurity
from dhtshare.core.identity import Identity
from dhtshare.core.ids import HASH_LEN
from dhtshare.errors import PeerError
from dhtshare.net import transport
from dhtshare.net.transport import Connection, connect, make_hello
from tests.conftest import LOOPBACK

pytestmark = pytest.mark.timeout(30)

H = b"h" * HASH_LEN


class Endpoint:
    """One side's identity: its HELLO and its link keys (``None``: the plaintext switch)."""

    def __init__(self, port: int, secure: bool = True) -> None:
        self.identity = Identity.generate()
        self.hello = make_hello(self.identity.node_id, port)
        self.link = LinkSecurity(self.identity) if secure else None

    def connection(
        self, handler: Handler | None, on_close: Callable[[Connection], None] | None = None,
        idle_timeout: float = transport.IDLE_TIMEOUT,
    ) -> Connection:
        return Connection(self.hello, handler, on_close, link=self.link, initiator=False,
                          idle_timeout=idle_timeout)

    async def dial(self, port: int, expect: bytes | None = None) -> Connection:
        return await connect(LOOPBACK, port, self.hello, None, 5, link=self.link, expect=expect)


class Handler:
    """Answers GET_MANIFEST from memory and GET_CHUNK from a file; leaves GET_HAVE unanswered."""

    def __init__(self, body: bytes = b"", path: Path | None = None) -> None:
        self.body = body
        self.path = path
        self.seen: list[m.Message] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.cancelled = asyncio.Event()

    def handle(self, conn: Connection, msg: m.Message, body: Buffer) -> None:
        self.seen.append(msg)
        if isinstance(msg, m.Cancel):
            self.cancelled.set()
            return
        conn.session.incoming_done()
        if isinstance(msg, m.GetManifest):
            conn.send(m.Data(msg.req), self.body)
        elif isinstance(msg, m.GetChunk) and self.path is not None:
            fh = open(self.path, "rb")  # noqa: SIM115 - closed by the task
            task = asyncio.get_running_loop().create_task(self._send_file(conn, msg.req, fh))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _send_file(self, conn: Connection, req: int, fh: BinaryIO) -> None:
        with fh:
            await conn.send_file(m.Data(req), fh, 0, os.fstat(fh.fileno()).st_size)

    def closed(self, conn: Connection) -> None:
        for task in self.tasks:
            task.cancel()


@contextlib.asynccontextmanager
async def linked(
    handler: Handler | None, secure: bool = True, idle_timeout: float = transport.IDLE_TIMEOUT
) -> AsyncIterator[tuple[Connection, Connection]]:
    """(the accepting side, serving with ``handler``; the connecting side, serving nothing)."""
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[Connection] = loop.create_future()
    near, far = Endpoint(1, secure), Endpoint(2, secure)

    def accept() -> Connection:
        conn = near.connection(handler, idle_timeout=idle_timeout)
        accepted.set_result(conn)
        return conn

    server = await loop.create_server(accept, LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]
    client = await far.dial(port, near.identity.node_id)
    conn = await asyncio.wait_for(accepted, 5)
    try:
        await conn.wait_handshake(5)
        yield conn, client
    finally:
        client.close()
        conn.close()
        server.close()
        await server.wait_closed()


async def test_bye_tells_the_peer_we_are_leaving() -> None:
    closed: asyncio.Queue[Connection] = asyncio.Queue()
    near, far = Endpoint(1), Endpoint(2)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: near.connection(None, closed.put_nowait), LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = await far.dial(port)
        client.say_bye("upgrading")
        accepted = await asyncio.wait_for(closed.get(), 10)
        assert accepted.farewell == "upgrading"
        assert accepted.close_reason is not None
        assert "left the network" in accepted.close_reason
        await asyncio.wait_for(client.wait_closed(), 10)
        assert client.farewell is None  # it was the one leaving
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("secure", [True, False], ids=["encrypted", "plaintext-switch"])
async def test_answers_arrive_in_pooled_buffers(tmp_path: Path, secure: bool) -> None:
    body = os.urandom(3 * MIB + 7)
    path = tmp_path / "chunk.bin"
    path.write_bytes(os.urandom(2 * MIB + 3))
    handler = Handler(body, path)
    async with linked(handler, secure) as (server, client):
        assert client.peer_hello == server.session.hello
        assert (client.peer_key is not None) is secure
        got = await client.get_manifest(H, 10)
        assert isinstance(got, mmap.mmap)  # straight from the socket into the pool's buffer
        assert got[:] == body
        req = client.next_id()
        reply, chunk = await client.request(m.GetChunk(req, H, 0, H), req, 10)
        assert reply == m.Data(req)
        assert bytes(chunk) == path.read_bytes()
        assert server.session.incoming == 0
        assert client.session.outstanding == frozenset()


async def test_forget_cancels_the_request_at_the_peer() -> None:
    handler = Handler()
    async with linked(handler) as (_, client):
        req = client.next_id()
        fut = client.start_request(m.GetHave(req, H), req)
        client.forget(req)
        assert fut.cancelled()
        await asyncio.wait_for(handler.cancelled.wait(), 5)
        assert handler.seen == [m.GetHave(req, H), m.Cancel(req)]
        assert client.session.outstanding == frozenset()


async def test_a_request_to_a_link_that_does_not_serve_closes_it() -> None:
    async with linked(Handler()) as (server, client):
        req = server.next_id()
        fut = server.start_request(m.GetManifest(req, H), req)
        with pytest.raises(PeerError):
            await asyncio.wait_for(fut, 5)
        await asyncio.wait_for(client.wait_closed(), 5)
        assert client.close_reason is not None
        assert client.close_reason.startswith("protocol violation: requests are not accepted")


async def test_garbage_closes_the_connection_with_its_reason() -> None:
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[Connection] = loop.create_future()

    near = Endpoint(1)

    def accept() -> Connection:
        conn = near.connection(Handler())
        accepted.set_result(conn)
        return conn

    server = await loop.create_server(accept, LOOPBACK, 0)
    try:
        _, writer = await asyncio.open_connection(LOOPBACK, server.sockets[0].getsockname()[1])
        writer.write(b"GET / HTTP/1.1\r\n\r\n")
        conn = await asyncio.wait_for(accepted, 5)
        await asyncio.wait_for(conn.wait_closed(), 5)
        assert conn.close_reason is not None
        assert conn.close_reason.startswith("protocol violation: a link handshake message")
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_a_dialer_refuses_a_peer_that_is_not_the_node_it_meant() -> None:
    """The address answers with a valid key, but not the one the record named."""
    loop = asyncio.get_running_loop()
    impostor, dialer, meant = Endpoint(1), Endpoint(2), Endpoint(3)
    server = await loop.create_server(lambda: impostor.connection(Handler()), LOOPBACK, 0)
    try:
        with pytest.raises(PeerError, match="that we meant to reach"):
            await dialer.dial(server.sockets[0].getsockname()[1], meant.identity.node_id)
    finally:
        server.close()
        await server.wait_closed()


async def test_a_stopped_file_send_closes_the_link(tmp_path: Path) -> None:
    """A sealed file range whose send is cancelled has spent its nonces: the link must end."""
    path = tmp_path / "chunk.bin"
    path.write_bytes(os.urandom(4 * MIB))
    async with linked(Handler()) as (server, _client):
        with path.open("rb") as fh:
            task = asyncio.get_running_loop().create_task(
                server.send_file(m.Data(1), fh, 0, 4 * MIB))
            await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.wait_for(server.wait_closed(), 5)
        assert server.close_reason == "stopped while sending a file"


class Unhurried(Handler):
    """Keeps every request in flight (never settled), as a server still working on it does."""

    def handle(self, conn: Connection, msg: m.Message, body: Buffer) -> None:
        self.seen.append(msg)


async def test_an_idle_link_is_closed_and_a_busy_one_is_not() -> None:
    async with linked(Unhurried(), idle_timeout=0.3) as (server, client):
        req = client.next_id()
        fut = client.start_request(m.GetHave(req, H), req)
        await asyncio.sleep(1.0)
        assert server.is_open  # a request is in flight: not idle
        assert not fut.done()
        client.forget(req)
    async with linked(Handler(), idle_timeout=0.3) as (server, client):
        await asyncio.wait_for(server.wait_closed(), 5)
        assert server.close_reason == "idle"
        await asyncio.wait_for(client.wait_closed(), 5)


async def test_a_peer_that_does_not_read_is_dropped_before_we_buffer_without_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transport, "OUTGOING_CAP", 8 * MIB)
    async with linked(Handler()) as (server, client):
        assert client.transport is not None
        client.transport.pause_reading()
        big = os.urandom(MIB)
        for _ in range(64):  # far more than the socket buffers hold
            server.send(m.Data(0), big)
            if not server.is_open:
                break
        await asyncio.wait_for(server.wait_closed(), 5)
        assert server.close_reason is not None
        assert server.close_reason.startswith("peer does not read")


async def test_a_writer_waits_for_a_stalled_peer_only_so_long(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transport, "WRITE_STALL_TIMEOUT", 0.5)
    async with linked(Handler()) as (server, client):
        assert client.transport is not None
        client.transport.pause_reading()
        big = os.urandom(MIB)
        for _ in range(40):
            server.send(m.Data(0), big)
        t0 = asyncio.get_running_loop().time()
        await asyncio.wait_for(server.drain(), 10)
        assert asyncio.get_running_loop().time() - t0 < 5
        assert not server.is_open
        assert server.close_reason is not None
        assert server.close_reason.startswith("peer stopped reading")
