"""What a user can ask of a running node, with typed arguments and results.

Each operation takes a frozen ``*Args`` (parsed and checked from the control
socket's untrusted map by ``from_wire``, or built directly by a short-lived
command) and returns a result whose ``to_json`` is what ``--json`` prints.
The control socket, the CLI's short-lived node and the tests all go through
these same methods, so an operation behaves the same however it is reached.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from dhtshare.config import DEFAULT_REPLICAS
from dhtshare.core.identity import fingerprint
from dhtshare.core.ids import ManifestHash, parse_manifest_hash, short
from dhtshare.core.manifest import check_chunk_size
from dhtshare.disk.datadir import DataDir
from dhtshare.disk.hashing import hash_file
from dhtshare.errors import (
    ConfigError,
    DhtshareError,
    NotFoundError,
    ReplicationShort,
    StorageError,
    os_error,
    shown,
)
from dhtshare.net.control import Emit, OpHandler
from dhtshare.net.dht.client import Dht
from dhtshare.net.server import ChunkServer
from dhtshare.transfer.fetch import Fetch, FetchResult
from dhtshare.transfer.replication import Replicator, holders_per_chunk
from dhtshare.transfer.services import FetchServices
from dhtshare.upkeep import Upkeep


class NodeParts(FetchServices, Protocol):
    """What the operations use of their node (:class:`dhtshare.node.Node` has it all)."""

    port: int
    data_dir: Path
    data: DataDir
    started_at: float
    server: ChunkServer
    dht: Dht
    upkeep: Upkeep
    replicator: Replicator

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]: ...


log = logging.getLogger(__name__)

#: ``ls --holders``: lookups at once, and how long each may take.
LS_LOOKUPS = 8
LS_LOOKUP_TIMEOUT = 10.0
#: ``status`` counts the contacts heard from within this many seconds.
RECENT_CONTACT = 600.0
MAX_REPLICAS = 64
Json = dict[str, Any]


def _replicas(value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_REPLICAS:
        raise ConfigError(f"replicas must be {low} to {MAX_REPLICAS}")
    return value


def _text(value: object) -> str:
    """An argument that must be text (a hash); anything else reads as a malformed one."""
    return value if isinstance(value, str) else shown(value)


@dataclass(frozen=True)
class PublishArgs:
    path: Path
    chunk_size: int
    copy: bool = False
    replicas: int = 0

    @classmethod
    def from_wire(cls, a: Json) -> PublishArgs:
        path, chunk_size = a.get("path"), a.get("chunk_size")
        if (not isinstance(path, str) or isinstance(chunk_size, bool)
                or not isinstance(chunk_size, int)):
            raise ConfigError("publish needs a path and a chunk size")
        if "\0" in path:
            raise ConfigError("a path cannot contain a NUL character")
        return cls(Path(path), chunk_size, a.get("copy") is True,
                   _replicas(a.get("replicas", 0), 0))


@dataclass(frozen=True)
class FetchArgs:
    hash: ManifestHash
    cwd: Path
    output: Path | None = None
    force: bool = False

    @classmethod
    def from_wire(cls, a: Json) -> FetchArgs:
        h = parse_manifest_hash(_text(a.get("hash", "")))
        output, cwd = a.get("output"), a.get("cwd")
        if not isinstance(cwd, str) or (output is not None and not isinstance(output, str)):
            raise ConfigError("fetch needs a working directory")
        if "\0" in cwd or (output is not None and "\0" in output):
            raise ConfigError("a path cannot contain a NUL character")
        return cls(h, Path(cwd), Path(output) if output else None, a.get("force") is True)


@dataclass(frozen=True)
class HashArgs:
    """Operations on one file this node knows of (holders, unpin, remove)."""

    hash: ManifestHash

    @classmethod
    def from_wire(cls, a: Json) -> HashArgs:
        return cls(parse_manifest_hash(_text(a.get("hash", ""))))


@dataclass(frozen=True)
class PinArgs:
    hash: ManifestHash
    replicas: int = DEFAULT_REPLICAS

    @classmethod
    def from_wire(cls, a: Json) -> PinArgs:
        h = parse_manifest_hash(_text(a.get("hash", "")))
        return cls(h, _replicas(a.get("replicas") or DEFAULT_REPLICAS, 1))


@dataclass(frozen=True)
class LimitArgs:
    """New bandwidth limits in bytes per second (``None``: leave as is; 0: no limit)."""

    upload: int | None = None
    download: int | None = None

    @classmethod
    def from_wire(cls, a: Json) -> LimitArgs:
        def rate(key: str) -> int | None:
            v = a.get(key)
            if v is None:
                return None
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 1 << 50:
                raise ConfigError(f"a {key} limit is a number of bytes per second, not {shown(v)}")
            return v

        return cls(rate("upload"), rate("download"))


@dataclass(frozen=True)
class LimitResult:
    upload: int
    download: int

    def to_json(self) -> Json:
        return {"upload": self.upload, "download": self.download}


@dataclass(frozen=True)
class PublishResult:
    hash: str
    name: str
    path: str
    size: int
    chunk_size: int
    chunks: int
    dht_stores: int
    replicas: dict[str, int]
    hash_seconds: float
    elapsed: float

    def to_json(self) -> Json:
        return asdict(self)


@dataclass(frozen=True)
class StatusResult:
    node_id: str
    #: The node's Ed25519 public key (hex) and its short fingerprint.
    public_key: str
    fingerprint: str
    host: str
    port: int
    state: str
    join_error: str | None
    uptime: float
    contacts: int
    contacts_answered_recently: int
    routing_table: list[Json]
    content: list[Json]
    replica_bytes: int
    max_storage: int
    bytes_served: int
    bytes_stored: int
    #: Where peers reach it: the address in its own records (None: as they see it).
    advertise: str | None = None
    #: Peer links open now, by direction.
    peers_connected: Json | None = None
    #: Downloads under way (their part files).
    transfers: list[str] | None = None
    #: Fetches under way: hash, done, total, rate (bytes/s since start), peers sending.
    transfer_rates: list[Json] | None = None
    #: Bandwidth limits in force (bytes per second; 0: none).
    limits: Json | None = None
    #: Repair: copies made so far, files still short of copies.
    repair: Json | None = None
    #: The Prometheus endpoint, if on.
    metrics: str | None = None

    def to_json(self) -> Json:
        return asdict(self)


@dataclass(frozen=True)
class PeersResult:
    """The links open now, each way."""

    peers: list[Json]

    def to_json(self) -> Json:
        return {"peers": self.peers}


@dataclass(frozen=True)
class ListResult:
    """What this node holds, one entry per file."""

    files: list[Json]

    def to_json(self) -> Json:
        return {"files": self.files}


@dataclass(frozen=True)
class HoldersResult:
    hash: str
    name: str
    chunks: int
    holders: list[Json]
    durable_copies_min: int
    durable_copies: list[int]

    def to_json(self) -> Json:
        return asdict(self)


@dataclass(frozen=True)
class PinResult:
    hash: str
    name: str
    size: int
    pinned: bool
    replicas: int

    def to_json(self) -> Json:
        return asdict(self)


@dataclass(frozen=True)
class UnpinResult:
    hash: str
    pinned: bool
    handed_off: int

    def to_json(self) -> Json:
        return asdict(self)


@dataclass(frozen=True)
class RemoveResult:
    hash: str
    removed: bool
    path: str

    def to_json(self) -> Json:
        return asdict(self)


class _Result(Protocol):
    def to_json(self) -> Json: ...


A = TypeVar("A")


def _served(parse: Callable[[Json], A], run: Callable[[A, Emit], Awaitable[_Result]]) -> OpHandler:
    """An operation on the control socket: parse the untrusted map, run, answer its JSON."""

    async def handler(wire: Json, emit: Emit) -> Json:
        return (await run(parse(wire), emit)).to_json()

    return handler


class Operations:
    """The node's operations; ``handlers`` serves them on the control socket."""

    def __init__(self, node: NodeParts) -> None:
        self.node = node
        #: Fetches and pins under way, by manifest hash (hex): what ``status`` shows.
        self.transfers: dict[str, Json] = {}

    def _track(self, h: bytes, kind: str) -> Callable[[int, int, dict[str, Any]], None]:
        """A progress callback that keeps this transfer's numbers for ``status``."""
        started = time.monotonic()
        row: Json = {"hash": h.hex(), "kind": kind, "done": 0, "total": 0, "rate": 0,
                     "peers_sending": 0}
        self.transfers[h.hex()] = row

        def seen(done: int, total: int, senders: dict[str, Any]) -> None:
            age = max(time.monotonic() - started, 1e-3)
            row.update(done=done, total=total, rate=round(done / age),
                       peers_sending=senders.get("sending", 0))

        return seen

    def handlers(self) -> dict[str, OpHandler]:
        async def status(a: Json, emit: Emit) -> Json:
            return self.status().to_json()

        async def peers(a: Json, emit: Emit) -> Json:
            return self.peers().to_json()

        async def config(a: Json, emit: Emit) -> Json:
            return {"settings": [{"name": n, "value": v, "source": src}
                                 for n, v, src in self.node.config.sources]}

        async def ls(a: Json, emit: Emit) -> Json:
            if a.get("holders") is True:
                return (await self.ls_holders(emit)).to_json()
            return self.ls().to_json()

        return {
            "publish": _served(PublishArgs.from_wire, self.publish),
            "fetch": _served(FetchArgs.from_wire, self.fetch),
            "status": status,
            "holders": _served(HashArgs.from_wire, self.holders),
            "pin": _served(PinArgs.from_wire, self.pin),
            "unpin": _served(HashArgs.from_wire, self.unpin),
            "remove": _served(HashArgs.from_wire, self.remove),
            "limit": _served(LimitArgs.from_wire, self.limit),
            "peers": peers,
            "ls": ls,
            "config": config,
        }

    # -- sharing ---------------------------------------------------------------------------
    async def publish(self, args: PublishArgs, emit: Emit | None = None) -> PublishResult:
        """Hash a file, hold it and announce it (and place replicas if asked).

        The file is served from where it is unless ``copy`` asks for a copy in
        the data dir (then the copy is what gets hashed and served, so moving or
        editing the original later changes nothing).
        """
        node, path, chunk_size = self.node, args.path, args.chunk_size
        check_chunk_size(chunk_size)
        t0 = time.perf_counter()
        if not path.is_absolute():
            raise ConfigError(f"publish needs an absolute path, not {path}")
        try:
            before = os.stat(path)
        except OSError as err:
            raise os_error(err, "read", path) from err
        if not stat.S_ISREG(before.st_mode):
            raise StorageError(f"{path} is not a regular file")
        loop = asyncio.get_running_loop()

        def progress(done: int) -> None:
            if emit is not None:
                loop.call_soon_threadsafe(emit, "progress", {"done": done, "total": before.st_size,
                                                             "stage": "hashing"})

        name = path.name
        if args.copy:
            path = await asyncio.to_thread(node.store.import_copy, path)
        try:
            manifest = await asyncio.to_thread(hash_file, path, chunk_size, progress, name)
        except BaseException:
            if args.copy:
                path.unlink(missing_ok=True)
            raise
        if args.copy:
            path = await asyncio.to_thread(node.store.place_copy, path, manifest)
            before = os.stat(path)
        after = os.stat(path)
        if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
            raise StorageError(f"{path} changed while it was being published; try again")
        hashed = time.perf_counter() - t0
        await node.upkeep.wait_joined(emit)
        entry = node.store.add_complete(manifest, path, "published", args.replicas)
        stores = await node.upkeep.announce(manifest.hash)
        reached = 0
        if args.replicas > 0:
            if emit is not None:
                emit("progress", {"done": 0, "total": manifest.size * args.replicas,
                                  "stage": "replicating"})
            placement = await node.replicator.replicate_new(entry, args.replicas)
            n = manifest.chunk_count
            reached = (min(placement.placed.get(i, 0) for i in range(n)) if n
                       else len(placement.targets))
        log.info("published %s (%s, %d bytes, %d chunks) in %.2f s", short(manifest.hash),
                 manifest.name, manifest.size, manifest.chunk_count, time.perf_counter() - t0,
                 extra={"event": "publish_finished", "manifest": manifest.hash.hex(),
                        "bytes": manifest.size, "seconds": round(time.perf_counter() - t0, 4)})
        return PublishResult(
            manifest.hash.hex(), manifest.name, str(path), manifest.size, manifest.chunk_size,
            manifest.chunk_count, stores, {"requested": args.replicas, "reached": reached},
            round(hashed, 4), round(time.perf_counter() - t0, 4),
        )

    async def fetch(self, args: FetchArgs, emit: Emit | None = None) -> FetchResult:
        """Download a file by its manifest hash, verified, then provide it."""

        track = self._track(args.hash, "fetch")

        def progress(done: int, total: int, senders: dict[str, Any]) -> None:
            track(done, total, senders)
            if emit is not None:
                emit("progress", {"done": done, "total": total, "stage": "fetching", **senders})

        node = self.node
        log.info("fetching %s", short(args.hash),
                 extra={"event": "fetch_started", "manifest": args.hash.hex()})
        await node.upkeep.wait_joined(emit)
        try:
            result = await Fetch(node, args.hash, args.output, args.cwd, args.force,
                                 progress).run()
        finally:
            self.transfers.pop(args.hash.hex(), None)
        log.info("fetched %s (%s, %d bytes) from %d peers in %.2f s", short(args.hash),
                 result.manifest.name, result.manifest.size, len(result.peers), result.elapsed,
                 extra={"event": "fetch_finished", "manifest": args.hash.hex(),
                        "bytes": result.manifest.size, "seconds": round(result.elapsed, 4)})
        node.spawn(node.upkeep.announce(args.hash))
        return result

    # -- looking inside --------------------------------------------------------------------
    def status(self) -> StatusResult:
        node = self.node
        dht, store, upkeep = node.dht, node.store, node.upkeep
        return StatusResult(
            node_id=node.node_id.hex(),
            public_key=node.data.identity.public_key.hex(),
            fingerprint=node.data.identity.fingerprint,
            host=node.config.host,
            port=node.port,
            state=upkeep.state,
            join_error=str(upkeep.join_error) if upkeep.join_error is not None else None,
            uptime=round(time.monotonic() - node.started_at, 3),
            contacts=len(dht.contacts()),
            contacts_answered_recently=dht.answered_within(RECENT_CONTACT),
            routing_table=[
                {"node_id": nid.hex(), "address": f"{ip}:{port}", "seen_ago": round(ago, 1)}
                for nid, ip, port, ago in dht.table()
            ],
            content=[
                {"hash": h.hex(), "name": e.manifest.name, "size": e.manifest.size,
                 "kind": e.kind, "durable": e.durable, "replicas": e.replicas,
                 "complete": e.complete, "chunks": e.manifest.chunk_count,
                 "chunks_held": e.held_count(), "path": str(e.path)}
                for h, e in store.entries.items()
            ],
            replica_bytes=store.replica_bytes(),
            max_storage=store.max_storage,
            bytes_served=node.server.bytes_served,
            bytes_stored=node.server.bytes_stored,
            advertise=node.config.advertise,
            peers_connected={"inbound": len(node.server.inbound_links()),
                             "outbound": len(node.pool.connections())},
            transfers=sorted(str(p) for p in node.active_parts),
            transfer_rates=list(self.transfers.values()),
            limits=self._limits(),
            repair={"copies_made": node.dht.stats.repair_copies,
                    "files_short": sum(1 for v in node.dht.stats.deficits.values() if v)},
            metrics=(f"http://{node.config.metrics_host}:{node.config.metrics_port}/metrics"
                     if node.config.metrics_port else None),
        )

    def _limits(self) -> Json:
        limiter = self.node.server.limiter
        if limiter is None:
            return {"upload": 0, "download": 0}
        return {"upload": int(limiter.upload.rate), "download": int(limiter.download.rate)}

    def peers(self) -> PeersResult:
        """Every open link: who, which way, bytes and rate each way, requests in flight."""
        node, now = self.node, time.monotonic()
        inbound = set(node.server.inbound_links())
        links = [*((c, "inbound") for c in inbound),
                 *((c, "outbound") for c in node.pool.connections() if c not in inbound)]
        out = []
        for conn, direction in links:
            hello, age = conn.peer_hello, max(now - conn.opened_at, 1e-3)
            key = conn.peer_key
            send_rate, receive_rate = conn.rates(now)
            out.append({
                "address": conn.label, "direction": direction,
                "node_id": hello.node_id.hex() if hello is not None else None,
                "listen_port": hello.listen_port if hello is not None else None,
                "fingerprint": fingerprint(key) if key is not None else None,
                "encrypted": key is not None,
                "bytes_sent": conn.bytes_sent, "bytes_received": conn.bytes_received,
                "send_rate": round(send_rate), "receive_rate": round(receive_rate),
                "requests_in_flight": len(conn.session.outstanding),
                "serving": conn.session.incoming, "age": round(age, 1)})
        return PeersResult(out)

    def ls(self) -> ListResult:
        """What this node holds: published, fetched, pinned, replicas held for others."""
        files = []
        for h, e in self.node.store.entries.items():
            if e.durable:
                kind = "replica" if e.origin else "pinned"
            else:
                kind = e.kind if e.complete else "downloading"
            files.append({
                "hash": h.hex(), "name": e.manifest.name, "size": e.manifest.size,
                "kind": kind, "chunks": e.manifest.chunk_count, "chunks_held": e.held_count(),
                "bytes_held": e.held_bytes(), "replicas": e.replicas,
                "for": e.origin or None, "path": str(e.path)})
        files.sort(key=lambda f: (f["kind"], f["name"]))
        return ListResult(files)

    async def ls_holders(self, emit: Emit | None = None) -> ListResult:
        """:meth:`ls`, with each file's live holders from the DHT and when they last announced.

        One lookup per file, a few at a time, each bounded in time; a file
        whose lookup fails or times out shows ``holders: null``.
        """
        listing = self.ls()
        node = self.node
        await node.upkeep.wait_joined(emit)
        gate = asyncio.Semaphore(LS_LOOKUPS)

        async def one(f: Json) -> None:
            async with gate:
                try:
                    async with asyncio.timeout(LS_LOOKUP_TIMEOUT):
                        records = await node.find_providers(bytes.fromhex(f["hash"]))
                except (TimeoutError, DhtshareError):
                    f["holders"], f["last_seen_ago"] = None, None
                    return
            f["holders"] = len(records) + 1  # and this node
            ages = [max(0.0, r.signed_ttl - r.ttl) for r in records if r.signed_ttl]
            f["last_seen_ago"] = round(min(ages), 1) if ages else None

        await asyncio.gather(*(one(f) for f in listing.files))
        return listing

    async def holders(self, args: HashArgs, emit: Emit) -> HoldersResult:
        """Who holds which chunks of a file, asked of every provider directly."""
        node, h = self.node, args.hash
        await node.upkeep.wait_joined(emit)
        manifest = await Fetch(node, h, None, node.data_dir).manifest_only()
        holders = await node.replicator.survey_hash(manifest, node.store.get(h))
        counts = holders_per_chunk(holders, manifest.chunk_count)
        me = f"{node.config.advertise or node.config.host}:{node.port}"
        return HoldersResult(
            hash=h.hex(),
            name=manifest.name,
            chunks=manifest.chunk_count,
            holders=[
                {"node_id": x.node_id.hex(),
                 "address": me if x.node_id == node.node_id else f"{x.address[0]}:{x.address[1]}",
                 "self": x.node_id == node.node_id,
                 "durable": x.durable,
                 "chunks_held": manifest.chunk_count if x.held is None else len(x.held)}
                for x in holders
            ],
            durable_copies_min=min(counts) if counts else 0,
            durable_copies=counts if len(counts) <= 4096 else [],
        )

    # -- keeping copies --------------------------------------------------------------------
    async def pin(self, args: PinArgs, emit: Emit) -> PinResult:
        """Fetch a file into the replica store and keep it as a durable copy."""
        node, h = self.node, args.hash
        await node.upkeep.wait_joined(emit)
        entry = node.store.get(h)
        if entry is None or not entry.durable or not entry.complete:
            if entry is not None and entry.durable:
                node.store.drop(h)  # a partial replica: fetch it whole
            try:
                node.store.replica_dir.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise os_error(err, "create", node.store.replica_dir) from err
            target = node.store.replica_path(h)

            def progress(done: int, total: int, senders: dict[str, Any]) -> None:
                emit("progress", {"done": done, "total": total, "stage": "fetching", **senders})

            await Fetch(node, h, target, node.data_dir, True, progress).run()
            entry = node.store.adopt_replica(h, target, args.replicas)
        else:
            entry.replicas = max(entry.replicas, args.replicas)
            node.store.save()
        await node.upkeep.announce(h)
        return PinResult(h.hex(), entry.manifest.name, entry.manifest.size, True, entry.replicas)

    async def unpin(self, args: HashArgs, emit: Emit) -> UnpinResult:
        """Hand this node's copy over to others, then drop it."""
        node, h = self.node, args.hash
        entry = node.store.get(h)
        if entry is None or not entry.durable:
            raise NotFoundError(f"{h.hex()} is not pinned on this node")
        await node.upkeep.wait_joined(emit)
        placement = await node.replicator.hand_off(entry)
        if placement.short:
            raise ReplicationShort(
                f"only found room elsewhere for part of {entry.manifest.name}: "
                f"{len(placement.short)} chunks would fall below {entry.replicas} copies; "
                "keeping the local copy"
            )
        node.store.drop(h)
        await node.upkeep.withdraw(h)
        return UnpinResult(h.hex(), False, len(placement.placed))

    async def limit(self, args: LimitArgs, emit: Emit | None = None) -> LimitResult:
        """Change the node's bandwidth limits (for every link, at once); answer those in force."""
        limiter = self.node.server.limiter
        if limiter is None:
            raise ConfigError("this node was started without bandwidth limiting")
        limiter.set(args.upload, args.download)
        return LimitResult(int(limiter.upload.rate), int(limiter.download.rate))

    async def remove(self, args: HashArgs, emit: Emit) -> RemoveResult | UnpinResult:
        """Stop sharing a file (a replica is handed off first; a user's file is kept)."""
        node, h = self.node, args.hash
        entry = node.store.get(h)
        if entry is None:
            raise NotFoundError(f"{h.hex()} is not held by this node")
        if entry.durable:
            return await self.unpin(args, emit)
        await node.upkeep.wait_joined(emit)
        node.store.drop(h)
        await node.upkeep.withdraw(h)
        return RemoveResult(h.hex(), True, str(entry.path))


__all__ = [
    "FetchArgs",
    "HashArgs",
    "HoldersResult",
    "Operations",
    "PinArgs",
    "PinResult",
    "PublishArgs",
    "PublishResult",
    "RemoveResult",
    "StatusResult",
    "UnpinResult",
]
