"""``--metrics-port``: Prometheus metrics scraped over HTTP while a fetch runs.

The counters must move by the bytes a fetch moved: the fetcher's received
bytes (on the links it dialed) and the holder's sent bytes (on the links it
accepted) grow by at least the file's size, and chunks fetched equals the
chunk count.
"""

from __future__ import annotations

import asyncio
import re
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from dhtshare.config import Config
from dhtshare.core.ids import parse_manifest_hash
from dhtshare.core.stats import Stats
from dhtshare.errors import ConfigError
from dhtshare.node import Node
from dhtshare.ops import FetchArgs, PublishArgs
from tests.conftest import (
    LOOPBACK,
    fetch_json,
    free_port,
    make_file,
    publish,
    run_cli,
    start_node,
)

MIB = 1024 * 1024
SIZE = 6 * MIB + 12345
CHUNK = MIB
CHUNKS = 7

FAMILIES = (
    "dhtshare_peer_sent_bytes_total",
    "dhtshare_peer_received_bytes_total",
    "dhtshare_chunks_served_total",
    "dhtshare_served_bytes_total",
    "dhtshare_chunks_fetched_total",
    "dhtshare_fetched_bytes_total",
    "dhtshare_verification_failures_total",
    "dhtshare_peer_bans_total",
    "dhtshare_dht_lookups_total",
    "dhtshare_dht_lookup_seconds_bucket",
    "dhtshare_dht_lookup_seconds_count",
    "dhtshare_routing_table_contacts",
    "dhtshare_connected_peers",
    "dhtshare_stored_bytes",
    "dhtshare_replica_received_bytes_total",
    "dhtshare_replication_deficit_copies",
    "dhtshare_repair_copies_total",
)

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def scrape(port: int) -> dict[str, float]:
    """``/metrics`` as ``{"name{labels}": value}`` (comments left out)."""
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match, line
        samples[match[1] + (match[2] or "")] = float(match[3])
    return samples


def value(samples: dict[str, float], name: str, **labels: str) -> float:
    key = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
                  if labels else "")
    return samples.get(key, 0.0)


def families(samples: dict[str, float]) -> set[str]:
    return {key.split("{")[0] for key in samples}


def check_fetch_moved_counters(holder_before: dict[str, float], holder: dict[str, float],
                               fetcher_before: dict[str, float],
                               fetcher: dict[str, float]) -> None:
    got = (value(fetcher, "dhtshare_peer_received_bytes_total", direction="outbound")
           - value(fetcher_before, "dhtshare_peer_received_bytes_total", direction="outbound"))
    sent = (value(holder, "dhtshare_peer_sent_bytes_total", direction="inbound")
            - value(holder_before, "dhtshare_peer_sent_bytes_total", direction="inbound"))
    assert got >= SIZE
    assert sent >= SIZE
    assert value(fetcher, "dhtshare_chunks_fetched_total") == CHUNKS
    assert value(fetcher, "dhtshare_fetched_bytes_total") == SIZE
    assert value(holder, "dhtshare_chunks_served_total") == CHUNKS
    assert value(holder, "dhtshare_served_bytes_total") == SIZE
    assert value(fetcher, "dhtshare_dht_lookups_total", kind="get_providers") >= 1
    assert value(fetcher, "dhtshare_dht_lookup_seconds_count", kind="get_providers") >= 1
    assert value(fetcher, "dhtshare_verification_failures_total") == 0
    assert value(fetcher, "dhtshare_routing_table_contacts") >= 1
    for samples in (holder, fetcher):
        missing = set(FAMILIES) - families(samples)
        assert not missing, missing


