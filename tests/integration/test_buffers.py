"""Received chunk buffers go back to the pool, and nobody touches them afterwards.

A full pool closes what it is handed; code that still read a buffer after
handing it back failed with "mmap closed or invalid", only when the pool
happened to be full.  Here it is always full: every release closes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from dhtshare.config import Config
from dhtshare.core.ids import parse_manifest_hash
from dhtshare.disk.buffers import POOL
from dhtshare.disk.hashing import sha256_file
from dhtshare.node import Node
from dhtshare.ops import FetchArgs, PublishArgs
from tests.conftest import LOOPBACK

pytestmark = pytest.mark.timeout(60)

CHUNK = 256 * 1024  # large enough to be pooled and written from a worker thread


@pytest.fixture
def pool_always_full() -> Iterator[None]:
    old = POOL.capacity
    POOL.capacity = 0
    try:
        yield
    finally:
        POOL.capacity = old


async def test_fetch_with_a_pool_that_closes_every_buffer(
    tmp_path: Path, pool_always_full: None
) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(40 * CHUNK + 123))
    seeder_cfg = Config(data_dir=tmp_path / "seeder", host=LOOPBACK)
    async with Node.open(seeder_cfg) as seeder:
        published = await seeder.ops.publish(PublishArgs(src, CHUNK))
        fetcher_cfg = Config(data_dir=tmp_path / "fetcher", host=LOOPBACK,
                             peers=((LOOPBACK, seeder.port),))
        async with Node.open(fetcher_cfg) as fetcher:
            await fetcher.upkeep.wait_joined()
            h = parse_manifest_hash(published.hash)
            result = await fetcher.ops.fetch(FetchArgs(h, tmp_path, tmp_path / "got.bin"))
    assert result.bytes_downloaded == src.stat().st_size
    assert sha256_file(tmp_path / "got.bin") == sha256_file(src)
    assert result.banned == []
