"""Operating-system failures reach the user as one clear line, never a traceback.

Each case is what a user meets on a real machine: a data dir on a read-only
disk, a lock file that cannot be opened, a disk that fills in the middle of a
fetch, an output directory that cannot be written.  Each must give one line
on stderr, a non-zero exit, no partial target file, and (where a node runs)
a node that keeps serving.  Full and read-only disks are small tmpfs mounts
the test makes and removes; without root they are skipped, saying why.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import (
    Cluster,
    NodeProc,
    cli_env,
    fetch_json,
    make_file,
    publish,
    run_cli,
    sha256_file,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

MIB = 1 << 20


@contextlib.contextmanager
def tmpfs(path: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    """Mount a private tmpfs of ``size`` at ``path`` for the duration (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size},mode=0755" + (",ro" if read_only else "")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                         capture_output=True, text=True, timeout=10, check=False)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=10,
                       check=False)


def one_clear_line(res: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The command failed with exactly one error line containing every needle."""
    assert res.returncode != 0, res.stdout
    assert "Traceback" not in res.stderr, res.stderr
    assert "internal error" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def still_serves(node: NodeProc, other: NodeProc, tmp_path: Path) -> None:
    """``node`` answers status and can still fetch and be fetched from."""
    status = run_cli("status", "--data-dir", str(node.data_dir), "--json")
    assert status.returncode == 0, status.stderr
    small = make_file(tmp_path / "small.bin", 300_000, seed=5)
    h = publish(node, small)
    fetch_json(other, h, tmp_path / "small-copy.bin")
    assert sha256_file(tmp_path / "small-copy.bin") == sha256_file(small)


def test_data_dir_on_a_read_only_disk(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as ro:
        res = run_cli("bootstrap", "--host", "127.0.0.1", "--port", "0",
                      "--data-dir", str(ro / "dd"), timeout=30)
    one_clear_line(res, "cannot create the data dir", "read-only")


def test_lock_file_that_cannot_be_opened(tmp_path: Path) -> None:
    data_dir = tmp_path / "dd"
    (data_dir / "lock").mkdir(parents=True)  # a directory where the lock file goes
    res = run_cli("bootstrap", "--host", "127.0.0.1", "--port", "0",
                  "--data-dir", str(data_dir), timeout=30)
    one_clear_line(res, "cannot open the lock file", str(data_dir / "lock"))


def test_one_shot_fetch_with_an_unusable_data_dir(cluster: Cluster, tmp_path: Path) -> None:
    _n1, n2 = cluster.start(2)
    h = publish(n2, make_file(tmp_path / "f.bin", 200_000, seed=3))
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as ro:
        res = run_cli("fetch", h, "-o", str(tmp_path / "out.bin"), "--data-dir",
                      str(ro / "dd"), "--peer", n2.addr, timeout=60)
    one_clear_line(res, "cannot create the data dir")
    assert not (tmp_path / "out.bin").exists()


def test_fetch_onto_a_full_disk(cluster: Cluster, tmp_path: Path) -> None:
    _n1, n2, n3 = cluster.start(3)
    src = make_file(tmp_path / "big.bin", 24 * MIB, seed=11)
    h = publish(n2, src)
    with tmpfs(tmp_path / "small", "8m") as small:
        target = small / "big.bin"
        res = run_cli("fetch", h, "-o", str(target), "--data-dir", str(n3.data_dir),
                      timeout=60)
        one_clear_line(res, "disk is full")
        assert list(small.iterdir()) == []  # no target, and no empty .part holding space
        assert n3.alive()
    still_serves(n3, n2, tmp_path)


def test_disk_that_fills_during_a_fetch(cluster: Cluster, tmp_path: Path) -> None:
    """The download's space is reserved when it starts: filling the disk meanwhile is harmless."""
    _n1, n2, n3 = cluster.start(3)
    src = make_file(tmp_path / "big.bin", 24 * MIB, seed=13)
    h = publish(n2, src, "--chunk-size", "64K")
    with tmpfs(tmp_path / "small", "40m") as small:
        target = small / "big.bin"
        fetcher = subprocess.Popen(
            [sys.executable, "-m", "dhtshare", "fetch", h, "-o", str(target), "--data-dir",
             str(n3.data_dir), "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
        )
        try:
            assert wait_until(lambda: any(p.name.endswith(".part") for p in small.iterdir())
                              or fetcher.poll() is not None, 30, 0.002)
            filler = small / "filler"
            with open(filler, "wb") as fh, contextlib.suppress(OSError):
                for _ in range(64):  # 40 MiB at most: the disk is full long before
                    fh.write(b"\0" * MIB)
                    fh.flush()
            _out, err = fetcher.communicate(timeout=60)
        finally:
            if fetcher.poll() is None:
                fetcher.kill()
                fetcher.wait(10)
        assert fetcher.returncode == 0, err
        assert sha256_file(target) == sha256_file(src)
    still_serves(n3, n2, tmp_path)


def test_fetch_into_a_read_only_directory(cluster: Cluster, tmp_path: Path) -> None:
    _n1, n2, n3 = cluster.start(3)
    h = publish(n2, make_file(tmp_path / "f.bin", 2 * MIB, seed=12))
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as ro:
        res = run_cli("fetch", h, "-o", str(ro / "f.bin"), "--data-dir", str(n3.data_dir),
                      timeout=60)
        one_clear_line(res, "read-only")
        assert list(ro.iterdir()) == []
    assert n3.alive()
    still_serves(n3, n2, tmp_path)


def test_publish_of_an_unreadable_file(cluster: Cluster, tmp_path: Path) -> None:
    _n1, n2 = cluster.start(2)
    folder = tmp_path / "folder"
    folder.mkdir()
    res = run_cli("publish", str(folder / "missing.bin"), "--data-dir", str(n2.data_dir))
    one_clear_line(res, "missing.bin")
    res = run_cli("publish", str(folder), "--data-dir", str(n2.data_dir))
    one_clear_line(res, "not a regular file")
    assert n2.alive()
