"""The fetch engine: from a manifest hash to a verified file on disk.

1. Find the manifest's providers in the DHT, fetch the manifest from one of
   them and check it against the hash.
2. Open one worker per provider (up to a limit).  Each asks its peer which
   chunks it has, subscribes to its HAVE updates, and keeps a window of chunk
   requests in flight on the peer's single long-lived connection.  The
   :class:`~dhtshare.core.picker.Picker` decides what to ask: rarest first, random
   among equals, duplicates only in the endgame.
3. Every chunk is hashed before it is written (``pwrite`` into a temporary
   file next to the target, in a worker thread so the loop keeps receiving);
   a bad chunk bans its sender for the rest of the fetch.  Each verified
   chunk is served at once and pushed to subscribed peers.
4. Dead peers are replaced from the DHT; when chunks have no provider left,
   the fetch fails saying how many, and keeps the verified part on disk.
5. When complete, the file is synced and renamed into place.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from dhtshare.config import KIB, Config
from dhtshare.core import messages as m
from dhtshare.core.framing import Buffer
from dhtshare.core.ids import ManifestHash, short
from dhtshare.core.manifest import Manifest
from dhtshare.core.picker import Picker
from dhtshare.core.providers import ProviderRecord
from dhtshare.disk.buffers import POOL
from dhtshare.disk.chunkfile import ChunkFile
from dhtshare.disk.store import ContentStore, Entry
from dhtshare.errors import (
    ConfigError,
    DhtshareError,
    IntegrityError,
    ManifestError,
    ManifestNotFound,
    NoProviders,
    PeerError,
    PeerTimeout,
    PeerUnreachable,
    RemoteProtocolError,
    StorageError,
)
from dhtshare.net.peers import PeerPool
from dhtshare.net.transport import Connection, NotFoundReply

log = logging.getLogger(__name__)

Address = tuple[str, int]
Progress = Callable[[int, int], None]

#: Chunks up to this size are verified and written inline (a thread hop costs more).
INLINE_CHUNK = 64 * KIB
#: Most requests in flight to one peer, whatever the chunk size.
MAX_WINDOW = 256
#: How long to keep looking for providers of missing chunks before giving up.
STALL_TIMEOUT = 8.0
LOOKUP_INTERVAL = 2.0
#: The first look for more providers, once the download is under way.
FIRST_RELOOKUP = 0.2
#: Fresh provider lookups while chunks have no provider, before giving up.
MAX_LOOKUPS = 4
#: How long one provider may take to hand over a manifest before the next is asked.
MANIFEST_TIMEOUT = 10.0
#: How long a fetch keeps looking when no provider of the manifest answers.
MANIFEST_PATIENCE = 3.0
#: A manifest request unanswered this long gets a second provider asked in parallel.
MANIFEST_HEDGE = 0.25
#: Most providers asked for the manifest in one fetch.
MAX_MANIFEST_ATTEMPTS = 16
#: How long a fetch waits for an interrupted fetch of the same file to wind down.
PREVIOUS_FETCH_GRACE = 15.0
#: How long the first peers wait for each other before requesting chunks.
START_GRACE = 0.3


class FetchServices(Protocol):
    """What the fetch engine needs from its node."""

    config: Config
    node_id: bytes
    store: ContentStore
    pool: PeerPool
    active_parts: dict[Path, asyncio.Event]

    async def find_providers(
        self, h: bytes, on_records: Callable[[list[ProviderRecord]], None] | None = None
    ) -> list[ProviderRecord]: ...

    def provider_is_dead(self, addr: Address) -> bool: ...

    def chunk_verified(self, manifest: Manifest, index: int, first: bool) -> None: ...


@dataclass
class FetchResult:
    manifest: Manifest
    path: Path
    elapsed: float
    bytes_downloaded: int = 0
    bytes_reused: int = 0
    peers: dict[str, int] = field(default_factory=dict)
    banned: list[str] = field(default_factory=list)
    #: Providers named in the DHT that could not be reached (skipped quickly).
    unreachable: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "hash": self.manifest.hash.hex(),
            "name": self.manifest.name,
            "path": str(self.path),
            "size": self.manifest.size,
            "chunk_size": self.manifest.chunk_size,
            "chunks": self.manifest.chunk_count,
            "elapsed": round(self.elapsed, 4),
            "bytes_downloaded": self.bytes_downloaded,
            "bytes_reused": self.bytes_reused,
            "peers": dict(self.peers),
            "banned": list(self.banned),
            "unreachable": list(self.unreachable),
        }


def resolve_output(output: Path | None, cwd: Path, name: str) -> Path:
    """``-o`` as a file, or an existing directory to put ``name`` in, or ``cwd/name``."""
    if output is None:
        return cwd / name
    output = output if output.is_absolute() else cwd / output
    if output.is_dir():
        return output / name
    return output


def check_target(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise ConfigError(f"{path} already exists: pass --force to overwrite it")
    if path.exists() and path.is_dir():
        raise ConfigError(f"{path} is a directory")
    if not path.parent.is_dir():
        raise ConfigError(f"directory {path.parent} does not exist")


def _copy_held(src: Entry, dst: ChunkFile) -> None:
    """Copy (and verify) the chunks ``src`` holds that ``dst`` lacks."""
    for i in src.held_indices():
        if not dst.held[i]:
            with contextlib.suppress(OSError, DhtshareError):
                dst.write_verified(i, src.read_chunk(i))


def _post(
    queue: asyncio.Queue[tuple[int, int, asyncio.Future[Any]]],
    req: int,
    idx: int,
    fut: asyncio.Future[Any],
) -> None:
    queue.put_nowait((req, idx, fut))


class Fetch:
    """One download of one manifest; ``run`` drives it to a verified file."""

    def __init__(
        self,
        services: FetchServices,
        manifest_hash: ManifestHash,
        output: Path | None,
        cwd: Path,
        force: bool = False,
        progress: Progress | None = None,
    ) -> None:
        self.s = services
        self.mh = manifest_hash
        self.output = output
        self.cwd = cwd
        self.force = force
        self.progress = progress or (lambda _d, _t: None)
        self.peers_bytes: dict[str, int] = {}
        self.banned: set[Address] = set()
        self.banned_ids: set[bytes] = set()
        self.workers: dict[Address, asyncio.Task[None]] = {}
        self.wakeups: dict[Address, asyncio.Event] = {}
        self.requests: dict[tuple[Address, int], tuple[Connection, int]] = {}
        self._picker: Picker[Address] | None = None
        self.done_bytes = 0
        self.downloaded = 0
        self.fatal: DhtshareError | None = None
        self.finished = asyncio.Event()
        self._verified_any = False
        self._starting: set[Address] = set()
        self.reused = 0
        #: Every provider the DHT named so far (this node and banned ones left out).
        self.known: dict[Address, ProviderRecord] = {}
        self.unreachable: set[Address] = set()
        self._arrived = asyncio.Event()
        self._lookup_task: asyncio.Task[list[ProviderRecord]] | None = None

    @property
    def picker(self) -> Picker[Address]:
        assert self._picker is not None, "the download has not started"
        return self._picker

    # -- entry point ------------------------------------------------------------------
    async def run(self) -> FetchResult:
        try:
            return await self._run()
        finally:
            if self._lookup_task is not None:
                self._lookup_task.cancel()

    async def _run(self) -> FetchResult:
        t0 = time.perf_counter()
        if self.output is not None:
            out = self.output if self.output.is_absolute() else self.cwd / self.output
            if not out.is_dir():
                check_target(out, self.force)
        manifest = await self._get_manifest()
        target = resolve_output(self.output, self.cwd, manifest.name)
        check_target(target, self.force)
        local = self.s.store.get(self.mh)
        if local is not None and local.complete:
            try:
                if not local.still_valid():
                    raise StorageError(f"{local.path} changed or vanished")
                await asyncio.to_thread(self._copy_local, local, target)
            except (OSError, DhtshareError) as err:
                # The user deleted or edited the file this node had: stop offering
                # it and get a verified copy from the network instead.
                log.warning("local copy %s of %s is unusable (%s); fetching it again",
                            local.path, short(self.mh), err)
                self.s.store.drop(self.mh)
            else:
                self.s.store.add_complete(manifest, target, "fetched")
                elapsed = time.perf_counter() - t0
                return FetchResult(manifest, target, elapsed, 0, manifest.size, {}, [])
        await self._download(manifest, target)
        return FetchResult(
            manifest,
            target,
            time.perf_counter() - t0,
            self.downloaded,
            self.reused,
            dict(self.peers_bytes),
            sorted(f"{h}:{p}" for h, p in self.banned),
            sorted(f"{h}:{p}" for h, p in self.unreachable),
        )

    async def manifest_only(self) -> Manifest:
        """The verified manifest, from this node or the network (no download)."""
        try:
            return await self._get_manifest()
        finally:
            if self._lookup_task is not None:
                self._lookup_task.cancel()

    # -- finding providers ------------------------------------------------------------
    def _start_lookup(self) -> asyncio.Task[list[ProviderRecord]]:
        """A provider lookup in the background (the running one, if any).

        Providers reach :meth:`_on_records` as soon as any DHT node names
        them, so the manifest is asked for, and chunks are downloaded, while
        the lookup is still going on.
        """
        task = self._lookup_task
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(
                self.s.find_providers(self.mh, self._on_records))
            task.add_done_callback(self._lookup_done)
            self._lookup_task = task
        return task

    def _lookup_done(self, task: asyncio.Task[list[ProviderRecord]]) -> None:
        self._arrived.set()
        if not task.cancelled() and task.exception() is not None:
            log.warning("provider lookup failed: %r", task.exception())

    def _on_records(self, records: list[ProviderRecord]) -> None:
        named = []
        for r in records:
            if r.node_id == self.s.node_id or r.node_id in self.banned_ids:
                continue
            if r.address in self.banned:
                continue
            named.append(r)
            old = self.known.get(r.address)
            if old is None or (r.complete, r.ttl) > (old.complete, old.ttl):
                self.known[r.address] = r
        if not named:
            return
        self._arrived.set()
        if self._picker is not None:
            # Every provider a lookup names gets a worker unless it has one: a
            # worker that ended (a dropped link) is started again this way.
            self._spawn(named)

    def _order(self, records: list[ProviderRecord]) -> list[ProviderRecord]:
        """Best first: complete copies, then the freshest records, and last the
        providers the DHT saw time out or leave (slow is not gone: they are
        still tried, after the others)."""
        return sorted(records, key=lambda r: (self.s.provider_is_dead(r.address),
                                              not r.complete, -r.ttl))

    # -- manifest -----------------------------------------------------------------------
    async def _get_manifest(self) -> Manifest:
        local = self.s.store.get(self.mh)
        if local is not None:
            return local.manifest
        deadline = time.monotonic() + MANIFEST_PATIENCE
        tried: set[Address] = set()
        errors: list[str] = []
        delay = 0.25
        while True:
            manifest = await self._manifest_from(self._start_lookup(), tried, errors)
            if manifest is not None:
                return manifest
            if time.monotonic() + delay > deadline or len(tried) >= MAX_MANIFEST_ATTEMPTS:
                break
            # A provider may be joining or announcing right now: look again shortly.
            await asyncio.sleep(delay)
            delay *= 2
        if not tried:
            raise ManifestNotFound(
                f"no reachable peer provides {self.mh.hex()}: check the hash, "
                "and that a node holding the file is running"
            )
        raise ManifestNotFound(
            f"could not get manifest {self.mh.hex()} from {len(tried)} provider(s): "
            + "; ".join(errors[:3])
        )

    async def _manifest_from(
        self, lookup: asyncio.Task[list[ProviderRecord]], tried: set[Address], errors: list[str]
    ) -> Manifest | None:
        """Ask providers for the manifest as the lookup names them; the first verified wins.

        One provider at a time, the best first (complete copies, freshest
        record); one that is slow to answer gets a second asked beside it.
        ``None`` when the lookup is over and every provider it named failed.
        """
        loop = asyncio.get_running_loop()
        attempts: dict[asyncio.Task[Manifest], ProviderRecord] = {}
        hedge_at = 0.0
        try:
            while True:
                self._arrived.clear()
                untried = self._order([r for a, r in self.known.items()
                                       if a not in tried and a not in self.banned])
                now = loop.time()
                if untried and (not attempts or now >= hedge_at) \
                        and len(tried) < MAX_MANIFEST_ATTEMPTS:
                    rec = untried[0]
                    tried.add(rec.address)
                    attempts[loop.create_task(self._manifest_attempt(rec))] = rec
                    hedge_at = now + MANIFEST_HEDGE
                    continue
                if not attempts and (lookup.done() or len(tried) >= MAX_MANIFEST_ATTEMPTS):
                    return None
                arrival = loop.create_task(self._arrived.wait())
                try:
                    done, _ = await asyncio.wait(
                        {*attempts, arrival},
                        timeout=max(0.0, hedge_at - now) if attempts and untried else None,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    arrival.cancel()
                for task in [t for t in attempts if t in done]:
                    manifest = self._manifest_result(task, attempts.pop(task), errors)
                    if manifest is not None:
                        return manifest
        finally:
            for task in attempts:
                task.cancel()

    async def _manifest_attempt(self, rec: ProviderRecord) -> Manifest:
        conn = await self.s.pool.get(rec.address)
        data = await conn.get_manifest(self.mh, MANIFEST_TIMEOUT)
        return Manifest.decode_verified(bytes(data), self.mh)

    def _manifest_result(
        self, task: asyncio.Task[Manifest], rec: ProviderRecord, errors: list[str]
    ) -> Manifest | None:
        try:
            return task.result()
        except (IntegrityError, ManifestError) as err:
            log.warning("peer %s:%d sent a bad manifest: %s", *rec.address, err)
            self._ban(rec.address, rec.node_id, None)
            errors.append(str(err))
        except (PeerUnreachable, PeerTimeout) as err:
            self.unreachable.add(rec.address)
            errors.append(str(err))
        except (PeerError, NotFoundReply, RemoteProtocolError) as err:
            errors.append(str(err))
        return None

    def _copy_local(self, entry: Entry, target: Path) -> None:
        if target.resolve() == entry.path.resolve():
            return
        tmp = target.with_name(f".{target.name}.dhtshare-tmp")
        man = entry.manifest
        try:
            with open(tmp, "wb") as out:
                for i in range(man.chunk_count):
                    data = entry.read_chunk(i)
                    if hashlib.sha256(data).digest() != man.chunk_hash(i):
                        raise IntegrityError(f"local copy {entry.path} is damaged at chunk {i}")
                    out.write(data)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    # -- download -------------------------------------------------------------------------
    async def _download(self, manifest: Manifest, target: Path) -> None:
        self.manifest = manifest
        n = manifest.chunk_count
        part = target.with_name(f".{target.name}.{self.mh.hex()[:16]}.part")
        previous = self.s.active_parts.get(part)
        if previous is not None:
            # An interrupted fetch of the same file may still be winding down.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PREVIOUS_FETCH_GRACE):
                    await previous.wait()
            if part in self.s.active_parts:
                raise ConfigError(f"{target} is already being fetched by this node")
        finished = self.s.active_parts[part] = asyncio.Event()
        try:
            self.cf = cf = await asyncio.to_thread(ChunkFile.open, part, manifest)
        except BaseException:
            del self.s.active_parts[part]
            finished.set()
            raise
        if cf.held_count:
            log.info("resuming %s: %d of %d chunks already verified", target, cf.held_count, n)
        replica = self.s.store.get(self.mh)
        if replica is not None and replica.durable:
            # This node keeps some chunks for the network: copy those, don't download them.
            await asyncio.to_thread(_copy_held, replica, cf)
        self.reused = cf.held_bytes()
        self.done_bytes = self.reused
        self._picker = Picker(n, cf.held_indices())
        self.entry = self.s.store.add_partial(manifest, part, cf.held)
        own_entry = self.entry.cf is None and not self.entry.durable
        window = max(4, min(MAX_WINDOW, self.s.config.window_bytes // manifest.chunk_size))
        self.window = window
        try:
            if not self.picker.complete:
                await self._supervise()
            if self.fatal is not None:
                raise self.fatal
            await asyncio.to_thread(cf.finish, target)
        except OSError as err:
            raise StorageError(
                f"writing {part} failed: {err.strerror or err}; "
                f"{self._held_count()} verified chunks are kept there"
            ) from err
        finally:
            cf.close()
            del self.s.active_parts[part]
            finished.set()
            for task in self.workers.values():
                task.cancel()
            for conn, req in list(self.requests.values()):
                conn.forget(req)
            for addr in self.workers:
                conn_ = self.s.pool.peek(addr)
                if conn_ is not None:
                    conn_.have_listeners.pop(self.mh, None)
            if own_entry and self.s.store.entries.get(self.mh) is self.entry:
                self.s.store.entries.pop(self.mh, None)
                self.entry.close()
        self.s.store.add_complete(manifest, target, "fetched")

    def _held_count(self) -> int:
        return self.manifest.chunk_count - self.picker.missing

    async def _supervise(self) -> None:
        """Keep workers running on known providers until done, or fail when stuck."""
        lookups = 0
        last_progress = time.monotonic()
        last_done = -1
        self._spawn(list(self.known.values()))
        if self._lookup_task is None:  # the manifest was local: nobody looked yet
            self._start_lookup()
        self._starting = {a for a, t in self.workers.items() if not t.done()}
        # Other downloaders announce themselves after their first chunk: look
        # again soon, then less and less often, so they trade with us early.
        discover = FIRST_RELOOKUP
        next_lookup = time.monotonic() + discover
        while not self.picker.complete and self.fatal is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(0.5, max(0.01, next_lookup - time.monotonic()))):
                    await self.finished.wait()
            if self.picker.complete or self.fatal is not None:
                break
            now = time.monotonic()
            if self.done_bytes != last_done:
                last_done, last_progress = self.done_bytes, now
            alive = [a for a, t in self.workers.items() if not t.done()]
            stuck = not alive or (
                self.picker.unavailable() > 0 and now - last_progress > LOOKUP_INTERVAL
            )
            if (stuck or len(alive) < self.s.config.max_fetch_peers) and now >= next_lookup:
                if stuck:
                    lookups += 1
                    next_lookup = now + LOOKUP_INTERVAL
                else:
                    discover = min(discover * 2, LOOKUP_INTERVAL)
                    next_lookup = now + discover
                self._start_lookup()
                continue
            gave_up = stuck and lookups >= MAX_LOOKUPS
            if gave_up or (not alive and now - last_progress > STALL_TIMEOUT):
                missing = self.picker.missing
                raise NoProviders(
                    f"{missing} of {self.manifest.chunk_count} chunks could not be fetched: "
                    f"no reachable peer has them; {self._held_count()} verified chunks are "
                    f"kept in {self.entry.path}"
                )

    def _spawn(self, records: list[ProviderRecord]) -> None:
        loop = asyncio.get_running_loop()
        for rec in self._order(records):
            alive = sum(1 for t in self.workers.values() if not t.done())
            if alive >= self.s.config.max_fetch_peers:
                break
            addr = rec.address
            task = self.workers.get(addr)
            if addr in self.banned or (task is not None and not task.done()):
                continue
            self.wakeups[addr] = asyncio.Event()
            self.workers[addr] = loop.create_task(self._worker(addr, rec.node_id))

    def _wake_all(self) -> None:
        for ev in self.wakeups.values():
            ev.set()

    def _ban(self, addr: Address, node_id: bytes | None, conn: Connection | None) -> None:
        self.banned.add(addr)
        if node_id is not None:
            self.banned_ids.add(node_id)
        if self._picker is not None:
            self._picker.ban(addr)
            self._wake_all()
        if conn is not None:
            conn.abort("sent data that failed verification")

    # -- one peer -----------------------------------------------------------------------
    async def _worker(self, addr: Address, node_id: bytes) -> None:
        label = f"{addr[0]}:{addr[1]}"
        try:
            conn = await self.s.pool.get(addr)
            hello = conn.peer_hello
            if hello is None or hello.node_id == self.s.node_id:
                return
            if hello.node_id in self.banned_ids:
                return
            conn.have_listeners[self.mh] = lambda idx: self._on_have(addr, idx)
            have = await conn.get_have(self.mh, self.s.config.request_timeout)
            n = self.manifest.chunk_count
            held = None if have.complete else m.indices_from_bitfield(n, have.bitfield)
            self.picker.add_peer(addr, held)
            self._starting.discard(addr)
            self._wake_all()
            if self._starting:
                # Let the other first peers finish their handshake so the first
                # requests are spread over all of them.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(START_GRACE):
                        while self._starting:
                            await self.wakeups[addr].wait()
                            self.wakeups[addr].clear()
            await self._pump(addr, conn, hello.node_id, label)
        except NotFoundReply:
            log.debug("%s no longer has %s", label, short(self.mh))
        except (PeerUnreachable, PeerTimeout) as err:
            self.unreachable.add(addr)
            log.info("provider %s unreachable: %s", label, err)
        except (PeerError, RemoteProtocolError) as err:
            log.info("peer %s dropped from fetch: %s", label, err)
        except asyncio.CancelledError:
            raise
        finally:
            self._starting.discard(addr)
            if self._picker is not None and not self._picker.is_banned(addr):
                self.picker.remove_peer(addr)
                self._wake_all()
            for key in [k for k in self.requests if k[0] == addr]:
                conn_req = self.requests.pop(key)
                conn_req[0].forget(conn_req[1])

    def _on_have(self, addr: Address, indices: tuple[int, ...]) -> None:
        n = self.manifest.chunk_count
        for i in indices:
            if i < n:
                self.picker.peer_has(addr, i)
        ev = self.wakeups.get(addr)
        if ev is not None:
            ev.set()

    async def _pump(self, addr: Address, conn: Connection, node_id: bytes, label: str) -> None:
        """Keep ``window`` chunk requests in flight to one peer until the file is done.

        A chunk counts against the window from its request until it is verified
        and written, so memory stays bounded by ``window`` chunks per peer while
        hashing and writing of several chunks overlap with receiving the next.
        """
        manifest = self.manifest
        picker = self.picker
        events: asyncio.Queue[tuple[int, int, asyncio.Future[Any]]] = asyncio.Queue()
        inflight: dict[int, int] = {}
        wake = self.wakeups[addr]
        timeout = self.s.config.peer_stall_timeout
        loop = asyncio.get_running_loop()
        while not picker.complete and self.fatal is None:
            # Fair share: with several peers, none may grab more than its part
            # of what is left, so small files are spread too.
            limit = min(self.window, max(2, -(-picker.missing // max(1, len(picker.peers())))))
            while len(inflight) < limit:
                idx = picker.next_request(addr)
                if idx is None:
                    break
                req = conn.next_id()
                msg = m.GetChunk(req, self.mh, idx, manifest.chunk_hash(idx))
                fut = conn.start_request(msg, req)
                inflight[req] = idx
                self.requests[(addr, idx)] = (conn, req)
                fut.add_done_callback(functools.partial(_post, events, req, idx))
            if not inflight:
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await wake.wait()
                continue
            try:
                async with asyncio.timeout(timeout):
                    req, idx, fut = await events.get()
            except TimeoutError as err:
                log.warning("peer %s sent nothing for %.0f s with %d requests in flight",
                            label, timeout, len(inflight))
                raise PeerError(f"no chunk in {timeout:.0f} s") from err
            if fut.cancelled():
                inflight.pop(req, None)
                continue
            exc = fut.exception()
            if exc is not None:
                raise exc if isinstance(exc, DhtshareError) else PeerError(str(exc))
            result = fut.result()
            if isinstance(result, bool):  # verification finished
                inflight.pop(req, None)
                if not result:
                    log.warning("peer %s sent corrupt chunk %d; banned for this fetch", label, idx)
                    self._ban(addr, node_id, conn)
                    return
                continue
            if self.requests.get((addr, idx), (None, None))[1] == req:
                del self.requests[(addr, idx)]
            reply, body = result
            if isinstance(reply, m.Data) and not picker.has(idx):
                self.peers_bytes[label] = self.peers_bytes.get(label, 0) + len(body)
                self.downloaded += len(body)
                check = loop.create_task(self._store_chunk(idx, body))
                check.add_done_callback(functools.partial(_post, events, req, idx))
                continue
            inflight.pop(req, None)
            if isinstance(reply, m.NotFound):
                picker.failed(addr, idx, peer_lacks=True)
                self._wake_all()
            elif not isinstance(reply, m.Data):
                picker.failed(addr, idx)
                self._wake_all()

    async def _store_chunk(self, idx: int, body: Buffer) -> bool:
        manifest = self.manifest
        size = len(body)
        if size != manifest.chunk_length(idx):
            return False
        try:
            if size <= INLINE_CHUNK:
                ok = self.cf.write_verified(idx, body)
            else:
                ok = await asyncio.to_thread(self.cf.write_verified, idx, body)
            # Written (or rejected): the buffer is free again.  It may be closed
            # or handed to another reader at once, so it is not touched after this.
            POOL.release(body)
            del body
        except OSError as err:
            self.fatal = StorageError(
                f"cannot write {self.entry.path}: {err.strerror or err}; "
                f"{self._held_count()} verified chunks are kept there"
            )
            self.finished.set()
            self._wake_all()
            return True
        if not ok:
            return False
        if self.picker.has(idx):
            return True
        others = self.picker.received(idx)
        for peer in others:
            conn_req = self.requests.pop((peer, idx), None)
            if conn_req is not None:
                conn_req[0].forget(conn_req[1])
        self.done_bytes += size
        first = not self._verified_any
        self._verified_any = True
        self.s.chunk_verified(manifest, idx, first)
        self.progress(self.done_bytes, manifest.size)
        if self.picker.complete:
            self.finished.set()
            self._wake_all()
        return True


__all__ = ["Fetch", "FetchResult", "check_target", "resolve_output"]

