"""Replicas a node agrees to hold: within limits per asking peer, descriptors on demand.

A probe found that any stranger could PUT_MANIFEST hundreds of tiny files onto
a node and use up its descriptors (each replica kept its writer open), and
that this survived a restart.  Now a peer, named by the key its link proved,
may have only so many replicas being filled at a node; the node keeps only a
few writers open and opens the rest when a chunk comes; a restart opens none.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from dhtshare.config import Config
from dhtshare.core import messages as m
from dhtshare.core.handshake import LinkSecurity
from dhtshare.core.identity import Identity
from dhtshare.core.manifest import Manifest
from dhtshare.disk import intake, store
from dhtshare.net.transport import Connection, connect, make_hello
from dhtshare.node import Node
from tests.conftest import LOOPBACK

pytestmark = pytest.mark.timeout(90)

CHUNK = 16 * 1024


def tiny(i: int, chunks: int = 2) -> tuple[Manifest, list[bytes]]:
    data = [os.urandom(CHUNK) for _ in range(chunks)]
    hashes = b"".join(hashlib.sha256(c).digest() for c in data)
    return Manifest(f"offer-{i}.bin", CHUNK * chunks, CHUNK, hashes), data


async def stranger(port: int) -> Connection:
    me = Identity.generate()
    return await connect(LOOPBACK, port, make_hello(me.node_id, 1), None, 10,
                         link=LinkSecurity(me))


async def offer(conn: Connection, manifest: Manifest) -> m.Message:
    req = conn.next_id()
    reply, _ = await conn.request(m.PutManifest(req, manifest.hash, 2, manifest.encode()),
                                  req, 10)
    return reply


async def push(conn: Connection, manifest: Manifest, index: int, data: bytes) -> m.Message:
    req = conn.next_id()
    msg = m.PutChunk(req, manifest.hash, index, manifest.chunk_hash(index))
    reply, _ = await conn.request(msg, req, 10, data)
    return reply


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_a_stranger_gets_only_its_share_and_the_descriptors_stay_few(
    tmp_path: Path,
) -> None:
    config = Config(data_dir=tmp_path / "n", host=LOOPBACK)
    async with Node.open(config) as node:
        flood = await stranger(node.port)
        before = open_fds()
        offers = intake.MAX_PENDING_PER_ORIGIN + 40
        replies = [await offer(flood, tiny(i)[0]) for i in range(offers)]
        accepted = [r for r in replies if isinstance(r, m.Ok)]
        refused = [r for r in replies if isinstance(r, m.Error)]
        assert len(accepted) == intake.MAX_PENDING_PER_ORIGIN
        assert refused
        assert all(r.code == m.ErrorCode.FULL for r in refused)  # type: ignore[attr-defined]
        # Every accepted offer would have held three descriptors; only the open writers do.
        assert open_fds() - before <= 3 * store.MAX_OPEN_WRITERS + 4
        # Another peer is not refused for the stranger's flood.
        honest = await stranger(node.port)
        manifest, chunks = tiny(999)
        assert isinstance(await offer(honest, manifest), m.Ok)
        assert isinstance(await push(honest, manifest, 0, chunks[0]), m.Ok)
        honest.close()
        flood.close()
    # After a restart, the replicas are known and no writer is open.
    fds_before = open_fds()
    async with Node.open(config) as node:
        durable = [e for e in node.store.entries.values() if e.durable]
        assert len(durable) == intake.MAX_PENDING_PER_ORIGIN + 1
        assert all(e.cf is None for e in durable)
        assert open_fds() - fds_before < 40  # the node's own sockets, not its replicas


async def test_chunks_for_more_replicas_than_open_writers_all_land(tmp_path: Path) -> None:
    """Writers are opened on demand and the least recently used closed: nothing is lost."""
    n = store.MAX_OPEN_WRITERS + 6
    async with Node.open(Config(data_dir=tmp_path / "n", host=LOOPBACK)) as node:
        conn = await stranger(node.port)
        files = [tiny(i) for i in range(n)]
        for manifest, _ in files:
            assert isinstance(await offer(conn, manifest), m.Ok)
        for index in range(2):  # round robin: every writer is closed and reopened
            for manifest, chunks in files:
                reply = await push(conn, manifest, index, chunks[index])
                assert isinstance(reply, m.Ok), reply
        conn.close()
        for manifest, chunks in files:
            entry = node.store.entries[manifest.hash]
            assert entry.complete
            assert entry.read_chunk(0) == chunks[0]
            assert entry.read_chunk(1) == chunks[1]


async def test_an_offer_nobody_fills_is_dropped(tmp_path: Path) -> None:
    async with Node.open(Config(data_dir=tmp_path / "n", host=LOOPBACK)) as node:
        conn = await stranger(node.port)
        manifest, _ = tiny(1)
        assert isinstance(await offer(conn, manifest), m.Ok)
        conn.close()
        later = node.store.entries[manifest.hash].opened + intake.EMPTY_REPLICA_TTL + 1
        assert intake.sweep_empty(node.store, now=later) == 1
        assert manifest.hash not in node.store.entries
