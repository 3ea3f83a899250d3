"""The content store's read side: no read goes through a descriptor after its close."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from dhtshare.disk import entry as entry_module
from dhtshare.disk.entry import Entry
from dhtshare.disk.hashing import hash_file
from dhtshare.disk.store import ContentStore
from dhtshare.errors import StorageError

pytestmark = pytest.mark.timeout(30)

CHUNK = 4096


def held_file(tmp_path: Path, chunks: int = 64) -> tuple[ContentStore, Entry, bytes]:
    data = os.urandom(CHUNK * chunks)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    store = ContentStore(tmp_path / "data")
    entry = store.add_complete(hash_file(path, CHUNK), path)
    return store, entry, data


def test_close_waits_for_the_read_under_way(tmp_path: Path) -> None:
    store, entry, data = held_file(tmp_path)
    with entry.reading():
        fd = entry.fd()
        entry.close()  # a download finished, a user removed the file...
        # ...while the kernel still reads through the descriptor: it stays open.
        assert os.pread(fd, CHUNK, CHUNK) == data[CHUNK : 2 * CHUNK]
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)  # the last reader out closed it
    store.close()


def test_reads_after_close_are_refused(tmp_path: Path) -> None:
    store, entry, _ = held_file(tmp_path)
    entry.close()
    with pytest.raises(StorageError, match="no longer served"):
        entry.read_chunk(0)
    with pytest.raises(StorageError), entry.reading():
        pass
    store.close()


def test_reads_racing_a_close_never_see_another_file(tmp_path: Path) -> None:
    """Readers in threads and a close (then new files taking fd numbers) in parallel."""
    for round_ in range(20):
        store, entry, data = held_file(tmp_path / str(round_), chunks=16)
        wrong: list[int] = []
        stop = threading.Event()

        def reader(entry: Entry = entry, data: bytes = data, stop: threading.Event = stop,
                   wrong: list[int] = wrong) -> None:
            i = 0
            while not stop.is_set():
                idx = i % 16
                try:
                    got = entry.read_chunk(idx)
                except StorageError:
                    return  # refused after close: fine
                if got != data[idx * CHUNK : (idx + 1) * CHUNK]:
                    wrong.append(idx)
                i += 1

        threads = [threading.Thread(target=reader) for _ in range(4)]
        for t in threads:
            t.start()
        entry.close()
        # Files opened now may get the closed descriptor's number.
        decoys = [os.open(tmp_path / str(round_) / f"decoy{k}", os.O_RDWR | os.O_CREAT)
                  for k in range(4)]
        for fd in decoys:
            os.write(fd, b"x" * CHUNK * 16)
        stop.set()
        for t in threads:
            t.join(10)
        for fd in decoys:
            os.close(fd)
        store.close()
        assert wrong == []


def test_idle_files_give_their_descriptors_back_beyond_the_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Serving many files keeps only a few open; a file in use is never closed under a read."""
    monkeypatch.setattr(entry_module, "MAX_OPEN_READERS", 3)
    held = [held_file(tmp_path / f"f{i}", chunks=2) for i in range(10)]
    before = len(os.listdir("/proc/self/fd"))
    busy = held[0][1]
    with busy.reading():
        fd = busy.fd()
        for _store, entry, data in held[1:]:
            assert entry.read_chunk(1) == data[CHUNK:]
        assert os.pread(fd, CHUNK, 0) == held[0][2][:CHUNK]  # still open: a read holds it
    assert len(os.listdir("/proc/self/fd")) - before <= 3
    for _store, entry, data in held:  # closed ones reopen on demand
        assert entry.read_chunk(0) == data[:CHUNK]
    for store, _entry, _data in held:
        store.close()
