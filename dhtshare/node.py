"""The node: the composition root that builds every part, wires them, and stops them in order.

One process, one ``HOST:PORT`` for both the DHT (UDP) and the chunk service
(TCP).  :meth:`Node.start` returns a node whose every part is built and live,
or raises having closed whatever it had opened; ``async with Node.open(config)``
also guarantees that every task, socket and file is closed again at the end.
What the parts do lives in their own rooms: the data dir in
:mod:`dhtshare.disk.datadir`, serving in :mod:`dhtshare.net.server`, joining,
announcing and repair in :mod:`dhtshare.upkeep`, and what users ask for in
:mod:`dhtshare.ops`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import logging
import resource
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dhtshare.config import Config
from dhtshare.core.handshake import LinkSecurity
from dhtshare.core.ids import short
from dhtshare.core.manifest import Manifest
from dhtshare.core.providers import ProviderRecord
from dhtshare.core.stats import Stats
from dhtshare.disk.datadir import DataDir
from dhtshare.disk.store import ContentStore
from dhtshare.errors import ConfigError
from dhtshare.net.control import ControlServer
from dhtshare.net.ctlclient import socket_path
from dhtshare.net.dht.client import Dht
from dhtshare.net.peers import PeerPool
from dhtshare.net.ratelimit import Limiter
from dhtshare.net.server import ChunkServer
from dhtshare.net.transport import Connection, make_hello, source_host
from dhtshare.ops import Operations
from dhtshare.transfer.replication import Replicator
from dhtshare.upkeep import Upkeep

if TYPE_CHECKING:
    from dhtshare.metrics import MetricsServer

log = logging.getLogger(__name__)

#: Attempts at finding a port free for both TCP and UDP when asked for any port.
BIND_ATTEMPTS = 32
#: How long stopping waits for the node's own background tasks to unwind.
TASK_GRACE = 2.0

Address = tuple[str, int]


class Node:
    """A running dhtshare node (made by :meth:`start`; every attribute is live)."""

    def __init__(self, config: Config, data: DataDir, store: ContentStore, server: ChunkServer,
                 dht: Dht, pool: PeerPool, port: int) -> None:
        self.config = config
        self.data = data
        self.data_dir = config.data_dir
        self.node_id = data.node_id
        self.store = store
        self.server = server
        self.dht = dht
        self.pool = pool
        #: The node's own counters (the DHT's lookups among them), for ``/metrics``.
        self.stats = dht.stats
        self.metrics: MetricsServer | None = None
        self.port = port
        self.started_at = time.monotonic()
        self.stopped = asyncio.Event()
        #: Downloads in progress, by their ``.part`` file (one fetch per target).
        self.active_parts: dict[Path, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.replicator = Replicator(self)
        self.upkeep = Upkeep(config, data, store, dht, self.replicator, port, self.spawn,
                             self.stats)
        self.ops = Operations(self)
        self.control = ControlServer(socket_path(config.data_dir), self.ops.handlers())
        server.announce = self.upkeep.announce

    # -- lifecycle ------------------------------------------------------------------------
    @classmethod
    async def start(cls, config: Config) -> Node:
        """Open the data dir, bind the port, open the control socket; join in the background.

        The control socket answers at once (``status`` says ``joining``);
        operations that need the network wait for the join.
        """
        _raise_descriptor_limit()
        with contextlib.ExitStack() as undo:
            data = DataDir.open(config.data_dir)
            undo.callback(data.close)
            store = ContentStore(config.data_dir, config.max_storage)
            undo.callback(store.close)
            store.load()
            limiter = Limiter(config.max_upload_rate, config.max_download_rate)
            server = ChunkServer(store, limiter=limiter)
            undo.callback(server.close)
            dht = Dht(data.identity, timeout=config.dht_timeout, dead_ttl=config.dead_peer_ttl,
                      stats=Stats())
            undo.callback(dht.stop)
            closed = _forget_leaving(dht)
            link = None if config.plaintext_links else LinkSecurity(data.identity)
            if link is None:
                log.warning("peer links are PLAINTEXT and unauthenticated (benchmarking only)")
            port = await _bind(config, server, dht, data.node_id, closed, link)
            pool = PeerPool(make_hello(data.node_id, port), server, config.connect_timeout,
                            closed, link, limiter, source_host(config.host))
            undo.callback(pool.close_all)
            node = cls(config, data, store, server, dht, pool, port)
            if config.metrics_port:
                node.metrics = await _serve_metrics(node)
                undo.callback(node.metrics.close)
            await node.control.start()
            undo.pop_all()
        data.write_info(config.host, port)
        node.spawn(node.upkeep.join_then_serve())
        node.spawn(node._sample_links())
        log.info("node %s listening on %s:%d", short(node.node_id), config.host, port)
        return node

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, config: Config) -> AsyncIterator[Node]:
        """``async with Node.open(config) as node``: started, and stopped politely at the end."""
        node = await cls.start(config)
        try:
            yield node
        finally:
            await node.stop()

    async def stop(self, polite: bool = True) -> None:
        """Hand off, withdraw and say goodbye (bounded in time), then close everything."""
        if self.stopped.is_set():
            return
        self.stopped.set()
        await self.control.stop()
        if self.metrics is not None:
            self.metrics.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=TASK_GRACE)
        polite = await self.upkeep.leave(polite)
        bye = "shutting down" if polite else None
        self.server.stop_listening(bye)
        self.pool.close_all(bye=bye)
        self.server.close()
        self.dht.stop()
        self.store.close()
        self.data.close()
        await asyncio.sleep(0)

    async def _sample_links(self) -> None:
        """Once a second, note each link's byte counts: ``peers`` shows current rates."""
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for conn in (*self.server.inbound_links(), *self.pool.connections()):
                conn.sample(now)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as a task this node owns (cancelled and awaited on stop).

        It starts in a fresh context: whatever started it (a fetch announcing
        its first chunk) neither owns it nor passes on its context variables.
        """
        loop = asyncio.get_running_loop()
        task: asyncio.Task[Any] = loop.create_task(coro, context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    # -- what the fetch engine and the replicator need (FetchServices, ReplicationServices) --
    async def find_providers(
        self, h: bytes, on_records: Callable[[list[ProviderRecord]], None] | None = None
    ) -> list[ProviderRecord]:
        return await self.dht.find_providers(h, on_records)

    async def live_nodes(self, near: bytes) -> list[tuple[bytes, Address]]:
        """Nodes to place replicas on: the closest to ``near`` plus our contacts."""
        return await self.dht.nodes_near(near)

    def provider_is_dead(self, addr: Address) -> bool:
        """Whether the DHT saw the node at ``addr`` go (a timeout or its goodbye)."""
        return self.dht.is_dead(addr)

    def chunk_verified(self, manifest: Manifest, index: int, first: bool) -> None:
        """Tell subscribed peers at once; announce ourselves as a provider on the first."""
        self.stats.chunks_fetched += 1
        self.stats.chunk_bytes_fetched += manifest.chunk_length(index)
        self.server.announce_chunk(manifest.hash, index)
        if first:
            self.spawn(self.upkeep.announce(manifest.hash))


def _raise_descriptor_limit() -> None:
    """Let the node use every descriptor it may (the soft limit is often 1024, the hard far more).

    Each peer link and each file being served holds one; the inbound cap
    (:func:`dhtshare.net.server.inbound_limit`) is sized from what this leaves.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _serve_metrics(node: Node) -> MetricsServer:
    """Serve ``/metrics`` (prometheus-client is imported only when asked for)."""
    from dhtshare.metrics import MetricsServer

    server = MetricsServer(node)
    await server.start(node.config.metrics_host, node.config.metrics_port)
    return server


