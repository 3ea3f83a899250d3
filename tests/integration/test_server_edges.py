"""Ways the chunk server used to misbehave, each closed.

A replica pushed to a node that already holds the file whole as a user's file
swapped that copy for an empty replica; now it is copied, verified.  CANCELs
for requests that were never queued were remembered forever; now they cost
nothing.  One address could open links without end; now it has a cap, at
which the quietest link gives way (so peers that fetched once and went quiet
do not lock out the next one behind the same address).  A node bound to one
address dialled out from whichever the route chose; now from its own.
"""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from dhtshare.config import Config
from dhtshare.core import messages as m
from dhtshare.core.framing import encode_frame
from dhtshare.core.handshake import LinkSecurity
from dhtshare.core.identity import Identity
from dhtshare.core.ids import parse_manifest_hash
from dhtshare.disk.hashing import sha256_file
from dhtshare.net import server as server_mod
from dhtshare.net.transport import Connection, connect, make_hello
from dhtshare.node import Node
from dhtshare.ops import PublishArgs
from tests.conftest import LOOPBACK

pytestmark = pytest.mark.timeout(60)

CHUNK = 64 * 1024


async def dial(port: int, source: str | None = None) -> Connection:
    """A stranger's link to the node on ``port``: its own key, nothing else."""
    me = Identity.generate()
    return await connect(LOOPBACK, port, make_hello(me.node_id, 1), None, 10,
                         link=LinkSecurity(me), local_host=source)


async def test_push_onto_a_user_copy_keeps_it_whole(tmp_path: Path) -> None:
    src = tmp_path / "mine.bin"
    data = os.urandom(20 * CHUNK + 77)
    src.write_bytes(data)
    async with Node.open(Config(data_dir=tmp_path / "holder", host=LOOPBACK)) as holder:
        published = await holder.ops.publish(PublishArgs(src, CHUNK))
        h = parse_manifest_hash(published.hash)
        manifest = holder.store.entries[h].manifest
        conn = await dial(holder.port)
        try:
            req = conn.next_id()
            reply, _ = await conn.request(m.PutManifest(req, h, 2, manifest.encode()), req, 10)
            assert isinstance(reply, m.Ok), reply
            have = await conn.get_have(h, 10)
        finally:
            conn.close()
        entry = holder.store.entries[h]
        assert entry.durable
        assert entry.complete
        assert have.complete
        assert have.durable
        assert entry.path != src
        assert sha256_file(entry.path) == sha256_file(src)
        src.unlink()  # the user's file may go: the durable copy does not depend on it
        assert entry.read_chunk(3) == data[3 * CHUNK : 4 * CHUNK]


async def test_cancels_for_unknown_requests_cost_nothing(tmp_path: Path) -> None:
    """CANCEL does not count against the request cap, so it must not be remembered."""
    async with Node.open(Config(data_dir=tmp_path / "n", host=LOOPBACK)) as node:
        conn = await dial(node.port)
        try:
            assert conn.transport is not None
            # A hostile peer, so the frames go around our own session's rules
            # (sealed by its link's codec, as any stranger's would be).
            frames = b"".join(encode_frame(m.encode(m.Cancel(i))) for i in range(20_000))
            for piece in conn.session.codec.seal(frames, b""):
                conn.transport.write(piece)
            await conn.drain()
            have = conn.next_id()  # a request behind them: all were read when it is answered
            reply, _ = await conn.request(m.GetManifest(have, os.urandom(32)), have, 10)
            assert isinstance(reply, m.NotFound)
            queues = [q for c, q in node.server._queues.items() if c.peer_hello is not None]
            assert queues
            assert all(len(q.cancelled) == 0 for q in queues)
        finally:
            conn.close()


async def test_one_address_cannot_take_every_inbound_link(tmp_path: Path) -> None:
    """Links from one IP are capped; another address still gets in and is served."""
    async with Node.open(Config(data_dir=tmp_path / "n", host=LOOPBACK)) as node:
        cap = node.server.max_per_address
        loop = asyncio.get_running_loop()
        socks: list[socket.socket] = []
        try:
            for _ in range(cap):
                socks.append(await _silent_link(loop, "127.0.0.3", node.port))
            await asyncio.sleep(0.2)
            assert len(node.server._inbound) == cap
            extra = await _silent_link(loop, "127.0.0.3", node.port)
            socks.append(extra)
            extra.settimeout(5)
            assert await asyncio.to_thread(_closed, extra)  # refused at once
            honest = await dial(node.port)  # from 127.0.0.1
            try:
                have = honest.next_id()
                reply, _ = await honest.request(m.GetManifest(have, os.urandom(32)), have, 10)
                assert isinstance(reply, m.NotFound)
            finally:
                honest.close()
        finally:
            for s in socks:
                s.close()


async def test_at_the_cap_the_quietest_link_gives_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Peers behind one address that fetched and went quiet do not lock out the next."""
    monkeypatch.setattr(server_mod, "QUIET_EVICT", 0.3)
    async with Node.open(Config(data_dir=tmp_path / "n", host=LOOPBACK)) as node:
        cap = node.server.max_per_address
        links = [await dial(node.port, "127.0.0.4") for _ in range(cap)]
        try:
            await asyncio.sleep(0.5)  # all quiet now
            newcomer = await dial(node.port, "127.0.0.4")
            links.append(newcomer)
            have = newcomer.next_id()
            reply, _ = await newcomer.request(m.GetManifest(have, os.urandom(32)), have, 10)
            assert isinstance(reply, m.NotFound)  # admitted and served
            await asyncio.sleep(0.2)
            assert not links[0].is_open  # the quietest (the first) made room
            assert sum(c.is_open for c in links) == cap
        finally:
            for c in links:
                c.close()


async def test_a_node_bound_to_one_address_dials_from_it(tmp_path: Path) -> None:
    """Its peers see its links come from the address it listens on, as its DHT packets do."""
    async with (Node.open(Config(data_dir=tmp_path / "a", host=LOOPBACK)) as a,
                Node.open(Config(data_dir=tmp_path / "b", host="127.0.0.6")) as b):
        conn = await b.pool.get((LOOPBACK, a.port))
        try:
            await asyncio.sleep(0.1)
            sources = {c.peername[0] for c in a.server.inbound_links()}
            assert sources == {"127.0.0.6"}
        finally:
            conn.close()


async def _silent_link(loop: asyncio.AbstractEventLoop, source: str, port: int) -> socket.socket:
    """A TCP connection from ``source`` that never says anything (it holds a slot)."""
    s = socket.socket()
    s.bind((source, 0))
    s.setblocking(False)
    await loop.sock_connect(s, (LOOPBACK, port))
    s.setblocking(True)
    return s


def _closed(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
