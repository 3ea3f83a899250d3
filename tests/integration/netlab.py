"""Hosts as network namespaces, for tests that need a real network with faults in it.

A :class:`Lab` makes N "hosts" (network namespaces ``<prefix>-n1..``, each
with ``eth0`` = 10.81.0.I/24) joined in one of two ways:

* ``bridge``: veth pairs into a kernel bridge in a hub namespace (fast; loss
  by nftables inside a host, partitions by link down or by moving hub ports
  to a second bridge);
* ``switch``: each ``eth0`` is a TAP device and :mod:`impair_switch`, a
  process in the hub namespace, moves the frames, adding per-link delay,
  jitter, loss and partitions (this kernel has no ``netem``).

Why so careful about cleaning up: namespaces outlive the processes in them.
Everything a lab makes lives inside the namespaces it creates (nothing is
added to the root namespace, the TAP devices are made inside the hosts), each
process it starts is stopped by its pid, and :meth:`Lab.close` deletes every
namespace, also when the test failed; namespaces left by a lab whose test
process died are deleted by the next lab.  Only addresses inside these
namespaces are ever contacted.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.conftest import CLI_TIMEOUT, cli_env

NET = "10.81.0"
PORT = 7000
#: Every namespace a lab makes is named ``dhtnf<pid>-...``: the pid says whose it is.
PREFIX = "dhtnf"
SWITCH = Path(__file__).with_name("impair_switch.py")
#: No process a lab starts lives longer than this (seconds), whatever happens to the test.
MAX_LIFETIME = 900
NODE_START_TIMEOUT = 20.0
#: How long a node may take to stop politely (its hand-off is bounded by 30 s).
STOP_TIMEOUT = 40.0
NFT_TABLE = "dhtnetfault"
#: A node gets SIGTERM when the test process dies (else ``timeout`` ends it later).
_ORPHAN_GUARD = ["setpriv", "--pdeathsig", "TERM"] if shutil.which("setpriv") else []


def _run(cmd: Sequence[str], timeout: float = 20.0, check: bool = True,
         stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                         input=stdin, check=False)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(["ip", *args], check=check)


def unavailable(tun: bool = False, nft: bool = False, faketime: bool = False) -> str | None:
    """Why this machine cannot run a lab with these needs (None: it can)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip netns)"
    probe = f"{PREFIX}{os.getpid()}-probe"
    try:
        ip("netns", "add", probe)
    except (RuntimeError, OSError, subprocess.SubprocessError) as err:
        return f"cannot create a network namespace: {err}"
    with contextlib.suppress(RuntimeError, OSError, subprocess.SubprocessError):
        ip("netns", "del", probe)
    if tun and not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun (TAP devices for the impairment switch)"
    if nft and shutil.which("nft") is None:
        return "needs nft (package nftables) for loss rules"
    if faketime and shutil.which("faketime") is None:
        return "needs faketime (package faketime) for a skewed clock"
    return None


def reap_stale() -> None:
    """Delete namespaces of labs whose test process is gone (it was killed mid-test)."""
    res = ip("netns", "list", check=False)
    for line in res.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        found = re.fullmatch(rf"{PREFIX}(\d+)-\w+", name)
        if found is None or Path(f"/proc/{found.group(1)}").exists():
            continue
        _kill_in_namespace(name)
        ip("netns", "del", name, check=False)


