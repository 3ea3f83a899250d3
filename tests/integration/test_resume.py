"""Interrupted fetches resume from the verified chunks they left behind."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import Cluster, cli_env, fetch_json, make_file, publish, sha256_file

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]  # node processes

MIB = 1024 * 1024
WINDOW = 16 * MIB  # the fetcher's per-peer window (Config.window_bytes)


def _held(journal: Path) -> int:
    try:
        raw = journal.read_bytes()
    except OSError:
        return 0
    return raw[42:].count(1)  # header: 10-byte magic + 32-byte manifest hash


def _kill_half_way(cmd: list[str], journal: Path, chunks: int, sig: int) -> int:
    """Start ``cmd``, kill it once about half the chunks are journaled; return that count."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cli_env())
    held = 0
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            held = _held(journal)
            if held >= chunks // 2:
                break
            time.sleep(0.002)
        proc.send_signal(sig)
    finally:
        proc.communicate(timeout=30)
    return held


@pytest.mark.parametrize("through_node", [True, False], ids=["via-node", "short-lived"])
def test_killed_fetch_resumes_with_only_missing_bytes(
    cluster: Cluster, tmp_path: Path, through_node: bool
) -> None:
    n1, n2, n3 = cluster.start(3)
    size, chunk = 160 * MIB, 256 * 1024
    src = make_file(tmp_path / "resume.bin", size, seed=41)
    h = publish(n2, src, "--chunk-size", "256K", "--replicas", "0")
    out = tmp_path / "got.bin"
    journal = tmp_path / f".got.bin.{h[:16]}.part.have"
    base = [sys.executable, "-m", "dhtshare", "fetch", h, "-o", str(out), "--json"]
    where = (["--data-dir", str(n3.data_dir)] if through_node
             else ["--data-dir", str(tmp_path / "oneshot"), "--peer", n1.addr])
    held = _kill_half_way(base + where, journal, size // chunk,
                          signal.SIGINT if through_node else signal.SIGKILL)
    assert 0 < held < size // chunk, "the fetch was not interrupted mid-way"
    assert not out.exists()
    if through_node:
        result = fetch_json(n3, h, out)
    else:
        res = subprocess.run(base + where, capture_output=True, text=True, timeout=120,
                             env=cli_env(), check=False)
        assert res.returncode == 0, res.stderr
        result = json.loads(res.stdout.strip().splitlines()[-1])
    assert sha256_file(out) == sha256_file(src)
    assert result["bytes_reused"] >= held * chunk
    assert result["bytes_downloaded"] <= size - held * chunk + WINDOW * len(result["peers"])
    assert result["bytes_reused"] + result["bytes_downloaded"] >= size
    assert not journal.exists()
