"""Transfer benchmark: dhtshare against libtorrent on 127.0.0.1, same files, alternating.

    pip install '.[bench]'
    python bench/transfer.py [--sizes 64M,512M,1G] [--runs 5] [--scenarios 1x1,1x4]
                             [--out bench/results] [--workdir /tmp]

For every scenario (``1xN``: one provider, N fetchers) and size, it runs
dhtshare and libtorrent alternately (d, l, d, l, ...) ``--runs`` times each on
the same generated random file, with fresh processes and directories per run:

* dhtshare, only through its CLI: ``dhtshare bootstrap`` + a seeder
  ``dhtshare node`` + N fetcher nodes; ``dhtshare publish FILE --replicas 0``
  on the seeder before the clock (no copies placed on the fetchers); then the
  clock starts and N ``dhtshare fetch HASH -o OUT --json`` run at once.  The
  wall time ends when the last fetch process exits (each verified every chunk).
* libtorrent (``bench/lt_peer.py``): a seeder that has checked every piece,
  and N leecher processes whose sessions are already listening; the clock
  starts when they are told to add the torrent (with the seeder and the other
  leechers as direct peers) and ends when the last one reports that every
  piece passed its hash check and was written to the file.  In 1xN the
  leechers trade with each other and keep serving until all are done.

Every output file's SHA-256 is compared with the source after the clock.
Measured per run: wall time, CPU seconds (utime+stime from /proc before and
after, plus the fetch CLI processes' rusage) of every process of the run,
peak RSS (VmHWM; ru_maxrss for the CLI processes).  Also measured: the
machine's raw limits (``bench/limits.py``), the latency of ``dhtshare fetch``
of 1 MiB files on a running 5-node network, and publishing a large file
against hashing it.

Writes ``<out>/transfer-<timestamp>.json`` and ``<out>/latest.md`` and prints
the Markdown.  Every process it starts is stopped on exit (SIGTERM to its
process group, SIGKILL after a grace period).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import os
import platform
import queue
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import IO, Any

from limits import GIB, MIB, hash_file, parse_size

BENCH = Path(__file__).resolve().parent
LT_PEER = BENCH / "lt_peer.py"
PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

#: A node must print its "listening on" line within this many seconds.
NODE_START_TIMEOUT = 60.0
#: Grace between SIGTERM and SIGKILL when stopping a process.
STOP_GRACE = 5.0


def log(msg: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("DHTSHARE_PEERS", "DHTSHARE_DATA_DIR"):
        env.pop(key, None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def fmt_size(n: int) -> str:
    if n >= GIB and n % GIB == 0:
        return f"{n // GIB} GiB"
    if n >= MIB and n % MIB == 0:
        return f"{n // MIB} MiB"
    return f"{n} B"


def transfer_timeout(size: int, fetchers: int) -> float:
    """Generous: 60 s plus 10 MB/s for everything delivered."""
    return 60.0 + size * fetchers / 10e6


# -- /proc ------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (all its threads), in seconds."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    rest = raw[raw.rindex(")") + 2 :].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def proc_status(pid: int) -> dict[str, int]:
    """VmHWM, VmRSS, RssAnon, RssFile of a live process, in bytes (empty if gone)."""
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


class RssSampler:
    """Samples RssAnon of some processes at 10 Hz; keeps the peak of each.

    VmHWM counts file pages a process maps (libtorrent 2 maps the files it
    serves and writes), so the anonymous peak is recorded too.
    """

    def __init__(self, pids: dict[str, int], interval: float = 0.1) -> None:
        self.pids = dict(pids)
        self.peak: dict[str, int] = dict.fromkeys(pids, 0)
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        for name, pid in self.pids.items():
            anon = proc_status(pid).get("RssAnon", 0)
            if anon > self.peak[name]:
                self.peak[name] = anon

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sample()


# -- processes --------------------------------------------------------------------------
class Proc:
    """A child in its own process group, stopped for sure (see :func:`stop_all`)."""

    live: list[Proc] = []

    def __init__(self, name: str, argv: list[str], logdir: Path, *, pipes: bool = False) -> None:
        self.name = name
        self.argv = argv
        logdir.mkdir(parents=True, exist_ok=True)
        self.out_path = logdir / f"{name}.out"
        self.err_path = logdir / f"{name}.err"
        self._files: list[IO[bytes]] = []
        err = open(self.err_path, "wb")  # noqa: SIM115 - closed in stop()
        self._files.append(err)
        if pipes:
            self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=err, start_new_session=True, env=child_env(),
                                      text=True, bufsize=1)
        else:
            out = open(self.out_path, "wb")  # noqa: SIM115 - closed in stop()
            self._files.append(out)
            self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                      start_new_session=True, env=child_env())
        Proc.live.append(self)

    @property
    def pid(self) -> int:
        return self.p.pid

    def alive(self) -> bool:
        return self.p.poll() is None

    def kill_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.p.pid, sig)

    def stop(self, grace: float = STOP_GRACE) -> None:
        if self.alive():
            self.kill_group(signal.SIGTERM)
            try:
                self.p.wait(grace)
            except subprocess.TimeoutExpired:
                self.kill_group(signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.p.wait(5)
        self.kill_group(signal.SIGKILL)  # anything left in its group
        for f in self._files:
            f.close()
        for stream in (self.p.stdin, self.p.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        with contextlib.suppress(ValueError):
            Proc.live.remove(self)

    def tail(self, n: int = 15) -> str:
        try:
            lines = self.err_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


def stop_all(procs: list[Proc] | None = None) -> None:
    """Stop ``procs`` (default: every live one): SIGTERM all, then wait, then SIGKILL."""
    targets = list(Proc.live if procs is None else procs)
    for pr in targets:
        if pr.alive():
            pr.kill_group(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    for pr in targets:
        with contextlib.suppress(subprocess.TimeoutExpired):
            pr.p.wait(max(0.0, deadline - time.monotonic()))
    for pr in targets:
        pr.stop(grace=0.1)


@dataclass
class CliRun:
    """One CLI process reaped with wait4 (so its rusage is known)."""

    argv: list[str]
    rc: int = -1
    wall: float = float("nan")
    cpu: float = 0.0
    maxrss: int = 0
    stdout: str = ""
    stderr: str = ""

    def json(self) -> dict[str, Any] | None:
        for line in reversed(self.stdout.strip().splitlines()):
            with contextlib.suppress(json.JSONDecodeError):
                obj = json.loads(line)
                if isinstance(obj, dict):
                    return obj
        return None


def run_clis(argvs: list[list[str]], timeout: float, logdir: Path,
             tag: str) -> tuple[float, list[CliRun]]:
    """Start every argv at once; wait for all (bounded).  Returns (wall, runs).

    The wall time goes from just before the first spawn to the exit of the
    last process; each process is reaped with ``os.wait4`` in its own thread.
    """
    logdir.mkdir(parents=True, exist_ok=True)
    runs = [CliRun(argv) for argv in argvs]
    files: list[tuple[IO[bytes], IO[bytes]]] = []
    procs: list[subprocess.Popen[bytes]] = []
    ends: list[float] = [float("nan")] * len(argvs)
    t0 = time.perf_counter()
    try:
        for i, argv in enumerate(argvs):
            out = open(logdir / f"{tag}-{i}.out", "w+b")  # noqa: SIM115 - closed below
            err = open(logdir / f"{tag}-{i}.err", "w+b")  # noqa: SIM115 - closed below
            files.append((out, err))
            procs.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=err, start_new_session=True,
                                          env=child_env()))
        starts = [t0] * len(procs)

        def reap(i: int) -> None:
            _, status, ru = os.wait4(procs[i].pid, 0)
            ends[i] = time.perf_counter()
            procs[i].returncode = os.waitstatus_to_exitcode(status)
            runs[i].rc = procs[i].returncode
            runs[i].cpu = ru.ru_utime + ru.ru_stime
            runs[i].maxrss = ru.ru_maxrss * 1024
            runs[i].wall = ends[i] - starts[i]

        threads = [threading.Thread(target=reap, args=(i,), daemon=True)
                   for i in range(len(procs))]
        for th in threads:
            th.start()
        deadline = time.monotonic() + timeout
        for th in threads:
            th.join(max(0.0, deadline - time.monotonic()))
        if any(th.is_alive() for th in threads):
            log(f"{tag}: timed out after {timeout:.0f} s, killing")
            for p in procs:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)
            for th in threads:
                th.join(10)
    finally:
        for p in procs:  # on any error: nothing may outlive us
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)
        for run, (out, err) in zip(runs, files, strict=False):
            out.seek(0)
            err.seek(0)
            run.stdout = out.read().decode(errors="replace")
            run.stderr = err.read().decode(errors="replace")
            out.close()
            err.close()
    wall = max(ends) - t0 if all(e == e for e in ends) else float("nan")
    return wall, runs


def run_cli(argv: list[str], timeout: float, logdir: Path, tag: str) -> CliRun:
    _, runs = run_clis([argv], timeout, logdir, tag)
    return runs[0]


def dhtshare_argv(*args: str) -> list[str]:
    return [PY, "-m", "dhtshare", *args]


# -- dhtshare network -------------------------------------------------------------------
READY_RE = re.compile(r"listening on 127\.0\.0\.1:(\d+)")


class DhtNode:
    def __init__(self, name: str, data_dir: Path, logdir: Path, boot_port: int | None) -> None:
        self.name = name
        self.data_dir = data_dir
        args = (["bootstrap"] if boot_port is None
                else ["node", "--peer", f"127.0.0.1:{boot_port}"])
        argv = dhtshare_argv(*args, "--host", "127.0.0.1", "--port", "0",
                             "--data-dir", str(data_dir))
        self.proc = Proc(name, argv, logdir)
        self.port = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                m = READY_RE.search(self.proc.out_path.read_text(errors="replace"))
                if m:
                    self.port = int(m.group(1))
                    return
            if not self.proc.alive():
                raise RuntimeError(f"dhtshare {self.name} exited with {self.proc.p.returncode}:"
                                   f"\n{self.proc.tail()}")
            time.sleep(0.02)
        raise RuntimeError(f"dhtshare {self.name} not ready in {NODE_START_TIMEOUT:.0f} s:\n"
                           f"{self.proc.tail()}")


@contextlib.contextmanager
def dht_network(root: Path, names: list[str]) -> Iterator[dict[str, DhtNode]]:
    """A bootstrap node plus one ``dhtshare node`` per name, all on 127.0.0.1."""
    logdir = root / "logs"
    nodes: dict[str, DhtNode] = {}
    try:
        boot = DhtNode("boot", root / "boot", logdir, None)
        nodes["boot"] = boot
        boot.wait_ready(time.monotonic() + NODE_START_TIMEOUT)
        for name in names:
            nodes[name] = DhtNode(name, root / name, logdir, boot.port)
        deadline = time.monotonic() + NODE_START_TIMEOUT
        for node in nodes.values():
            node.wait_ready(deadline)
        yield nodes
    finally:
        stop_all([n.proc for n in nodes.values()])


def publish(node: DhtNode, path: Path, logdir: Path, tag: str, replicas: int | None = 0,
            timeout: float = 600.0) -> tuple[str, CliRun, dict[str, Any]]:
    argv = dhtshare_argv("publish", str(path), "--data-dir", str(node.data_dir), "--json")
    if replicas is not None:
        argv += ["--replicas", str(replicas)]
    run = run_cli(argv, timeout, logdir, tag)
    res = run.json()
    if run.rc != 0 or res is None:
        raise RuntimeError(f"publish failed (exit {run.rc}): {run.stderr.strip()[-2000:]}")
    return str(res["hash"]), run, res


# -- source files -----------------------------------------------------------------------
@dataclass
class Source:
    path: Path
    size: int
    sha256: str
    torrent: Path | None = None
    torrent_seconds: float = 0.0


def generate(path: Path, size: int) -> Source:
    """Random data, written once; its SHA-256 computed on the way."""
    h = hashlib.sha256()
    block = 4 * MIB
    with open(path, "wb") as fh:
        left = size
        while left > 0:
            data = os.urandom(min(block, left))
            h.update(data)
            fh.write(data)
            left -= len(data)
    return Source(path, size, h.hexdigest())


def make_torrent(src: Source, fmt: str, logdir: Path) -> None:
    """A torrent of 1 MiB pieces for ``src``, made by libtorrent in a child process."""
    src.torrent = src.path.with_suffix(f".{fmt}.torrent")
    run = run_cli([PY, str(LT_PEER), "--make-torrent", str(src.path), "--torrent",
                   str(src.torrent), "--format", fmt], 600, logdir, "make-torrent")
    info = run.json()
    if run.rc != 0 or info is None:
        raise RuntimeError(f"making the torrent failed: {run.stderr.strip()[-1000:]}")
    src.torrent_seconds = float(info["seconds"])


def verify(paths: list[Path], expected: str) -> list[bool]:
    out = []
    for p in paths:
        try:
            digest, _ = hash_file(p)
        except OSError:
            out.append(False)
            continue
        out.append(digest == expected)
    return out


# -- one run of each tool ---------------------------------------------------------------
@dataclass
class RunResult:
    tool: str
    run: int
    ok: bool = False
    wall: float = float("nan")
    cpu: dict[str, float] = field(default_factory=dict)
    rss: dict[str, int] = field(default_factory=dict)
    rss_anon_peak: dict[str, int] = field(default_factory=dict)
    fetchers: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    @property
    def cpu_total(self) -> float:
        return sum(self.cpu.values())


def run_dhtshare(src: Source, nfetch: int, rundir: Path, run_no: int) -> RunResult:
    res = RunResult("dhtshare", run_no)
    logdir = rundir / "logs"
    fnames = [f"fetcher{i}" for i in range(nfetch)]
    outs = [rundir / "out" / f"f{i}" / src.path.name for i in range(nfetch)]
    for o in outs:
        o.parent.mkdir(parents=True, exist_ok=True)
    with dht_network(rundir, ["seeder", *fnames]) as nodes:
        t_pub = time.perf_counter()
        mhash, _, pres = publish(nodes["seeder"], src.path, logdir, "publish")
        res.extra["publish_seconds"] = round(time.perf_counter() - t_pub, 4)
        res.extra["publish_hash_seconds"] = pres.get("hash_seconds")
        pids = {name: node.pid for name, node in nodes.items()}
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        argvs = [dhtshare_argv("fetch", mhash, "-o", str(outs[i]), "--data-dir",
                               str(nodes[f"fetcher{i}"].data_dir), "--json")
                 for i in range(nfetch)]
        with RssSampler(pids) as sampler:
            wall, runs = run_clis(argvs, transfer_timeout(src.size, nfetch), logdir, "fetch")
        after = {name: cpu_seconds(pid) for name, pid in pids.items()}
        status = {name: proc_status(pid) for name, pid in pids.items()}
    delta = {name: after[name] - before[name] for name in pids}
    res.cpu = {
        "seeder": delta["seeder"],
        "fetchers": sum(delta[n] for n in fnames),
        "fetch_cli": sum(r.cpu for r in runs),
        "bootstrap": delta["boot"],
    }
    res.rss = {
        "seeder": status["seeder"].get("VmHWM", 0),
        "fetcher_max": max(status[n].get("VmHWM", 0) for n in fnames),
        "fetch_cli_max": max(r.maxrss for r in runs),
    }
    res.rss_anon_peak = {"seeder": sampler.peak["seeder"],
                         "fetcher_max": max(sampler.peak[n] for n in fnames)}
    for r in runs:
        info = r.json() or {}
        peers = info.get("peers") or {}
        total = sum(v for v in peers.values() if isinstance(v, int)) if isinstance(
            peers, dict) else 0
        res.fetchers.append({"rc": r.rc, "wall": round(r.wall, 4),
                             "elapsed_in_node": info.get("elapsed"),
                             "peers": len(peers) if isinstance(peers, dict | list) else None,
                             "bytes_from_peers": total,
                             "stderr": r.stderr.strip()[-500:] if r.rc else ""})
    failed = [r for r in runs if r.rc != 0]
    if failed:
        res.error = f"{len(failed)} fetch(es) failed: {failed[0].stderr.strip()[-300:]}"
        return res
    ok = verify(outs, src.sha256)
    res.wall = wall
    res.ok = all(ok)
    if not res.ok:
        res.error = f"SHA-256 mismatch on {ok.count(False)} output(s)"
    return res


class LtPeer:
    """One ``bench/lt_peer.py`` process and its JSON-line events."""

    def __init__(self, name: str, role: str, torrent: Path, save_path: Path, logdir: Path,
                 budget: float, settings: list[str]) -> None:
        save_path.mkdir(parents=True, exist_ok=True)
        argv = [PY, str(LT_PEER), "--role", role, "--torrent", str(torrent), "--save-path",
                str(save_path), "--budget", str(int(budget))]
        for s in settings:
            argv += ["--set", s]
        self.name = name
        self.proc = Proc(name, argv, logdir, pipes=True)
        self.events: queue.Queue[tuple[float, dict[str, Any] | None]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        stream = self.proc.p.stdout
        assert stream is not None
        with contextlib.suppress(OSError, ValueError):
            for line in stream:
                t = time.perf_counter()
                with contextlib.suppress(json.JSONDecodeError):
                    self.events.put((t, json.loads(line)))
        self.events.put((time.perf_counter(), None))

    def send(self, obj: dict[str, Any]) -> None:
        stdin = self.proc.p.stdin
        if stdin is None:
            return
        with contextlib.suppress(OSError, ValueError):
            stdin.write(json.dumps(obj) + "\n")
            stdin.flush()

    def expect(self, event: str, deadline: float) -> tuple[float, dict[str, Any]]:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"libtorrent {self.name}: no {event!r} in time")
            try:
                t, msg = self.events.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if msg is None:
                raise RuntimeError(f"libtorrent {self.name} exited "
                                   f"({self.proc.p.poll()}):\n{self.proc.tail()}")
            if msg.get("event") == "error":
                raise RuntimeError(f"libtorrent {self.name}: {msg.get('message')}")
            if msg.get("event") == event:
                return t, msg


def run_libtorrent(src: Source, nfetch: int, rundir: Path, run_no: int,
                   settings: list[str]) -> RunResult:
    assert src.torrent is not None
    res = RunResult("libtorrent", run_no)
    logdir = rundir / "logs"
    timeout = transfer_timeout(src.size, nfetch)
    budget = timeout + 120
    peers: list[LtPeer] = []
    try:
        seed = LtPeer("seeder", "seed", src.torrent, src.path.parent, logdir, budget, settings)
        peers.append(seed)
        leeches = [LtPeer(f"fetcher{i}", "leech", src.torrent, rundir / "out" / f"f{i}",
                          logdir, budget, settings) for i in range(nfetch)]
        peers += leeches
        _, ready = seed.expect("ready", time.monotonic() + timeout)
        res.extra["seed_check_seconds"] = ready.get("check_seconds")
        res.extra["settings"] = ready.get("settings")
        ports = {seed.name: int(ready["port"])}
        deadline = time.monotonic() + NODE_START_TIMEOUT
        for lp in leeches:
            ports[lp.name] = int(lp.expect("ready", deadline)[1]["port"])
        pids = {p.name: p.pid for p in peers}
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        with RssSampler(pids) as sampler:
            t0 = time.perf_counter()
            for lp in leeches:
                # the seeder first, then every other leecher: all direct connections
                targets = [ports["seeder"]] + [ports[o.name] for o in leeches if o is not lp]
                lp.send({"cmd": "go", "peers": [["127.0.0.1", p] for p in targets]})
            deadline = time.monotonic() + timeout
            done = [lp.expect("done", deadline) for lp in leeches]
        wall = max(t for t, _ in done) - t0
        after = {name: cpu_seconds(pid) for name, pid in pids.items()}
        status = {name: proc_status(pid) for name, pid in pids.items()}
        for lp in peers:
            lp.send({"cmd": "quit"})
        byes: dict[str, dict[str, Any]] = {}
        for lp in peers:
            with contextlib.suppress(TimeoutError, RuntimeError):
                byes[lp.name] = lp.expect("bye", time.monotonic() + 10)[1]
        for lp in peers:  # let them exit on their own before anything is signalled
            with contextlib.suppress(subprocess.TimeoutExpired):
                lp.proc.p.wait(10)
    finally:
        stop_all([p.proc for p in peers])
    fnames = [lp.name for lp in leeches]
    delta = {name: after[name] - before[name] for name in pids}
    res.cpu = {"seeder": delta["seeder"], "fetchers": sum(delta[n] for n in fnames)}
    res.rss = {"seeder": status["seeder"].get("VmHWM", 0),
               "fetcher_max": max(status[n].get("VmHWM", 0) for n in fnames)}
    res.rss_anon_peak = {"seeder": sampler.peak["seeder"],
                         "fetcher_max": max(sampler.peak[n] for n in fnames)}
    for (t, msg), lp in zip(done, leeches, strict=True):
        bye = byes.get(lp.name, {})
        res.fetchers.append({"wall": round(t - t0, 4), "elapsed_in_peer": msg.get("elapsed"),
                             "finished_elapsed": msg.get("finished_elapsed"),
                             "flush_seconds": msg.get("flush_seconds"),
                             "payload_down": msg.get("payload_down"),
                             "payload_up_total": bye.get("payload_up"),
                             "redundant": msg.get("redundant"), "failed": msg.get("failed")})
    res.extra["seeder_payload_up"] = byes.get("seeder", {}).get("payload_up")
    outs = [rundir / "out" / f"f{i}" / src.path.name for i in range(nfetch)]
    ok = verify(outs, src.sha256)
    res.wall = wall
    res.ok = all(ok)
    if not res.ok:
        res.error = f"SHA-256 mismatch on {ok.count(False)} output(s)"
    return res


def limits_in_child(work: Path, tcp_bytes: int, write_bytes: int) -> dict[str, Any]:
    """``bench/limits.py`` in its own process, so this one stays small.

    (A child's ru_maxrss starts at the RSS of the process that spawned it, so a
    big orchestrator would inflate the fetch CLI's figure.)
    """
    log("limits: loopback TCP, SHA-256, new-file writes ...")
    run = run_cli([PY, str(BENCH / "limits.py"), "--tcp-bytes", str(tcp_bytes),
                   "--write-bytes", str(write_bytes), "--workdir", str(work)], 900,
                  work / "logs", "limits")
    try:
        res: dict[str, Any] = json.loads(run.stdout)
    except json.JSONDecodeError as err:
        raise RuntimeError(f"bench/limits.py failed: {run.stderr.strip()[-1000:]}") from err
    return res


# -- the matrix -------------------------------------------------------------------------
def summarize(runs: list[RunResult], size: int, nfetch: int) -> dict[str, Any]:
    good = [r for r in runs if r.ok]
    if not good:
        return {"ok_runs": 0, "runs": len(runs)}
    walls = [r.wall for r in good]
    med = statistics.median(walls)
    delivered_gib = size * nfetch / GIB
    cpu_gib = [r.cpu_total / delivered_gib for r in good]
    roles = sorted({k for r in good for k in r.cpu})
    return {
        "ok_runs": len(good),
        "runs": len(runs),
        "wall_median": round(med, 4),
        "wall_min": round(min(walls), 4),
        "wall_max": round(max(walls), 4),
        "mb_per_s": round(size * nfetch / med / 1e6, 1),
        "cpu_s_per_gib": round(statistics.median(cpu_gib), 3),
        "cpu_s_per_gib_by_role": {k: round(statistics.median(
            r.cpu.get(k, 0.0) / delivered_gib for r in good), 3) for k in roles},
        "rss_seeder_max": max(r.rss.get("seeder", 0) for r in good),
        "rss_fetcher_max": max(r.rss.get("fetcher_max", 0) for r in good),
        "rss_cli_max": max(r.rss.get("fetch_cli_max", 0) for r in good),
        "rss_anon_seeder_max": max(r.rss_anon_peak.get("seeder", 0) for r in good),
        "rss_anon_fetcher_max": max(r.rss_anon_peak.get("fetcher_max", 0) for r in good),
    }


def run_matrix(args: argparse.Namespace, sources: dict[int, Source], work: Path,
               results: list[dict[str, Any]]) -> None:
    for scen in args.scenarios:
        nfetch = int(scen.split("x")[1])
        for size in args.sizes:
            src = sources[size]
            cell: dict[str, Any] = {"scenario": scen, "fetchers": nfetch, "size": size,
                                    "runs": {"dhtshare": [], "libtorrent": []}}
            results.append(cell)
            for run_no in range(args.runs):
                for tool in ("dhtshare", "libtorrent"):
                    rundir = work / "runs" / f"{scen}-{fmt_size(size).replace(' ', '')}" \
                        / f"{tool}-{run_no}"
                    rundir.mkdir(parents=True, exist_ok=True)
                    t = time.perf_counter()
                    try:
                        if tool == "dhtshare":
                            r = run_dhtshare(src, nfetch, rundir, run_no)
                        else:
                            r = run_libtorrent(src, nfetch, rundir, run_no, args.lt_set)
                    except Exception as err:  # one failed run must not stop the matrix
                        r = RunResult(tool, run_no, error=f"{type(err).__name__}: {err}"[-2000:])
                    cell["runs"][tool].append(r)
                    status = (f"{r.wall:.3f} s, CPU {r.cpu_total:.2f} s" if r.ok
                              else f"FAILED: {r.error.splitlines()[0] if r.error else '?'}")
                    log(f"{scen} {fmt_size(size)} {tool} run {run_no + 1}/{args.runs}: {status}"
                        f" ({time.perf_counter() - t:.1f} s with setup)")
                    if r.ok or not args.keep_failed:
                        shutil.rmtree(rundir, ignore_errors=True)
            for tool in ("dhtshare", "libtorrent"):
                cell.setdefault("summary", {})[tool] = summarize(cell["runs"][tool], size,
                                                                 nfetch)


# -- latency and publish ----------------------------------------------------------------
def run_latency_and_publish(args: argparse.Namespace, work: Path,
                            big: Source | None) -> dict[str, Any]:
    root = work / "latency"
    logdir = root / "logs"
    files = []
    for i in range(args.latency_files):
        p = root / "files" / f"small-{i}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(MIB))
        files.append(p)
    out: dict[str, Any] = {}
    # what any CLI call pays before dhtshare does anything
    floor = {}
    for label, code in (("python -c pass", "pass"),
                        ("python -c 'import dhtshare.cli'", "import dhtshare.cli")):
        times = [run_cli([PY, "-c", code], 30, logdir, "floor").wall for _ in range(5)]
        floor[label] = round(statistics.median(times), 4)
    out["cli_floor_seconds"] = floor
    with dht_network(root, ["node2", "node3", "node4", "node5"]) as nodes:
        hashes = [publish(nodes["node2"], p, logdir, f"pub-small-{i}")[0]
                  for i, p in enumerate(files)]
        fetches: list[dict[str, Any]] = []
        for i, h in enumerate(hashes):
            target = root / "out" / f"small-{i}.bin"
            target.parent.mkdir(parents=True, exist_ok=True)
            run = run_cli(dhtshare_argv("fetch", h, "-o", str(target), "--data-dir",
                                        str(nodes["node5"].data_dir), "--json"),
                          30, logdir, f"fetch-small-{i}")
            info = run.json() or {}
            okv = run.rc == 0 and verify([target], hashlib.sha256(
                files[i].read_bytes()).hexdigest())[0]
            fetches.append({"wall": round(run.wall, 4), "ok": okv, "rc": run.rc,
                            "elapsed_in_node": info.get("elapsed"),
                            "cpu_cli": round(run.cpu, 4)})
        walls = [f["wall"] for f in fetches if f["ok"]]
        out["fetch_1mib"] = {} if not fetches else {
            "network_nodes": len(nodes), "published_on": "node2", "fetched_on": "node5",
            "runs": fetches, "ok": len(walls),
            "wall_median": round(statistics.median(walls), 4) if walls else None,
            "wall_min": min(walls) if walls else None,
            "wall_max": max(walls) if walls else None,
            "first": fetches[0]["wall"] if fetches else None,
        }
        if fetches:
            f1 = out["fetch_1mib"]
            log(f"latency: 1 MiB fetch through the CLI, median {f1['wall_median']} s "
                f"(min {f1['wall_min']}, max {f1['wall_max']})")
        if big is not None:
            out["publish"] = time_publish(big, nodes, logdir, args.publish_replicas)
    return out


def time_publish(big: Source, nodes: dict[str, DhtNode], logdir: Path,
                 with_replicas: bool) -> dict[str, Any]:
    hash_file(big.path)  # warm the page cache: every contender reads cached data
    hashlib_s = min(hash_file(big.path)[1] for _ in range(2))
    sha256sum_s: float | None = None
    if shutil.which("sha256sum"):
        sha256sum_s = min(run_cli(["sha256sum", str(big.path)], 300, logdir, "sha256sum").wall
                          for _ in range(2))
    res: dict[str, Any] = {"size": big.size, "hashlib_1core_seconds": round(hashlib_s, 4),
                           "sha256sum_seconds": round(sha256sum_s, 4) if sha256sum_s else None}
    _, run, info = publish(nodes["node3"], big.path, logdir, "publish-big", replicas=0)
    res["publish_replicas0_seconds"] = round(run.wall, 4)
    res["publish_replicas0_hash_seconds_in_node"] = info.get("hash_seconds")
    res["ratio_vs_hashlib"] = round(run.wall / hashlib_s, 3)
    log(f"publish {fmt_size(big.size)} (--replicas 0): {run.wall:.2f} s; hashlib SHA-256 "
        f"{hashlib_s:.2f} s; ratio {res['ratio_vs_hashlib']}")
    if with_replicas:
        _, run2, info2 = publish(nodes["node4"], big.path, logdir, "publish-big-default",
                                 replicas=None)
        res["publish_default_seconds"] = round(run2.wall, 4)
        res["publish_default_replicas"] = info2.get("replicas")
        log(f"publish {fmt_size(big.size)} (default replicas): {run2.wall:.2f} s")
    return res


# -- report -----------------------------------------------------------------------------
def mb(n: int | None) -> str:
    return "-" if not n else f"{n / 1e6:.0f}"


def ratio(a: float | None, b: float | None) -> float | None:
    if not a or not b:
        return None
    return a / b


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(name: str, value: float | None, limit: str, ok: bool | None) -> None:
        out.append({"target": name, "value": None if value is None else round(value, 3),
                    "limit": limit, "met": ok})

    cells = {(c["scenario"], c["size"]): c for c in report.get("transfer", [])}

    def sums(scen: str, size: int) -> tuple[dict[str, Any], dict[str, Any]] | None:
        c = cells.get((scen, size))
        if c is None:
            return None
        d, lt_ = c["summary"]["dhtshare"], c["summary"]["libtorrent"]
        if not d.get("ok_runs") or not lt_.get("ok_runs"):
            return None
        return d, lt_

    s = sums("1x1", 512 * MIB)
    if s:
        r = s[0]["mb_per_s"] / s[1]["mb_per_s"]
        add("1→1 512 MiB throughput, dhtshare / libtorrent", r, ">= 2", r >= 2)
    s = sums("1x4", 512 * MIB)
    if s:
        r = s[0]["wall_median"] / s[1]["wall_median"]
        add("1→4 512 MiB wall, dhtshare / libtorrent", r, "<= 0.6", r <= 0.6)
    for (scen, size) in sorted(cells):
        s = sums(scen, size)
        if s:
            r = s[0]["cpu_s_per_gib"] / s[1]["cpu_s_per_gib"]
            add(f"{scen} {fmt_size(size)} CPU s/GiB, dhtshare / libtorrent", r, "<= 0.6",
                r <= 0.6)
    lat = report.get("latency", {}).get("fetch_1mib", {})
    if lat.get("wall_median") is not None:
        add("1 MiB fetch via CLI on a running 5-node network, median s", lat["wall_median"],
            "< 0.3", lat["wall_median"] < 0.3)
        add("1 MiB fetch via CLI, slowest of the runs, s", lat["wall_max"], "< 0.3",
            lat["wall_max"] < 0.3)
    pub = report.get("latency", {}).get("publish")
    if pub:
        add(f"publish {fmt_size(pub['size'])} / hashlib SHA-256 of it", pub["ratio_vs_hashlib"],
            "<= 1.3", pub["ratio_vs_hashlib"] <= 1.3)
    by_scen: dict[str, dict[int, int]] = {}
    for c in report.get("transfer", []):
        v = c["summary"]["dhtshare"].get("rss_fetcher_max")
        if c["summary"]["dhtshare"].get("ok_runs") and v:
            by_scen.setdefault(c["scenario"], {})[c["size"]] = v
    for scen, rss in sorted(by_scen.items()):
        peak = max(rss.values()) / 1e6
        add(f"{scen} dhtshare fetcher peak RSS, MB (max over sizes)", peak, "< 100", peak < 100)
        if len(rss) > 1:
            lo, hi = rss[min(rss)], rss[max(rss)]
            spread = hi / lo
            add(f"{scen} dhtshare fetcher peak RSS, {fmt_size(max(rss))} / {fmt_size(min(rss))}",
                spread, "flat (<= 1.2)", spread <= 1.2)
    return out


def markdown(report: dict[str, Any]) -> str:
    cfg = report["config"]
    lines = [
        "## Transfer: dhtshare vs libtorrent",
        "",
        f"{report['started']}; {cfg['runs']} runs of each tool per row, alternating; "
        f"127.0.0.1 only; 1 MiB chunks / pieces; libtorrent {report['versions']['libtorrent']} "
        f"({cfg['lt_torrent']} torrent); dhtshare {report['versions']['dhtshare']}; "
        f"{os.cpu_count()} CPUs.",
        "",
        "Command: `python bench/transfer.py " + " ".join(report["argv"]) + "`",
        "",
        "| scenario | size | tool | wall median s | min-max s | MB/s | CPU s/GiB | "
        "peak RSS MB seeder / fetcher max | fetcher anon peak MB | dhtshare / libtorrent |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in report.get("transfer", []):
        d, lt_ = c["summary"].get("dhtshare", {}), c["summary"].get("libtorrent", {})
        for tool, s in (("dhtshare", d), ("libtorrent", lt_)):
            if not s.get("ok_runs"):
                lines.append(f"| 1→{c['fetchers']} | {fmt_size(c['size'])} | {tool} | "
                             f"failed ({s.get('runs', 0)} runs) | | | | | | |")
                continue
            rel = ""
            if tool == "dhtshare" and lt_.get("ok_runs"):
                w = ratio(s["wall_median"], lt_["wall_median"])
                cp = ratio(s["cpu_s_per_gib"], lt_["cpu_s_per_gib"])
                rel = f"wall x{w:.2f}, CPU x{cp:.2f}" if w and cp else ""
            fails = s["runs"] - s["ok_runs"]
            note = f" ({fails} failed)" if fails else ""
            lines.append(
                f"| 1→{c['fetchers']} | {fmt_size(c['size'])} | {tool}{note} | "
                f"{s['wall_median']:.3f} | {s['wall_min']:.3f}-{s['wall_max']:.3f} | "
                f"{s['mb_per_s']:.0f} | {s['cpu_s_per_gib']:.2f} | "
                f"{mb(s['rss_seeder_max'])} / {mb(s['rss_fetcher_max'])}"
                + (f" (CLI {mb(s['rss_cli_max'])})" if s.get("rss_cli_max") else "")
                + f" | {mb(s['rss_anon_fetcher_max'])} | {rel} |")
    lines += [
        "",
        "MB/s = size x fetchers / median wall (10^6 bytes).  CPU s/GiB = utime+stime of "
        "every process of the run (seeder, fetchers, dhtshare's bootstrap node and fetch "
        "CLI processes) over GiB delivered, median of runs.  Peak RSS = VmHWM (max over "
        "runs); libtorrent's includes the pages of the files it maps, hence the anonymous "
        "peak (RssAnon sampled at 10 Hz).  CLI: ru_maxrss of the `dhtshare fetch` processes.",
        "",
    ]
    lim = report.get("limits", {})
    if "tcp_loopback" in lim:
        lines += [
            "## Machine limits",
            "",
            "| what | value |",
            "|---|---:|",
            f"| loopback TCP, one Python sender → receiver, 4 MiB buffers | "
            f"{lim['tcp_loopback']['mb_per_s']:.0f} MB/s |",
            f"| SHA-256, one core, 1 MiB blocks | {lim['sha256_1core']['mb_per_s']:.0f} MB/s |",
            f"| SHA-256, all {lim['sha256_all_cores']['threads']} cores | "
            f"{lim['sha256_all_cores']['mb_per_s']:.0f} MB/s |",
            f"| SHA-1, one core (v1 torrents) | {lim['sha1_1core']['mb_per_s']:.0f} MB/s |",
            f"| new-file write, {fmt_size(lim['file_write']['bytes'])} in 1 MiB writes | "
            f"{lim['file_write']['mb_per_s']:.0f} MB/s |",
            f"| fsync of that file | {lim['file_write']['fsync_seconds']:.3f} s |",
            "",
        ]
    lat = report.get("latency", {})
    if lat:
        f1 = lat.get("fetch_1mib", {})
        lines += ["## Small fetch and publish", "", "| what | value |", "|---|---:|"]
        if f1:
            lines.append(f"| `dhtshare fetch` of a 1 MiB file, {f1['ok']} files, through the "
                         f"CLI on a running 5-node network: median (min-max) | "
                         f"{f1['wall_median']} s ({f1['wall_min']}-{f1['wall_max']}) |")
        for label, v in lat.get("cli_floor_seconds", {}).items():
            lines.append(f"| `{label}` (median of 5) | {v} s |")
        pub = lat.get("publish")
        if pub:
            lines.append(f"| `dhtshare publish --replicas 0` of {fmt_size(pub['size'])} via "
                         f"a running node | {pub['publish_replicas0_seconds']} s |")
            lines.append(f"| hashlib SHA-256 of it, one core, cached | "
                         f"{pub['hashlib_1core_seconds']} s |")
            if pub.get("sha256sum_seconds"):
                lines.append(f"| `sha256sum` of it | {pub['sha256sum_seconds']} s |")
            if pub.get("publish_default_seconds"):
                rep = pub.get("publish_default_replicas") or {}
                lines.append(f"| `dhtshare publish` with the default replicas (copies placed:"
                             f" {rep.get('reached')} of {rep.get('requested')}) | "
                             f"{pub['publish_default_seconds']} s |")
        lines.append("")
    tg = report.get("targets", [])
    if tg:
        lines += ["## Targets", "", "| target | measured | wanted | met |", "|---|---:|---|---|"]
        for t in tg:
            met = {True: "yes", False: "**no**", None: "-"}[t["met"]]
            lines.append(f"| {t['target']} | {t['value']} | {t['limit']} | {met} |")
        lines.append("")
    return "\n".join(lines)


def to_jsonable(obj: Any) -> Any:
    if isinstance(obj, RunResult):
        d = dict(obj.__dict__)
        d["cpu_total"] = obj.cpu_total
        return to_jsonable(d)
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return None if obj != obj else round(obj, 6)
    return obj


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    try:
        out["dhtshare"] = version("dhtshare")
    except Exception:
        out["dhtshare"] = "?"
    try:
        rev = subprocess.run(["git", "-C", str(BENCH.parent), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=False)
        dirty = subprocess.run(["git", "-C", str(BENCH.parent), "status", "--porcelain",
                                "--untracked-files=no", "dhtshare"], capture_output=True,
                               text=True, timeout=10, check=False)
        if rev.returncode == 0:
            out["dhtshare"] += f" ({rev.stdout.strip()}{'+dirty' if dirty.stdout.strip() else ''})"
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        out["libtorrent"] = version("libtorrent")
    except Exception:
        out["libtorrent"] = "?"
    return out


# -- main -------------------------------------------------------------------------------
def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="64M,512M,1G",
                    help="comma-separated file sizes (K/M/G suffixes, binary)")
    ap.add_argument("--runs", type=int, default=5, help="runs of each tool per scenario/size")
    ap.add_argument("--scenarios", default="1x1,1x4", help="comma-separated 1xN")
    ap.add_argument("--out", type=Path, default=BENCH / "results")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()),
                    help="where the temporary files go (needs ~ size x (fetchers + 2))")
    ap.add_argument("--lt-torrent", choices=("v1", "v2", "hybrid"), default="v1",
                    help="torrent format for libtorrent (v1: SHA-1 per 1 MiB piece)")
    ap.add_argument("--lt-set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra libtorrent setting for every peer (repeatable)")
    ap.add_argument("--latency-files", type=int, default=10,
                    help="1 MiB files fetched once each for the latency test (0: skip)")
    ap.add_argument("--publish-size", type=lambda t: parse_size(t, allow_zero=True),
                    default=GIB,
                    help="file size for the publish-vs-hash test (reuses a source of that "
                         "size); 0 skips it")
    ap.add_argument("--no-publish-replicas", dest="publish_replicas", action="store_false",
                    help="skip timing a publish with the default replicas")
    ap.add_argument("--tcp-bytes", type=parse_size, default=2 * GIB)
    ap.add_argument("--write-bytes", type=parse_size, default=512 * MIB)
    ap.add_argument("--skip-limits", action="store_true")
    ap.add_argument("--render", type=Path, metavar="JSON",
                    help="only rebuild <out>/latest.md from a result file and print it")
    ap.add_argument("--keep-failed", action="store_true",
                    help="keep the directories (and logs) of failed runs in the workdir")
    args = ap.parse_args(argv)
    args.sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for s in args.scenarios:
        if not re.fullmatch(r"1x[1-9][0-9]?", s):
            ap.error(f"scenario {s!r}: want 1xN, N from 1 to 99")
    if args.runs < 1 or args.runs > 100:
        ap.error("--runs must be 1 to 100")
    if not 0 <= args.latency_files <= 100:
        ap.error("--latency-files must be 0 to 100")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.render is not None:
        report = json.loads(args.render.read_text())
        report["targets"] = targets(report)  # derived numbers: kept in step with this code
        args.render.write_text(json.dumps(report, indent=1) + "\n")
        md = markdown(report)
        if report.get("complete"):
            (args.out / "latest.md").write_text(md + "\n")
        print(md)
        return 0
    if importlib.util.find_spec("libtorrent") is None:
        print("bench/transfer.py needs libtorrent (PyPI 'libtorrent'): pip install '.[bench]'",
              file=sys.stderr)
        return 2

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    args.out.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)
    work = Path(tempfile.mkdtemp(prefix="dhtshare-bench-", dir=args.workdir))
    report: dict[str, Any] = {
        "started": started.strftime("%Y-%m-%d %H:%M:%SZ"),
        "argv": argv,
        "config": {"sizes": args.sizes, "runs": args.runs, "scenarios": args.scenarios,
                   "lt_torrent": args.lt_torrent, "lt_set": args.lt_set,
                   "chunk_size": MIB, "workdir": str(work)},
        "versions": versions(),
        "complete": False,
    }
    results: list[dict[str, Any]] = []
    report["transfer"] = results
    t_start = time.perf_counter()
    rc = 1
    try:
        if args.skip_limits:
            report["limits"] = {"machine": {"cpus": os.cpu_count(), "cpu": "?"}}
        else:
            report["limits"] = limits_in_child(work, args.tcp_bytes, args.write_bytes)
        sources: dict[int, Source] = {}
        wanted = sorted(set(args.sizes) | ({args.publish_size} if args.publish_size else set()))
        for size in wanted:
            t = time.perf_counter()
            src = generate(work / f"file-{fmt_size(size).replace(' ', '')}.bin", size)
            sources[size] = src
            if size in args.sizes:
                make_torrent(src, args.lt_torrent, work / "logs")
            log(f"generated {fmt_size(size)} in {time.perf_counter() - t:.1f} s "
                f"(torrent: {src.torrent_seconds:.2f} s)")
        report["sources"] = [{"size": s.size, "sha256": s.sha256,
                              "lt_create_torrent_seconds": round(s.torrent_seconds, 4)}
                             for s in sources.values()]
        run_matrix(args, sources, work, results)
        if args.latency_files or args.publish_size:
            big = sources.get(args.publish_size) if args.publish_size else None
            report["latency"] = run_latency_and_publish(args, work, big)
        report["complete"] = True
        rc = 0
    except KeyboardInterrupt:
        log("interrupted: stopping everything")
        rc = 130
    finally:
        stop_all()
        report["seconds"] = round(time.perf_counter() - t_start, 1)
        report["orchestrator_vmhwm"] = proc_status(os.getpid()).get("VmHWM")
        lt_settings = [r.extra.get("settings") for c in results
                       for r in c["runs"]["libtorrent"] if r.extra.get("settings")]
        report["lt_settings_changed_from_default"] = lt_settings[0] if lt_settings else None
        report["targets"] = targets(report) if report.get("limits") else []
        stamp = started.strftime("%Y%m%dT%H%M%SZ")
        json_path = args.out / f"transfer-{stamp}.json"
        json_path.write_text(json.dumps(to_jsonable(report), indent=1) + "\n")
        md = markdown(report)
        if report["complete"]:
            (args.out / "latest.md").write_text(md + "\n")
        print(md)
        log(f"wrote {json_path} ({report['seconds']} s in all)")
        shutil.rmtree(work, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
