"""Five nodes as five hosts: network namespaces joined by a bridge.

Each node listens on 0.0.0.0 inside its own namespace and is reached at its
own address (10.79.0.N), as on separate machines: provider records must name
addresses other hosts can use, never 0.0.0.0 or 127.0.0.1.  Needs root and
iproute2; skipped otherwise.  Only addresses inside the namespaces this test
creates are ever contacted.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
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
def hosts(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[list[Host]]:
    """Five started nodes, one per namespace; an indirect param adds to their environment."""
    extra: dict[str, str] = getattr(request, "param", None) or {}
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
                                      env=cli_env(extra))
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


#: Run in the hub namespace: every frame on its interfaces (each host's link), to a file.
_CAPTURE = r"""
import os, signal, socket, sys, time
iface, out, limit = sys.argv[1], sys.argv[2], float(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
s.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE: drop no frame under load
if iface != "any":
    s.bind((iface, 0))
s.settimeout(0.2)
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
print("capturing", flush=True)
end = time.monotonic() + limit
with open(out, "wb") as f:
    while not stop and time.monotonic() < end:
        try:
            f.write(s.recv(65536))
        except TimeoutError:
            pass
"""


@pytest.mark.parametrize(
    "hosts", [{}, {"DHTSHARE_BENCH_PLAINTEXT_LINKS": "1"}],
    ids=["encrypted", "plaintext-control"], indirect=True,
)
def test_a_fetch_between_hosts_shows_nothing_on_the_wire(
    hosts: list[Host], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A passive observer of the network sees no content, name or hash of a file fetched.

    Every frame on the links joining the hosts is captured while a file full
    of a marker (and named after it) is published on one host and fetched on
    another; none of the marker, the name, the manifest hash or a chunk hash
    appears in the capture, which did carry at least the file's size.  The
    control run, with the benchmarking plaintext switch, finds the marker: the
    capture sees what crosses.
    """
    plaintext = "plaintext" in request.node.callspec.id
    marker = b"DHTSHARE-WIRE-MARKER-" + os.urandom(8).hex().encode()
    name = f"secret-{marker.decode()}.bin"
    src = tmp_path / name
    block = marker + os.urandom(4096)
    src.write_bytes(block * (3 * 1024 * 1024 // len(block)))
    hub = f"dhtst{os.getpid() % 100000}-hub"
    pcap = tmp_path / "bridge.bin"
    cap = subprocess.Popen(
        ["ip", "netns", "exec", hub, sys.executable, "-c", _CAPTURE, "any", str(pcap), "60"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert cap.stdout is not None
        assert cap.stdout.readline().strip() == "capturing"
        h = publish(hosts[1], src, "--replicas", "0", "--chunk-size", "256K")  # type: ignore[arg-type]
        fetch_json(hosts[3], h, tmp_path / "got.bin")  # type: ignore[arg-type]
        time.sleep(0.5)  # the last frames reach the capture
    finally:
        cap.terminate()
        cap.wait(10)
        if cap.stdout is not None:
            cap.stdout.close()
    assert sha256_file(tmp_path / "got.bin") == sha256_file(src)
    wire = pcap.read_bytes()
    assert len(wire) > src.stat().st_size  # the transfer itself was captured
    if plaintext:
        assert marker in wire
        return
    manifest_hash = bytes.fromhex(h)
    chunk_hash = hashlib.sha256(src.read_bytes()[: 256 * 1024]).digest()
    for needle, what in [(marker, "content"), (name.encode(), "file name"),
                         (manifest_hash, "manifest hash"), (h.encode(), "manifest hash (hex)"),
                         (chunk_hash, "chunk hash")]:
        assert needle not in wire, f"the {what} crossed the network in the clear"
