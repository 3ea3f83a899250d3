"""Looking inside a node: ``ls`` and ``peers``, as tables and as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cluster, fetch_json, make_file, publish, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def cli_json(*args: str) -> Any:
    res = run_cli(*args, "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    return out


def test_ls_and_peers_after_a_fetch(cluster: Cluster, tmp_path: Path) -> None:
    _boot, holder, fetcher = cluster.start(3)
    src = make_file(tmp_path / "shown.bin", 2 * 1024 * 1024 + 1, seed=3)
    h = publish(holder, src, "--replicas", "0", "--chunk-size", "256K")
    fetch_json(fetcher, h, tmp_path / "got.bin")

    held = cli_json("ls", "--data-dir", str(holder.data_dir))["files"]
    assert [(f["kind"], f["hash"], f["chunks_held"], f["chunks"]) for f in held] == [
        ("published", h, 9, 9)]
    got = cli_json("ls", "--data-dir", str(fetcher.data_dir))["files"]
    assert [(f["kind"], f["name"]) for f in got] == [("fetched", "shown.bin")]
    with_holders = cli_json("ls", "--holders", "--data-dir", str(fetcher.data_dir))["files"]
    assert with_holders[0]["holders"] >= 2  # the holder, and this node
    assert with_holders[0]["last_seen_ago"] is not None
    assert with_holders[0]["last_seen_ago"] < 120

    links = cli_json("peers", "--data-dir", str(fetcher.data_dir))["peers"]
    to_holder = [p for p in links if p["node_id"] and p["listen_port"] == holder.port]
    assert to_holder, links
    link = to_holder[0]
    assert link["direction"] == "outbound"
    assert link["encrypted"] is True
    assert link["bytes_received"] >= src.stat().st_size
    served = cli_json("peers", "--data-dir", str(holder.data_dir))["peers"]
    assert any(p["direction"] == "inbound" and p["bytes_sent"] >= src.stat().st_size
               for p in served), served

    text = run_cli("ls", "--data-dir", str(holder.data_dir))
    assert text.returncode == 0
    assert text.stdout.splitlines()[0].split()[:3] == ["KIND", "NAME", "SIZE"]
    assert h in text.stdout
    text = run_cli("peers", "--data-dir", str(fetcher.data_dir))
    assert text.returncode == 0
    assert "outbound" in text.stdout


def test_status_tells_links_limits_transfers_and_repair(cluster: Cluster) -> None:
    (node,) = cluster.start(1)
    st = cli_json("status", "--data-dir", str(node.data_dir))
    assert st["port"] == node.port
    assert set(st["peers_connected"]) == {"inbound", "outbound"}
    assert st["limits"] == {"upload": 0, "download": 0}
    assert st["transfers"] == []
    assert st["transfer_rates"] == []
    assert set(st["repair"]) == {"copies_made", "files_short"}
    assert st["metrics"] is None
    assert len(st["fingerprint"]) > 16
    text = run_cli("status", "--data-dir", str(node.data_dir))
    assert "peers:" in text.stdout


def test_remove_stops_sharing_and_keeps_the_users_file(cluster: Cluster, tmp_path: Path) -> None:
    _boot, holder = cluster.start(2)
    src = make_file(tmp_path / "mine.bin", 300_000, seed=8)
    h = publish(holder, src, "--replicas", "0", "--chunk-size", "64K")
    result = cli_json("remove", h, "--data-dir", str(holder.data_dir))
    assert result["hash"] == h
    assert result["removed"] is True
    assert Path(result["path"]) == src
    assert src.exists()  # a user's own file is never deleted
    assert cli_json("ls", "--data-dir", str(holder.data_dir))["files"] == []
    again = run_cli("remove", h, "--data-dir", str(holder.data_dir))
    assert again.returncode != 0
    assert "Traceback" not in again.stderr
