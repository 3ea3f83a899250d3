"""A node's key lives in its data dir (0600, in a 0700 dir) and keeps its id across restarts."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from dhtshare.core.identity import node_id_of
from tests.conftest import Cluster, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]


def status(data_dir: Path) -> dict[str, object]:
    res = run_cli("status", "--data-dir", str(data_dir), "--json")
    assert res.returncode == 0, res.stderr
    out: dict[str, object] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def test_key_file_id_and_permissions(cluster: Cluster, tmp_path: Path) -> None:
    (n1,) = cluster.start(1)
    key = n1.data_dir / "node_key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(n1.data_dir.stat().st_mode) == 0o700
    first = status(n1.data_dir)
    public = bytes.fromhex(str(first["public_key"]))
    assert first["node_id"] == node_id_of(public).hex()  # the id is the key's, not chosen
    assert len(str(first["fingerprint"]).split(":")) == 8
    human = run_cli("status", "--data-dir", str(n1.data_dir))
    assert str(first["fingerprint"]) in human.stdout
    n1.stop()
    again = cluster.add("n1-again", [], port=n1.port)
    assert again.data_dir != n1.data_dir  # a new data dir gets a new identity...
    assert status(again.data_dir)["node_id"] != first["node_id"]
    again.stop()


def test_restart_keeps_the_identity(cluster: Cluster) -> None:
    (n1,) = cluster.start(1)
    before = status(n1.data_dir)
    n1.stop()
    from tests.conftest import start_node

    back = start_node(cluster.root, "n1")  # same data dir
    cluster.nodes.append(back)
    after = status(back.data_dir)
    assert (after["node_id"], after["public_key"]) == (before["node_id"], before["public_key"])


def test_a_damaged_key_is_a_clear_error_not_a_new_identity(tmp_path: Path) -> None:
    data_dir = tmp_path / "dd"
    data_dir.mkdir()
    (data_dir / "node_key").write_bytes(b"not a key")
    res = run_cli("bootstrap", "--host", "127.0.0.1", "--port", "0", "--data-dir",
                  str(data_dir), timeout=30)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    assert "node key" in res.stderr, res.stderr
    assert "damaged" in res.stderr, res.stderr
    assert (data_dir / "node_key").read_bytes() == b"not a key"  # never overwritten