def _forget_leaving(dht: Dht) -> Callable[[Connection], None]:
    """A peer link closed: if the peer said it was leaving, forget its DHT contact too."""

    def closed(conn: Connection) -> None:
        dht.stats.link_closed(conn.initiator, conn.bytes_sent, conn.bytes_received)
        hello = conn.peer_hello
        if conn.farewell is not None and hello is not None:
            dht.forget_peer(hello.node_id, (conn.peername[0], hello.listen_port))

    return closed


async def _bind(config: Config, server: ChunkServer, dht: Dht, node_id: bytes,
                closed: Callable[[Connection], None], link: LinkSecurity | None) -> int:
    """Bind TCP and UDP on one port (the one asked for, or one free for both)."""
    host, want = config.host, config.port
    for _attempt in range(BIND_ATTEMPTS):
        try:
            port = await server.listen(host, want, node_id, closed, link)
        except OSError as err:
            raise _bind_error(err, host, want, "TCP") from err
        try:
            await dht.listen(host, port)
        except OSError as err:
            server.stop_listening()
            if want:
                raise _bind_error(err, host, want, "UDP") from err
            continue
        return port
    raise ConfigError(f"could not find a port free for both TCP and UDP on {host}")


def _bind_error(err: OSError, host: str, port: int, proto: str) -> ConfigError:
    if err.errno == errno.EADDRINUSE:
        return ConfigError(f"port {port} ({proto}) is already in use on {host}: "
                           "choose another with --port")
    if err.errno == errno.EADDRNOTAVAIL:
        return ConfigError(f"cannot listen on {host}: no such local address")
    return ConfigError(f"cannot listen on {host}:{port}: {err.strerror or err}")


__all__ = ["Node"]
