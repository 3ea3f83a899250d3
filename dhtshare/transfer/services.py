"""What the fetch engine needs from its node, and the names its parts share."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from dhtshare.config import Config
from dhtshare.core.manifest import Manifest
from dhtshare.core.providers import ProviderRecord
from dhtshare.core.stats import Stats
from dhtshare.disk.store import ContentStore
from dhtshare.net.peers import PeerPool

Address = tuple[str, int]
#: Called with (bytes verified so far, file size, who sends) after every verified chunk;
#: who sends: ``{"sending": peers sending now, "peers": [{"address", "bytes",
#: "chunks", "rate"}, ...]}`` (the fastest few peers).
Progress = Callable[[int, int, dict[str, Any]], None]


class FetchServices(Protocol):
    """What the fetch engine needs from its node."""

    config: Config
    node_id: bytes
    store: ContentStore
    pool: PeerPool
    active_parts: dict[Path, asyncio.Event]
    stats: Stats

    async def find_providers(
        self, h: bytes, on_records: Callable[[list[ProviderRecord]], None] | None = None
    ) -> list[ProviderRecord]: ...

    def provider_is_dead(self, addr: Address) -> bool: ...

    def chunk_verified(self, manifest: Manifest, index: int, first: bool) -> None: ...


def label(addr: Address) -> str:
    """``host:port``, as results and logs show a peer."""
    return f"{addr[0]}:{addr[1]}"
