"""Prometheus metrics of one node: ``--metrics-port`` serves ``/metrics`` over HTTP.

Every value is read at scrape time from where it lives (the links' byte
counts, the chunk server, the store, the routing table) or from the node's
:class:`~dhtshare.core.stats.Stats`; the registry is the node's own, so several
nodes in one process never share a metric.  The endpoint is a tiny asyncio
HTTP handler on the node's loop: a scrape reads the node's state on the same
thread that changes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from dhtshare.core.stats import DIRECTIONS
from dhtshare.errors import ConfigError

if TYPE_CHECKING:
    from dhtshare.net.transport import Connection
    from dhtshare.node import Node

log = logging.getLogger(__name__)

#: Longest a scraper may take to send its request.
REQUEST_TIMEOUT = 5.0
MAX_REQUEST = 16 * 1024


class NodeCollector:
    """The node's metric families, built from live values at each scrape."""

    def __init__(self, node: Node) -> None:
        self.node = node
        #: Highest byte counts reported so far: a link between its close and its
        #: count moving to the closed totals must not make a counter go back.
        self._last: dict[tuple[str, str], int] = {}

    def _links(self) -> dict[str, list[Connection]]:
        node = self.node
        return {"inbound": list(node.server._inbound), "outbound": node.pool.connections()}

    def _monotonic(self, key: tuple[str, str], value: int) -> int:
        value = max(value, self._last.get(key, 0))
        self._last[key] = value
        return value

    def collect(self) -> Iterator[Metric]:
        node, stats = self.node, self.node.stats
        links = self._links()
        sent = CounterMetricFamily("dhtshare_peer_sent_bytes",
                                   "Bytes sent over peer links, by who opened the link",
                                   labels=["direction"])
        received = CounterMetricFamily("dhtshare_peer_received_bytes",
                                       "Bytes received over peer links, by who opened the link",
                                       labels=["direction"])
        peers = GaugeMetricFamily("dhtshare_connected_peers", "Open peer links",
                                  labels=["direction"])
        for d in DIRECTIONS:
            conns = links[d]
            sent.add_metric([d], self._monotonic(
                ("sent", d), stats.closed_sent[d] + sum(c.bytes_sent for c in conns)))
            received.add_metric([d], self._monotonic(
                ("received", d), stats.closed_received[d] + sum(c.bytes_received for c in conns)))
            peers.add_metric([d], len(conns))
        yield from (sent, received, peers)
        yield CounterMetricFamily("dhtshare_chunks_served", "Chunks sent to peers",
                                  value=node.server.chunks_served)
        yield CounterMetricFamily("dhtshare_served_bytes", "Chunk bytes sent to peers",
                                  value=node.server.bytes_served)
        yield CounterMetricFamily("dhtshare_chunks_fetched", "Chunks fetched and verified",
                                  value=stats.chunks_fetched)
        yield CounterMetricFamily("dhtshare_fetched_bytes", "Chunk bytes fetched and verified",
                                  value=stats.chunk_bytes_fetched)
        yield CounterMetricFamily("dhtshare_verification_failures",
                                  "Chunks or manifests from peers that failed verification",
                                  value=stats.verification_failures)
        yield CounterMetricFamily("dhtshare_peer_bans",
                                  "Peers banned from a fetch for sending bad data",
                                  value=stats.bans)
        lookups = CounterMetricFamily("dhtshare_dht_lookups", "DHT lookups, by RPC",
                                      labels=["kind"])
        latency = HistogramMetricFamily("dhtshare_dht_lookup_seconds",
                                        "How long DHT lookups took, by RPC", labels=["kind"])
        for kind, hist in sorted(stats.lookup_seconds.items()):
            lookups.add_metric([kind], stats.lookups.get(kind, 0))
            cumulative, buckets = 0, []
            for bound, n in zip((*hist.bounds, float("inf")), hist.counts, strict=True):
                cumulative += n
                buckets.append((_bound(bound), cumulative))
            latency.add_metric([kind], buckets, sum_value=hist.total)
        yield from (lookups, latency)
        yield GaugeMetricFamily("dhtshare_routing_table_contacts", "Contacts in the routing table",
                                value=len(node.dht.contacts()))
        yield GaugeMetricFamily("dhtshare_stored_bytes",
                                "Bytes of replicas held for others (what --max-storage caps)",
                                value=node.store.replica_bytes())
        yield CounterMetricFamily("dhtshare_replica_received_bytes",
                                  "Replica bytes taken from other nodes",
                                  value=node.server.bytes_stored)
        entries = node.store.entries
        yield GaugeMetricFamily("dhtshare_replication_deficit_copies",
                                "Durable copies still missing after the last repair round",
                                value=sum(n for h, n in stats.deficits.items() if h in entries))
        yield CounterMetricFamily("dhtshare_repair_copies", "Durable copies made by repair",
                                  value=stats.repair_copies)


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class MetricsServer:
    """``GET /metrics`` on ``host:port``, answered from the node's registry."""

    def __init__(self, node: Node) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(NodeCollector(node))
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        try:
            self._server = await asyncio.start_server(self._serve, host, port)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise ConfigError(f"metrics port {port} is already in use on {host}: "
                                  "choose another with --metrics-port") from err
            raise ConfigError(f"cannot serve metrics on {host}:{port}: "
                              f"{err.strerror or err}") from err
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("metrics on http://%s:%d/metrics", host, self.port)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            parts = head[:MAX_REQUEST].split(b"\r\n", 1)[0].split()
            if len(parts) >= 2 and parts[0] in (b"GET", b"HEAD") \
                    and parts[1].split(b"?")[0] in (b"/metrics", b"/"):
                status, ctype = "200 OK", CONTENT_TYPE_LATEST
                body = generate_latest(self.registry)
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"not found: try /metrics\n"
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode())
            if parts[:1] != [b"HEAD"]:
                writer.write(body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


__all__ = ["MetricsServer", "NodeCollector"]
