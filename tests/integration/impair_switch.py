"""A user-space Ethernet switch over TAP devices, with per-link delay, jitter, loss and partitions.

Why it exists: the kernel the tests run on has no ``sch_netem`` (and cannot
load modules), so ``tc qdisc ... netem delay`` is impossible.  Instead each
host namespace gets a TAP device ``eth0`` and this process, started inside
the test's hub namespace, opens every TAP (entering each host's namespace
just long enough to attach to it) and moves frames between them, delaying or
dropping them as the rules say.  Standard library only, so it runs wherever
the tests do.

    impair_switch.py --ns NS1 NS2 ... --rules RULES.json [--lifetime S] [--ready-file F]

Ports are numbered 1..N in ``--ns`` order.  The rules file is re-read when it
changes (checked every 50 ms, and at once on SIGHUP); a missing file means no
impairment::

    {"gen": 3,                                   # echoed into RULES.json.applied once in force
     "default": {"delay_ms": 20, "jitter_ms": 0, "loss": 0.01},
     "ports": {"3": {"loss": 0.3}},              # every frame to or from host 3
     "links": {"1>3": {"delay_ms": 100}},        # host 1 -> host 3 only (overrides the rest)
     "partition": [[1, 2, 3], [4, 5]],           # frames between groups are dropped
     "down": [4]}                                # host 4 cut off from everyone

For a frame from ``s`` to ``d`` the rule is ``links["s>d"]`` if given, else
``default`` combined with ``ports[s]`` and ``ports[d]`` (delays and jitters
add, losses compound), so ``default.delay_ms`` is the one-way delay between
any two hosts.  Frames of one link leave in the order they came even with
jitter (a frame is never due before the one ahead of it), as TCP would see
on a real path.

Bounded: at most ``--queue`` delayed frames per output port (more are
dropped, as a full router queue would), frames are only ever written to the
TAP devices named, and the process exits on SIGTERM, when its parent goes
away, or after ``--lifetime`` seconds.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import heapq
import json
import os
import random
import select
import signal
import struct
import sys
import time
from typing import Any

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
#: Frames read from one TAP per wake-up before the others get their turn.
READ_BATCH = 64
#: How often the rules file and the parent are checked.
CHECK_INTERVAL = 0.05

_libc = ctypes.CDLL(None, use_errno=True)

#: One directed link's compiled rule: (cut off, loss probability, delay s, jitter s).
Rule = tuple[bool, float, float, float]
NO_RULE: Rule = (False, 0.0, 0.0, 0.0)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def open_tap(ns: str, ifname: str) -> int:
    """Attach to the TAP ``ifname`` inside namespace ``ns``; returns its non-blocking fd.

    The TAP is looked up in the namespace it lives in, so this thread enters
    it for the ``open``+``ioctl`` and then returns home: the fd keeps working
    from any namespace.
    """
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR)
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", ifname.encode(), IFF_TAP | IFF_NO_PI))
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)
    os.set_blocking(fd, False)
    return fd


def _one(spec: dict[str, Any] | None) -> tuple[float, float, float]:
    spec = spec or {}
    return (float(spec.get("loss", 0.0)), float(spec.get("delay_ms", 0.0)) / 1000.0,
            float(spec.get("jitter_ms", 0.0)) / 1000.0)


def compile_rules(data: dict[str, Any], ports: int) -> dict[tuple[int, int], Rule]:
    """Every directed link's rule, worked out once per reload (the hot path only looks up)."""
    group: dict[int, int] = {}
    for gi, members in enumerate(data.get("partition") or []):
        for p in members:
            group[int(p)] = gi
    down = {int(p) for p in data.get("down") or []}
    d_loss, d_delay, d_jitter = _one(data.get("default"))
    per_port = {int(k): _one(v) for k, v in (data.get("ports") or {}).items()}
    links = {tuple(int(x) for x in k.split(">")): _one(v)
             for k, v in (data.get("links") or {}).items()}
    table: dict[tuple[int, int], Rule] = {}
    for s in range(1, ports + 1):
        for d in range(1, ports + 1):
            if s == d:
                continue
            cut = s in down or d in down or (
                bool(group) and group.get(s, -1) != group.get(d, -2))
            if (s, d) in links:
                loss, delay, jitter = links[(s, d)]
            else:
                keep, delay, jitter = 1.0 - d_loss, d_delay, d_jitter
                for p in (s, d):
                    if p in per_port:
                        pl, pd, pj = per_port[p]
                        keep *= 1.0 - pl
                        delay += pd
                        jitter += pj
                loss = 1.0 - keep
            table[(s, d)] = (cut, loss, delay, jitter)
    return table


