"""Nodes that come and go, through the CLI with real node processes on 127.0.0.1.

A node answers its control socket before it has joined; a node stopped with
SIGTERM is dropped from its neighbours' routing tables at once; a provider
that was killed is skipped and reported, and the fetch completes from the
others.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    LOOPBACK,
    Cluster,
    cli_env,
    fetch_json,
    free_port,
    make_file,
    publish,
    run_cli,
    sha256_file,
    start_node,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def status(data_dir: Path) -> dict[str, Any] | None:
    res = run_cli("status", "--data-dir", str(data_dir), "--json", timeout=30)
    if res.returncode != 0:
        return None
    result: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return result


def table_ids(data_dir: Path) -> set[str]:
    st = status(data_dir)
    assert st is not None
    return {c["node_id"] for c in st["routing_table"]}


def test_control_socket_answers_before_the_join(cluster: Cluster, tmp_path: Path) -> None:
    boot_port = free_port()
    data_dir = tmp_path / "joiner"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dhtshare", "node", "--peer", f"{LOOPBACK}:{boot_port}",
         "--host", LOOPBACK, "--port", str(free_port()), "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        # What the node waits for a join on behalf of a request (30 s by default).
        env=cli_env({"DHTSHARE_JOIN_WAIT": "1"}),
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    try:
        # Nobody listens at its --peer yet: it keeps trying, and meanwhile it answers.
        assert wait_until(lambda: status(data_dir) is not None, 15, 0.1)
        st = status(data_dir)
        assert st is not None
        assert st["state"] == "joining"
        assert not any("listening on" in line for line in lines)

        res = run_cli("fetch", "ab" * 32, "--data-dir", str(data_dir))
        assert res.returncode != 0
        assert "has not joined the network" in res.stderr
        assert "Traceback" not in res.stderr

        cluster.nodes.append(start_node(tmp_path, "boot", port=boot_port))

        def joined() -> bool:
            st = status(data_dir)
            return st is not None and st["state"] == "joined"

        assert wait_until(joined, 30, 0.2)
        assert wait_until(lambda: any("listening on" in line for line in lines), 10, 0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        reader.join(10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_sigterm_node_is_dropped_from_neighbours_tables_at_once(cluster: Cluster) -> None:
    nodes = cluster.start(4)
    leaver = nodes[2]
    st = status(leaver.data_dir)
    assert st is not None
    leaver_id = st["node_id"]
    others = [n for n in nodes if n is not leaver]
    assert wait_until(lambda: all(leaver_id in table_ids(n.data_dir) for n in others), 10)

    assert leaver.stop(signal.SIGTERM) == 0
    # No waiting for anyone's timeout: the leave was acknowledged before it exited.
    for n in others:
        assert leaver_id not in table_ids(n.data_dir), f"{n.name} still lists the leaver"
    assert "DHT contacts that we are leaving" in leaver.log()


def test_killed_provider_is_skipped_and_reported(cluster: Cluster, tmp_path: Path) -> None:
    n1, n2, n3 = cluster.start(3)
    src = make_file(tmp_path / "src.bin", 3_000_000, seed=21)
    h = publish(n2, src, "--replicas", "0")
    fetch_json(n3, h, tmp_path / "on-n3.bin")  # n3 now provides it too
    n3.kill()  # no withdraw, no goodbye: its record stays in the DHT
    n4 = cluster.add("n4", [n1.addr])
    result = fetch_json(n4, h, tmp_path / "on-n4.bin")
    assert sha256_file(tmp_path / "on-n4.bin") == sha256_file(src)
    assert result["peers"] == {n2.addr: src.stat().st_size}
    assert n3.addr in result["unreachable"]


def test_fetch_again_after_the_user_deleted_the_fetched_file(
    cluster: Cluster, tmp_path: Path
) -> None:
    _n1, n2, n3 = cluster.start(3)
    src = make_file(tmp_path / "src.bin", 2_500_000, seed=22)
    h = publish(n2, src, "--replicas", "0")
    first = tmp_path / "first.bin"
    fetch_json(n3, h, first)
    first.unlink()  # n3 still lists it as a copy it holds
    result = fetch_json(n3, h, tmp_path / "second.bin")
    assert sha256_file(tmp_path / "second.bin") == sha256_file(src)
    assert result["bytes_downloaded"] >= src.stat().st_size
    assert not list(tmp_path.glob(".*dhtshare-tmp"))