def _kill_in_namespace(ns: str) -> None:
    """Stop whatever still runs in ``ns``: only ever processes a lab started there."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        res = ip("netns", "pids", ns, check=False)
        pids = [int(p) for p in res.stdout.split() if p.isdigit()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.05)


class Proc:
    """A process started inside a namespace; its stdout is drained by a thread."""

    def __init__(self, cmd: list[str], log_path: Path, env: dict[str, str]) -> None:
        self.cmd = cmd
        self.log_path = log_path
        self.lines: list[str] = []
        self.ready = threading.Event()
        with open(log_path, "w") as log:
            self.popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True,
                                          env=env, start_new_session=True)
        self.reader = threading.Thread(target=self._drain, daemon=True)
        self.reader.start()

    def _drain(self) -> None:
        out = self.popen.stdout
        assert out is not None
        for line in out:
            self.lines.append(line)
            if "listening on" in line or line.startswith("switch up"):
                self.ready.set()
        out.close()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def terminate(self) -> None:
        """Ask it to stop (SIGTERM): a node hands off, withdraws and says goodbye."""
        if self.popen.poll() is None:
            self.popen.terminate()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, then SIGKILL to its process group after ``timeout``: by its own pid only."""
        self.terminate()
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self.reader.join(10)

    def kill(self) -> None:
        """SIGKILL, as a crash would: the process and the ``timeout`` above it (one group)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)
        self.reader.join(10)

    def log(self, tail: int = 4000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "".join(self.lines)[-tail:] + text[-tail:]


class Host:
    """One namespace with one dhtshare node (started and stopped by the test)."""

    def __init__(self, lab: Lab, index: int) -> None:
        self.lab = lab
        self.index = index
        self.name = f"h{index}"
        self.ns = f"{lab.prefix}-n{index}"
        self.ip = f"{NET}.{index}"
        self.addr = f"{self.ip}:{PORT}"
        self.data_dir = lab.root / self.name
        self.node: Proc | None = None
        self.runs = 0

    def __repr__(self) -> str:
        return f"Host({self.name} {self.addr})"

    # -- the node -----------------------------------------------------------------
    def start(self, peers: Sequence[Host | str] = (), extra: Sequence[str] = (),
              wrapper: Sequence[str] = (), env: dict[str, str] | None = None) -> Host:
        """Start ``bootstrap`` (no peers) or ``node --peer ...`` here; wait until it listens.

        ``wrapper`` goes between ``ip netns exec NS`` and Python (e.g. ``faketime +10m``).
        """
        assert self.node is None or not self.node.alive(), f"{self} runs a node already"
        role = ["node", *[x for p in peers for x in ("--peer", p if isinstance(p, str)
                                                      else p.addr)]] if peers else ["bootstrap"]
        cmd = ["ip", "netns", "exec", self.ns, *_ORPHAN_GUARD, *wrapper,
               "timeout", "-k", str(int(STOP_TIMEOUT)), str(MAX_LIFETIME),
               sys.executable, "-m", "dhtshare", *role, "--host", "0.0.0.0", "--port", str(PORT),
               "--data-dir", str(self.data_dir), *extra]
        self.runs += 1
        log = f"{self.name}.log" if self.runs == 1 else f"{self.name}.run{self.runs}.log"
        self.node = Proc(cmd, self.lab.root / log, cli_env(env))
        if not self.node.ready.wait(NODE_START_TIMEOUT):
            self.node.stop()
            raise RuntimeError(f"node on {self} did not start:\n{self.node.log()}")
        return self

    def stop(self) -> None:
        """Stop the node politely (bounded), as Ctrl-C would."""
        if self.node is not None:
            self.node.stop()

    def crash(self) -> None:
        """Kill the node at once (SIGKILL): no goodbye, nothing saved on the way out."""
        if self.node is not None:
            self.node.kill()

    def log(self) -> str:
        return self.node.log() if self.node is not None else ""

    # -- the CLI, as a user on this host would run it ------------------------------
    def cli(self, *args: str, timeout: float = CLI_TIMEOUT,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """``dhtshare ARGS --data-dir DIR``: reaches the node through its control socket."""
        cmd = [sys.executable, "-m", "dhtshare", *args, "--data-dir", str(self.data_dir)]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                             env=cli_env(), check=False)
        if check and res.returncode != 0:
            raise AssertionError(f"dhtshare {' '.join(args)} on {self} failed "
                                 f"({res.returncode}): {res.stderr}\n{self.log()[-3000:]}")
        return res

    def cli_json(self, *args: str, timeout: float = CLI_TIMEOUT) -> dict[str, Any]:
        res = self.cli(*args, "--json", timeout=timeout)
        out: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
        return out

    def publish(self, path: Path, *extra: str, timeout: float = CLI_TIMEOUT) -> str:
        """Publish ``path`` through this host's node; the manifest hash."""
        res = self.cli("publish", str(path), *extra, timeout=timeout)
        return res.stdout.strip().splitlines()[-1]

    def fetch(self, h: str, out: Path, *extra: str,
              timeout: float = CLI_TIMEOUT) -> dict[str, Any]:
        """``fetch --json`` through this host's node; its result (``elapsed``, ``peers``...)."""
        return self.cli_json("fetch", h, "-o", str(out), *extra, timeout=timeout)

    def holders(self, h: str) -> dict[str, Any]:
        return self.cli_json("holders", h)

    # -- faults inside this host --------------------------------------------------
    def link_down(self) -> None:
        """Cut this host off: its eth0 down (packets to it vanish, they are not refused)."""
        ip("-n", self.ns, "link", "set", "eth0", "down")

    def link_up(self) -> None:
        ip("-n", self.ns, "link", "set", "eth0", "up")

    def set_loss(self, percent: float, hooks: Sequence[str] = ("input",)) -> None:
        """Drop ``percent`` % of the TCP and UDP packets this host receives (or sends).

        An nftables table inside the host's namespace: random per packet,
        in steps of 0.01 %.
        """
        self.clear_loss()
        n = round(percent * 100)
        chains = "\n".join(
            f"  chain {hook} {{ type filter hook {hook} priority 0; policy accept;\n"
            f"    meta l4proto {{ tcp, udp }} counter\n"
            f"    meta l4proto {{ tcp, udp }} numgen random mod 10000 < {n} counter drop\n  }}"
            for hook in hooks)
        rules = f"table inet {NFT_TABLE} {{\n{chains}\n}}\n"
        _run(["ip", "netns", "exec", self.ns, "nft", "-f", "-"], stdin=rules)

    def loss_counters(self) -> tuple[int, int]:
        """(packets seen, packets dropped) by the rules of :meth:`set_loss` so far."""
        res = _run(["ip", "netns", "exec", self.ns, "nft", "list", "table", "inet", NFT_TABLE],
                   check=False)
        counts = [int(x) for x in re.findall(r"counter packets (\d+)", res.stdout)]
        return sum(counts[0::2]), sum(counts[1::2])

    def clear_loss(self) -> None:
        _run(["ip", "netns", "exec", self.ns, "nft", "delete", "table", "inet", NFT_TABLE],
             check=False)

    def rtt_ms(self, other: Host, tries: int = 5) -> float:
        """Round trip to ``other`` in ms: the best of a few TCP connects to a closed port.

        The refusal (RST) comes straight back from the other host's kernel, so
        no node sees these probes.
        """
        probe = ("import socket, sys, time\n"
                 "best = 1e9\n"
                 f"for _ in range({tries}):\n"
                 "    s = socket.socket(); s.settimeout(5); t = time.perf_counter()\n"
                 "    try: s.connect((sys.argv[1], 9))\n"
                 "    except OSError: pass\n"
                 "    best = min(best, time.perf_counter() - t); s.close()\n"
                 "print(best * 1000)\n")
        out = self.run(sys.executable, "-c", probe, other.ip, timeout=10 + 6 * tries).stdout
        return float(out.strip())

    def run(self, *cmd: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
        """Run a command inside this host's namespace."""
        return _run(["ip", "netns", "exec", self.ns, *cmd], timeout=timeout)


class Lab:
    """N hosts and how they are joined; a context manager that always cleans up."""

    def __init__(self, root: Path, n: int, mode: str = "bridge") -> None:
        assert mode in ("bridge", "switch")
        self.root = root
        self.mode = mode
        self.prefix = f"{PREFIX}{os.getpid()}"
        self.hub = f"{self.prefix}-hub"
        self.hosts: list[Host] = []
        self.namespaces: list[str] = []
        self.switch: Proc | None = None
        self.rules_path = root / "switch-rules.json"
        self._gen = 0
        self._rules: dict[str, Any] = {}
        self._n = n

    def __enter__(self) -> Lab:
        try:
            self.setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def setup(self) -> None:
        reap_stale()
        self.root.mkdir(parents=True, exist_ok=True)
        self._add_ns(self.hub)
        if self.mode == "bridge":
            for br in ("br0", "br1"):  # br1: the far side of a group partition
                ip("-n", self.hub, "link", "add", br, "type", "bridge")
                ip("-n", self.hub, "link", "set", br, "up")
        for _ in range(self._n):
            self.add_host(_started=False)
        if self.mode == "switch":
            self._start_switch()

    def _add_ns(self, ns: str) -> None:
        ip("netns", "add", ns)
        self.namespaces.append(ns)
        ip("-n", ns, "link", "set", "lo", "up")
        # No IPv6 chatter (router solicitations, DAD) on the test links.
        _run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"],
             check=False)

    def add_host(self, _started: bool = True) -> Host:
        """A new host on the network (in bridge mode also after setup; a switch has fixed ports)."""
        if _started and self.mode == "switch":
            raise RuntimeError("the switch's ports are fixed at setup: make the lab bigger")
        host = Host(self, len(self.hosts) + 1)
        self._add_ns(host.ns)
        if self.mode == "bridge":
            port = f"vn{host.index}"
            ip("link", "add", "eth0", "netns", host.ns, "type", "veth",
               "peer", "name", port, "netns", self.hub)
            ip("-n", self.hub, "link", "set", port, "master", "br0")
            ip("-n", self.hub, "link", "set", port, "up")
        else:
            ip("-n", host.ns, "tuntap", "add", "dev", "eth0", "mode", "tap")
        ip("-n", host.ns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
        ip("-n", host.ns, "link", "set", "eth0", "up")
        self.hosts.append(host)
        return host

    def _start_switch(self) -> None:
        self.rules_path.write_text("{}")
        cmd = ["ip", "netns", "exec", self.hub, sys.executable, str(SWITCH),
               "--ns", *[h.ns for h in self.hosts], "--rules", str(self.rules_path),
               "--lifetime", str(MAX_LIFETIME)]
        self.switch = Proc(cmd, self.root / "switch.log", cli_env())
        if not self.switch.ready.wait(10):
            raise RuntimeError(f"switch did not start:\n{self.switch.log()}")

    # -- impairments ---------------------------------------------------------------
    def impair(self, rules: dict[str, Any]) -> None:
        """Switch mode: put ``rules`` (see :mod:`impair_switch`) in force; returns once they are."""
        assert self.switch is not None, "impair needs a lab in switch mode"
        self._gen += 1
        self._rules = rules
        tmp = self.rules_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**rules, "gen": self._gen}))
        os.replace(tmp, self.rules_path)  # the switch never reads half a file
        ack = Path(f"{self.rules_path}.applied")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                if int(ack.read_text()) == self._gen:
                    return
            time.sleep(0.02)
        raise RuntimeError(f"the switch did not apply rules {rules}:\n{self.switch.log()}")

    def partition(self, *groups: Sequence[Host]) -> None:
        """Hosts in different groups no longer reach each other (hosts in none: the first)."""
        if self.mode == "switch":
            self.impair({"partition": [[h.index for h in g] for g in groups]})
            return
        assert len(groups) == 2, "a bridge lab splits the hosts in two"
        for h in groups[1]:
            ip("-n", self.hub, "link", "set", f"vn{h.index}", "master", "br1")

    def heal(self) -> None:
        """Undo :meth:`partition` (and, in switch mode, every other impairment)."""
        if self.mode == "switch":
            self.impair({})
            return
        for h in self.hosts:
            ip("-n", self.hub, "link", "set", f"vn{h.index}", "master", "br0")

    def switch_stats(self) -> str:
        """The switch's last report lines (rules reloads and its counters)."""
        return "".join(self.switch.lines[-3:]) if self.switch is not None else ""

    def switch_counters(self) -> dict[str, int]:
        """The switch's frame counters now (in, out, lost, cut, overflow, write_err)."""
        assert self.switch is not None
        self.impair(self._rules)  # a reload makes it report its counters
        mark = f'"gen": {self._gen}'
        line = ""
        deadline = time.monotonic() + 5  # the line may still be on its way through the pipe
        while time.monotonic() < deadline and mark not in line:
            line = next((x for x in reversed(self.switch.lines) if mark in x), "")
            time.sleep(0.01)
        found = re.search(r"stats=(\{.*\})", line)
        assert found is not None, self.switch.log()
        counters: dict[str, int] = ast.literal_eval(found.group(1))
        return counters

    # -- the end -------------------------------------------------------------------
    def close(self) -> None:
        """Stop every process and delete every namespace this lab made; never raises."""
        for h in self.hosts:  # all at once: their goodbyes overlap
            if h.node is not None:
                with contextlib.suppress(Exception):
                    h.node.terminate()
        for h in self.hosts:
            with contextlib.suppress(Exception):
                h.stop()
        if self.switch is not None:
            with contextlib.suppress(Exception):
                self.switch.stop(5)
        for ns in reversed(self.namespaces):
            with contextlib.suppress(Exception):
                _kill_in_namespace(ns)
            with contextlib.suppress(Exception):
                ip("netns", "del", ns, check=False)
        self.namespaces.clear()
