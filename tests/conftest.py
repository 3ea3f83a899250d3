"""Shared helpers for tests: real dhtshare processes on 127.0.0.1.

Every process a test starts is stopped by the fixture that started it
(SIGTERM, then SIGKILL after a bounded wait); every wait is bounded in time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dhtshare.disk.hashing import sha256_file

__all__ = ["free_port", "sha256_file"]  # re-exported for the test modules

LOOPBACK = "127.0.0.1"
NODE_START_TIMEOUT = 20.0
CLI_TIMEOUT = 120.0


def free_port(host: str = LOOPBACK) -> int:
    """A port free for both TCP and UDP on ``host`` (nodes use one port for both)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError(f"no port is free for both TCP and UDP on {host}")



def make_file(path: Path, size: int, seed: int = 0) -> Path:
    """A file of ``size`` pseudo-random bytes (deterministic per seed)."""
    block = hashlib.sha256(str(seed).encode()).digest() * 32768  # 1 MiB
    with open(path, "wb") as fh:
        left = size
        i = 0
        while left > 0:
            part = bytes([(i + seed) & 0xFF]) + block[1 : min(left, len(block))]
            fh.write(part[:left])
            left -= len(part[:left])
            i += 1
    return path


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DHTSHARE_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def run_cli(
    *args: str,
    cwd: Path | None = None,
    timeout: float = CLI_TIMEOUT,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``dhtshare ARGS`` to completion and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "dhtshare", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=cli_env(env),
        check=False,
    )


@dataclass
class NodeProc:
    """A running ``dhtshare bootstrap``/``node`` process."""

    name: str
    port: int
    data_dir: Path
    proc: subprocess.Popen[str]
    log_path: Path
    peers: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    @property
    def addr(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.reader is not None:
            self.reader.join(10)
        return int(self.proc.returncode)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start_node(
    root: Path,
    name: str,
    peers: list[str] | None = None,
    port: int | None = None,
    extra: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> NodeProc:
    """Start a node process and wait (bounded) until it says it is listening."""
    port = port or free_port()
    data_dir = root / name
    cmd = [sys.executable, "-m", "dhtshare"]
    if peers:
        cmd += ["node", *[x for p in peers for x in ("--peer", p)]]
    else:
        cmd += ["bootstrap"]
    cmd += ["--host", LOOPBACK, "--port", str(port), "--data-dir", str(data_dir), *(extra or [])]
    log_path = root / f"{name}.log"
    log_fh = open(log_path, "w")  # noqa: SIM115 - closed when the process ends
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=log_fh, text=True, env=cli_env(env)
    )
    node = NodeProc(name, port, data_dir, proc, log_path, list(peers or []))
    ready = threading.Event()
    lines: list[str] = []

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "listening on" in line:
                ready.set()
        proc.stdout.close()
        log_fh.close()

    node.reader = threading.Thread(target=reader, daemon=True)
    node.reader.start()
    if not ready.wait(NODE_START_TIMEOUT):
        node.kill()
        raise RuntimeError(f"node {name} did not start: {''.join(lines)}\n{node.log()}")
    return node


class Cluster:
    """Nodes started by one test (or module); all stopped at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.nodes: list[NodeProc] = []

    def start(self, n: int, env: dict[str, str] | None = None) -> list[NodeProc]:
        first = start_node(self.root, "n1", env=env)
        self.nodes.append(first)
        for i in range(2, n + 1):
            self.nodes.append(start_node(self.root, f"n{i}", [first.addr], env=env))
        return self.nodes

    def add(self, name: str, peers: list[str], **kw: Any) -> NodeProc:
        node = start_node(self.root, name, peers, **kw)
        self.nodes.append(node)
        return node

    def stop_all(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop(signal.SIGTERM, timeout=10)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.stop_all()


def publish(node: NodeProc, path: Path, *extra: str) -> str:
    """Publish through ``node``'s control socket; returns the manifest hash."""
    res = run_cli("publish", str(path), "--data-dir", str(node.data_dir), *extra)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().splitlines()[-1]


def fetch_json(node: NodeProc, h: str, out: Path, *extra: str) -> dict[str, Any]:
    res = run_cli("fetch", h, "-o", str(out), "--data-dir", str(node.data_dir), "--json", *extra)
    assert res.returncode == 0, f"fetch failed: {res.stderr}\n{node.log()[-3000:]}"
    result: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return result


def cli_json(*args: str) -> dict[str, Any]:
    """Run a dhtshare command with --json; it must succeed."""
    res = run_cli(*args, "--json")
    assert res.returncode == 0, f"{args[0]} failed: {res.stderr}"
    result: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return result


def holders(node: NodeProc, h: str) -> dict[str, Any]:
    """``dhtshare holders`` as seen from ``node``."""
    return cli_json("holders", h, "--data-dir", str(node.data_dir))


def wait_until(predicate: Any, timeout: float, interval: float = 0.5) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
