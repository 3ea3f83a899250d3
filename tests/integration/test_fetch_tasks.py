"""Cancelled and failing fetches leave nothing running and nothing written behind them.

A fetch hashes and writes chunks in worker threads, and cancelling the task
that waits for a thread does not stop the thread: a write still under way
when the fetch gave up and closed its part file would ``pwrite`` through a
descriptor number that may belong to another file by then.  Here two real
nodes in this process (sockets on 127.0.0.1) run many fetches, cancelled at
random moments while writes are in flight (writes are slowed down to make
that likely), cut off by dropping the serving connection, or stopped by a
full disk, and after every fetch the test checks that:

1. no ``pwrite`` of a chunk went through a descriptor after its chunk file
   closed it (nor through the same number reopened for another file);
2. no task the fetch started is still running, and no write thread either;
3. the ``.part`` journal claims only chunks whose bytes on disk are right,
   and a last fetch resumes from it to a file with the right SHA-256.

Only the OS calls are patched (``os.open``/``os.close``/``os.pwrite``) and
``ChunkFile`` wrapped to know which file a write is for; the network code
runs unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import hashlib
import logging
import os
import random
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dhtshare.config import Config
from dhtshare.core.ids import ManifestHash, parse_manifest_hash
from dhtshare.core.manifest import Manifest
from dhtshare.disk.chunkfile import MAGIC, ChunkFile, ChunkFileClosed, journal_path
from dhtshare.disk.hashing import hash_file, sha256_file
from dhtshare.errors import StorageError
from dhtshare.node import Node
from dhtshare.ops import PublishArgs
from dhtshare.transfer.fetch import Fetch, FetchResult
from tests.conftest import LOOPBACK

pytestmark = pytest.mark.timeout(120)

CHUNK = 128 * 1024  # above the inline limit: written from worker threads
SIZE = 40 * CHUNK + 777  # 41 chunks, the last one small (written inline)
ITERATIONS = 40
#: Every write of a chunk sleeps this long (random) before its pwrite.
WRITE_DELAY = (0.001, 0.004)
#: Coroutines that a fetch may start but that others own (and end on their own).
OTHER_OWNERS = {
    "Upkeep.announce": "node.spawn: the node awaits it when it stops",
    "PeerPool._connect": "the pool's shared connect, shielded, bounded by connect_timeout",
}
log = logging.getLogger(__name__)
FETCH_ID: contextvars.ContextVar[int] = contextvars.ContextVar("fetch_id", default=0)


# -- watching the disk ------------------------------------------------------------------
class DiskWatch:
    """Records which descriptors each ChunkFile owns, and checks every chunk write."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.local = threading.local()
        #: fd -> how many times os.open returned it (a reopened number is a new file).
        self.gen: dict[int, int] = {}
        self.closed: set[int] = set()
        self.fds_of: dict[ChunkFile, set[tuple[int, int]]] = {}
        self.violations: list[str] = []
        #: write_verified calls under way (in any thread).
        self.writing = 0
        self.max_writing = 0
        self.pwrites = 0
        self.slow = False
        #: When set: chunk writes left before the "disk" is full.
        self.enospc_after: int | None = None
        self.rng = random.Random(7)

    def install(self, mp: pytest.MonkeyPatch) -> None:
        real_open, real_close, real_pwrite = os.open, os.close, os.pwrite
        real_cf_open = ChunkFile.open.__func__  # type: ignore[attr-defined]
        real_write = ChunkFile.write_verified

        def open_(*args: Any, **kwargs: Any) -> int:
            with self.lock:
                fd: int = real_open(*args, **kwargs)
                self.gen[fd] = self.gen.get(fd, 0) + 1
                self.closed.discard(fd)
                opened: set[tuple[int, int]] | None = getattr(self.local, "opened", None)
                if opened is not None:
                    opened.add((fd, self.gen[fd]))
            return fd

        def close_(fd: int) -> None:
            with self.lock:
                real_close(fd)
                self.closed.add(fd)

        def pwrite_(fd: int, data: Any, offset: int) -> int:
            mine: set[tuple[int, int]] | None = getattr(self.local, "writing_to", None)
            if mine is None:  # not a chunk write (the journal header, written on open)
                return real_pwrite(fd, data, offset)
            if self.slow and threading.current_thread() is not threading.main_thread():
                time.sleep(self.rng.uniform(*WRITE_DELAY))  # the fetch may give up meanwhile
            with self.lock:
                if fd in self.closed or (fd, self.gen.get(fd, 0)) not in mine:
                    self.violations.append(f"pwrite to fd {fd} after its chunk file closed it")
                    raise OSError(errno.EBADF, "write after close (caught by the test)")
                if len(data) > 1 and self.enospc_after is not None:
                    if self.enospc_after <= 0:
                        raise OSError(errno.ENOSPC, "No space left on device (injected)")
                    self.enospc_after -= 1
                self.pwrites += 1
                return real_pwrite(fd, data, offset)

        def cf_open(cls: type[ChunkFile], path: Path, manifest: Manifest,
                    preallocate: bool = True) -> ChunkFile:
            self.local.opened = set()
            try:
                cf: ChunkFile = real_cf_open(cls, path, manifest, preallocate)
            finally:
                opened, self.local.opened = self.local.opened, None
            with self.lock:
                self.fds_of[cf] = opened
            return cf

        def write_verified(cf: ChunkFile, index: int, data: Any) -> bool:
            with self.lock:
                self.writing += 1
                self.max_writing = max(self.max_writing, self.writing)
                self.local.writing_to = self.fds_of.get(cf, set())
            try:
                return real_write(cf, index, data)
            finally:
                self.local.writing_to = None
                with self.lock:
                    self.writing -= 1

        mp.setattr(os, "open", open_)
        mp.setattr(os, "close", close_)
        mp.setattr(os, "pwrite", pwrite_)
        mp.setattr(ChunkFile, "open", classmethod(cf_open))
        mp.setattr(ChunkFile, "write_verified", write_verified)


