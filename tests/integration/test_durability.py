"""Durability through the CLI: replicas, repair, hand-off, restarts, pinning."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.conftest import (
    Cluster,
    NodeProc,
    cli_json,
    fetch_json,
    holders,
    make_file,
    publish,
    run_cli,
    sha256_file,
    start_node,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]  # node processes

MIB = 1024 * 1024
FAST_REPAIR = {"DHTSHARE_REPAIR_INTERVAL": "2"}


def durable_nodes(view: dict[str, object], nodes: list[NodeProc]) -> list[NodeProc]:
    ids = {x["address"] for x in view["holders"] if x["durable"]}  # type: ignore[attr-defined,index]
    return [n for n in nodes if n.addr in ids]


def test_replicas_outlive_publisher_and_a_holder(cluster: Cluster, tmp_path: Path) -> None:
    nodes = cluster.start(5)
    n1, n5 = nodes[0], nodes[4]
    src = make_file(tmp_path / "durable.bin", 12 * MIB + 5, seed=51)
    res = run_cli("publish", str(src), "--data-dir", str(n1.data_dir), "--replicas", "3",
                  "--chunk-size", "256K", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["replicas"] == {"requested": 3, "reached": 3}
    h = out["hash"]
    view = holders(n5, h)
    assert view["durable_copies_min"] >= 3
    assert n1.addr not in {x["address"] for x in view["holders"] if x["durable"]}
    victim = next(n for n in durable_nodes(view, nodes) if n is not n5)
    n1.kill()
    victim.kill()
    result = fetch_json(n5, h, tmp_path / "after-losses.bin")
    assert sha256_file(tmp_path / "after-losses.bin") == sha256_file(src)
    assert n1.addr not in result["peers"]


def test_one_shot_publish_with_replicas_exits(cluster: Cluster, tmp_path: Path) -> None:
    nodes = cluster.start(4)
    src = make_file(tmp_path / "oneshot.bin", 3 * MIB, seed=52)
    res = run_cli("publish", str(src), "--peer", nodes[0].addr, "--replicas", "2",
                  "--data-dir", str(tmp_path / "publisher"))
    assert res.returncode == 0, res.stderr
    h = res.stdout.strip().splitlines()[-1]
    fetch_json(nodes[3], h, tmp_path / "got.bin")
    assert sha256_file(tmp_path / "got.bin") == sha256_file(src)


def test_too_few_nodes_for_replicas_fails_clearly(cluster: Cluster, tmp_path: Path) -> None:
    _n1, n2 = cluster.start(2)
    src = make_file(tmp_path / "lonely.bin", 100_000, seed=53)
    res = run_cli("publish", str(src), "--data-dir", str(n2.data_dir), "--replicas", "3")
    assert res.returncode == 3
    assert "only 1 of 3" in res.stderr
    assert "Traceback" not in res.stderr
    # The file is published all the same: its hash is the last line of stdout.
    h = res.stdout.strip().splitlines()[-1]
    assert len(h) == 64


def test_default_replication_is_best_effort(cluster: Cluster, tmp_path: Path) -> None:
    (n1,) = cluster.start(1)
    src = make_file(tmp_path / "solo.bin", 1000, seed=54)
    res = run_cli("publish", str(src), "--data-dir", str(n1.data_dir))
    assert res.returncode == 0, res.stderr
    assert "warning" in res.stderr


def test_full_node_declines_and_another_is_chosen(cluster: Cluster, tmp_path: Path) -> None:
    n1 = cluster.add("n1", [])
    n2 = cluster.add("n2", [n1.addr])
    small = cluster.add("small", [n1.addr], extra=["--max-storage", "1K"])
    n4 = cluster.add("n4", [n1.addr])
    src = make_file(tmp_path / "roomy.bin", 2 * MIB, seed=55)
    out = cli_json("publish", str(src), "--data-dir", str(n2.data_dir), "--replicas", "2",
                   "--chunk-size", "128K")
    assert out["replicas"]["reached"] == 2
    view = holders(n2, out["hash"])
    durable = {x["address"] for x in view["holders"] if x["durable"]}
    assert small.addr not in durable
    assert durable == {n1.addr, n4.addr}


def test_repair_restores_copies_after_a_holder_dies(cluster: Cluster, tmp_path: Path) -> None:
    nodes = cluster.start(5, env=FAST_REPAIR)
    src = make_file(tmp_path / "repair.bin", 4 * MIB, seed=56)
    out = cli_json("publish", str(src), "--data-dir", str(nodes[1].data_dir), "--replicas",
                   "2", "--chunk-size", "256K")
    h = out["hash"]
    view = holders(nodes[1], h)
    assert view["durable_copies_min"] >= 2
    victim = durable_nodes(view, nodes)[0]
    victim.kill()
    watcher = next(n for n in nodes if n is not victim)
    assert wait_until(lambda: holders(watcher, h)["durable_copies_min"] >= 2, timeout=60), (
        holders(watcher, h)
    )


def test_sigterm_hands_off_before_leaving(cluster: Cluster, tmp_path: Path) -> None:
    nodes = cluster.start(5)  # default repair interval: only the hand-off can restore copies
    src = make_file(tmp_path / "handoff.bin", 4 * MIB, seed=57)
    out = cli_json("publish", str(src), "--data-dir", str(nodes[1].data_dir), "--replicas",
                   "2", "--chunk-size", "256K")
    h = out["hash"]
    leaving = durable_nodes(holders(nodes[1], h), nodes)[0]
    assert leaving.stop(signal.SIGTERM) == 0
    watcher = next(n for n in nodes if n is not leaving)
    assert holders(watcher, h)["durable_copies_min"] >= 2


def test_rolling_restart_keeps_files_fetchable(cluster: Cluster, tmp_path: Path) -> None:
    nodes = cluster.start(5)
    files = []
    for i in range(2):
        src = make_file(tmp_path / f"roll{i}.bin", 2 * MIB + i, seed=60 + i)
        out = cli_json("publish", str(src), "--data-dir", str(nodes[1 + i].data_dir),
                       "--replicas", "2", "--chunk-size", "256K")
        files.append((out["hash"], sha256_file(src)))
    for k, node in enumerate(list(nodes)):
        assert node.stop(signal.SIGTERM) == 0
        up = [n for n in nodes if n.alive()]
        for j, (h, digest) in enumerate(files):
            dest = tmp_path / f"down-{k}-{j}.bin"
            fetch_json(up[(k + j) % len(up)], h, dest)
            assert sha256_file(dest) == digest
        restarted = start_node(cluster.root, node.name, node.peers or [nodes[1].addr],
                               port=node.port)
        nodes[nodes.index(node)] = restarted
        cluster.nodes.append(restarted)
        for j, (h, digest) in enumerate(files):
            dest = tmp_path / f"up-{k}-{j}.bin"
            fetch_json(restarted, h, dest)
            assert sha256_file(dest) == digest


def test_new_node_joins_through_any_peer_after_bootstrap_dies(
    cluster: Cluster, tmp_path: Path
) -> None:
    n1, n2, n3 = cluster.start(3)
    src = make_file(tmp_path / "nb.bin", 1 * MIB, seed=58)
    h = publish(n2, src)
    n1.kill()
    n4 = cluster.add("n4", [n3.addr])
    fetch_json(n4, h, tmp_path / "nb-copy.bin")
    assert sha256_file(tmp_path / "nb-copy.bin") == sha256_file(src)


def test_pin_and_unpin(cluster: Cluster, tmp_path: Path) -> None:
    nodes = cluster.start(4)
    src = make_file(tmp_path / "pin.bin", 2 * MIB, seed=59)
    out = cli_json("publish", str(src), "--data-dir", str(nodes[1].data_dir), "--replicas", "0")
    h = out["hash"]
    pinned = cli_json("pin", h, "--data-dir", str(nodes[3].data_dir))
    assert pinned["pinned"] is True
    view = holders(nodes[0], h)
    assert nodes[3].addr in {x["address"] for x in view["holders"] if x["durable"]}
    # The pinned copy is the network's: it survives the publisher.
    nodes[1].kill()
    fetch_json(nodes[2], h, tmp_path / "from-pin.bin")
    assert sha256_file(tmp_path / "from-pin.bin") == sha256_file(src)
    # Unpinning hands the chunks to another node before dropping them.
    cli_json("unpin", h, "--data-dir", str(nodes[3].data_dir))
    view = holders(nodes[0], h)
    durable = {x["address"] for x in view["holders"] if x["durable"]}
    assert nodes[3].addr not in durable
    assert view["durable_copies_min"] >= 1


def test_fetch_with_unavailable_chunks_fails_clearly_and_keeps_verified(
    cluster: Cluster, tmp_path: Path
) -> None:
    nodes = cluster.start(4)
    src = make_file(tmp_path / "partial.bin", 4 * MIB, seed=81)
    out = cli_json("publish", str(src), "--data-dir", str(nodes[1].data_dir), "--replicas",
                   "1", "--chunk-size", "64K")
    h = out["hash"]
    view = holders(nodes[0], h)
    holding = durable_nodes(view, nodes)
    assert len(holding) >= 2, view  # the chunks are spread over several nodes
    # Lose the publisher and one replica holder: some chunks are now nowhere.
    nodes[1].kill()
    lost = holding[0]
    lost.kill()
    fetcher = next(n for n in nodes if n.alive() and n is not holding[1])
    target = tmp_path / "incomplete.bin"
    res = run_cli("fetch", h, "-o", str(target), "--data-dir", str(fetcher.data_dir))
    assert res.returncode != 0
    assert "chunks could not be fetched" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert not target.exists()
    journal = tmp_path / f".incomplete.bin.{h[:16]}.part.have"
    assert journal.exists()  # what was verified is kept for a later resume