class Switch:
    """The forwarding state: learned MACs, the delay heap, per-port queue counts, stats."""

    def __init__(self, fds: dict[int, int], rules_path: str, queue_limit: int) -> None:
        self.fds = fds
        self.port_of = {fd: p for p, fd in fds.items()}
        self.rules_path = rules_path
        self.queue_limit = queue_limit
        self.table: dict[tuple[int, int], Rule] = {}
        self.rules_mtime: int | None = None
        self.macs: dict[bytes, int] = {}
        #: (due, seq, port, frame): frames held back by a delay.
        self.heap: list[tuple[float, int, int, bytes]] = []
        self.seq = 0
        self.queued = dict.fromkeys(fds, 0)
        #: Per directed link: when its last delayed frame is due (keeps each link in order).
        self.last_due: dict[tuple[int, int], float] = {}
        self.stats = {"in": 0, "out": 0, "delayed": 0, "lost": 0, "cut": 0, "overflow": 0,
                      "write_err": 0}

    def reload(self, force: bool = False) -> None:
        try:
            mtime = os.stat(self.rules_path).st_mtime_ns
        except FileNotFoundError:
            mtime = 0
        if mtime == self.rules_mtime and not force:
            return
        data: dict[str, Any] = {}
        if mtime:
            try:
                with open(self.rules_path) as fh:
                    data = json.load(fh)
            except (OSError, ValueError) as err:
                # Half-written (the writer should rename into place): try again soon.
                print(f"rules: cannot read {self.rules_path}: {err}", file=sys.stderr, flush=True)
                return
        self.rules_mtime = mtime
        self.table = compile_rules(data, len(self.fds))
        print(f"rules loaded: {json.dumps(data, sort_keys=True)} stats={self.stats}", flush=True)
        ack = f"{self.rules_path}.applied"
        with open(ack + ".tmp", "w") as fh:
            fh.write(str(data.get("gen", 0)))
        os.replace(ack + ".tmp", ack)

    def receive(self, src: int, frame: bytes, now: float) -> None:
        if len(frame) < 14:
            return
        self.stats["in"] += 1
        dst_mac = frame[0:6]
        self.macs[frame[6:12]] = src
        dst = self.macs.get(dst_mac)
        if dst is not None and dst != src and not dst_mac[0] & 1:
            self._send(src, dst, frame, now)
            return
        for port in self.fds:  # broadcast, multicast or not learned yet: flood
            if port != src:
                self._send(src, port, frame, now)

    def _send(self, src: int, dst: int, frame: bytes, now: float) -> None:
        cut, loss, delay, jitter = self.table.get((src, dst), NO_RULE)
        if cut:
            self.stats["cut"] += 1
            return
        if loss and random.random() < loss:
            self.stats["lost"] += 1
            return
        if jitter:
            delay = max(0.0, delay + random.uniform(-jitter, jitter))
        if delay <= 0.0 and not self.queued[dst]:
            self._write(dst, frame)
            return
        if self.queued[dst] >= self.queue_limit:
            self.stats["overflow"] += 1
            return
        due = max(now + delay, self.last_due.get((src, dst), 0.0))
        self.last_due[(src, dst)] = due
        self.seq += 1
        self.stats["delayed"] += 1
        self.queued[dst] += 1
        heapq.heappush(self.heap, (due, self.seq, dst, frame))

    def _write(self, port: int, frame: bytes) -> None:
        try:
            os.write(self.fds[port], frame)
            self.stats["out"] += 1
        except OSError:  # that host's eth0 is down, or its queue is full
            self.stats["write_err"] += 1

    def flush(self, now: float) -> None:
        heap = self.heap
        while heap and heap[0][0] <= now:
            _, _, port, frame = heapq.heappop(heap)
            self.queued[port] -= 1
            self._write(port, frame)

    def next_due(self) -> float | None:
        return self.heap[0][0] if self.heap else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ns", nargs="+", required=True, help="host namespaces, port 1..N")
    ap.add_argument("--ifname", default="eth0")
    ap.add_argument("--rules", required=True)
    ap.add_argument("--lifetime", type=float, default=600.0)
    ap.add_argument("--queue", type=int, default=4096, help="delayed frames per port at most")
    ap.add_argument("--ready-file")
    a = ap.parse_args(argv)

    stop: list[int] = []
    reload_now: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    signal.signal(signal.SIGHUP, lambda *_: reload_now.append(1))
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)  # the test process died: so do we
    parent = os.getppid()

    fds = {i + 1: open_tap(ns, a.ifname) for i, ns in enumerate(a.ns)}
    sw = Switch(fds, a.rules, a.queue)
    sw.reload(force=True)
    poller = select.epoll()
    for fd in fds.values():
        poller.register(fd, select.EPOLLIN)
    if a.ready_file:
        with open(a.ready_file, "w") as fh:
            fh.write(f"{os.getpid()}\n")
    print(f"switch up: {len(fds)} ports, pid {os.getpid()}", flush=True)

    end = time.monotonic() + a.lifetime
    next_check = 0.0
    read = os.read
    while not stop:
        now = time.monotonic()
        if now >= next_check:
            if now > end or os.getppid() != parent:
                break
            sw.reload(force=bool(reload_now))
            reload_now.clear()
            next_check = now + CHECK_INTERVAL
        due = sw.next_due()
        timeout = min(next_check - now, CHECK_INTERVAL)
        if due is not None:
            timeout = min(timeout, due - now)
        try:
            events = poller.poll(max(0.0, timeout))
        except InterruptedError:
            continue
        now = time.monotonic()
        for fd, _ in events:
            src = sw.port_of[fd]
            for _ in range(READ_BATCH):
                try:
                    frame = read(fd, 65536)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:  # EIO while the host's link is down
                    break
                sw.receive(src, frame, now)
        sw.flush(time.monotonic())
    print(f"switch exiting: {sw.stats}", flush=True)
    for fd in fds.values():
        os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