# -- watching tasks -------------------------------------------------------------------------
@dataclass
class TaskWatch:
    """Every task created inside a fetch (the context carries the fetch's id)."""

    started: dict[int, list[asyncio.Task[Any]]] = field(default_factory=dict)
    #: Tasks of other owners still running when their fetch ended, by coroutine.
    others: dict[str, int] = field(default_factory=dict)

    def factory(
        self,
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, Any],
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[Any]:
        task = asyncio.Task(coro, loop=loop, context=context)
        fetch_id = (context or contextvars.copy_context()).get(FETCH_ID, 0)
        if fetch_id:
            self.started.setdefault(fetch_id, []).append(task)
        return task

    def still_running(self, fetch_id: int) -> list[str]:
        """What the fetch started and is still running, others' tasks left out."""
        names = []
        for task in self.started.get(fetch_id, []):
            name = task.get_coro().__qualname__
            if task.done():
                continue
            if name in OTHER_OWNERS:
                self.others[name] = self.others.get(name, 0) + 1
            else:
                names.append(name)
        return names


# -- checks -------------------------------------------------------------------------------
def journal_claims(part: Path, manifest: Manifest) -> list[int]:
    try:
        raw = journal_path(part).read_bytes()
    except FileNotFoundError:
        return []
    body = raw[len(MAGIC) + len(manifest.hash):]
    return [i for i, b in enumerate(body) if b == 1]


def check_journal(part: Path, manifest: Manifest, src: bytes) -> int:
    """Every chunk the journal claims is on disk, intact; returns their bytes."""
    claimed = journal_claims(part, manifest)
    if not claimed:
        return 0
    data = part.read_bytes()
    for i in claimed:
        start, length = manifest.chunk_offset(i), manifest.chunk_length(i)
        assert hashlib.sha256(data[start:start + length]).digest() == manifest.chunk_hash(i), \
            f"the journal claims chunk {i}, but its bytes on disk are wrong"
    return sum(manifest.chunk_length(i) for i in claimed)


@dataclass
class Tally:
    cancelled: int = 0
    cancelled_mid_write: int = 0
    completed: int = 0
    disk_full: int = 0
    dropped: int = 0
    seconds: list[float] = field(default_factory=list)


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> DiskWatch:
    """Patched OS calls, undone by ``monkeypatch`` once the nodes are stopped."""
    watch = DiskWatch()
    watch.install(monkeypatch)
    return watch


@dataclass
class Pair:
    """A seeder holding the file and a fetcher that knows only the seeder."""

    seeder: Node
    fetcher: Node
    h: ManifestHash
    manifest: Manifest


