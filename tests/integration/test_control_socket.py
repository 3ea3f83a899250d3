"""The control socket answers only this node's user, and is never where others can put one.

A data dir too long for a Unix socket address used to put the socket under a
predictable name in /tmp, where another local user could create it first and
receive the CLI's requests.  Now it goes to a private directory that is
checked to be ours, and the node checks who connects (SO_PEERCRED).
"""

from __future__ import annotations

import os
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dhtshare.core import messages as m
from dhtshare.core.framing import encode_frame
from dhtshare.net.ctlclient import socket_path
from tests.conftest import Cluster, NodeProc, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

STRANGER = 65534  # nobody


@pytest.fixture
def runtime_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A short XDG_RUNTIME_DIR for this test (and the node processes it starts)."""
    path = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(path))
    try:
        yield path
    finally:
        subprocess.run(["rm", "-rf", str(path)], check=False, timeout=10)


def long_dir(root: Path) -> Path:
    return root / ("d" * 60) / ("e" * 40)


def test_a_long_data_dir_puts_the_socket_in_a_private_dir(
    cluster: Cluster, runtime_dir: Path
) -> None:
    node = cluster.add("long", [], env={"XDG_RUNTIME_DIR": str(runtime_dir)})
    data_dir = long_dir(cluster.root)
    node.stop()
    node = cluster.add("long2", [], env={"XDG_RUNTIME_DIR": str(runtime_dir)},
                       extra=["--data-dir", str(data_dir)])
    sock = socket_path(data_dir)
    assert sock.parent == runtime_dir / "dhtshare"
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
    res = run_cli("status", "--data-dir", str(data_dir), "--json",
                  env={"XDG_RUNTIME_DIR": str(runtime_dir)})
    assert res.returncode == 0, res.stderr


def test_a_runtime_dir_made_by_someone_else_is_refused(tmp_path: Path, runtime_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("making a directory owned by another user needs root")
    squatted = runtime_dir / "dhtshare"
    squatted.mkdir(mode=0o777)
    os.chown(squatted, STRANGER, STRANGER)
    res = run_cli("bootstrap", "--host", "127.0.0.1", "--port", "0", "--data-dir",
                  str(long_dir(tmp_path)), env={"XDG_RUNTIME_DIR": str(runtime_dir)},
                  timeout=30)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    assert "not a private directory" in res.stderr, res.stderr


CLIENT = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(sys.argv[1])
try:
    s.sendall(bytes.fromhex(sys.argv[2]))
except (BrokenPipeError, ConnectionResetError):
    pass  # the node may close on us before the request is even written
got = b""
while True:
    try:
        part = s.recv(65536)
    except OSError:
        break
    if not part:
        break
    got += part
print(len(got))
"""


def test_another_user_gets_no_answer_even_through_an_open_socket(cluster: Cluster) -> None:
    if os.geteuid() != 0 or not Path("/usr/bin/python3").exists():
        pytest.skip("running a client as another user needs root and /usr/bin/python3")
    top = Path(tempfile.mkdtemp(prefix="ctl", dir="/tmp"))  # pytest's tmp is private to root
    data_dir = top / "dd"
    try:
        n1 = cluster.add("n1", [], extra=["--data-dir", str(data_dir)])
        sock = socket_path(data_dir)
        # Open the way on purpose (as a careless admin might): only the peer check remains.
        for p in (top, data_dir):
            os.chmod(p, 0o755)
        os.chmod(sock, 0o777)
        _as_a_stranger(n1, sock, data_dir)
    finally:
        subprocess.run(["rm", "-rf", str(top)], check=False, timeout=10)


def _as_a_stranger(n1: NodeProc, sock: Path, data_dir: Path) -> None:
    request = encode_frame(m.encode(m.Control(1, "status", {}))).hex()
    res = subprocess.run(["/usr/bin/python3", "-c", CLIENT, str(sock), request],
                         user=STRANGER, capture_output=True, text=True, timeout=30, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "0"  # connected, and closed without a byte
    assert "another user" in n1.log()
    mine = run_cli("status", "--data-dir", str(data_dir), "--json")
    assert mine.returncode == 0, mine.stderr