async def test_in_process_scrape_during_and_after_a_fetch(tmp_path: Path) -> None:
    src = make_file(tmp_path / "src.bin", SIZE, seed=3)
    m_holder, m_fetcher = free_port(), free_port()
    cfg = Config(data_dir=tmp_path / "holder", host=LOOPBACK, metrics_port=m_holder)
    async with Node.open(cfg) as holder:
        h = parse_manifest_hash((await holder.ops.publish(PublishArgs(src, CHUNK))).hash)
        cfg = Config(data_dir=tmp_path / "fetcher", host=LOOPBACK, metrics_port=m_fetcher,
                     peers=((LOOPBACK, holder.port),))
        async with Node.open(cfg) as fetcher:
            await fetcher.upkeep.wait_joined()
            holder_before = await asyncio.to_thread(scrape, m_holder)
            fetcher_before = await asyncio.to_thread(scrape, m_fetcher)
            fetch = asyncio.create_task(
                fetcher.ops.fetch(FetchArgs(h, tmp_path, tmp_path / "out.bin")))
            during = await asyncio.to_thread(scrape, m_fetcher)  # a scrape mid-fetch works
            assert "dhtshare_peer_received_bytes_total" in families(during)
            await fetch
            holder_after = await asyncio.to_thread(scrape, m_holder)
            fetcher_after = await asyncio.to_thread(scrape, m_fetcher)
            check_fetch_moved_counters(holder_before, holder_after,
                                       fetcher_before, fetcher_after)
            assert value(fetcher_after, "dhtshare_connected_peers", direction="outbound") >= 1
            # Closed links keep counting: the totals never go back.
            fetcher.pool.close_all()
            await asyncio.sleep(0.1)
            closed = await asyncio.to_thread(scrape, m_fetcher)
            assert (value(closed, "dhtshare_peer_received_bytes_total", direction="outbound")
                    >= value(fetcher_after, "dhtshare_peer_received_bytes_total",
                             direction="outbound"))
            assert fetcher.stats.closed_received["outbound"] >= SIZE
    # Stopped with the node.
    with pytest.raises(urllib.error.URLError):
        scrape(m_fetcher)


async def test_metrics_are_off_by_default(tmp_path: Path) -> None:
    config = Config(data_dir=tmp_path / "n", host=LOOPBACK)
    assert config.metrics_port == 0
    assert config.metrics_host == "127.0.0.1"
    async with Node.open(config) as node:
        assert node.metrics is None


async def test_metrics_port_in_use_is_a_config_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind((LOOPBACK, 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = Config(data_dir=tmp_path / "n", host=LOOPBACK, metrics_port=port)
        with pytest.raises(ConfigError, match=f"metrics port {port} is already in use"):
            await Node.start(cfg)
    # Everything it had opened is closed again: the same data dir starts.
    async with Node.open(Config(data_dir=tmp_path / "n", host=LOOPBACK)):
        pass


def test_stats_histogram_and_closed_links() -> None:
    stats = Stats()
    stats.lookup_done("find_node", 0.003)
    stats.lookup_done("find_node", 100.0)
    hist = stats.lookup_seconds["find_node"]
    assert hist.counts == [1] + [0] * (len(hist.bounds) - 1) + [1]
    assert hist.count == 2
    stats.link_closed(True, 5, 7)
    assert stats.closed_sent == {"inbound": 0, "outbound": 5}
    assert stats.closed_received["outbound"] == 7


def test_cli_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind((LOOPBACK, 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = run_cli("bootstrap", "--host", LOOPBACK, "--port", str(free_port()),
                      "--data-dir", str(tmp_path / "n"), "--metrics-port", str(port), timeout=30)
    assert res.returncode != 0
    assert f"metrics port {port} is already in use" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.slow
def test_processes_scraped_during_a_fetch(tmp_path: Path) -> None:
    m_holder, m_fetcher = free_port(), free_port()
    holder = start_node(tmp_path, "holder", extra=["--metrics-port", str(m_holder)])
    try:
        fetcher = start_node(tmp_path, "fetcher", [holder.addr],
                             extra=["--metrics-port", str(m_fetcher),
                                    "--metrics-host", LOOPBACK])
        try:
            src = make_file(tmp_path / "src.bin", SIZE, seed=5)
            # No replicas: the fetcher must not already hold a copy pushed by publish.
            h = publish(holder, src, "--chunk-size", str(CHUNK), "--replicas", "0")
            holder_before, fetcher_before = scrape(m_holder), scrape(m_fetcher)
            result = fetch_json(fetcher, h, tmp_path / "out.bin")
            assert result["size"] == SIZE
            check_fetch_moved_counters(holder_before, scrape(m_holder),
                                       fetcher_before, scrape(m_fetcher))
        finally:
            fetcher.stop()
    finally:
        holder.stop()
