"""``dhtshare demo``: a real 5-node network on 127.0.0.1, end to end.

Starts a bootstrap node and four nodes as separate processes, publishes a
generated file on node 2, fetches it on node 5 (and then on node 4, which
pulls from every holder at once), compares SHA-256, stops every process and says
what happened.  It drives the same CLI a user would.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dhtshare.disk.hashing import sha256_file
from dhtshare.errors import DhtshareError

START_TIMEOUT = 20.0
STEP_TIMEOUT = 600.0


class DemoFailed(DhtshareError):
    """The demo network did not behave."""


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dhtshare", *args]


def _start(args: list[str], log: Path) -> tuple[subprocess.Popen[str], int]:
    """Start a node on a port of its choosing; its ready line says which."""
    with open(log, "w") as fh:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=fh, text=True)
    assert proc.stdout is not None
    # The node prints one line once it is listening; never wait for it unbounded.
    ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT)
    line = proc.stdout.readline() if ready else ""
    if "listening on" not in line:
        proc.kill()
        proc.wait()
        raise DemoFailed(f"a node did not start; see {log}")
    found = re.search(r"listening on \S+:(\d+)", line)
    assert found is not None
    return proc, int(found.group(1))


def _make_file(path: Path, size: int) -> None:
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(left, 1 << 20)
            fh.write(os.urandom(n))
            left -= n


@contextlib.contextmanager
def _network(root: Path, n: int, say: Callable[[str], None]) -> Iterator[list[tuple[str, Path]]]:
    host = "127.0.0.1"
    procs: list[subprocess.Popen[str]] = []
    nodes: list[tuple[str, Path]] = []
    try:
        for i in range(1, n + 1):
            ddir = root / f"node{i}"
            if i == 1:
                args = _cli("bootstrap", "--host", host, "--port", "0", "--data-dir", str(ddir))
            else:
                args = _cli("node", "--peer", nodes[0][0], "--host", host, "--port", "0",
                            "--data-dir", str(ddir))
            proc, port = _start(args, root / f"node{i}.log")
            procs.append(proc)
            nodes.append((f"{host}:{port}", ddir))
            say(f"  node{i} listening on {host}:{port}" + (" (bootstrap)" if i == 1 else ""))
        yield nodes
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        say(f"  stopped {len(procs)} node processes")


def _run_json(args: list[str]) -> dict[str, Any]:
    res = subprocess.run(args, capture_output=True, text=True, timeout=STEP_TIMEOUT, check=False)
    if res.returncode != 0:
        raise DemoFailed(res.stderr.strip() or f"{' '.join(args[2:4])} failed")
    out: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def run_demo(size: int, nodes: int, keep: bool, say: Callable[[str], None]) -> None:
    if nodes < 3:
        raise DemoFailed("the demo needs at least 3 nodes")
    root = Path(tempfile.mkdtemp(prefix="dhtshare-demo-"))
    say(f"dhtshare demo: {nodes} nodes on 127.0.0.1, working in {root}")
    try:
        src = root / "demo-file.bin"
        _make_file(src, size)
        want = sha256_file(src)
        say(f"generated {src.name}: {size} bytes, sha256 {want[:16]}...")
        with _network(root, nodes, say) as net:
            pub = _run_json(_cli("publish", str(src), "--data-dir", str(net[1][1]), "--json"))
            say(f"published on node2 in {pub['elapsed']:.2f} s: {pub['chunks']} chunks, "
                f"announced to {pub['dht_stores']} DHT nodes")
            say(f"manifest hash {pub['hash']}")
            for target in (nodes - 1, nodes - 2):
                out = root / f"fetched-on-node{target + 1}.bin"
                got = _run_json(_cli("fetch", pub["hash"], "-o", str(out), "--data-dir",
                                     str(net[target][1]), "--json"))
                rate = got["size"] / max(got["elapsed"], 1e-9) / 1e6
                sources = ", ".join(f"{p} {b} B" for p, b in got["peers"].items())
                ok = sha256_file(out) == want
                say(f"fetched on node{target + 1} in {got['elapsed']:.2f} s ({rate:.0f} MB/s) "
                    f"from {sources}: sha256 {'matches' if ok else 'DIFFERS'}")
                if not ok:
                    raise DemoFailed(f"the file fetched on node{target + 1} differs")
        say("demo ok: published once, fetched twice by hash, every byte verified")
    finally:
        if keep:
            say(f"kept {root}")
        else:
            import shutil

            shutil.rmtree(root, ignore_errors=True)
