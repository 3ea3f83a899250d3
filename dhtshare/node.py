"""The node: composition root that owns the DHT, the chunk service and the data dir.

One process, one ``HOST:PORT`` for both the DHT (UDP) and the chunk service
(TCP).  ``async with Node(config)`` starts everything and guarantees that
every task, socket and file it opened is closed again, whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import random
import stat
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import msgpack

from dhtshare.config import DEFAULT_REPLICAS, Config
from dhtshare.core.ids import NODE_ID_LEN, ManifestHash, new_node_id, parse_manifest_hash, short
from dhtshare.core.manifest import Manifest, check_chunk_size
from dhtshare.core.messages import Hello, bitfield_from_indices
from dhtshare.core.providers import MAX_DHT_BITFIELD, Announcement, ProviderRecord
from dhtshare.disk.hashing import hash_file
from dhtshare.disk.store import ContentStore
from dhtshare.errors import (
    ConfigError,
    DhtshareError,
    NotFoundError,
    NotJoined,
    ReplicationShort,
    StorageError,
)
from dhtshare.net.control import ControlServer, Emit
from dhtshare.net.ctlclient import socket_path
from dhtshare.net.dht.client import Dht, require_contacts
from dhtshare.net.peers import PeerPool
from dhtshare.net.server import ChunkServer
from dhtshare.net.transport import Connection, make_hello
from dhtshare.transfer.fetch import Fetch, FetchResult
from dhtshare.transfer.replication import Replicator, holders_per_chunk

log = logging.getLogger(__name__)

STATE_FILE = "state.msgpack"
ID_FILE = "node_id"
LOCK_FILE = "lock"
MAX_SAVED_CONTACTS = 64
ANNOUNCE_CONCURRENCY = 8
WITHDRAW_TIMEOUT = 3.0
#: ``status`` counts the contacts heard from within this many seconds.
RECENT_CONTACT = 600.0


class DataDirBusy(DhtshareError):
    """Another node process owns this data dir."""



class Node:
    """A dhtshare node.

    ``start`` binds the sockets and opens the control socket at once; joining
    the network runs in the background (``joined`` is set when it is done), so
    a node answers ``status`` within a moment of starting whatever the network
    is like, and operations that need the network wait for the join.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.data_dir = config.data_dir
        self.node_id = b""
        self.store = ContentStore(self.data_dir, config.max_storage)
        self.server = ChunkServer(self.store, self.announce)
        self.replicator = Replicator(self)
        self.port = 0
        self.dht: Dht | None = None
        self._tcp: asyncio.Server | None = None
        self._control: ControlServer | None = None
        self._lock_fd: int | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._hello: Hello | None = None
        self.pool: PeerPool
        self._announced: set[bytes] = set()
        self._inbound: set[Connection] = set()
        self.stopped = asyncio.Event()
        #: Set once joining is over, successfully or not (``join_error`` says).
        self.joined = asyncio.Event()
        self.join_error: DhtshareError | None = None
        #: Set when the node gives up on its own (it could not join).
        self.gave_up = asyncio.Event()
        self.started_at = time.monotonic()
        self.active_parts: dict[Path, asyncio.Event] = {}

    # -- lifecycle ------------------------------------------------------------------------
    async def __aenter__(self) -> Node:
        try:
            await self.start()
        except BaseException:
            await self.stop(withdraw=False)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"cannot create data dir {self.data_dir}: {err.strerror}") from err
        self._lock()
        self.node_id = self._load_id()
        self.store.load()
        await self._bind()
        assert self._hello is not None
        self.pool = PeerPool(self._hello, self.server, self.config.connect_timeout,
                             self._peer_closed)
        self._control = ControlServer(
            socket_path(self.data_dir),
            {"publish": self._op_publish, "fetch": self._op_fetch, "status": self._op_status,
             "pin": self._op_pin, "unpin": self._op_unpin, "remove": self._op_remove,
             "holders": self._op_holders},
        )
        await self._control.start()
        self._write_info()
        self.spawn(self._join_then_serve())

    async def _join_then_serve(self) -> None:
        try:
            await self._join()
        except DhtshareError as err:
            self.join_error = err
            self.gave_up.set()
            return
        except Exception as err:
            # A bug: never pretend to be joined; the traceback goes to the log.
            self.join_error = DhtshareError(f"joining the network failed: {err!r}")
            self.gave_up.set()
            raise
        finally:
            self.joined.set()
        log.info("joined the network: %d DHT contacts", len(self.dht.contacts()) if self.dht
                 else 0)
        self.spawn(self._announce_all())
        self.spawn(self._maintenance())
        self.spawn(self._repair_loop())

    async def wait_joined(self, emit: Emit | None = None) -> Dht:
        """The DHT once this node has joined; waits (bounded) while it is joining."""
        if not self.joined.is_set():
            if emit is not None:
                emit("progress", {"stage": "joining"})
            try:
                async with asyncio.timeout(self.config.join_wait):
                    await self.joined.wait()
            except TimeoutError:
                raise NotJoined(
                    f"this node has not joined the network after {self.config.join_wait:.0f} s: "
                    "none of its peers has answered yet (is --peer right, and is that node up?)"
                ) from None
        if self.join_error is not None:
            raise self.join_error
        assert self.dht is not None
        return self.dht

    @property
    def state(self) -> str:
        if not self.joined.is_set():
            return "joining"
        return "offline" if self.join_error is not None else "joined"

    async def stop(self, withdraw: bool = True) -> None:
        """Withdraw our records and say goodbye (bounded in time), then close everything."""
        if self.stopped.is_set():
            return
        self.stopped.set()
        if self._control is not None:
            await self._control.stop()
        for task in list(self._tasks):
            task.cancel()
        dht = self.dht
        polite = withdraw and dht is not None and self.state == "joined"
        if polite:
            await self._hand_off_all()
        if polite and dht is not None and self._announced:
            with contextlib.suppress(TimeoutError, Exception):
                async with asyncio.timeout(WITHDRAW_TIMEOUT):
                    await asyncio.gather(*(dht.withdraw(h) for h in list(self._announced)))
        if dht is not None:
            self._save_state()
        if polite and dht is not None:
            # The original projects' leave message: our contacts drop us now
            # instead of handing us out until each of them times out on us.
            with contextlib.suppress(Exception):
                told = await dht.leave()
                log.info("told %d DHT contacts that we are leaving", told)
        if self._tcp is not None:
            self._tcp.close()
        for conn in list(self._inbound):
            if polite:
                conn.say_bye()
            else:
                conn.close()
        if hasattr(self, "pool"):
            self.pool.close_all(bye="shutting down" if polite else None)
        self.server.close()
        if self.dht is not None:
            self.dht.stop()
        self.store.close()
        with contextlib.suppress(OSError):
            (self.data_dir / "node.json").unlink()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        await asyncio.sleep(0)

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    # -- data dir ------------------------------------------------------------------------
    def _lock(self) -> None:
        fd = os.open(self.data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            raise DataDirBusy(
                f"another dhtshare node is using data dir {self.data_dir}"
            ) from err
        self._lock_fd = fd

    def _load_id(self) -> bytes:
        path = self.data_dir / ID_FILE
        with contextlib.suppress(OSError, ValueError):
            raw = bytes.fromhex(path.read_text().strip())
            if len(raw) == NODE_ID_LEN:
                return raw
        node_id = new_node_id()
        path.write_text(node_id.hex() + "\n")
        return node_id

    def _saved_contacts(self) -> list[tuple[str, int]]:
        try:
            state = msgpack.unpackb((self.data_dir / STATE_FILE).read_bytes(), raw=False)
            contacts = state["contacts"]
            return [
                (str(c[1]), int(c[2]))
                for c in contacts[:MAX_SAVED_CONTACTS]
                if isinstance(c, list) and len(c) == 3
            ]
        except (OSError, ValueError, KeyError, TypeError, msgpack.UnpackException):
            return []

    def _save_state(self) -> None:
        assert self.dht is not None
        contacts = [[i, h, p] for i, h, p in self.dht.contacts()][:MAX_SAVED_CONTACTS]
        if not contacts:
            return
        tmp = self.data_dir / (STATE_FILE + ".tmp")
        with contextlib.suppress(OSError):
            tmp.write_bytes(msgpack.packb({"contacts": contacts}, use_bin_type=True))
            os.replace(tmp, self.data_dir / STATE_FILE)

    def _write_info(self) -> None:
        info = {"pid": os.getpid(), "host": self.config.host, "port": self.port,
                "node_id": self.node_id.hex()}
        with contextlib.suppress(OSError):
            (self.data_dir / "node.json").write_text(__import__("json").dumps(info) + "\n")

    # -- network -------------------------------------------------------------------------
    async def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        host, want = self.config.host, self.config.port
        for _attempt in range(32):
            try:
                self._tcp = await loop.create_server(
                    self._inbound_connection, host, want, reuse_address=True
                )
            except OSError as err:
                raise self._bind_error(err, host, want, "TCP") from err
            port = int(self._tcp.sockets[0].getsockname()[1])
            self._hello = make_hello(self.node_id, port)
            dht = Dht(self.node_id, timeout=self.config.dht_timeout,
                      dead_ttl=self.config.dead_peer_ttl)
            try:
                await dht.listen(host, port)
            except OSError as err:
                self._tcp.close()
                self._tcp = None
                if want:
                    raise self._bind_error(err, host, want, "UDP") from err
                continue
            self.dht, self.port = dht, port
            log.info("node %s listening on %s:%d", short(self.node_id), host, port)
            return
        raise ConfigError(f"could not find a free port on {host}")

    @staticmethod
    def _bind_error(err: OSError, host: str, port: int, proto: str) -> ConfigError:
        if err.errno == errno.EADDRINUSE:
            return ConfigError(f"port {port} ({proto}) is already in use on {host}: "
                               "choose another with --port")
        if err.errno == errno.EADDRNOTAVAIL:
            return ConfigError(f"cannot listen on {host}: no such local address")
        return ConfigError(f"cannot listen on {host}:{port}: {err.strerror or err}")

    def _inbound_connection(self) -> Connection:
        assert self._hello is not None
        conn = Connection(self._hello, self.server, self._peer_closed)
        self._inbound.add(conn)
        return conn

    def _peer_closed(self, conn: Connection) -> None:
        """A peer link closed; if the peer said it was leaving, forget its DHT contact too."""
        self._inbound.discard(conn)
        hello = conn.peer_hello
        if conn.farewell is not None and hello is not None and self.dht is not None:
            self.dht.forget_peer(hello.node_id, (conn.peername[0], hello.listen_port))

    async def _join(self) -> None:
        """Join through ``--peer`` nodes and the contacts saved last time, together.

        A long-running node keeps trying for ``join_timeout`` seconds (peers
        started at the same moment, as in a compose cluster, may not listen
        yet); a short-lived one gives up after one round.
        """
        assert self.dht is not None
        peers = list(self.config.peers)
        saved = [c for c in self._saved_contacts() if c not in peers]
        deadline = time.monotonic() + self.config.join_timeout
        delay = 0.5
        while True:
            answered = await self.dht.bootstrap(peers + saved)
            if answered or not peers or time.monotonic() + delay > deadline:
                break
            log.warning("no peer answered yet; retrying in %.1f s", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        if peers:
            require_contacts(answered, peers)

    # -- providing -----------------------------------------------------------------------
    def _announcement(self, h: bytes) -> Announcement | None:
        entry = self.store.get(h)
        if entry is None:
            return None
        if entry.complete:
            return Announcement(self.port, self.config.provider_ttl, True, b"",
                                self.config.advertise)
        n = entry.manifest.chunk_count
        bitfield = b""
        if (n + 7) // 8 <= MAX_DHT_BITFIELD:
            bitfield = bitfield_from_indices(n, entry.held_indices())
        return Announcement(self.port, self.config.provider_ttl, False, bitfield,
                            self.config.advertise)

    async def announce(self, h: bytes) -> int:
        await self.joined.wait()
        ann = self._announcement(h)
        if ann is None or self.dht is None or self.join_error is not None:
            return 0
        self._announced.add(h)
        return await self.dht.announce(h, ann)

    async def _announce_all(self) -> None:
        sem = asyncio.Semaphore(ANNOUNCE_CONCURRENCY)

        async def one(h: bytes) -> None:
            async with sem:
                await self.announce(h)

        await asyncio.gather(*(one(h) for h in list(self.store.entries)))

    async def _maintenance(self) -> None:
        interval = self.config.reannounce_interval
        while True:
            await asyncio.sleep(interval)
            self._save_state()
            self.store.save()
            if self.dht is not None:
                await self.dht.refresh(self_lookup=True)
            await self._announce_all()

    async def live_nodes(self, near: bytes) -> list[tuple[bytes, tuple[str, int]]]:
        """Nodes to place replicas on: the closest to ``near`` plus our contacts."""
        assert self.dht is not None
        return await self.dht.nodes_near(near)

    async def _repair_loop(self) -> None:
        """Every ``repair_interval`` (with jitter), check each replicated file."""
        interval = self.config.repair_interval
        while True:
            await asyncio.sleep(interval * random.uniform(0.8, 1.2))
            for h, entry in list(self.store.entries.items()):
                if entry.replicas <= 0 or self.store.entries.get(h) is not entry:
                    continue
                if not (entry.durable or entry.complete):
                    continue
                try:
                    await self.replicator.repair(entry)
                except DhtshareError as err:
                    log.warning("repair of %s failed: %s", short(h), err)

    async def _hand_off_all(self) -> None:
        """On the way out: copy chunks we are among the last N holders of (bounded)."""
        durable = [e for e in self.store.entries.values() if e.durable and e.replicas > 0]
        if not durable:
            return
        try:
            async with asyncio.timeout(self.config.handoff_timeout):
                for entry in durable:
                    await self.replicator.hand_off(entry)
        except TimeoutError:
            log.warning("hand-off did not finish within %.0f s", self.config.handoff_timeout)
        except DhtshareError as err:
            log.warning("hand-off failed: %s", err)

    async def find_providers(
        self, h: bytes, on_records: Callable[[list[ProviderRecord]], None] | None = None
    ) -> list[ProviderRecord]:
        assert self.dht is not None
        return await self.dht.find_providers(h, on_records)

    def provider_is_dead(self, addr: tuple[str, int]) -> bool:
        """Whether the DHT saw the node at ``addr`` go (a timeout or its goodbye)."""
        return self.dht is not None and self.dht.is_dead(addr)

    def chunk_verified(self, manifest: Manifest, index: int, first: bool) -> None:
        self.server.announce_chunk(manifest.hash, index)
        if first:
            self.spawn(self.announce(manifest.hash))

    # -- operations ------------------------------------------------------------------------
    async def publish(
        self,
        path: Path,
        chunk_size: int,
        emit: Emit | None = None,
        copy: bool = False,
        replicas: int = 0,
    ) -> dict[str, Any]:
        """Hash ``path``, hold it and announce it.

        The file is served from where it is unless ``copy`` asks for a copy in
        the data dir (then the copy is what gets hashed and served, so moving or
        editing the original later changes nothing).
        """
        check_chunk_size(chunk_size)
        t0 = time.perf_counter()
        if not path.is_absolute():
            raise ConfigError(f"publish needs an absolute path, not {path}")
        try:
            before = os.stat(path)
        except OSError as err:
            raise StorageError(f"cannot read {path}: {err.strerror}") from err
        if not stat.S_ISREG(before.st_mode):
            raise StorageError(f"{path} is not a regular file")

        def progress(done: int) -> None:
            if emit is not None:
                loop.call_soon_threadsafe(emit, "progress", {"done": done, "total": before.st_size})

        loop = asyncio.get_running_loop()
        name = path.name
        if copy:
            path = await asyncio.to_thread(self.store.import_copy, path)
        try:
            manifest = await asyncio.to_thread(hash_file, path, chunk_size, progress, name)
        except BaseException:
            if copy:
                path.unlink(missing_ok=True)
            raise
        if copy:
            path = await asyncio.to_thread(self.store.place_copy, path, manifest)
            before = os.stat(path)
        after = os.stat(path)
        if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
            raise StorageError(f"{path} changed while it was being published; try again")
        hashed = time.perf_counter() - t0
        await self.wait_joined(emit)
        entry = self.store.add_complete(manifest, path, "published", replicas)
        stores = await self.announce(manifest.hash)
        reached = 0
        if replicas > 0:
            if emit is not None:
                emit("progress", {"done": 0, "total": manifest.size * replicas,
                                  "stage": "replicating"})
            placement = await self.replicator.replicate_new(entry, replicas)
            n = manifest.chunk_count
            reached = (min(placement.placed.get(i, 0) for i in range(n)) if n
                       else len(placement.targets))
        return {
            "hash": manifest.hash.hex(),
            "name": manifest.name,
            "path": str(path),
            "size": manifest.size,
            "chunk_size": manifest.chunk_size,
            "chunks": manifest.chunk_count,
            "dht_stores": stores,
            "replicas": {"requested": replicas, "reached": reached},
            "hash_seconds": round(hashed, 4),
            "elapsed": round(time.perf_counter() - t0, 4),
        }

    async def fetch(
        self,
        h: ManifestHash,
        output: Path | None,
        cwd: Path,
        force: bool = False,
        emit: Emit | None = None,
    ) -> FetchResult:
        def progress(done: int, total: int) -> None:
            if emit is not None:
                emit("progress", {"done": done, "total": total})

        await self.wait_joined(emit)
        result = await Fetch(self, h, output, cwd, force, progress).run()
        self.spawn(self.announce(h))
        return result

    async def _op_publish(self, args: dict[str, Any], emit: Emit) -> dict[str, Any]:
        path, chunk_size = args.get("path"), args.get("chunk_size")
        if not isinstance(path, str) or not isinstance(chunk_size, int):
            raise ConfigError("publish needs a path and a chunk size")
        replicas = args.get("replicas", 0)
        if not isinstance(replicas, int) or not 0 <= replicas <= 64:
            raise ConfigError("replicas must be 0 to 64")
        return await self.publish(Path(path), chunk_size, emit, bool(args.get("copy")), replicas)

    async def _op_fetch(self, args: dict[str, Any], emit: Emit) -> dict[str, Any]:
        h = parse_manifest_hash(str(args.get("hash", "")))
        output = args.get("output")
        cwd = args.get("cwd")
        if not isinstance(cwd, str) or (output is not None and not isinstance(output, str)):
            raise ConfigError("fetch needs a working directory")
        result = await self.fetch(
            h, Path(output) if output else None, Path(cwd), bool(args.get("force")), emit
        )
        return result.to_json()

    async def _op_status(self, args: dict[str, Any], emit: Emit) -> dict[str, Any]:
        assert self.dht is not None
        return {
            "node_id": self.node_id.hex(),
            "host": self.config.host,
            "port": self.port,
            "state": self.state,
            "join_error": str(self.join_error) if self.join_error is not None else None,
            "uptime": round(time.monotonic() - self.started_at, 3),
            "contacts": len(self.dht.contacts()),
            "contacts_answered_recently": self.dht.answered_within(RECENT_CONTACT),
            "routing_table": [
                {"node_id": nid.hex(), "address": f"{ip}:{port}", "seen_ago": round(ago, 1)}
                for nid, ip, port, ago in self.dht.table()
            ],
            "content": [
                {"hash": h.hex(), "name": e.manifest.name, "size": e.manifest.size,
                 "kind": e.kind, "durable": e.durable, "replicas": e.replicas,
                 "complete": e.complete, "chunks": e.manifest.chunk_count,
                 "chunks_held": e.held_count(), "path": str(e.path)}
                for h, e in self.store.entries.items()
            ],
            "replica_bytes": self.store.replica_bytes(),
            "max_storage": self.store.max_storage,
            "bytes_served": self.server.bytes_served,
            "bytes_stored": self.server.bytes_stored,
        }

    def _hash_arg(self, args: dict[str, Any]) -> ManifestHash:
        return parse_manifest_hash(str(args.get("hash", "")))

    async def _op_holders(self, args: dict[str, Any], emit: Emit) -> dict[str, Any]:
        """Who holds which chunks of a file, asked of every provider directly."""
        h = self._hash_arg(args)
        await self.wait_joined(emit)
        manifest = await Fetch(self, h, None, self.data_dir).manifest_only()
        entry = self.store.get(h)
        holders = await self.replicator.survey_hash(manifest, entry)
        counts = holders_per_chunk(holders, manifest.chunk_count)
        return {
            "hash": h.hex(),
            "name": manifest.name,
            "chunks": manifest.chunk_count,
            "holders": [
                {"node_id": x.node_id.hex(),
                 "address": (f"{x.address[0]}:{x.address[1]}" if x.node_id != self.node_id
                             else f"{self.config.advertise or self.config.host}:{self.port}"),
                 "self": x.node_id == self.node_id,
                 "durable": x.durable,
                 "chunks_held": manifest.chunk_count if x.held is None else len(x.held)}
                for x in holders
            ],
            "durable_copies_min": min(counts) if counts else 0,
            "durable_copies": counts if len(counts) <= 4096 else [],
        }

    async def _op_pin(self, args: dict[str, Any], emit: Emit) -> dict[str, Any]:
        """Fetch a file into the replica store and keep it as a durable copy."""
        h = self._hash_arg(args)
        replicas = args.get("replicas") or DEFAULT_REPLICAS
        if not isinstance(replicas, int) or not 1 <= replicas <= 64:
            raise ConfigError("replicas must be 1 to 64")
        await self.wait_joined(emit)
        entry = self.store.get(h)
        if entry is None or not entry.durable or not entry.complete:
            if entry is not None and entry.durable:
                self.store.drop(h)  # a partial replica: fetch it whole
            self.store.replica_dir.mkdir(parents=True, exist_ok=True)
            target = self.store.replica_path(h)

            def progress(done: int, total: int) -> None:
                emit("progress", {"done": done, "total": total})

            await Fetch(self, h, target, self.data_dir, True, progress).run()
            entry = self.store.adopt_replica(h, target, replicas)
        else:
            entry.replicas = max(entry.replicas, replicas)
            self.store.save()
        await self.announce(h)
        return {"hash": h.hex(), "name": entry.manifest.name, "size": entry.manifest.size,
                "pinned": True, "replicas": entry.replicas}

    async def _op_unpin(self, args: dict[str, Any], emit: Emit) -> dict[str, Any]:
        """Hand this node's copy over to others, then drop it."""
        h = self._hash_arg(args)
        entry = self.store.get(h)
        if entry is None or not entry.durable:
            raise NotFoundError(f"{h.hex()} is not pinned on this node")
        await self.wait_joined(emit)
        placement = await self.replicator.hand_off(entry)
        if placement.short:
            raise ReplicationShort(
                f"only found room elsewhere for part of {entry.manifest.name}: "
                f"{len(placement.short)} chunks would fall below {entry.replicas} copies; "
                "keeping the local copy"
            )
        self.store.drop(h)
        await self._withdraw(h)
        return {"hash": h.hex(), "pinned": False, "handed_off": len(placement.placed)}

    async def _op_remove(self, args: dict[str, Any], emit: Emit) -> dict[str, Any]:
        """Stop sharing a file (a replica is handed off first; a user's file is kept)."""
        h = self._hash_arg(args)
        entry = self.store.get(h)
        if entry is None:
            raise NotFoundError(f"{h.hex()} is not held by this node")
        if entry.durable:
            return await self._op_unpin(args, emit)
        await self.wait_joined(emit)
        self.store.drop(h)
        await self._withdraw(h)
        return {"hash": h.hex(), "removed": True, "path": str(entry.path)}

    async def _withdraw(self, h: bytes) -> None:
        self._announced.discard(h)
        if self.dht is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WITHDRAW_TIMEOUT):
                    await self.dht.withdraw(h)