@contextlib.asynccontextmanager
async def two_nodes(tmp_path: Path, src: Path) -> AsyncIterator[Pair]:
    async with Node.open(Config(data_dir=tmp_path / "seeder", host=LOOPBACK)) as seeder:
        h = parse_manifest_hash((await seeder.ops.publish(PublishArgs(src, CHUNK))).hash)
        entry = seeder.store.get(h)
        assert entry is not None
        cfg = Config(data_dir=tmp_path / "fetcher", host=LOOPBACK,
                     peers=((LOOPBACK, seeder.port),))
        async with Node.open(cfg) as fetcher:
            await fetcher.upkeep.wait_joined()
            yield Pair(seeder, fetcher, h, entry.manifest)


@contextlib.contextmanager
def watching_tasks() -> Iterator[TaskWatch]:
    loop = asyncio.get_running_loop()
    tasks = TaskWatch()
    loop.set_task_factory(tasks.factory)  # type: ignore[arg-type]
    try:
        yield tasks
    finally:
        loop.set_task_factory(None)


def start_fetch(pair: Pair, out: Path, fetch_id: int) -> asyncio.Task[FetchResult]:
    """A fetch as a task; every task it starts carries ``fetch_id`` in its context."""

    async def one() -> FetchResult:
        FETCH_ID.set(fetch_id)
        return await Fetch(pair.fetcher, pair.h, out, out.parent).run()

    return asyncio.get_running_loop().create_task(one())


async def test_cancelled_and_failed_fetches_leave_no_writes_or_tasks(
    tmp_path: Path, disk: DiskWatch
) -> None:
    src = tmp_path / "src.bin"
    src_bytes = os.urandom(SIZE)
    src.write_bytes(src_bytes)
    want = sha256_file(src)
    rng = random.Random(2024)
    tally = Tally()
    out = tmp_path / "got.bin"
    with watching_tasks() as tasks:
        async with two_nodes(tmp_path, src) as pair:
            manifest = pair.manifest
            part = out.with_name(f".{out.name}.{pair.h.hex()[:16]}.part")
            serving = (LOOPBACK, pair.seeder.port)

            def after(fetch_id: int) -> None:
                """The three promises, checked after every fetch."""
                assert disk.violations == []
                assert disk.writing == 0, "a write thread outlived its fetch"
                assert tasks.still_running(fetch_id) == []
                if out.exists():  # completed: verify, then start over from nothing
                    assert sha256_file(out) == want
                    tally.completed += 1
                    out.unlink()
                    pair.fetcher.store.drop(pair.h)
                else:
                    check_journal(part, manifest, src_bytes)

            # A first, undisturbed fetch tells how long one takes here.
            disk.slow = True
            t0 = time.monotonic()
            await asyncio.wait_for(start_fetch(pair, out, 1), 60)
            full = time.monotonic() - t0
            after(1)

            for fetch_id in range(2, ITERATIONS + 2):
                kind = rng.choice(["cancel"] * 5 + ["disk-full"] * 2 + ["drop"] * 2)
                t0 = time.monotonic()
                if kind == "disk-full":
                    disk.enospc_after = rng.randint(0, 30)
                task = start_fetch(pair, out, fetch_id)
                await asyncio.sleep(rng.uniform(0, full * 1.1))
                if kind == "cancel":
                    tally.cancelled_mid_write += disk.writing > 0
                    tally.cancelled += task.cancel()
                elif kind == "drop" and (conn := pair.fetcher.pool.peek(serving)) is not None:
                    conn.abort("dropped by the test")  # the fetch goes on: it reconnects
                    tally.dropped += 1
                await asyncio.wait({task}, timeout=60)
                assert task.done(), f"fetch {fetch_id} ({kind}) did not end"
                disk.enospc_after = None
                if not task.cancelled() and (err := task.exception()) is not None:
                    assert kind == "disk-full", repr(err)
                    assert isinstance(err, StorageError), repr(err)
                    assert "No space left" in str(err)
                    tally.disk_full += 1
                tally.seconds.append(time.monotonic() - t0)
                after(fetch_id)

            # Interrupted a third of the way, then resumed: only the missing chunks come.
            resumed_id = ITERATIONS + 2
            task = start_fetch(pair, out, resumed_id)
            deadline = time.monotonic() + 30
            while len(journal_claims(part, manifest)) < manifest.chunk_count // 3:
                assert time.monotonic() < deadline
                assert not task.done()
                await asyncio.sleep(0.001)
            task.cancel()
            await asyncio.wait({task}, timeout=60)
            after(resumed_id)
            kept = check_journal(part, manifest, src_bytes)
            assert kept > 0
            disk.slow = False
            result = await asyncio.wait_for(start_fetch(pair, out, resumed_id + 1), 60)
            assert result.bytes_reused == kept
            assert result.bytes_downloaded == SIZE - kept
            after(resumed_id + 1)
    assert tally.completed > 0
    assert tally.cancelled >= 10
    # The race this is about was really run, many times.
    assert tally.cancelled_mid_write >= 5, tally
    assert disk.max_writing > 1
    log.info("%d cancelled (%d with writes in flight), %d failed on a full disk, "
             "%d connections dropped, %d completed; %d chunk pwrites, up to %d at once; "
             "one fetch took %.3f-%.3f s", tally.cancelled, tally.cancelled_mid_write,
             tally.disk_full, tally.dropped, tally.completed, disk.pwrites, disk.max_writing,
             min(tally.seconds), max(tally.seconds))
    log.info("tasks started in fetches: %d; still running after, owned by others: %s",
             sum(map(len, tasks.started.values())), tasks.others)


