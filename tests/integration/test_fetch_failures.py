"""A fetch that fails with nothing verified leaves nothing behind.

A hostile (or merely useless) provider can hand out a manifest claiming any
size and then no chunk of it; the part file preallocated for it must not
stay on disk holding that space.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dhtshare.config import Config
from dhtshare.core.ids import parse_manifest_hash
from dhtshare.errors import NoProviders
from dhtshare.node import Node
from dhtshare.ops import FetchArgs, PublishArgs
from tests.conftest import LOOPBACK

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

CHUNK = 64 * 1024


async def test_no_part_file_is_kept_when_nothing_was_verified(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(40 * CHUNK))
    async with Node.open(Config(data_dir=tmp_path / "seeder", host=LOOPBACK)) as seeder:
        published = await seeder.ops.publish(PublishArgs(src, CHUNK))
        h = parse_manifest_hash(published.hash)
        # It hands out the manifest, then claims to hold none of the chunks.
        seeder.store.entries[h].held = bytearray(40)
        cfg = Config(data_dir=tmp_path / "fetcher", host=LOOPBACK,
                     peers=((LOOPBACK, seeder.port),))
        out = tmp_path / "out"
        out.mkdir()
        async with Node.open(cfg) as fetcher:
            await fetcher.upkeep.wait_joined()
            with pytest.raises(NoProviders) as failed:
                await fetcher.ops.fetch(FetchArgs(h, tmp_path, out / "got.bin"))
    assert "40 of 40 chunks could not be fetched" in str(failed.value)
    assert "kept" not in str(failed.value)
    assert list(out.iterdir()) == []  # no target, no .part, no journal
