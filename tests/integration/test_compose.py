"""The operators' 5-node cluster, run for real: docker/docker-compose.yml on a private engine.

This is the path an operator takes, end to end: wheels built on the host,
an image built from them with no network, the compose file validated, five
containers brought up and healthy, a file published in node2 and fetched in
node5, node2 killed hard and the file fetched again in node4 from what is
left, and a sixth container joining through node3 (not the bootstrap node)
that fetches it too.

The Docker engine is the test's own: ``docker/cluster.sh`` with
``ISOLATED=1`` starts ``dockerd`` with its own data root, exec root and
socket, ``--iptables=false --bridge=none``, and stops it by PID at the end;
Debian's ``docker.io`` and ``debootstrap`` are installed when missing.  With
no registry reachable, the base image is made by debootstrap and cached as a
tarball in :data:`CACHE`, so a rerun on the same machine skips that step.

Where the machine cannot run an engine (not root, not Linux, no way to get
``dockerd``, the engine does not start) the test is skipped with the reason;
once the engine answers, every failure is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "docker" / "cluster.sh"
#: The base image tarball, the compose binary and the engine's dirs live here;
#: only the engine's dirs are removed at the end.
CACHE = Path(os.environ.get("DHTSHARE_COMPOSE_CACHE", "/var/tmp/dhtshare-compose-cache"))
NET = "10.78.0"
FILE_SIZE = "24M"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _why_not() -> str | None:
    """Why this machine cannot run a private Docker engine, or None if it may."""
    if not sys.platform.startswith("linux"):
        return "a private Docker engine needs Linux"
    if os.geteuid() != 0:
        return "starting a private dockerd needs root"
    if shutil.which("bash") is None:
        return "docker/cluster.sh needs bash"
    if shutil.which("dockerd") is None and shutil.which("apt-get") is None:
        return "no dockerd, and no apt-get to install Debian's docker.io"
    if sys.version_info[:2] != (3, 11):
        # The image runs Debian's CPython 3.11; wheels of compiled
        # dependencies built by another version would not install in it.
        return f"the image runs CPython 3.11; this is {sys.version_info[0]}.{sys.version_info[1]}"
    return None


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DHTSHARE_", "DOCKER_"))}
    env.update({
        "ISOLATED": "1",
        "DHTSHARE_DOCKER_STATE": str(CACHE),
        "PYTHON": sys.executable,
        "ENGINE_LIFETIME": "1800",  # a crashed run cannot leave the engine behind for long
        "COMPOSE_PROFILES": "",
    })
    return env


class Cluster:
    """``docker/cluster.sh`` and compose on the private engine, each call bounded."""

    def __init__(self) -> None:
        self.env = _env()
        self.timings: dict[str, float] = {}

    def sh(self, *args: str, timeout: float = 300, check: bool = True,
           step: str | None = None) -> subprocess.CompletedProcess[str]:
        t0 = time.monotonic()
        res = subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=self.env,
                             capture_output=True, text=True, timeout=timeout)
        if step:
            self.timings[step] = round(time.monotonic() - t0, 1)
        if check and res.returncode != 0:
            pytest.fail(f"cluster.sh {' '.join(args)} exited {res.returncode}:\n"
                        f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
        return res

    def compose(self, *args: str, timeout: float = 180,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.sh("compose", *args, timeout=timeout, check=check)

    def run_in(self, node: str, *cmd: str, timeout: float = 180) -> str:
        """Run ``cmd`` in ``node``'s container; its stdout (the command must succeed)."""
        res = self.compose("exec", "-T", node, *cmd, timeout=timeout, check=False)
        if res.returncode != 0:
            logs = self.compose("--profile", "extra", "logs", "--tail", "40", check=False)
            pytest.fail(f"{node}: {' '.join(cmd)} exited {res.returncode}:\n{res.stdout[-2000:]}"
                        f"\n{res.stderr[-2000:]}\n--- logs ---\n{logs.stdout[-6000:]}")
        return res.stdout

    def sha256(self, node: str, path: str) -> str:
        return self.run_in(node, "sha256sum", path).split()[0]

    def fetch(self, node: str, h: str) -> dict[str, Any]:
        out = self.run_in(node, "dhtshare", "fetch", h, "-o", "/data", "--data-dir", "/data",
                          "--json", "--quiet", timeout=300)
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return result


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """An engine of our own, the image built, five healthy nodes; all removed afterwards."""
    reason = _why_not()
    if reason:
        print(f"SKIP compose cluster: {reason}")
        pytest.skip(reason)
    CACHE.mkdir(parents=True, exist_ok=True)
    c = Cluster()
    try:
        started = c.sh("engine", timeout=1200, check=False, step="engine")
        if started.returncode != 0:
            reason = ("could not start a private Docker engine: "
                      + (started.stderr.strip().splitlines() or ["no output"])[-1])
            print(f"SKIP compose cluster: {reason}\n{started.stdout[-2000:]}")
            pytest.skip(reason)
        c.sh("wheels", timeout=900, step="wheels")
        c.sh("validate", timeout=400, step="validate")
        c.sh("up", timeout=1500, step="base image, build, 5 nodes healthy")
        yield c
    finally:
        t0 = time.monotonic()
        c.sh("down", "-v", timeout=240, check=False)
        c.timings["down"] = round(time.monotonic() - t0, 1)
        print("COMPOSE: step timings (s): " + json.dumps(c.timings))


