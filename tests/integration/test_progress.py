"""The progress display: silent unless stderr is a terminal; shown under a pseudo-terminal.

A fetch handed to a running node shows its progress through the control
socket.  The fetching node's download rate is capped so that a fetch lasts
long enough for the live display to draw a few frames.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Cluster, NodeProc, cli_env, make_file, publish, run_cli

pytestmark = pytest.mark.timeout(120)

SIZE = 6 * 1024 * 1024
#: Bar characters rich draws (and the words only the display prints).
BAR = ("━", "╸", "╺")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\r")
PTY_DEADLINE = 60.0


class Net:
    def __init__(self, cluster: Cluster, tmp: Path) -> None:
        self.cluster = cluster
        self.tmp = tmp
        self.source, = cluster.start(1)
        self.fetcher = cluster.add("fetcher", [self.source.addr],
                                   extra=["--max-download-rate", "3M"])
        self.count = 0

    def new_file(self) -> str:
        """A fresh file published on the source (the fetcher does not hold it yet)."""
        self.count += 1
        path = make_file(self.tmp / f"file{self.count}.bin", SIZE, seed=self.count)
        return publish(self.source, path, "--replicas", "0")


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    root = tmp_path_factory.mktemp("progress")
    cluster = Cluster(root)
    try:
        yield Net(cluster, root)
    finally:
        cluster.stop_all()


def fetch_args(node: NodeProc, h: str, out: Path, *extra: str) -> list[str]:
    return ["fetch", h, "-o", str(out), "--data-dir", str(node.data_dir), *extra]


def under_pty(args: list[str]) -> tuple[int, str, str]:
    """Run ``dhtshare ARGS`` with stderr (and stdin) a pseudo-terminal: (rc, stdout, tty)."""
    master, slave = pty.openpty()
    env = cli_env({"TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"})
    proc = subprocess.Popen([sys.executable, "-m", "dhtshare", *args], stdin=slave,
                            stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + PTY_DEADLINE
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every slave end is closed
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
            pytest.fail("the command under a pseudo-terminal did not finish in time")
        assert proc.stdout is not None
        out = proc.stdout.read().decode()
        rc = proc.wait(10)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    return rc, out, b"".join(chunks).decode(errors="replace")


def plain(tty: str) -> str:
    return ANSI.sub("\n", tty)


def test_no_progress_when_stderr_is_a_pipe(net: Net) -> None:
    h = net.new_file()
    res = run_cli(*fetch_args(net.fetcher, h, net.tmp / "out-pipe.bin"))
    assert res.returncode == 0, res.stderr
    assert "fetched" in res.stdout
    assert not any(c in res.stderr for c in BAR), res.stderr
    assert "peer" not in res.stderr, res.stderr
    assert "%" not in res.stderr, res.stderr


def test_no_progress_with_json(net: Net) -> None:
    h = net.new_file()
    res = run_cli(*fetch_args(net.fetcher, h, net.tmp / "out-json.bin", "--json"))
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout)  # exactly one JSON object, nothing else
    assert isinstance(result, dict)
    assert result["size"] == SIZE
    assert not any(c in res.stderr for c in BAR), res.stderr
    assert "peer" not in res.stderr, res.stderr


def test_progress_shows_under_a_pseudo_terminal(net: Net) -> None:
    h = net.new_file()
    rc, out, tty = under_pty(fetch_args(net.fetcher, h, net.tmp / "out-tty.bin", "--peers"))
    assert rc == 0, tty
    assert "fetched" in out
    text = plain(tty)
    assert any(c in text for c in BAR), text
    assert re.search(r"\d+%", text), text
    assert "6.3 MB" in text or "6.3/6.3 MB" in text, text  # the total (rich: decimal units)
    assert re.search(r"\b1 peer\b", text), text
    # --peers: a line for the source, with its rate and chunks
    assert re.search(rf"{re.escape(net.source.addr)}\s+\S+ \S+/s\s+\d+ chunks?", text), text


def test_quiet_silences_progress_under_a_pseudo_terminal(net: Net) -> None:
    h = net.new_file()
    rc, out, tty = under_pty(fetch_args(net.fetcher, h, net.tmp / "out-quiet.bin", "--quiet"))
    assert rc == 0, tty
    assert "fetched" in out
    text = plain(tty)
    assert not any(c in text for c in BAR), text
    assert "peer" not in text, text
    assert "%" not in text, text
