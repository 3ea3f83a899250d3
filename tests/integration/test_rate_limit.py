"""Bandwidth limits: a node keeps its sending and receiving within the rate, over real links.

The chunk server of an in-process node sends to a stranger's link; the rate
is measured where the bytes arrive.  A machine that is slow only makes the
transfer slower than the limit, so only the upper bound is tight; the lower
one is loose.  ``bench/ratelimit.py`` measures 1, 4 and 16 links.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

from dhtshare.config import MIB, Config
from dhtshare.core import messages as m
from dhtshare.core.handshake import LinkSecurity
from dhtshare.core.identity import Identity
from dhtshare.core.ids import parse_manifest_hash
from dhtshare.net.ratelimit import Limiter
from dhtshare.net.transport import Connection, connect, make_hello
from dhtshare.node import Node
from dhtshare.ops import LimitArgs, PublishArgs
from tests.conftest import LOOPBACK, Cluster, run_cli

pytestmark = pytest.mark.timeout(90)

CHUNKS = 24
RATE = 8_000_000


async def stranger(port: int, limiter: Limiter | None = None) -> Connection:
    me = Identity.generate()
    return await connect(LOOPBACK, port, make_hello(me.node_id, 1), None, 10,
                         link=LinkSecurity(me), limiter=limiter)


async def pull(conn: Connection, h: bytes, node: Node) -> tuple[int, float]:
    """Ask for every chunk at once; (bytes received, seconds from the first to the last)."""
    manifest = node.store.entries[h].manifest
    futs = []
    for i in range(CHUNKS):
        rid = conn.next_id()
        futs.append(conn.start_request(m.GetChunk(rid, h, i, manifest.chunk_hash(i)), rid))
    t0 = time.perf_counter()
    got = 0
    for fut in asyncio.as_completed(futs):
        _msg, body = await asyncio.wait_for(fut, 60)
        got += len(body)
    return got, time.perf_counter() - t0


async def published(node: Node, tmp_path: Path) -> bytes:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(CHUNKS * MIB))
    result = await node.ops.publish(PublishArgs(src, MIB))
    return parse_manifest_hash(result.hash)


async def test_upload_keeps_to_the_limit_and_changes_at_run_time(tmp_path: Path) -> None:
    config = Config(data_dir=tmp_path / "n", host=LOOPBACK, max_upload_rate=RATE)
    async with Node.open(config) as node:
        h = await published(node, tmp_path)
        conn = await stranger(node.port)
        try:
            got, took = await pull(conn, h, node)
            rate = got / took
            assert rate <= RATE * 1.1, f"{rate / 1e6:.1f} MB/s against a limit of 8"
            assert rate >= RATE * 0.5, f"{rate / 1e6:.1f} MB/s: far below the limit"
            # Lifted at run time, through the control operation: much faster at once.
            lifted = await node.ops.limit(LimitArgs(upload=0))
            assert lifted.upload == 0
            _got, quick = await pull(conn, h, node)
            assert quick < took / 2
        finally:
            conn.close()


async def test_download_keeps_to_the_limit(tmp_path: Path) -> None:
    async with Node.open(Config(data_dir=tmp_path / "n", host=LOOPBACK)) as node:
        h = await published(node, tmp_path)
        conn = await stranger(node.port, Limiter(download=RATE))
        try:
            got, took = await pull(conn, h, node)
        finally:
            conn.close()
        rate = got / took
        assert rate <= RATE * 1.1, f"{rate / 1e6:.1f} MB/s against a limit of 8"
        assert rate >= RATE * 0.5, f"{rate / 1e6:.1f} MB/s: far below the limit"


@pytest.mark.slow
def test_limit_command_sets_and_shows_the_running_nodes_limits(cluster: Cluster) -> None:
    (node,) = cluster.start(1)
    ddir = str(node.data_dir)
    res = run_cli("limit", "--upload", "5M", "--json", "--data-dir", ddir)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"upload": 5 * 1024 * 1024, "download": 0}
    res = run_cli("limit", "--data-dir", ddir)
    assert res.returncode == 0, res.stderr
    assert "upload:" in res.stdout
    assert "download: no limit" in res.stdout
    res = run_cli("limit", "--download", "fast", "--data-dir", ddir)
    assert res.returncode != 0
    assert "--download" in res.stderr
    assert "Traceback" not in res.stderr
