"""The CLI contract: clear one-line errors, exit codes, help, restarts."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.conftest import (
    Cluster,
    fetch_json,
    free_port,
    make_file,
    publish,
    run_cli,
    sha256_file,
    start_node,
)

#: Tests marked slow start node processes or wait out a timeout; the rest run one
#: short CLI command each.
pytestmark = pytest.mark.timeout(120)

HASH = "ab" * 32


def assert_clean_error(res: object, code: int | None = None, text: str = "") -> None:
    rc = res.returncode  # type: ignore[attr-defined]
    err = res.stderr  # type: ignore[attr-defined]
    assert rc != 0
    if code is not None:
        assert rc == code, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert text.lower() in lines[0].lower(), err


@pytest.mark.parametrize("cmd", [[], ["bootstrap"], ["node"], ["publish"], ["fetch"],
                                 ["status"], ["demo"]])
def test_help(cmd: list[str]) -> None:
    res = run_cli(*cmd, "--help")
    assert res.returncode == 0
    assert "Usage" in res.stdout


def test_malformed_hash(tmp_path: Path) -> None:
    res = run_cli("fetch", "not-a-hash", "--data-dir", str(tmp_path), "--peer", "127.0.0.1:9")
    assert_clean_error(res, 2, "malformed hash")


def test_bad_peer_address(tmp_path: Path) -> None:
    res = run_cli("fetch", HASH, "--data-dir", str(tmp_path), "--peer", "nonsense")
    assert_clean_error(res, 2, "bad peer address")


def test_bad_chunk_size(tmp_path: Path) -> None:
    f = make_file(tmp_path / "f", 10)
    res = run_cli("publish", str(f), "--chunk-size", "100", "--data-dir", str(tmp_path / "d"))
    assert_clean_error(res, 2, "chunk size")


def test_missing_file(tmp_path: Path) -> None:
    res = run_cli("publish", str(tmp_path / "nope.bin"), "--data-dir", str(tmp_path / "d"),
                  "--peer", "127.0.0.1:9")
    assert_clean_error(res, 2, "no such file")


def test_no_node_on_data_dir(tmp_path: Path) -> None:
    f = make_file(tmp_path / "f", 10)
    res = run_cli("publish", str(f), "--data-dir", str(tmp_path / "empty"))
    assert_clean_error(res, None, "no dhtshare node is running")
    res = run_cli("fetch", HASH, "--data-dir", str(tmp_path / "empty"))
    assert_clean_error(res, None, "no dhtshare node is running")
    res = run_cli("status", "--data-dir", str(tmp_path / "empty"))
    assert_clean_error(res, None, "no dhtshare node is running")


@pytest.mark.slow
def test_unreachable_peer(tmp_path: Path) -> None:
    port = free_port()
    res = run_cli("fetch", HASH, "--data-dir", str(tmp_path / "d"), "--peer",
                  f"127.0.0.1:{port}")
    assert_clean_error(res, None, "no peer answered")


def test_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = run_cli("bootstrap", "--host", "127.0.0.1", "--port", str(port), "--data-dir",
                      str(tmp_path / "d"))
    assert_clean_error(res, 2, "already in use")


@pytest.mark.slow
def test_data_dir_in_use(cluster: Cluster) -> None:
    (n1,) = cluster.start(1)
    res = run_cli("node", "--peer", n1.addr, "--host", "127.0.0.1", "--port",
                  str(free_port()), "--data-dir", str(n1.data_dir))
    assert_clean_error(res, None, "another dhtshare node is using data dir")


@pytest.mark.slow
def test_status_lists_published_content(cluster: Cluster, tmp_path: Path) -> None:
    _n1, n2 = cluster.start(2)
    f = make_file(tmp_path / "listed.bin", 3000, seed=9)
    h = publish(n2, f)
    res = run_cli("status", "--data-dir", str(n2.data_dir))
    assert res.returncode == 0
    assert h in res.stdout
    assert "listed.bin" in res.stdout


@pytest.mark.slow
def test_restart_rejoins_and_reannounces(cluster: Cluster, tmp_path: Path) -> None:
    n1, n2, n3 = cluster.start(3)
    src = make_file(tmp_path / "kept.bin", 2_000_000, seed=4)
    h = publish(n2, src, "--replicas", "0")
    assert n2.stop() == 0
    # The bootstrap node goes away too: n2 must rejoin through its saved contacts.
    n1.kill()
    n2b = cluster.add("n2", [n1.addr], port=n2.port)
    result = fetch_json(n3, h, tmp_path / "after-restart.bin")
    assert sha256_file(tmp_path / "after-restart.bin") == sha256_file(src)
    assert result["peers"] == {n2b.addr: src.stat().st_size}


@pytest.mark.slow
def test_publish_one_shot_serves_in_foreground(cluster: Cluster, tmp_path: Path) -> None:
    """Without a node on the data dir, publish joins through --peer and keeps serving."""
    import subprocess
    import sys

    from tests.conftest import cli_env

    n1, n2 = cluster.start(2)
    src = make_file(tmp_path / "fg.bin", 500_000, seed=8)
    proc = subprocess.Popen(
        [sys.executable, "-m", "dhtshare", "publish", str(src), "--data-dir",
         str(tmp_path / "pubdir"), "--peer", n1.addr, "--replicas", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        h = lines[-1].strip()
        assert len(h) == 64, lines
        result = fetch_json(n2, h, tmp_path / "from-fg.bin")
        assert sha256_file(tmp_path / "from-fg.bin") == sha256_file(src)
        assert len(result["peers"]) == 1
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


@pytest.mark.slow
def test_node_on_all_interfaces_is_reachable_by_loopback_peers(
    tmp_path: Path,
) -> None:
    """--host 0.0.0.0 must announce an address peers can use, never 0.0.0.0."""
    c = Cluster(tmp_path)
    try:
        n1 = start_node(tmp_path, "n1")
        c.nodes.append(n1)
        n2 = c.add("n2", [n1.addr], extra=["--host", "0.0.0.0"])
        n3 = c.add("n3", [n1.addr])
        src = make_file(tmp_path / "wide.bin", 400_000, seed=12)
        h = publish(n2, src, "--replicas", "0")
        result = fetch_json(n3, h, tmp_path / "wide-copy.bin")
        (addr,) = result["peers"]
        assert not addr.startswith("0.0.0.0")
        assert sha256_file(tmp_path / "wide-copy.bin") == sha256_file(src)
    finally:
        c.stop_all()


@pytest.mark.slow
def test_publish_copy_survives_the_original(cluster: Cluster, tmp_path: Path) -> None:
    n1, n2 = cluster.start(2)
    src = make_file(tmp_path / "moved.bin", 300_000, seed=13)
    want = sha256_file(src)
    h = publish(n1, src, "--copy")
    src.unlink()
    fetch_json(n2, h, tmp_path / "copy-of-moved.bin")
    assert sha256_file(tmp_path / "copy-of-moved.bin") == want
