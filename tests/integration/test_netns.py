"""Five nodes as five hosts: network namespaces joined by a bridge.

Each node listens on 0.0.0.0 inside its own namespace and is reached at its
own address (10.79.0.N), as on separate machines: provider records must name
addresses other hosts can use, never 0.0.0.0 or 127.0.0.1.  Needs root and
iproute2; skipped otherwise.  Only addresses inside the namespaces this test
creates are ever contacted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import cli_env, fetch_json, make_file, publish, sha256_file

NET = "10.79.0"
PORT = 7000
N = 5


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


def _can_make_namespaces() -> bool:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    probe = f"dhtsprobe{os.getpid()}"
    try:
        _ip("netns", "add", probe)
    except (subprocess.SubprocessError, OSError):
        return False
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        _ip("netns", "del", probe)
    return True


pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(180),
    pytest.mark.skipif(not _can_make_namespaces(), reason="needs root and iproute2 netns"),
]


class Host:
    def __init__(self, ns: str, addr: str, data_dir: Path) -> None:
        self.ns = ns
        self.ip = addr
        self.addr = f"{addr}:{PORT}"
        self.data_dir = data_dir
        self.proc: subprocess.Popen[str] | None = None


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[list[Host]]:
    pfx = f"dhtst{os.getpid() % 100000}"
    hub = f"{pfx}-hub"
    made: list[str] = []
    hosts: list[Host] = []
    try:
        _ip("netns", "add", hub)
        made.append(hub)
        _ip("-n", hub, "link", "set", "lo", "up")
        _ip("-n", hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", hub, "link", "set", "br0", "up")
        for i in range(1, N + 1):
            ns = f"{pfx}-n{i}"
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", f"vn{i}",
                "netns", hub)
            _ip("-n", hub, "link", "set", f"vn{i}", "master", "br0")
            _ip("-n", hub, "link", "set", f"vn{i}", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{NET}.{i}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            hosts.append(Host(ns, f"{NET}.{i}", tmp_path / f"h{i}"))
        for i, h in enumerate(hosts):
            role = ["bootstrap"] if i == 0 else ["node", "--peer", hosts[0].addr]
            cmd = ["ip", "netns", "exec", h.ns, sys.executable, "-m", "dhtshare", *role,
                   "--host", "0.0.0.0", "--port", str(PORT), "--data-dir", str(h.data_dir)]
            log = open(tmp_path / f"h{i + 1}.log", "w")  # noqa: SIM115 - closed below
            h.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True,
                                      env=cli_env())
            log.close()
            ready = threading.Event()
            proc = h.proc

            def wait_ready(p: subprocess.Popen[str] = proc, ev: threading.Event = ready) -> None:
                assert p.stdout is not None
                if "listening on" in p.stdout.readline():
                    ev.set()

            threading.Thread(target=wait_ready, daemon=True).start()
            assert ready.wait(20), (tmp_path / f"h{i + 1}.log").read_text()
        yield hosts
    finally:
        for h in hosts:
            if h.proc is not None and h.proc.poll() is None:
                h.proc.terminate()
        for h in hosts:
            if h.proc is not None:
                try:
                    h.proc.wait(15)
                except subprocess.TimeoutExpired:
                    h.proc.kill()
                    h.proc.wait(5)
                if h.proc.stdout is not None:
                    h.proc.stdout.close()
        for ns in reversed(made):
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                _ip("netns", "del", ns)


def test_five_hosts_publish_and_fetch(hosts: list[Host], tmp_path: Path) -> None:
    src = make_file(tmp_path / "across-hosts.bin", 6 * 1024 * 1024 + 3, seed=71)
    # The control socket is a file: the CLI reaches each host's node from here.
    h = publish(hosts[1], src, "--replicas", "2")  # type: ignore[arg-type]
    result = fetch_json(hosts[4], h, tmp_path / "got.bin")  # type: ignore[arg-type]
    assert sha256_file(tmp_path / "got.bin") == sha256_file(src)
    used = set(result["peers"])
    assert used, result
    assert all(addr.startswith(f"{NET}.") for addr in used), used
    assert hosts[1].addr in used or len(used) >= 2
