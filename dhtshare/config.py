"""Limits and defaults, in one frozen place.

The CLI builds a :class:`Config` from flags and environment and passes it
down; no module reads flags or the environment on its own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

PROTOCOL_VERSION = 1

DEFAULT_CHUNK_SIZE = MIB
#: Durable copies of each chunk that publish makes on other nodes by default.
DEFAULT_REPLICAS = 2
MIN_CHUNK_SIZE = 512
MAX_CHUNK_SIZE = 16 * MIB

#: Largest file a manifest may describe (1 PiB): beyond any real use, small
#: enough that chunk counts stay in memory-safe bounds.
MAX_FILE_SIZE = 1 << 50
#: A manifest of 1 PiB at 16 MiB chunks holds 64 Mi hashes; we refuse far
#: earlier: 4 Mi chunks is 128 MiB of hashes, the most we will ever load.
MAX_CHUNKS = 4 * 1024 * 1024
#: Hard cap on the small msgpack header of a frame.
MAX_HEADER_SIZE = 64 * KIB
#: Hard cap on a frame's raw body: a chunk or a manifest.
MAX_BODY_SIZE = MAX_CHUNKS * 32 + 4 * KIB


def default_data_dir() -> Path:
    """``$DHTSHARE_DATA_DIR``, else ``$XDG_DATA_HOME/dhtshare``, else ``~/.local/share/...``."""
    env = os.environ.get("DHTSHARE_DATA_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "dhtshare"


@dataclass(frozen=True)
class Config:
    """Everything a node needs to know to run."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    advertise: str | None = None
    peers: tuple[tuple[str, int], ...] = ()
    #: Seconds a provider record lives at a DHT node before it is dropped.
    provider_ttl: float = 1800.0
    #: Seconds between re-announcements (well inside the TTL).
    reannounce_interval: float = 600.0
    #: rpcudp wait for a DHT reply; the library's 5 s makes dead peers costly.
    dht_timeout: float = 1.5
    #: Seconds a DHT contact that timed out is not asked again.
    dead_peer_ttl: float = 300.0
    #: How long a node keeps retrying to join through its peers at start-up.
    join_timeout: float = 0.0
    #: How long an operation that needs the network waits for a joining node.
    join_wait: float = 30.0
    connect_timeout: float = 5.0
    request_timeout: float = 30.0
    #: A peer with requests in flight that delivers nothing for this long is
    #: dropped from the fetch; its chunks go to the others.
    peer_stall_timeout: float = 10.0
    #: Peers a fetch talks to at once.
    max_fetch_peers: int = 16
    #: Bytes requested but not yet received from one peer.
    window_bytes: int = 16 * MIB
    #: Bytes of replica data this node keeps for others (0: no limit but the disk).
    max_storage: int = 0
    #: Seconds between checks that replicated chunks still have enough holders.
    repair_interval: float = 300.0
    #: Longest a stopping node spends handing off chunks before it exits.
    handoff_timeout: float = 30.0
    #: Bytes per second this node sends / receives over all its links (0: no limit);
    #: changed at run time with ``dhtshare limit``.
    max_upload_rate: int = 0
    max_download_rate: int = 0
    #: Port of the Prometheus metrics endpoint (``/metrics``; 0: off), and its address.
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    #: Benchmarks only: peer links in plaintext, unauthenticated (both ends must
    #: agree).  Set by ``DHTSHARE_BENCH_PLAINTEXT_LINKS=1``; there is no flag.
    plaintext_links: bool = False
    #: Where each setting came from, as ``dhtshare config show`` tells it:
    #: (name, value as JSON, source), filled by the command that started the node.
    sources: tuple[tuple[str, Any, str], ...] = ()
