"""Keeping N durable copies of every chunk: placement, repair and hand-off.

Placement follows the DHT: chunk *i* goes to the live nodes whose ids are
closest (XOR) to ``dht_key("chunk", hash_i)``, skipping nodes that already
hold it, are full or do not answer.  Chunks of one file therefore spread over
many nodes, and the same rule tells every holder where a lost copy belongs.

Three callers share one mechanism, :meth:`Replicator.place`:

* publish: every chunk needs N copies on nodes other than the publisher;
* repair: a holder that sees fewer than N durable copies of a chunk it holds
  (and is that chunk's lowest-id live holder, so only one node acts) makes
  the missing copies;
* hand-off (SIGTERM, unpin): a leaving node first copies every chunk for
  which it is among the last N durable holders.

Liveness comes from asking holders directly (``GET_HAVE``), never from the
DHT records alone, so a dead holder is noticed at the next check, not when
its records expire.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from dhtshare.config import Config
from dhtshare.core import messages as m
from dhtshare.core.bitfield import indices_from_bitfield
from dhtshare.core.ids import dht_key, short
from dhtshare.core.manifest import Manifest
from dhtshare.core.providers import ProviderRecord
from dhtshare.disk.entry import Entry
from dhtshare.disk.store import ContentStore
from dhtshare.errors import DhtshareError, PeerError, RemoteProtocolError
from dhtshare.net.peers import PeerPool
from dhtshare.net.transport import Connection, Reply

log = logging.getLogger(__name__)

CHUNK_NS = b"chunk"
#: Targets pushed to at once.
PUSH_PARALLEL = 4
#: Bytes of chunks in flight to one target.
PUSH_WINDOW = 16 * 1024 * 1024
SURVEY_TIMEOUT = 5.0

Address = tuple[str, int]


class ReplicationServices(Protocol):
    config: Config
    node_id: bytes
    store: ContentStore
    pool: PeerPool

    async def find_providers(self, h: bytes) -> list[ProviderRecord]: ...

    async def live_nodes(self, near: bytes) -> list[tuple[bytes, Address]]: ...


@dataclass
class Holder:
    """What a survey learned about one live holder of a file."""

    node_id: bytes
    address: Address
    durable: bool
    held: set[int] | None  # None: every chunk
    #: The replication factor the holder maintains (0: it does not repair).
    replicas: int = 0


@dataclass
class Placement:
    """Outcome of a placement: confirmed new copies per chunk, and what was short."""

    placed: dict[int, int] = field(default_factory=dict)
    short: dict[int, int] = field(default_factory=dict)
    targets: set[bytes] = field(default_factory=set)


class _Declined(DhtshareError):
    """A target would not (full) or could not (dead, error) take chunks."""


def _distance(key: bytes, node_id: bytes) -> int:
    return int.from_bytes(key, "big") ^ int.from_bytes(node_id, "big")


class Replicator:
    def __init__(self, s: ReplicationServices) -> None:
        self.s = s

    # -- survey -------------------------------------------------------------------------
    async def survey(self, entry: Entry) -> list[Holder]:
        """Every live holder of ``entry``'s file, with what it holds (us included)."""
        return await self.survey_hash(entry.manifest, entry)

    async def survey_hash(self, manifest: Manifest, entry: Entry | None) -> list[Holder]:
        """Every live holder of ``manifest``'s file, asked directly (and us, if we hold it)."""
        h = manifest.hash
        mine = []
        if entry is not None:
            held = None if entry.complete else set(entry.held_indices())
            mine = [Holder(self.s.node_id, ("", 0), entry.durable, held, entry.replicas)]
        records = await self.s.find_providers(h)
        n = manifest.chunk_count

        async def ask(rec: ProviderRecord) -> Holder | None:
            try:
                async with asyncio.timeout(SURVEY_TIMEOUT):
                    conn = await self.s.pool.get(rec.address, rec.node_id)
                    have = await conn.get_have(h, SURVEY_TIMEOUT)
                held = None if have.complete else set(indices_from_bitfield(n, have.bitfield))
                return Holder(rec.node_id, rec.address, have.durable, held, have.replicas)
            except (TimeoutError, DhtshareError):
                return None

        found = await asyncio.gather(*(ask(r) for r in records if r.node_id != self.s.node_id))
        return [*mine, *(x for x in found if x is not None)]

    # -- placement ----------------------------------------------------------------------
    async def place(
        self,
        entry: Entry,
        want: dict[int, int],
        exclude: dict[int, set[bytes]],
        replicas: int,
        avoid: Iterable[bytes] = (),
    ) -> Placement:
        """Make ``want[i]`` more durable copies of chunk ``i`` on nodes not in ``exclude[i]``.

        Targets are taken closest-first to each chunk's key; a target that is
        full or dead is dropped and its chunks go to the next candidates.
        """
        manifest = entry.manifest
        result = Placement()
        if not want:
            return result
        bad = set(avoid) | {self.s.node_id}
        cands = [c for c in await self.s.live_nodes(manifest.hash) if c[0] not in bad]
        addr_of = dict(cands)
        order: dict[int, list[bytes]] = {}
        for i in want:
            key = dht_key(CHUNK_NS, manifest.chunk_hash(i))
            order[i] = sorted(addr_of, key=functools.partial(_distance, key))
        remaining = dict(want)
        sem = asyncio.Semaphore(PUSH_PARALLEL)

        async def run(nid: bytes, idx: list[int]) -> tuple[bytes, list[int], list[int]]:
            async with sem:
                return (nid, *await self._push(entry, addr_of[nid], idx, replicas, nid))

        for _round in range(len(cands) + 1):
            plan: dict[bytes, list[int]] = {}
            for i, need in remaining.items():
                if need <= 0:
                    continue
                taken = exclude.setdefault(i, set())
                picks = [nid for nid in order[i] if nid not in taken and nid not in bad][:need]
                for nid in picks:
                    plan.setdefault(nid, []).append(i)
                    taken.add(nid)
            if not plan:
                break
            for nid, stored, failed in await asyncio.gather(
                *(run(nid, idx) for nid, idx in plan.items())
            ):
                for i in stored:
                    remaining[i] -= 1
                    result.placed[i] = result.placed.get(i, 0) + 1
                    result.targets.add(nid)
                if failed:
                    bad.add(nid)
            if all(v <= 0 for v in remaining.values()):
                break
        result.short = {i: v for i, v in remaining.items() if v > 0}
        if result.short:
            log.warning("%s: %d chunks are short of copies (no more willing nodes)",
                        short(manifest.hash), len(result.short))
        return result

    async def _push(
        self, entry: Entry, addr: Address, indices: list[int], replicas: int, node_id: bytes
    ) -> tuple[list[int], list[int]]:
        """Send the manifest and ``indices`` to one target; (stored, failed)."""
        manifest = entry.manifest
        timeout = self.s.config.request_timeout
        stored: list[int] = []
        try:
            conn = await self._put_manifest(entry, addr, replicas, node_id)
            window = max(2, PUSH_WINDOW // manifest.chunk_size)
            pending: dict[int, asyncio.Future[Reply]] = {}
            queue = list(indices)
            while queue or pending:
                while queue and len(pending) < window:
                    i = queue.pop(0)
                    data = await asyncio.to_thread(entry.read_chunk, i)
                    rid = conn.next_id()
                    msg = m.PutChunk(rid, manifest.hash, i, manifest.chunk_hash(i))
                    pending[i] = conn.start_request(msg, rid, data)
                    await conn.drain()
                done, _ = await asyncio.wait(
                    pending.values(), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    raise PeerError(f"{addr[0]}:{addr[1]} stopped answering")
                for i, fut in list(pending.items()):
                    if fut.done():
                        del pending[i]
                        self._check(fut.result()[0], addr)
                        stored.append(i)
        except (_Declined, PeerError, RemoteProtocolError, OSError) as err:
            log.info("replica target %s:%d declined: %s", *addr, err)
            return stored, [i for i in indices if i not in set(stored)]
        return stored, []

    async def _put_manifest(
        self, entry: Entry, addr: Address, replicas: int, node_id: bytes
    ) -> Connection:
        """Ask node ``node_id`` at ``addr`` to hold a replica of ``entry``.

        Raises :class:`_Declined` if it won't; the link refuses anyone but that node.
        """
        manifest = entry.manifest
        conn = await self.s.pool.get(addr, node_id)
        req = conn.next_id()
        msg = m.PutManifest(req, manifest.hash, replicas, manifest.encode())
        reply, _ = await conn.request(msg, req, self.s.config.request_timeout)
        self._check(reply, addr)
        return conn

    @staticmethod
    def _check(reply: m.Message, addr: Address) -> None:
        if isinstance(reply, m.Ok):
            return
        if isinstance(reply, m.Error):
            raise _Declined(reply.message)
        raise _Declined(f"unexpected answer {type(reply).__name__}")

    # -- the three uses -----------------------------------------------------------------
    async def replicate_new(self, entry: Entry, replicas: int) -> Placement:
        """Publish: ``replicas`` copies of every chunk on nodes other than us."""
        n = entry.manifest.chunk_count
        if n == 0:
            return await self._replicate_manifest_only(entry, replicas)
        want = dict.fromkeys(range(n), replicas)
        return await self.place(entry, want, {i: {self.s.node_id} for i in range(n)}, replicas)

    async def _replicate_manifest_only(self, entry: Entry, replicas: int) -> Placement:
        """An empty file has no chunks: its manifest alone needs ``replicas`` holders."""
        result = Placement()
        cands = [c for c in await self.s.live_nodes(entry.manifest.hash)
                 if c[0] != self.s.node_id]
        cands.sort(key=lambda c: _distance(entry.manifest.hash[:20], c[0]))
        for nid, addr in cands:
            if len(result.targets) >= replicas:
                break
            try:
                await self._put_manifest(entry, addr, replicas, nid)
            except (_Declined, PeerError, RemoteProtocolError, OSError) as err:
                log.info("replica target %s:%d declined: %s", *addr, err)
                continue
            result.targets.add(nid)
        if len(result.targets) < replicas:
            result.short = {-1: replicas - len(result.targets)}
        return result

    async def repair(self, entry: Entry) -> Placement:
        """Restore ``entry.replicas`` durable copies of the chunks we lead."""
        return await self._top_up(entry, leaving=False)

    async def hand_off(self, entry: Entry) -> Placement:
        """Before we drop ``entry``: copy chunks whose durable copies would fall below N."""
        return await self._top_up(entry, leaving=True)

    async def _top_up(self, entry: Entry, leaving: bool) -> Placement:
        """Place the copies each chunk we hold lacks.

        Repairing, only the lowest-id holder that maintains copies acts on a
        chunk (one repairer, no stampede); leaving, we act on every chunk and
        do not count our own copy.
        """
        me = self.s.node_id
        holders = await self.survey(entry)
        want: dict[int, int] = {}
        exclude: dict[int, set[bytes]] = {}
        for i in entry.held_indices():
            have = [x for x in holders if x.held is None or i in x.held]
            durable = sum(1 for x in have if x.durable and not (leaving and x.node_id == me))
            if durable >= entry.replicas:
                continue
            if not leaving and min(x.node_id for x in have if x.replicas) != me:
                continue
            want[i] = entry.replicas - durable
            # A node with a mere download of it may still become a durable holder.
            exclude[i] = {x.node_id for x in have if x.durable} | {me}
        if want:
            log.info("%s %s: %d chunks below %d copies", "handing off" if leaving else "repairing",
                     short(entry.manifest.hash), len(want), entry.replicas)
        return await self.place(entry, want, exclude, entry.replicas)


def holders_per_chunk(holders: list[Holder], n: int) -> list[int]:
    """Durable copies of each chunk among ``holders`` (for status and tests)."""
    counts = [0] * n
    for x in holders:
        if not x.durable:
            continue
        for i in range(n) if x.held is None else x.held:
            counts[i] += 1
    return counts


__all__ = ["Holder", "Placement", "Replicator", "holders_per_chunk"]
