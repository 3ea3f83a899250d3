"""Multi-node behaviour through the CLI, with real node processes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
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
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]  # node processes

MIB = 1024 * 1024
WINDOW = 16 * MIB  # the fetcher's per-peer window (Config.window_bytes)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProc]]:
    """A 5-node network shared by the tests of this module (bootstrap + 4 nodes)."""
    c = Cluster(tmp_path_factory.mktemp("net"))
    try:
        yield c.start(5)
    finally:
        c.stop_all()


def test_publish_on_node2_fetch_on_node5(net: list[NodeProc], tmp_path: Path) -> None:
    src = make_file(tmp_path / "payload.bin", 24 * MIB + 12345, seed=1)
    h = publish(net[1], src)
    assert len(h) == 64
    out = tmp_path / "out"
    out.mkdir()
    result = fetch_json(net[4], h, out)
    assert result["hash"] == h
    assert sha256_file(out / "payload.bin") == sha256_file(src)
    # Node 2 and the replicas it placed served it (node 5 may keep some itself).
    assert sum(result["peers"].values()) + result["bytes_reused"] >= src.stat().st_size
    assert set(result["peers"]) <= {n.addr for n in net}
    # No temporary files are left behind.
    assert sorted(p.name for p in out.iterdir()) == ["payload.bin"]


@pytest.mark.parametrize(
    ("size", "chunk"),
    [
        (0, "1M"),
        (1, "1M"),
        (MIB, "1M"),
        (MIB + 1, "1M"),
        (100_000 * 3 + 7, "100000"),
        (200_000 + 3, "512"),
    ],
    ids=["empty", "one-byte", "one-chunk", "chunk-plus-one", "100KB-chunks", "512B-chunks"],
)
def test_sizes_and_chunk_sizes(
    net: list[NodeProc], tmp_path: Path, size: int, chunk: str
) -> None:
    src = make_file(tmp_path / f"f-{size}.dat", size, seed=size)
    h = publish(net[2], src, "--chunk-size", chunk)
    result = fetch_json(net[3], h, tmp_path / "copy.dat")
    assert result["size"] == size
    assert sha256_file(tmp_path / "copy.dat") == sha256_file(src)


def test_name_with_spaces_and_non_ascii(net: list[NodeProc], tmp_path: Path) -> None:
    src = make_file(tmp_path / "été à la plage ☃ notes.txt", 70_000, seed=7)
    h = publish(net[1], src, "--chunk-size", "16K")
    out = tmp_path / "dl"
    out.mkdir()
    result = fetch_json(net[4], h, out)
    assert result["name"] == src.name
    assert sha256_file(out / src.name) == sha256_file(src)


def test_file_held_by_two_nodes_is_pulled_from_both(
    net: list[NodeProc], tmp_path: Path
) -> None:
    src = make_file(tmp_path / "shared.bin", 16 * MIB, seed=3)
    h = publish(net[1], src, "--chunk-size", "256K", "--replicas", "0")
    # Node 3 fetches it and so becomes a second full provider.
    fetch_json(net[2], h, tmp_path / "on-node3.bin")
    result = fetch_json(net[4], h, tmp_path / "on-node5.bin")
    assert sha256_file(tmp_path / "on-node5.bin") == sha256_file(src)
    peers = result["peers"]
    assert set(peers) == {net[1].addr, net[2].addr}, peers
    assert all(n > 0 for n in peers.values())
    assert sum(peers.values()) >= src.stat().st_size


def test_existing_output_is_not_overwritten_without_force(
    net: list[NodeProc], tmp_path: Path
) -> None:
    src = make_file(tmp_path / "a.bin", 5000, seed=11)
    h = publish(net[1], src)
    target = tmp_path / "exists.bin"
    target.write_bytes(b"precious")
    res = run_cli("fetch", h, "-o", str(target), "--data-dir", str(net[3].data_dir))
    assert res.returncode != 0
    assert "already exists" in res.stderr
    assert "Traceback" not in res.stderr
    assert target.read_bytes() == b"precious"
    fetch_json(net[3], h, target, "--force")
    assert sha256_file(target) == sha256_file(src)


def test_unknown_hash_fails_cleanly(net: list[NodeProc], tmp_path: Path) -> None:
    res = run_cli("fetch", "ab" * 32, "-o", str(tmp_path / "x"), "--data-dir",
                  str(net[4].data_dir))
    assert res.returncode != 0
    assert "no reachable peer provides" in res.stderr
    assert "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_short_lived_fetch_through_peer(net: list[NodeProc], tmp_path: Path) -> None:
    """Without a node on the data dir, fetch joins through --peer and exits."""
    src = make_file(tmp_path / "oneshot.bin", 3 * MIB, seed=5)
    h = publish(net[3], src)
    res = run_cli("fetch", h, "-o", str(tmp_path / "got.bin"), "--data-dir",
                  str(tmp_path / "fresh-dir"), "--peer", net[0].addr, "--json")
    assert res.returncode == 0, res.stderr
    assert sha256_file(tmp_path / "got.bin") == sha256_file(src)


def test_peers_from_environment(net: list[NodeProc], tmp_path: Path) -> None:
    src = make_file(tmp_path / "env.bin", 100_000, seed=6)
    h = publish(net[2], src)
    res = run_cli("fetch", h, "-o", str(tmp_path / "env-copy.bin"),
                  env={"DHTSHARE_PEERS": f"{net[0].addr},{net[1].addr}",
                       "DHTSHARE_DATA_DIR": str(tmp_path / "envdir")})
    assert res.returncode == 0, res.stderr
    assert sha256_file(tmp_path / "env-copy.bin") == sha256_file(src)


def test_corrupt_provider_is_banned_and_fetch_completes(
    cluster: Cluster, tmp_path: Path
) -> None:
    _n1, n2, n3, n4 = cluster.start(4)
    src = make_file(tmp_path / "good.bin", 8 * MIB, seed=21)
    h = publish(n2, src, "--chunk-size", "128K", "--replicas", "0")
    fetch_json(n3, h, tmp_path / "n3copy.bin")
    # Rot n2's copy in place, keeping size and mtime: n2 keeps serving it, wrongly.
    st = src.stat()
    with open(src, "r+b") as fh:
        for off in range(0, st.st_size, 128 * 1024):
            fh.seek(off)
            fh.write(b"\xff" * 64)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    result = fetch_json(n4, h, tmp_path / "n4copy.bin")
    assert sha256_file(tmp_path / "n4copy.bin") == sha256_file(tmp_path / "n3copy.bin")
    assert result["banned"] == [n2.addr]
    assert result["peers"][n3.addr] > 0


def _journaled(journal: Path) -> int:
    """Chunks a fetch has verified and written so far, from its ``.part.have`` journal."""
    try:
        raw = journal.read_bytes()
    except OSError:
        return 0
    return raw[42:].count(1)  # header: 10-byte magic + 32-byte manifest hash


def test_provider_killed_mid_fetch(cluster: Cluster, tmp_path: Path) -> None:
    """A holder dies while a fetch pulls from it: the other holder serves the rest."""
    _n1, n2, n3, n4 = cluster.start(4)
    size, chunk = 96 * MIB, 64 * 1024
    chunks = size // chunk
    src = make_file(tmp_path / "big.bin", size, seed=31)
    # Exactly two holders: n2 (the publisher) and n3, once it has fetched the file.
    h = publish(n2, src, "--chunk-size", "64K", "--replicas", "0")
    fetch_json(n3, h, tmp_path / "n3.bin")
    out = tmp_path / "n4.bin"
    journal = tmp_path / f".n4.bin.{h[:16]}.part.have"
    fetcher = subprocess.Popen(
        [sys.executable, "-m", "dhtshare", "fetch", h, "-o", str(out), "--data-dir",
         str(n4.data_dir), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
    )
    try:
        # Once n4 has verified a few chunks (both holders serve from the start) ...
        deadline = time.monotonic() + 60
        while (time.monotonic() < deadline and fetcher.poll() is None
               and _journaled(journal) < chunks // 16):
            time.sleep(0.002)
        # ... freeze n4, the node that runs the fetch, so it cannot finish while
        # n2 dies; count what it holds; kill n2; let n4 go on.
        os.kill(n4.proc.pid, signal.SIGSTOP)
        try:
            held_at_kill = _journaled(journal)
            n2.kill()
        finally:
            os.kill(n4.proc.pid, signal.SIGCONT)
        running_at_kill = fetcher.poll() is None
        stdout, stderr = fetcher.communicate(timeout=120)
    finally:
        if fetcher.poll() is None:
            fetcher.kill()
            fetcher.wait(10)
    assert running_at_kill, f"the fetch ended before n2 was killed: {stderr}"
    assert 0 < held_at_kill < chunks, f"n2 was not killed mid-fetch ({held_at_kill} chunks)"
    assert fetcher.returncode == 0, stderr
    assert sha256_file(out) == sha256_file(src)
    result = json.loads(stdout.strip().splitlines()[-1])
    peers = result["peers"]
    assert result["bytes_reused"] == 0
    assert set(peers) <= {n2.addr, n3.addr}, peers
    # n2 was serving, and served only part of the file.
    assert 0 < peers.get(n2.addr, 0) < size, peers
    # The chunks missing when n2 died came from n3, but for what n2 already had
    # on its way (at most one window of requests in flight).
    after_kill = (chunks - held_at_kill) * chunk
    assert peers.get(n3.addr, 0) >= after_kill - WINDOW, (peers, held_at_kill)
    assert sum(peers.values()) >= size


def test_node_stops_cleanly_on_sigterm(cluster: Cluster) -> None:
    n1, n2 = cluster.start(2)
    t0 = time.monotonic()
    assert n2.stop(signal.SIGTERM) == 0
    assert n1.stop(signal.SIGINT) == 0
    assert time.monotonic() - t0 < 10
    assert "Traceback" not in n1.log() + n2.log()


def test_200_mib_file_moves_between_nodes(net: list[NodeProc], tmp_path: Path) -> None:
    src = make_file(tmp_path / "large.bin", 200 * MIB, seed=99)
    h = publish(net[0], src)
    result = fetch_json(net[3], h, tmp_path / "large-copy.bin")
    assert sha256_file(tmp_path / "large-copy.bin") == sha256_file(src)
    assert result["bytes_downloaded"] + result["bytes_reused"] >= 200 * MIB
