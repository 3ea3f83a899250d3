"""A replica pushed to a node that already holds the file whole as a user's file.

Repair may pick such a node.  It used to swap the user's complete copy for an
empty replica, so the node stopped serving the file until every chunk was
pushed again; now it copies its own file into the durable copy, verified.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dhtshare.config import Config
from dhtshare.core import messages as m
from dhtshare.core.ids import parse_manifest_hash
from dhtshare.disk.hashing import sha256_file
from dhtshare.net.transport import connect, make_hello
from dhtshare.node import Node
from dhtshare.ops import PublishArgs
from tests.conftest import LOOPBACK

pytestmark = pytest.mark.timeout(60)

CHUNK = 64 * 1024


async def test_push_onto_a_user_copy_keeps_it_whole(tmp_path: Path) -> None:
    src = tmp_path / "mine.bin"
    data = os.urandom(20 * CHUNK + 77)
    src.write_bytes(data)
    async with Node.open(Config(data_dir=tmp_path / "holder", host=LOOPBACK)) as holder:
        published = await holder.ops.publish(PublishArgs(src, CHUNK))
        h = parse_manifest_hash(published.hash)
        manifest = holder.store.entries[h].manifest
        conn = await connect(LOOPBACK, holder.port, make_hello(os.urandom(20), 1), None, 10)
        try:
            req = conn.next_id()
            reply, _ = await conn.request(m.PutManifest(req, h, 2, manifest.encode()), req, 10)
            assert isinstance(reply, m.Ok), reply
            have = await conn.get_have(h, 10)
        finally:
            conn.close()
        entry = holder.store.entries[h]
        assert entry.durable and entry.complete
        assert have.complete and have.durable  # served whole all along, now as a durable copy
        assert entry.path != src and sha256_file(entry.path) == sha256_file(src)
        src.unlink()  # the user's file may go: the durable copy does not depend on it
        assert entry.read_chunk(3) == data[3 * CHUNK : 4 * CHUNK]