def test_publish_fetch_kill_a_holder_and_join_a_sixth_node(cluster: Cluster) -> None:
    name = "compose-test.bin"
    path = f"/data/{name}"
    cluster.run_in("node2", "sh", "-c", f"head -c {FILE_SIZE} /dev/urandom > {path}")
    src = cluster.sha256("node2", path)

    t0 = time.monotonic()
    out = cluster.run_in("node2", "dhtshare", "publish", path, "--data-dir", "/data",
                         "--replicas", "2")
    h = out.strip().splitlines()[-1]
    assert re.fullmatch(r"[0-9a-f]{64}", h), out
    cluster.timings["publish in node2"] = round(time.monotonic() - t0, 1)

    t0 = time.monotonic()
    first = cluster.fetch("node5", h)
    cluster.timings["fetch in node5"] = round(time.monotonic() - t0, 1)
    assert cluster.sha256("node5", path) == src
    assert first["peers"], first
    assert all(p.startswith(f"{NET}.") for p in first["peers"]), first

    # node2 dies without a word: no hand-off, no withdrawal of its records.
    cluster.compose("kill", "-s", "SIGKILL", "node2")
    state = cluster.compose("ps", "-a", "--format", "{{.Service}} {{.State}}").stdout
    assert "node2 exited" in state, state
    t0 = time.monotonic()
    second = cluster.fetch("node4", h)
    cluster.timings["fetch in node4, node2 dead"] = round(time.monotonic() - t0, 1)
    assert cluster.sha256("node4", path) == src
    assert f"{NET}.12:7000" not in second["peers"], second

    # A sixth node joins through node3 only, finds the file in the DHT and fetches it.
    t0 = time.monotonic()
    cluster.compose("--profile", "extra", "up", "-d", "--no-build", "--wait",
                    "--wait-timeout", "120", "node6", timeout=200)
    cluster.timings["node6 up and healthy"] = round(time.monotonic() - t0, 1)
    t0 = time.monotonic()
    third = cluster.fetch("node6", h)
    cluster.timings["fetch in node6"] = round(time.monotonic() - t0, 1)
    assert cluster.sha256("node6", path) == src
    assert f"{NET}.12:7000" not in third["peers"], third
    status = json.loads(cluster.run_in("node6", "dhtshare", "status", "--data-dir", "/data",
                                       "--json").strip().splitlines()[-1])
    print(f"COMPOSE: node6 status: {json.dumps(status)[:400]}")
    for who, res in [("node5", first), ("node4", second), ("node6", third)]:
        print(f"COMPOSE: fetch in {who}: {res['elapsed']} s, bytes by peer {res['peers']}")