async def test_a_bug_fails_the_fetch_loudly_and_stops_everything(
    tmp_path: Path, disk: DiskWatch, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Not a peer's fault, so not hidden as one: the fetch fails with the bug itself."""
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(SIZE))
    watched_write = ChunkFile.write_verified  # the DiskWatch wrapper

    def buggy_write(cf: ChunkFile, index: int, data: Any) -> bool:
        if index == 5:
            raise ZeroDivisionError("a bug in the write path")
        return watched_write(cf, index, data)

    monkeypatch.setattr(ChunkFile, "write_verified", buggy_write)
    with watching_tasks() as tasks:
        async with two_nodes(tmp_path, src) as pair:
            task = start_fetch(pair, tmp_path / "got.bin", 1)
            with pytest.raises(ZeroDivisionError, match="a bug in the write path"):
                await asyncio.wait_for(task, 60)
            assert tasks.still_running(1) == []
            assert disk.writing == 0
            assert disk.violations == []
    bugs = [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]
    assert bugs, "the bug was not logged with its traceback"
    assert "failed on a bug" in bugs[0].getMessage()


# -- ChunkFile on its own ---------------------------------------------------------------------
def _chunk_file(tmp_path: Path) -> tuple[ChunkFile, bytes]:
    data = os.urandom(3 * 4096 + 5)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    return ChunkFile.open(tmp_path / "x.part", hash_file(src, 4096)), data


def test_chunk_file_refuses_writes_after_close(tmp_path: Path) -> None:
    cf, data = _chunk_file(tmp_path)
    assert cf.write_verified(0, data[:4096])
    cf.close()
    with pytest.raises(ChunkFileClosed) as info:
        cf.write_verified(1, data[4096:8192])
    assert info.value.errno == errno.EBADF  # an OSError, as a failed write would be
    assert cf.closed
    assert journal_claims(cf.path, cf.manifest) == [0]
    cf.close()  # idempotent


def test_chunk_file_close_waits_for_a_write_under_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cf, data = _chunk_file(tmp_path)
    real_pwrite = os.pwrite
    in_write, release = threading.Event(), threading.Event()

    def blocking_pwrite(fd: int, buf: Any, offset: int) -> int:
        if len(buf) > 1:
            in_write.set()
            assert release.wait(10)
        return real_pwrite(fd, buf, offset)

    monkeypatch.setattr(os, "pwrite", blocking_pwrite)
    results: list[bool] = []
    writer = threading.Thread(target=lambda: results.append(cf.write_verified(1, data[4096:8192])))
    writer.start()
    assert in_write.wait(10)
    closer = threading.Thread(target=cf.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive(), "close() did not wait for the write under way"
    release.set()
    writer.join(10)
    closer.join(10)
    assert results == [True]
    assert cf.closed
    assert journal_claims(cf.path, cf.manifest) == [1]
