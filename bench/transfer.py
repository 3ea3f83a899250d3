"""Transfer benchmark: dhtshare against libtorrent on 127.0.0.1, same files, alternating.

    pip install '.[bench]'
    python bench/transfer.py [--sizes 64M,512M,1G] [--runs 5]
                             [--scenarios 1x1,1x4,seeder,churn]
                             [--out bench/results] [--workdir /tmp]

For every scenario (``1xN``: one provider, N fetchers) and size, it runs
dhtshare, plaintext dhtshare and libtorrent interleaved ``--runs`` times each
on the same generated random file (each round runs every tool once, the order
rotated by one each round: d, p, l, then p, l, d, ...), with fresh processes
and directories per run:

* dhtshare, only through its CLI: ``dhtshare bootstrap`` + a seeder
  ``dhtshare node`` + N fetcher nodes; ``dhtshare publish FILE --replicas 0``
  on the seeder before the clock (no copies placed on the fetchers); then the
  clock starts and N ``dhtshare fetch HASH -o OUT --json`` run at once.  The
  wall time ends when the last fetch process exits (each verified every chunk).
  Peer links are encrypted and authenticated, dhtshare's default.
* ``dhtshare-plaintext`` ("dhtshare (plaintext links, bench only)"): the same
  with ``DHTSHARE_BENCH_PLAINTEXT_LINKS=1`` in every dhtshare process of the
  run, dhtshare's benchmarking switch for plaintext links, to show what the
  encryption costs; ``--no-plaintext`` leaves it out.  Each dhtshare run's node
  logs are checked for the mode it asked for.  Every other dhtshare network of
  the bench (scenarios seeder and churn, latency, publish) is encrypted.
* libtorrent (``bench/lt_peer.py``): a seeder that has checked every piece,
  and N leecher processes whose sessions are already listening; the clock
  starts when they are told to add the torrent (with the seeder and the other
  leechers as direct peers) and ends when the last one reports that every
  piece passed its hash check and was written to the file.  In 1xN the
  leechers trade with each other and keep serving until all are done.

Two more scenarios keep the network running between fetches (see the
``scenario seeder`` and ``scenario churn`` sections below):

* ``seeder``: one long-running seeder of each tool; ``--seeder-runs`` times, a
  fresh fetcher starts, fetches (dhtshare: an 8 MiB file, then the big one),
  and leaves (dhtshare: SIGTERM, so it withdraws and says goodbye).  Shows
  whether a network that has seen nodes leave gets slower.
* ``churn``: a 20-node dhtshare network loses 30 % of its nodes (half politely,
  half killed), 6 new ones join, and a just-started node fetches a 1 MiB file
  and the big one; libtorrent's counterpart is a fresh leecher handed the
  seeder plus 6 dead addresses.

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
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
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

#: dhtshare's benchmarking switch for plaintext peer links (dhtshare/config.py):
#: set to 1 for every process of a network (both ends of a link must agree).
PLAINTEXT_ENV = "DHTSHARE_BENCH_PLAINTEXT_LINKS"
#: What a dhtshare node logs on start when its peer links are plaintext.
PLAINTEXT_WARNING = "peer links are PLAINTEXT"

#: The tools of the 1xN matrix, in their order in the first round (JSON keys).
DHT = "dhtshare"
DHT_PLAIN = "dhtshare-plaintext"
LT = "libtorrent"
MATRIX_TOOLS = (DHT, DHT_PLAIN, LT)
#: How the tables name them.
TOOL_LABELS = {DHT: "dhtshare", DHT_PLAIN: "dhtshare (plaintext links, bench only)",
               LT: "libtorrent"}


def log(msg: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def child_env(plaintext: bool | None = None) -> dict[str, str]:
    """This process's environment for a child, without its dhtshare peers and data dir.

    ``plaintext``: True sets :data:`PLAINTEXT_ENV` (dhtshare's benchmarking switch
    for plaintext peer links), False removes it, None leaves it as inherited
    (:func:`main` removes it from this process, so that means encrypted here).
    """
    env = dict(os.environ)
    for key in ("DHTSHARE_PEERS", "DHTSHARE_DATA_DIR"):
        env.pop(key, None)
    if plaintext:
        env[PLAINTEXT_ENV] = "1"
    elif plaintext is not None:
        env.pop(PLAINTEXT_ENV, None)
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

    def __init__(self, name: str, argv: list[str], logdir: Path, *, pipes: bool = False,
                 plaintext: bool | None = None) -> None:
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
                                      stderr=err, start_new_session=True,
                                      env=child_env(plaintext), text=True, bufsize=1)
        else:
            out = open(self.out_path, "wb")  # noqa: SIM115 - closed in stop()
            self._files.append(out)
            self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                      start_new_session=True, env=child_env(plaintext))
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


def run_clis(argvs: list[list[str]], timeout: float, logdir: Path, tag: str, *,
             plaintext: bool | None = None) -> tuple[float, list[CliRun]]:
    """Start every argv at once; wait for all (bounded).  Returns (wall, runs).

    ``plaintext``: see :func:`child_env`.

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
                                          env=child_env(plaintext)))
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


def run_cli(argv: list[str], timeout: float, logdir: Path, tag: str, *,
            plaintext: bool | None = None) -> CliRun:
    _, runs = run_clis([argv], timeout, logdir, tag, plaintext=plaintext)
    return runs[0]


def dhtshare_argv(*args: str) -> list[str]:
    return [PY, "-m", "dhtshare", *args]


# -- dhtshare network -------------------------------------------------------------------
READY_RE = re.compile(r"listening on 127\.0\.0\.1:(\d+)")


class DhtNode:
    def __init__(self, name: str, data_dir: Path, logdir: Path, boot_port: int | None, *,
                 plaintext: bool | None = None) -> None:
        self.name = name
        self.data_dir = data_dir
        args = (["bootstrap"] if boot_port is None
                else ["node", "--peer", f"127.0.0.1:{boot_port}"])
        argv = dhtshare_argv(*args, "--host", "127.0.0.1", "--port", "0",
                             "--data-dir", str(data_dir))
        self.proc = Proc(name, argv, logdir, plaintext=plaintext)
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
def dht_network(root: Path, names: list[str], *,
                plaintext: bool | None = None) -> Iterator[dict[str, DhtNode]]:
    """A bootstrap node plus one ``dhtshare node`` per name, all on 127.0.0.1.

    ``plaintext``: see :func:`child_env` (the same for every node of the network).
    """
    logdir = root / "logs"
    nodes: dict[str, DhtNode] = {}
    try:
        boot = DhtNode("boot", root / "boot", logdir, None, plaintext=plaintext)
        nodes["boot"] = boot
        boot.wait_ready(time.monotonic() + NODE_START_TIMEOUT)
        for name in names:
            nodes[name] = DhtNode(name, root / name, logdir, boot.port, plaintext=plaintext)
        deadline = time.monotonic() + NODE_START_TIMEOUT
        for node in nodes.values():
            node.wait_ready(deadline)
        yield nodes
    finally:
        stop_all([n.proc for n in nodes.values()])


def publish(node: DhtNode, path: Path, logdir: Path, tag: str, replicas: int | None = 0,
            timeout: float = 600.0, *,
            plaintext: bool | None = None) -> tuple[str, CliRun, dict[str, Any]]:
    argv = dhtshare_argv("publish", str(path), "--data-dir", str(node.data_dir), "--json")
    if replicas is not None:
        argv += ["--replicas", str(replicas)]
    run = run_cli(argv, timeout, logdir, tag, plaintext=plaintext)
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


def fetch_record(r: CliRun) -> dict[str, Any]:
    """What one ``dhtshare fetch --json`` said about itself, for the JSON report."""
    info = r.json() or {}
    peers = info.get("peers") or {}
    total = sum(v for v in peers.values() if isinstance(v, int)) if isinstance(
        peers, dict) else 0
    unreachable = info.get("unreachable")
    return {"rc": r.rc, "wall": round(r.wall, 4), "cpu_cli": round(r.cpu, 4),
            "elapsed_in_node": info.get("elapsed"),
            "peers": len(peers) if isinstance(peers, dict | list) else None,
            "bytes_from_peers": total,
            "unreachable": len(unreachable) if isinstance(unreachable, list) else None,
            "maxrss": r.maxrss, "stderr": r.stderr.strip()[-500:] if r.rc else ""}


def plaintext_nodes(logdir: Path, names: list[str]) -> list[str]:
    """The nodes whose stderr says that their peer links are plaintext."""
    out = []
    for name in names:
        try:
            text = (logdir / f"{name}.err").read_text(errors="replace")
        except OSError:
            continue
        if PLAINTEXT_WARNING in text:
            out.append(name)
    return out


def run_dhtshare(src: Source, nfetch: int, rundir: Path, run_no: int,
                 plaintext: bool = False) -> RunResult:
    """One dhtshare run of a 1xN cell; ``plaintext``: every process with :data:`PLAINTEXT_ENV`.

    The links each node used are checked from its log afterwards: a run whose
    nodes were not all as asked (encrypted or plaintext) fails.
    """
    res = RunResult(DHT_PLAIN if plaintext else DHT, run_no)
    res.extra["links"] = "plaintext" if plaintext else "encrypted"
    logdir = rundir / "logs"
    fnames = [f"fetcher{i}" for i in range(nfetch)]
    outs = [rundir / "out" / f"f{i}" / src.path.name for i in range(nfetch)]
    for o in outs:
        o.parent.mkdir(parents=True, exist_ok=True)
    with dht_network(rundir, ["seeder", *fnames], plaintext=plaintext) as nodes:
        t_pub = time.perf_counter()
        mhash, _, pres = publish(nodes["seeder"], src.path, logdir, "publish",
                                 plaintext=plaintext)
        res.extra["publish_seconds"] = round(time.perf_counter() - t_pub, 4)
        res.extra["publish_hash_seconds"] = pres.get("hash_seconds")
        pids = {name: node.pid for name, node in nodes.items()}
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        argvs = [dhtshare_argv("fetch", mhash, "-o", str(outs[i]), "--data-dir",
                               str(nodes[f"fetcher{i}"].data_dir), "--json")
                 for i in range(nfetch)]
        with RssSampler(pids) as sampler:
            wall, runs = run_clis(argvs, transfer_timeout(src.size, nfetch), logdir, "fetch",
                                  plaintext=plaintext)
        after = {name: cpu_seconds(pid) for name, pid in pids.items()}
        status = {name: proc_status(pid) for name, pid in pids.items()}
    plain = plaintext_nodes(logdir, list(pids))
    res.extra["plaintext_nodes"] = len(plain)
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
    res.fetchers = [fetch_record(r) for r in runs]
    wrong = [n for n in pids if (n in plain) != plaintext]
    if wrong:
        said = "did not log" if plaintext else "logged"
        res.error = (f"asked for {res.extra['links']} peer links, but {', '.join(wrong)} "
                     f"{said} {PLAINTEXT_WARNING!r}")
        return res
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
                   settings: list[str], dead_peers: int = 0) -> RunResult:
    """One libtorrent run of a 1xN cell.

    ``dead_peers``: that many addresses of departed peers (see :func:`dead_ports`)
    go first in every leecher's peer list, as in a stale list (scenario churn).
    """
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
        dead = dead_ports(dead_peers)
        if dead:
            res.extra["dead_peers"] = dead
        with RssSampler(pids) as sampler:
            t0 = time.perf_counter()
            for lp in leeches:
                # the seeder first, then every other leecher: all direct connections
                targets = [ports["seeder"]] + [ports[o.name] for o in leeches if o is not lp]
                targets = dead + targets
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
def is_1xn(scen: str) -> bool:
    """A one-provider, N-fetcher cell of the matrix (the other scenarios have names)."""
    return re.fullmatch(r"1x[1-9][0-9]?", scen) is not None


def summarize(runs: list[RunResult], size: int, nfetch: int) -> dict[str, Any]:
    good = [r for r in runs if r.ok]
    if not good:
        return {"ok_runs": 0, "runs": len(runs)}
    walls = [r.wall for r in good]
    med = statistics.median(walls)
    delivered_gib = size * nfetch / GIB
    cpu_gib = [r.cpu_total / delivered_gib for r in good]
    roles = sorted({k for r in good for k in r.cpu})
    links = {r.extra.get("links") for r in good} - {None}
    return {
        "ok_runs": len(good),
        "runs": len(runs),
        **({"links": links.pop()} if len(links) == 1 else {}),
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


def matrix_tools(args: argparse.Namespace) -> tuple[str, ...]:
    """The 1xN matrix's tools: dhtshare, plaintext dhtshare (unless ``--no-plaintext``), lt."""
    return tuple(t for t in MATRIX_TOOLS if t != DHT_PLAIN or args.plaintext)


def round_order(tools: tuple[str, ...], run_no: int) -> tuple[str, ...]:
    """The tools of round ``run_no``, rotated by one each round.

    Interleaved, so slow spells of the machine hit every tool alike, and
    rotated, so that no tool always follows the same one (whose leftovers,
    such as dirty pages being written back, it would otherwise always inherit).
    """
    k = run_no % len(tools)
    return tools[k:] + tools[:k]


def run_matrix(args: argparse.Namespace, sources: dict[int, Source], work: Path,
               results: list[dict[str, Any]]) -> None:
    tools = matrix_tools(args)
    for scen in args.scenarios:
        if not is_1xn(scen):
            continue  # seeder, churn: see run_named_scenarios
        nfetch = int(scen.split("x")[1])
        for size in args.sizes:
            src = sources[size]
            cell: dict[str, Any] = {"scenario": scen, "fetchers": nfetch, "size": size,
                                    "runs": {tool: [] for tool in tools}}
            results.append(cell)
            for run_no in range(args.runs):
                for tool in round_order(tools, run_no):
                    rundir = work / "runs" / f"{scen}-{fmt_size(size).replace(' ', '')}" \
                        / f"{tool}-{run_no}"
                    rundir.mkdir(parents=True, exist_ok=True)
                    t = time.perf_counter()
                    try:
                        if tool in (DHT, DHT_PLAIN):
                            r = run_dhtshare(src, nfetch, rundir, run_no,
                                             plaintext=tool == DHT_PLAIN)
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
            for tool in tools:
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
                        ("python -c 'import dhtshare.cli.app'", "import dhtshare.cli.app")):
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


# == long-running scenarios: shared pieces =============================================
# The 1xN matrix starts every process fresh.  The two scenarios below keep a
# network running while nodes come and go, as real seeders do for days.

#: Sizes of the small files the scenarios fetch before the big one.
SEEDER_SMALL = 8 * MIB
CHURN_SMALL = MIB
#: ``dhtshare fetch`` of a small file must finish within this.
SMALL_FETCH_TIMEOUT = 60.0
#: A node told SIGTERM withdraws its records, hands off and says goodbye; bounded.
LEAVE_TIMEOUT = 20.0
#: Pause between two ``dhtshare status`` attempts on a node that is starting.
STATUS_POLL = 0.02
#: One ``dhtshare status`` call (its own idle timeout is 10 s).
STATUS_CLI_TIMEOUT = 15.0
#: Churn: plain nodes besides the bootstrap and the seeder (20 nodes in all), how
#: many of them leave (30 % of 20; half SIGTERM, half SIGKILL), how many join.
CHURN_PLAIN = 18
CHURN_LEAVE = 6
CHURN_JOIN = 6


def dead_ports(n: int) -> list[int]:
    """``n`` TCP ports on 127.0.0.1 that were bound and closed again: departed peers.

    All are bound before any is closed so they differ; connecting to one is
    refused at once, as to a peer whose process is gone.
    """
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def depart(procs: list[Proc], sig: int, timeout: float = LEAVE_TIMEOUT) -> list[dict[str, Any]]:
    """Signal ``procs`` at once and time each one's exit (bounded), then reap them.

    SIGTERM is a user's Ctrl-C: a dhtshare node withdraws its records and tells
    its contacts it leaves, which is what keeps the network fast for the next
    fetcher; how long that takes is part of the result.  SIGKILL is a crash.
    """
    t0 = time.perf_counter()
    for pr in procs:
        pr.kill_group(sig)
    deadline = time.monotonic() + timeout
    exited: dict[str, float] = {}
    while len(exited) < len(procs) and time.monotonic() < deadline:
        for pr in procs:  # polled together, so each one's own exit time is seen
            if pr.name not in exited and not pr.alive():
                exited[pr.name] = time.perf_counter() - t0
        time.sleep(0.005)
    out = [{"name": pr.name, "signal": signal.Signals(sig).name,
            "seconds": round(exited[pr.name], 4) if pr.name in exited else None,
            "rc": pr.p.returncode, "exited_in_time": pr.name in exited} for pr in procs]
    for pr in procs:
        pr.stop(grace=0.1)  # SIGKILL whatever did not exit in time; close its logs
    return out


def poll_status(node: DhtNode, t_spawn: float, deadline: float, logdir: Path,
                result: dict[str, Any]) -> None:
    """Fill ``result`` with the seconds from spawning ``node`` until ``status`` answers.

    A user's first command after starting a node is usually ``dhtshare
    status``; it should answer at once, even while the node still joins.  The
    figure ends when that first successful status CLI exits, so it includes
    the CLI's own start-up, as the user sees it.
    """
    argv = dhtshare_argv("status", "--data-dir", str(node.data_dir), "--json")
    attempts: list[list[float]] = []  # [started after spawn s, CLI wall s, exit code]
    while time.monotonic() < deadline and node.proc.alive():
        started = time.perf_counter() - t_spawn
        left = max(1.0, min(STATUS_CLI_TIMEOUT, deadline - time.monotonic()))
        run = run_cli(argv, left, logdir, f"{node.name}-status")
        attempts.append([round(started, 4), round(run.wall, 4), run.rc])
        info = run.json()
        if run.rc == 0 and info is not None:
            result.update(seconds=time.perf_counter() - t_spawn, attempts=attempts,
                          state=info.get("state"), contacts=info.get("contacts"))
            return
        time.sleep(STATUS_POLL)
    result.update(seconds=None, attempts=attempts,
                  error="node exited" if not node.proc.alive() else "no answer in time")


def start_fresh_node(name: str, data_dir: Path, logdir: Path, boot_port: int,
                     measure_status: bool) -> tuple[DhtNode, dict[str, Any]]:
    """Spawn a ``dhtshare node`` joined through the bootstrap; wait for its ready line.

    Returns the node and how long it took: ``ready_after_start`` (the
    "listening on" line) and, with ``measure_status``, ``status_after_start``
    (polled in a thread at the same time, so neither delays the other).
    """
    t0 = time.perf_counter()
    node = DhtNode(name, data_dir, logdir, boot_port)
    deadline = time.monotonic() + NODE_START_TIMEOUT
    status: dict[str, Any] = {}
    poller = threading.Thread(target=poll_status, args=(node, t0, deadline, logdir, status),
                              daemon=True)
    try:
        if measure_status:
            poller.start()
        node.wait_ready(deadline)
        timing: dict[str, Any] = {"ready_after_start": time.perf_counter() - t0}
        if measure_status:
            poller.join(max(0.0, deadline - time.monotonic()) + STATUS_CLI_TIMEOUT)
            timing.update({"status_after_start": status.get("seconds"),
                           "status_attempts": status.get("attempts"),
                           "status_state": status.get("state"),
                           "status_error": status.get("error")})
    except BaseException:
        node.proc.stop()  # also ends the poller: it stops when the node is gone
        raise
    return node, timing


def node_status(node: DhtNode, logdir: Path) -> dict[str, Any]:
    """Contacts and memory of a node that keeps running (outside any clock).

    A long-running node that keeps departed nodes in its routing table, or
    grows, is what this scenario is looking for.
    """
    run = run_cli(dhtshare_argv("status", "--data-dir", str(node.data_dir), "--json"),
                  STATUS_CLI_TIMEOUT, logdir, f"{node.name}-status")
    info = run.json() or {}
    table = info.get("routing_table")
    return {"contacts": info.get("contacts"),
            "contacts_answered_recently": info.get("contacts_answered_recently"),
            "routing_table": len(table) if isinstance(table, list) else None,
            "vmrss": proc_status(node.pid).get("VmRSS"),
            "vmhwm": proc_status(node.pid).get("VmHWM")}


def timed_fetch(mhash: str, out: Path, via: DhtNode, pids: dict[str, int], timeout: float,
                logdir: Path, tag: str) -> tuple[CliRun, dict[str, float]]:
    """``dhtshare fetch`` through ``via``: its CLI run and the CPU of ``pids`` meanwhile.

    CPU as in the matrix: utime+stime of each running process between just
    before and just after, plus the fetch CLI's rusage (``fetch_cli``).
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    run = run_cli(dhtshare_argv("fetch", mhash, "-o", str(out), "--data-dir",
                                str(via.data_dir), "--json"), timeout, logdir, tag)
    after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    cpu = {name: after[name] - before[name] for name in pids}
    cpu["fetch_cli"] = run.cpu
    return run, cpu


def fetch_error(run: CliRun, out: Path, sha256: str) -> str:
    """Empty when the fetch exited 0 and its output has the source's SHA-256."""
    if run.rc != 0:
        return f"fetch exited {run.rc}: {run.stderr.strip()[-300:]}"
    if not verify([out], sha256)[0]:
        return "SHA-256 mismatch"
    return ""


def small_fetch(mhash: str, src: Source, out: Path, via: DhtNode, logdir: Path,
                tag: str) -> dict[str, Any]:
    """A small fetch through ``via``: CLI wall from process start to exit, verified."""
    run, _ = timed_fetch(mhash, out, via, {}, SMALL_FETCH_TIMEOUT, logdir, tag)
    err = fetch_error(run, out, src.sha256)
    return {**fetch_record(run), "ok": not err, "error": err}


def big_fetch(res: RunResult, mhash: str, src: Source, out: Path, via: DhtNode,
              pids: dict[str, int], logdir: Path) -> None:
    """The big fetch of a run, timed and verified into ``res`` (wall, CPU, ok)."""
    run, cpu = timed_fetch(mhash, out, via, pids, transfer_timeout(src.size, 1), logdir,
                           "fetch-big")
    res.fetchers.append(fetch_record(run))
    res.cpu = cpu
    err = fetch_error(run, out, src.sha256)
    if err:
        res.error = err
        return
    res.wall = run.wall
    res.ok = True


def lt_fetch_once(res: RunResult, seed: LtPeer, seed_port: int, src: Source, rundir: Path,
                  settings: list[str], budget: float) -> None:
    """A fresh libtorrent leecher fetches from a running seeder, then quits.

    The clock runs from ``go`` (with just the seeder as peer) to ``done``, as
    in the matrix; CPU is the seeder's and the leecher's over that span.
    """
    assert src.torrent is not None
    logdir = rundir / "logs"
    leech = LtPeer(f"leech{res.run}", "leech", src.torrent, rundir / "out", logdir, budget,
                   settings)
    try:
        leech.expect("ready", time.monotonic() + NODE_START_TIMEOUT)
        pids = {"seeder": seed.pid, "fetcher": leech.pid}
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        t0 = time.perf_counter()
        leech.send({"cmd": "go", "peers": [["127.0.0.1", seed_port]]})
        t, msg = leech.expect("done", time.monotonic() + transfer_timeout(src.size, 1))
        after = {name: cpu_seconds(pid) for name, pid in pids.items()}
        res.cpu = {name: after[name] - before[name] for name in pids}
        res.rss = {"fetcher_max": proc_status(leech.pid).get("VmHWM", 0)}
        res.fetchers.append({"wall": round(t - t0, 4), "elapsed_in_peer": msg.get("elapsed"),
                             "flush_seconds": msg.get("flush_seconds"),
                             "payload_down": msg.get("payload_down")})
        leech.send({"cmd": "quit"})
        with contextlib.suppress(TimeoutError, RuntimeError):
            leech.expect("bye", time.monotonic() + 10)
        with contextlib.suppress(subprocess.TimeoutExpired):
            leech.proc.p.wait(10)
    finally:
        stop_all([leech.proc])
    out = rundir / "out" / src.path.name
    ok = verify([out], src.sha256)[0]
    out.unlink(missing_ok=True)
    res.wall = t - t0
    res.ok = ok
    if not ok:
        res.error = "SHA-256 mismatch"


def run_failed(res: RunResult, err: BaseException) -> None:
    """A run that raised: recorded with what it measured so far; the scenario goes on."""
    res.ok = False
    msg = f"{type(err).__name__}: {err}"[-2000:]
    res.error = f"{msg}; {res.error}" if res.error else msg


def log_run(label: str, r: RunResult, total: int, t_setup: float, more: str = "") -> None:
    """One progress line per run on stderr, as the matrix prints."""
    status = (f"{r.wall:.3f} s, CPU {r.cpu_total:.2f} s{more}" if r.ok
              else f"FAILED: {r.error.splitlines()[0] if r.error else '?'}")
    log(f"{label} {r.tool} run {r.run + 1}/{total}: {status} "
        f"({time.perf_counter() - t_setup:.1f} s with setup)")


def series(values: list[float | None]) -> dict[str, Any]:
    """Median, min and max of the measured values (``None``: not measured)."""
    vals = [v for v in values if v is not None and v == v]
    if not vals:
        return {"n": 0, "median": None, "min": None, "max": None}
    return {"n": len(vals), "median": statistics.median(vals), "min": min(vals),
            "max": max(vals)}


def mb_per_s(size: int, wall: float | None) -> float | None:
    """Throughput of one run (10^6 bytes/s); ``None`` for a run without a wall time."""
    return None if wall is None or wall != wall or wall <= 0 else size / wall / 1e6


# == scenario `seeder`: one long-running seeder, fresh fetchers come and go ============
@dataclass
class SeederSetup:
    """What stays up for the whole scenario: each tool's seeder (and dhtshare's bootstrap)."""

    root: Path
    big: Source
    small: Source
    nodes: dict[str, DhtNode] = field(default_factory=dict)
    big_hash: str = ""
    small_hash: str = ""
    lt_seed: LtPeer | None = None
    lt_port: int = 0
    lt_budget: float = 0.0
    d_error: str = ""
    lt_error: str = ""


def seeder_setup_dhtshare(ctx: SeederSetup, stack: contextlib.ExitStack,
                          info: dict[str, Any]) -> None:
    """Bootstrap + seeder, started once; both files published once with ``--replicas 0``."""
    logdir = ctx.root / "logs"
    ctx.nodes = stack.enter_context(dht_network(ctx.root / "dht", ["seeder"]))
    t = time.perf_counter()
    ctx.big_hash, _, _ = publish(ctx.nodes["seeder"], ctx.big.path, logdir, "publish-big")
    info["publish_big_seconds"] = round(time.perf_counter() - t, 4)
    t = time.perf_counter()
    ctx.small_hash, _, _ = publish(ctx.nodes["seeder"], ctx.small.path, logdir, "publish-small")
    info["publish_small_seconds"] = round(time.perf_counter() - t, 4)


def seeder_setup_libtorrent(ctx: SeederSetup, runs: int, settings: list[str],
                            info: dict[str, Any]) -> None:
    """One libtorrent seeder, checked once, with a budget for every run of the scenario."""
    assert ctx.big.torrent is not None
    per_run = transfer_timeout(ctx.big.size, 1) + 2 * NODE_START_TIMEOUT + 60
    ctx.lt_budget = per_run + 120
    ctx.lt_seed = LtPeer("lt-seeder", "seed", ctx.big.torrent, ctx.big.path.parent,
                         ctx.root / "logs", runs * 2 * per_run + 600, settings)
    _, ready = ctx.lt_seed.expect("ready", time.monotonic() + transfer_timeout(ctx.big.size, 1))
    ctx.lt_port = int(ready["port"])
    info["lt_seed_check_seconds"] = ready.get("check_seconds")
    info["lt_settings"] = ready.get("settings")


def seeder_run_dhtshare(ctx: SeederSetup, res: RunResult) -> None:
    """A fresh fetcher node: status and ready times, 8 MiB, then the big file; it leaves."""
    run_no = res.run
    boot, seeder = ctx.nodes["boot"], ctx.nodes["seeder"]
    for n in (boot, seeder):
        if not n.proc.alive():
            raise RuntimeError(f"the long-running {n.name} exited ({n.proc.p.returncode}):\n"
                               f"{n.proc.tail()}")
    rundir = ctx.root / "runs" / f"dhtshare-{run_no}"
    logdir = rundir / "logs"
    node, timing = start_fresh_node(f"fetcher{run_no}", rundir / "fetcher", logdir, boot.port,
                                    measure_status=True)
    res.extra.update(timing)
    outs = [rundir / "out" / ctx.small.path.name, rundir / "out" / ctx.big.path.name]
    try:
        res.extra["fetch_small"] = small_fetch(ctx.small_hash, ctx.small, outs[0], node,
                                               logdir, "fetch-small")
        pids = {"seeder": seeder.pid, "fetcher": node.pid, "bootstrap": boot.pid}
        big_fetch(res, ctx.big_hash, ctx.big, outs[1], node, pids, logdir)
        res.rss = {"seeder": proc_status(seeder.pid).get("VmHWM", 0),
                   "fetcher_max": proc_status(node.pid).get("VmHWM", 0),
                   "fetch_cli_max": max((f.get("maxrss", 0) for f in res.fetchers), default=0)}
    finally:
        for o in outs:  # verified: gone before the node leaves, as after a user moved them
            o.unlink(missing_ok=True)
        res.extra["leave"] = depart([node.proc], signal.SIGTERM)[0]
    res.extra["seeder_after"] = node_status(seeder, logdir)
    small_err = res.extra["fetch_small"].get("error")
    if small_err:
        res.error = "; ".join(e for e in (res.error, f"8 MiB: {small_err}") if e)


def seeder_run_libtorrent(ctx: SeederSetup, res: RunResult, settings: list[str]) -> None:
    """A fresh leecher against the long-running libtorrent seeder."""
    run_no = res.run
    seed = ctx.lt_seed
    if seed is None or not seed.proc.alive():
        raise RuntimeError("the long-running libtorrent seeder is not running"
                           + (f":\n{seed.proc.tail()}" if seed else ""))
    lt_fetch_once(res, seed, ctx.lt_port, ctx.big, ctx.root / "runs" / f"libtorrent-{run_no}",
                  settings, ctx.lt_budget)
    res.extra["seeder_after"] = {"vmrss": proc_status(seed.pid).get("VmRSS"),
                                 "vmhwm": proc_status(seed.pid).get("VmHWM")}


def stop_lt_seeder(seed: LtPeer | None) -> None:
    """Ask the long-running libtorrent seeder to quit; signals only if it does not."""
    if seed is None:
        return
    seed.send({"cmd": "quit"})
    with contextlib.suppress(TimeoutError, RuntimeError):
        seed.expect("bye", time.monotonic() + 10)
    with contextlib.suppress(subprocess.TimeoutExpired):
        seed.proc.p.wait(10)
    stop_all([seed.proc])


def alternate(label: str, runs: int, results: dict[str, list[RunResult]],
              attempt: Callable[[str, RunResult], RunResult],
              note: Callable[[RunResult], str],
              rundir: Callable[[str, int], Path], keep_failed: bool) -> None:
    """``runs`` runs of each tool, alternating (d, l, d, l, ...), each recorded.

    A run that raises is recorded as failed and the scenario goes on; a run's
    directory is removed afterwards unless it failed and ``keep_failed``.
    """
    for run_no in range(runs):
        for tool in ("dhtshare", "libtorrent"):
            t = time.perf_counter()
            r = RunResult(tool, run_no)
            try:
                r = attempt(tool, r)
            except Exception as err:  # one failed run must not stop the scenario
                run_failed(r, err)
            results[tool].append(r)
            log_run(label, r, runs, t, note(r) if tool == "dhtshare" and r.ok else "")
            if r.ok or not keep_failed:
                shutil.rmtree(rundir(tool, run_no), ignore_errors=True)


def run_seeder_scenario(args: argparse.Namespace, big: Source, work: Path) -> dict[str, Any]:
    """Both tools' seeders stay up; ``--seeder-runs`` fresh fetchers each, alternating."""
    root = work / "seeder"
    (work / "files").mkdir(parents=True, exist_ok=True)
    small = generate(work / "files" / "seeder-small-8MiB.bin", SEEDER_SMALL)
    ctx = SeederSetup(root, big, small)
    setup: dict[str, Any] = {}
    out: dict[str, Any] = {"size": big.size, "small_size": small.size, "runs_wanted":
                           args.seeder_runs, "setup": setup,
                           "runs": {"dhtshare": [], "libtorrent": []}}
    with contextlib.ExitStack() as stack:
        stack.callback(lambda: stop_lt_seeder(ctx.lt_seed))
        try:
            seeder_setup_dhtshare(ctx, stack, setup)
        except Exception as err:  # the libtorrent runs still go ahead
            ctx.d_error = f"setup: {type(err).__name__}: {err}"[-2000:]
            log(f"seeder: dhtshare setup FAILED: {ctx.d_error.splitlines()[0]}")
        try:
            seeder_setup_libtorrent(ctx, args.seeder_runs, args.lt_set, setup)
        except Exception as err:
            ctx.lt_error = f"setup: {type(err).__name__}: {err}"[-2000:]
            log(f"seeder: libtorrent setup FAILED: {ctx.lt_error.splitlines()[0]}")
        def attempt(tool: str, r: RunResult) -> RunResult:
            if tool == "dhtshare":
                if ctx.d_error:
                    raise RuntimeError(ctx.d_error)
                seeder_run_dhtshare(ctx, r)
            else:
                if ctx.lt_error:
                    raise RuntimeError(ctx.lt_error)
                seeder_run_libtorrent(ctx, r, args.lt_set)
            return r

        def note(r: RunResult) -> str:
            return (f"; 8 MiB {fmt_s(r.extra['fetch_small']['wall'])} s; status after "
                    f"{fmt_s(r.extra.get('status_after_start'))} s; left in "
                    f"{fmt_s(r.extra['leave'].get('seconds'))} s")

        alternate(f"seeder {fmt_size(big.size)}", args.seeder_runs, out["runs"], attempt, note,
                  lambda tool, run_no: root / "runs" / f"{tool}-{run_no}", args.keep_failed)
    out["summary"] = summarize_seeder(out)
    return out


def tool_cells(prefix: str, r: RunResult, size: int) -> dict[str, Any]:
    """The cells every per-run row has for one tool: ok, wall, MB/s, CPU, error."""
    return {
        f"{prefix}_ok": r.ok, f"{prefix}_wall": r.wall if r.ok else None,
        f"{prefix}_mb_s": mb_per_s(size, r.wall) if r.ok else None,
        f"{prefix}_cpu": r.cpu_total if r.ok else None, f"{prefix}_error": r.error,
    }


def small_cells(d: RunResult) -> dict[str, Any]:
    """The small fetch a dhtshare run makes beside the big one."""
    small = d.extra.get("fetch_small") or {}
    return {"d_small_ok": bool(small.get("ok")),
            "d_small_wall": small.get("wall") if small.get("ok") else None}


def seeder_rows(scen: dict[str, Any]) -> list[dict[str, Any]]:
    """One plain row per run (dhtshare run i next to libtorrent run i)."""
    size = scen["size"]
    rows: list[dict[str, Any]] = []
    for d, lt_ in zip(scen["runs"]["dhtshare"], scen["runs"]["libtorrent"], strict=False):
        rows.append({
            "run": d.run + 1, **tool_cells("d", d, size), **tool_cells("lt", lt_, size),
            **small_cells(d),
            "d_status_s": d.extra.get("status_after_start"),
            "d_ready_s": d.extra.get("ready_after_start"),
            "d_leave_s": (d.extra.get("leave") or {}).get("seconds"),
            "d_seeder_contacts": (d.extra.get("seeder_after") or {}).get("contacts"),
            "d_seeder_rss": (d.extra.get("seeder_after") or {}).get("vmrss"),
            "lt_seeder_rss": (lt_.extra.get("seeder_after") or {}).get("vmrss"),
        })
    return rows


def drift(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """First run's throughput, and the slowest run's as a fraction of it.

    A failed run counts as the slowest (a fraction of 0), so "every run
    within 10 % of the first" cannot be met by skipping runs.
    """
    first = rows[0][key] if rows else None
    vals = [r[key] for r in rows]
    if not first:
        return {"first_mb_s": None, "slowest_vs_first": None, "failed_runs": vals.count(None)}
    slowest = 0.0 if None in vals else min(vals)
    return {"first_mb_s": first, "slowest_mb_s": slowest,
            "slowest_vs_first": slowest / first, "failed_runs": vals.count(None)}


def summarize_seeder(scen: dict[str, Any]) -> dict[str, Any]:
    """Per-run rows plus what the targets read; stored, so ``--render`` needs no runs."""
    rows = seeder_rows(scen)
    after = rows[1:]  # at least one fetcher has left the network
    d: dict[str, Any] = {
        "wall": series([r["d_wall"] for r in rows]),
        "mb_s": series([r["d_mb_s"] for r in rows]),
        "cpu": series([r["d_cpu"] for r in rows]),
        "small_wall": series([r["d_small_wall"] for r in rows]),
        "small_wall_after_departures": series([r["d_small_wall"] for r in after]),
        "small_failed_after_departures": sum(not r["d_small_ok"] for r in after),
        "status_after_start": series([r["d_status_s"] for r in rows]),
        "status_missing": sum(r["d_status_s"] is None for r in rows),
        "ready_after_start": series([r["d_ready_s"] for r in rows]),
        "leave": series([r["d_leave_s"] for r in rows]),
        **drift(rows, "d_mb_s"),
    }
    lt_: dict[str, Any] = {
        "wall": series([r["lt_wall"] for r in rows]),
        "mb_s": series([r["lt_mb_s"] for r in rows]),
        "cpu": series([r["lt_cpu"] for r in rows]),
        **drift(rows, "lt_mb_s"),
    }
    return {"rows": rows, "dhtshare": d, "libtorrent": lt_,
            "mb_s_ratio": ratio(d["mb_s"]["median"], lt_["mb_s"]["median"])}


# == scenario `churn`: a fresh node fetches after 30 % of the network left =============
def churn_depart_and_join(nodes: dict[str, DhtNode], rng: random.Random, root: Path,
                          extra: list[DhtNode], res: RunResult) -> None:
    """6 of the 18 plain nodes leave (3 SIGTERM, then 3 SIGKILL); 6 new ones join.

    Never the bootstrap or the seeder: the file must stay reachable; what
    changes is everything a fresh node learns from the network.
    """
    plain = [n for n in nodes if n not in ("boot", "seeder")]
    leaving = rng.sample(plain, CHURN_LEAVE)
    polite, crashed = leaving[: CHURN_LEAVE // 2], leaving[CHURN_LEAVE // 2 :]
    res.extra["sigterm"] = depart([nodes[n].proc for n in polite], signal.SIGTERM)
    res.extra["sigkill"] = depart([nodes[n].proc for n in crashed], signal.SIGKILL)
    t = time.perf_counter()
    logdir = root / "logs"
    joiners = []
    for k in range(CHURN_JOIN):
        node = DhtNode(f"join{k}", root / f"join{k}", logdir, nodes["boot"].port)
        extra.append(node)
        joiners.append(node)
    deadline = time.monotonic() + NODE_START_TIMEOUT
    for node in joiners:
        node.wait_ready(deadline)
    res.extra["join_seconds"] = round(time.perf_counter() - t, 4)


def churn_run_dhtshare(args: argparse.Namespace, big: Source, small: Source, res: RunResult,
                       rundir: Path) -> None:
    """A fresh 20-node network, churned, then fetched from through a just-started node."""
    run_no = res.run
    logdir = rundir / "logs"
    rng = random.Random(f"{args.seed}-churn-{run_no}")
    names = ["seeder", *(f"node{i}" for i in range(1, CHURN_PLAIN + 1))]
    extra: list[DhtNode] = []
    t = time.perf_counter()
    with dht_network(rundir, names) as nodes:
        try:
            res.extra["network_start_seconds"] = round(time.perf_counter() - t, 4)
            small_hash, _, _ = publish(nodes["seeder"], small.path, logdir, "publish-small")
            big_hash, _, _ = publish(nodes["seeder"], big.path, logdir, "publish-big")
            churn_depart_and_join(nodes, rng, rundir, extra, res)
            fresh, timing = start_fresh_node("fresh", rundir / "fresh", logdir,
                                             nodes["boot"].port, measure_status=False)
            extra.append(fresh)
            res.extra.update(timing)
            res.extra["fetch_small"] = small_fetch(small_hash, small,
                                                   rundir / "out" / small.path.name, fresh,
                                                   logdir, "fetch-small")
            (rundir / "out" / small.path.name).unlink(missing_ok=True)
            main_pids = {"seeder": nodes["seeder"].pid, "fetcher": fresh.pid,
                         "bootstrap": nodes["boot"].pid}
            others = {n.name: n.pid for n in [*nodes.values(), *extra]
                      if n.proc.alive() and n.pid not in main_pids.values()}
            big_fetch(res, big_hash, big, rundir / "out" / big.path.name, fresh,
                      {**main_pids, **others}, logdir)
            (rundir / "out" / big.path.name).unlink(missing_ok=True)
            # CPU "as in the matrix" counts seeder, fetcher, bootstrap and the CLI;
            # the other nodes' share is kept apart
            res.extra["cpu_other_nodes"] = sum(res.cpu.pop(n) for n in others)
            res.extra["network_nodes_at_fetch"] = len(others) + len(main_pids)
        finally:
            stop_all([n.proc for n in extra])
    small_err = (res.extra.get("fetch_small") or {}).get("error")
    if small_err:
        res.error = "; ".join(e for e in (res.error, f"1 MiB: {small_err}") if e)


def run_churn_scenario(args: argparse.Namespace, big: Source, work: Path) -> dict[str, Any]:
    """``--churn-runs`` of each tool, alternating, each on a fresh network."""
    (work / "files").mkdir(parents=True, exist_ok=True)
    small = generate(work / "files" / "churn-small-1MiB.bin", CHURN_SMALL)
    out: dict[str, Any] = {"size": big.size, "small_size": small.size,
                           "nodes": 2 + CHURN_PLAIN, "leave": CHURN_LEAVE,
                           "join": CHURN_JOIN, "seed": args.seed,
                           "runs": {"dhtshare": [], "libtorrent": []}}
    def rundir(tool: str, run_no: int) -> Path:
        d = work / "churn" / f"{tool}-{run_no}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def attempt(tool: str, r: RunResult) -> RunResult:
        if tool == "dhtshare":
            churn_run_dhtshare(args, big, small, r, rundir(tool, r.run))
            return r
        return run_libtorrent(big, 1, rundir(tool, r.run), r.run, args.lt_set,
                              dead_peers=CHURN_LEAVE)

    def note(r: RunResult) -> str:
        return (f"; 1 MiB {fmt_s(r.extra['fetch_small']['wall'])} s; 6 joined in "
                f"{r.extra.get('join_seconds')} s")

    alternate(f"churn {fmt_size(big.size)}", args.churn_runs, out["runs"], attempt, note,
              rundir, args.keep_failed)
    out["summary"] = summarize_churn(out)
    return out


def churn_rows(scen: dict[str, Any]) -> list[dict[str, Any]]:
    """One plain row per run (dhtshare run i next to libtorrent run i)."""
    size = scen["size"]
    rows: list[dict[str, Any]] = []
    for d, lt_ in zip(scen["runs"]["dhtshare"], scen["runs"]["libtorrent"], strict=False):
        small = d.extra.get("fetch_small") or {}
        term = [x.get("seconds") for x in d.extra.get("sigterm", [])]
        big = d.fetchers[0] if d.fetchers else {}
        rows.append({
            "run": d.run + 1, **tool_cells("d", d, size), **tool_cells("lt", lt_, size),
            **small_cells(d),
            "d_small_unreachable": small.get("unreachable"),
            "d_big_unreachable": big.get("unreachable"),
            "d_ready_s": d.extra.get("ready_after_start"),
            "d_sigterm_max_s": None if not term or None in term else max(term),
            "d_join_s": d.extra.get("join_seconds"),
        })
    return rows


def summarize_churn(scen: dict[str, Any]) -> dict[str, Any]:
    """Per-run rows plus what the targets read; stored, so ``--render`` needs no runs."""
    rows = churn_rows(scen)
    d: dict[str, Any] = {
        "wall": series([r["d_wall"] for r in rows]),
        "mb_s": series([r["d_mb_s"] for r in rows]),
        "cpu": series([r["d_cpu"] for r in rows]),
        "small_wall": series([r["d_small_wall"] for r in rows]),
        "small_failed": sum(not r["d_small_ok"] for r in rows),
        "ready_after_start": series([r["d_ready_s"] for r in rows]),
        "sigterm_leave": series([r["d_sigterm_max_s"] for r in rows]),
        "join": series([r["d_join_s"] for r in rows]),
        "failed_runs": sum(not r["d_ok"] for r in rows),
    }
    lt_: dict[str, Any] = {
        "wall": series([r["lt_wall"] for r in rows]),
        "mb_s": series([r["lt_mb_s"] for r in rows]),
        "cpu": series([r["lt_cpu"] for r in rows]),
        "failed_runs": sum(not r["lt_ok"] for r in rows),
    }
    return {"rows": rows, "dhtshare": d, "libtorrent": lt_,
            "mb_s_ratio": ratio(d["mb_s"]["median"], lt_["mb_s"]["median"]),
            "wall_ratio": ratio(d["wall"]["median"], lt_["wall"]["median"])}


def run_named_scenarios(args: argparse.Namespace, sources: dict[int, Source], work: Path,
                        report: dict[str, Any]) -> None:
    """``seeder`` and ``churn``, in the order given; a crash is recorded, not raised."""
    for scen in args.scenarios:
        if is_1xn(scen):
            continue
        log(f"scenario {scen} ...")
        try:
            if scen == "seeder":
                report["seeder"] = run_seeder_scenario(args, sources[args.seeder_size], work)
            elif scen == "churn":
                report["churn"] = run_churn_scenario(args, sources[args.churn_size], work)
        except Exception as err:
            report[scen] = {"error": f"{type(err).__name__}: {err}"[-2000:]}
            log(f"scenario {scen} FAILED: {report[scen]['error'].splitlines()[0]}")


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
    encrypted_targets(cells.get(("1x1", 512 * MIB)), add)
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
    seeder_targets(report.get("seeder"), add)
    churn_targets(report.get("churn"), add)
    return out


AddTarget = Callable[[str, float | None, str, bool | None], None]


def throughput_ratio(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    """Throughput of summary ``a`` over that of ``b`` (same cell: the inverse wall ratio)."""
    if not a.get("ok_runs") or not b.get("ok_runs"):
        return None
    return ratio(b["wall_median"], a["wall_median"])


def encrypted_targets(c: dict[str, Any] | None, add: AddTarget) -> None:
    """Issue 9's targets for the 1→1 512 MiB cell, from the medians of the same run.

    Only for a cell whose dhtshare runs are known to be encrypted (results
    written before the runs recorded their links do not say).
    """
    if c is None:
        return
    sm = c["summary"]
    d = sm.get(DHT, {})
    if d.get("links") != "encrypted":
        return
    r = throughput_ratio(d, sm.get(DHT_PLAIN, {}))
    if r is not None:
        add("1→1 512 MiB encrypted / plaintext dhtshare throughput", r, ">= 0.8", r >= 0.8)
    r = throughput_ratio(d, sm.get(LT, {}))
    if r is not None:
        add("1→1 512 MiB encrypted dhtshare / libtorrent throughput", r, ">= 1.7", r >= 1.7)


def seeder_targets(scen: dict[str, Any] | None, add: AddTarget) -> None:
    """The long-running seeder's targets (nothing when the scenario did not run)."""
    if not scen or "summary" not in scen:
        return
    sm, size = scen["summary"], fmt_size(scen["size"])
    d = sm["dhtshare"]
    if sm.get("mb_s_ratio") is not None:
        r = sm["mb_s_ratio"]
        add(f"long-running seeder 1→1 {size} throughput, dhtshare / libtorrent (median of "
            "runs)", r, ">= 2", r >= 2)
    if d.get("slowest_vs_first") is not None:
        r = d["slowest_vs_first"]
        add(f"long-running seeder: slowest {size} run / first run, dhtshare (every run "
            "within 10 % of the first)", r, ">= 0.9", r >= 0.9)
    small = d["small_wall_after_departures"]
    if small["n"]:
        failed = d.get("small_failed_after_departures", 0)
        add(f"{fmt_size(scen['small_size'])} fetch through a just-started node, after "
            f"departures, slowest (s)" + (f" ({failed} failed)" if failed else ""),
            small["max"], "< 0.3", small["max"] < 0.3 and not failed)
        add(f"{fmt_size(scen['small_size'])} fetch through a just-started node, after "
            "departures, median (s)", small["median"], "< 0.3", small["median"] < 0.3)
    st = d["status_after_start"]
    if st["n"] or d.get("status_missing"):
        missing = d.get("status_missing", 0)
        add("status answered after node start, slowest (s)"
            + (f" ({missing} runs without an answer)" if missing else ""),
            st["max"], "< 0.5", st["max"] is not None and st["max"] < 0.5 and not missing)


def churn_targets(scen: dict[str, Any] | None, add: AddTarget) -> None:
    """Churn numbers, informational: no threshold was set for them."""
    if not scen or "summary" not in scen:
        return
    sm = scen["summary"]
    small = sm["dhtshare"]["small_wall"]
    if small["n"]:
        add(f"churn: {fmt_size(scen['small_size'])} fetch through a just-started node (s), "
            "median", small["median"], "informational", None)
    if sm.get("mb_s_ratio") is not None:
        add(f"churn: {fmt_size(scen['size'])} throughput, dhtshare / libtorrent (stale peer "
            "list), median", sm["mb_s_ratio"], "informational", None)


def fmt_s(v: float | None, digits: int = 3) -> str:
    """Seconds (or any number) for a table cell; ``-`` when not measured."""
    return "-" if v is None else f"{v:.{digits}f}"


def fmt_mb(n: int | None) -> str:
    """Bytes as MB with one decimal: a long-running seeder's growth is a few MB."""
    return "-" if not n else f"{n / 1e6:.1f}"


def fmt_series(s: dict[str, Any], digits: int = 3) -> str:
    """``median (min-max)`` of a :func:`series`."""
    if not s.get("n"):
        return "-"
    return (f"{fmt_s(s['median'], digits)} ({fmt_s(s['min'], digits)}-"
            f"{fmt_s(s['max'], digits)})")


def cell(ok: bool, v: float | None, digits: int = 3) -> str:
    """A per-run table cell: the number, or ``failed`` so a gap is never read as fast."""
    return fmt_s(v, digits) if ok else "failed"


def failed_note(s: dict[str, Any]) -> str:
    """`` (N failed)`` after a summary figure that leaves failed runs out."""
    n = s.get("failed_runs")
    return f" ({n} failed)" if n else ""


def scenario_failed(title: str, scen: dict[str, Any]) -> list[str]:
    """The section of a scenario that crashed before any run (its error, kept)."""
    return [f"## {title}", "", f"Did not run: {scen.get('error', '?')}", ""]


def seeder_markdown(scen: dict[str, Any] | None) -> list[str]:
    """The long-running seeder's section: every run, then the summary."""
    if not scen:
        return []
    title = "Long-running seeder: fresh fetchers come and go"
    if "summary" not in scen:
        return scenario_failed(title, scen)
    sm, size, small = scen["summary"], fmt_size(scen["size"]), fmt_size(scen["small_size"])
    d, lt_ = sm["dhtshare"], sm["libtorrent"]
    lines = [
        f"## {title}",
        "",
        f"One seeder of each tool runs for the whole scenario; per run a fresh fetcher "
        f"starts, fetches and leaves (dhtshare: SIGTERM).  dhtshare: {small} then {size}; "
        f"libtorrent: {size}.",
        "",
        f"| run | dhtshare {size} wall s | MB/s | CPU s | dhtshare {small} s | "
        "status after start s | ready line s | fetcher left in s | seeder contacts after | "
        f"libtorrent {size} wall s | MB/s | CPU s | seeder RSS MB dhtshare / libtorrent |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sm["rows"]:
        rss = f"{fmt_mb(r['d_seeder_rss'])} / {fmt_mb(r['lt_seeder_rss'])}"
        lines.append(
            f"| {r['run']} | {cell(r['d_ok'], r['d_wall'])} | {cell(r['d_ok'], r['d_mb_s'], 0)} "
            f"| {cell(r['d_ok'], r['d_cpu'], 2)} | {cell(r['d_small_ok'], r['d_small_wall'])} "
            f"| {fmt_s(r['d_status_s'])} | {fmt_s(r['d_ready_s'])} | {fmt_s(r['d_leave_s'])} "
            f"| {r['d_seeder_contacts'] if r['d_seeder_contacts'] is not None else '-'} "
            f"| {cell(r['lt_ok'], r['lt_wall'])} | {cell(r['lt_ok'], r['lt_mb_s'], 0)} "
            f"| {cell(r['lt_ok'], r['lt_cpu'], 2)} | {rss} |")
    lines += [
        "",
        f"Median (min-max): dhtshare {size} {fmt_series(d['wall'])} s, "
        f"{fmt_series(d['mb_s'], 0)} MB/s; {small} {fmt_series(d['small_wall'])} s "
        f"(runs 2+, after departures: {fmt_series(d['small_wall_after_departures'])} s); "
        f"status after start {fmt_series(d['status_after_start'])} s; ready line "
        f"{fmt_series(d['ready_after_start'])} s; leaving {fmt_series(d['leave'])} s.  "
        f"libtorrent {size} {fmt_series(lt_['wall'])} s, {fmt_series(lt_['mb_s'], 0)} MB/s.  "
        f"Slowest {size} run / first run (throughput; a failed run counts as 0): dhtshare "
        f"{fmt_s(d.get('slowest_vs_first'), 2)}{failed_note(d)}, libtorrent "
        f"{fmt_s(lt_.get('slowest_vs_first'), 2)}{failed_note(lt_)}.  Throughput dhtshare / "
        f"libtorrent (median of per-run MB/s): {fmt_s(sm.get('mb_s_ratio'), 2)}.",
        "",
        "Wall = `dhtshare fetch` CLI from process start to exit; libtorrent: `go` to `done`.  "
        "CPU = seeder + fetcher (+ dhtshare's bootstrap and fetch CLI) over the fetch.  "
        "Status after start: from spawning the fetcher node until the first `dhtshare "
        "status` that succeeds exits (polled every 20 ms).  Seeder RSS: VmRSS of each "
        "long-running seeder after the run (after its `dhtshare status`, for dhtshare).",
        "",
    ]
    return lines


def churn_markdown(scen: dict[str, Any] | None) -> list[str]:
    """The churn section: every run, then the summary."""
    if not scen:
        return []
    title = "Churn: a fresh node fetches after 30 % of the network left"
    if "summary" not in scen:
        return scenario_failed(title, scen)
    sm, size, small = scen["summary"], fmt_size(scen["size"]), fmt_size(scen["small_size"])
    d, lt_ = sm["dhtshare"], sm["libtorrent"]
    half = scen["leave"] // 2
    lines = [
        f"## {title}",
        "",
        f"dhtshare: {scen['nodes']} nodes; {scen['leave']} plain nodes leave ({half} "
        f"SIGTERM, {scen['leave'] - half} SIGKILL; seed {scen['seed']}), {scen['join']} join; "
        f"then a just-started node fetches {small} and {size}.  libtorrent: a fresh leecher "
        f"handed the seeder plus {scen['leave']} dead addresses fetches {size}.  A fresh "
        "network per run.",
        "",
        f"| run | dhtshare {small} s | dhtshare {size} wall s | MB/s | CPU s | unreachable "
        f"providers skipped | fresh node ready s | SIGTERM'd left in s | {scen['join']} "
        f"joined in s | libtorrent {size} wall s | MB/s | CPU s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sm["rows"]:
        unreach = "/".join("-" if x is None else str(x)
                           for x in (r["d_small_unreachable"], r["d_big_unreachable"]))
        lines.append(
            f"| {r['run']} | {cell(r['d_small_ok'], r['d_small_wall'])} "
            f"| {cell(r['d_ok'], r['d_wall'])} | {cell(r['d_ok'], r['d_mb_s'], 0)} "
            f"| {cell(r['d_ok'], r['d_cpu'], 2)} | {unreach} | {fmt_s(r['d_ready_s'])} "
            f"| {fmt_s(r['d_sigterm_max_s'])} | {fmt_s(r['d_join_s'])} "
            f"| {cell(r['lt_ok'], r['lt_wall'])} | {cell(r['lt_ok'], r['lt_mb_s'], 0)} "
            f"| {cell(r['lt_ok'], r['lt_cpu'], 2)} |")
    lines += [
        "",
        f"Median (min-max): dhtshare {small} {fmt_series(d['small_wall'])} s; {size} "
        f"{fmt_series(d['wall'])} s, {fmt_series(d['mb_s'], 0)} MB/s{failed_note(d)}.  "
        f"libtorrent {size} {fmt_series(lt_['wall'])} s, {fmt_series(lt_['mb_s'], 0)} MB/s"
        f"{failed_note(lt_)}.  {size} "
        f"dhtshare / libtorrent: throughput {fmt_s(sm.get('mb_s_ratio'), 2)}, wall "
        f"{fmt_s(sm.get('wall_ratio'), 2)}.",
        "",
        "Unreachable providers skipped: as the fetch's JSON reports them "
        f"({small} / {size}).",
        "",
    ]
    return lines


def matrix_ratios(tool: str, sm: dict[str, dict[str, Any]]) -> str:
    """The ratio cell of a dhtshare row: wall and CPU vs libtorrent; throughput vs plaintext."""
    if tool not in (DHT, DHT_PLAIN):
        return ""
    s, lt_ = sm[tool], sm.get(LT, {})
    parts = []
    if lt_.get("ok_runs"):
        w = ratio(s["wall_median"], lt_["wall_median"])
        cp = ratio(s["cpu_s_per_gib"], lt_["cpu_s_per_gib"])
        if w and cp:
            parts.append(f"wall x{w:.2f}, CPU x{cp:.2f}")
    if tool == DHT:
        r = throughput_ratio(s, sm.get(DHT_PLAIN, {}))
        if r is not None:
            parts.append(f"x{r:.2f} of plaintext")
    return "; ".join(parts)


def markdown(report: dict[str, Any]) -> str:
    cfg = report["config"]
    # results written before the matrix had its plaintext dhtshare render as they did
    tools = cfg.get("matrix_tools")
    with_plain = DHT_PLAIN in (tools or [])
    lines = [
        "## Transfer: dhtshare vs libtorrent",
        "",
        f"{report['started']}; {cfg['runs']} runs of each tool per row, "
        f"{'interleaved' if tools else 'alternating'}; "
        f"127.0.0.1 only; 1 MiB chunks / pieces; libtorrent {report['versions']['libtorrent']} "
        f"({cfg['lt_torrent']} torrent); dhtshare {report['versions']['dhtshare']}; "
        f"{os.cpu_count()} CPUs.",
        "",
        "Command: `python bench/transfer.py " + " ".join(report["argv"]) + "`",
        "",
        "| scenario | size | tool | wall median s | min-max s | MB/s | CPU s/GiB | "
        "peak RSS MB seeder / fetcher max | fetcher anon peak MB | dhtshare / libtorrent"
        + ("; encrypted / plaintext |" if with_plain else " |"),
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in report.get("transfer", []):
        sm = c["summary"]
        for tool in [t for t in MATRIX_TOOLS if t in sm] + [t for t in sm
                                                            if t not in MATRIX_TOOLS]:
            s, label = sm[tool], TOOL_LABELS.get(tool, tool)
            if not s.get("ok_runs"):
                lines.append(f"| 1→{c['fetchers']} | {fmt_size(c['size'])} | {label} | "
                             f"failed ({s.get('runs', 0)} runs) | | | | | | |")
                continue
            fails = s["runs"] - s["ok_runs"]
            note = f" ({fails} failed)" if fails else ""
            lines.append(
                f"| 1→{c['fetchers']} | {fmt_size(c['size'])} | {label}{note} | "
                f"{s['wall_median']:.3f} | {s['wall_min']:.3f}-{s['wall_max']:.3f} | "
                f"{s['mb_per_s']:.0f} | {s['cpu_s_per_gib']:.2f} | "
                f"{mb(s['rss_seeder_max'])} / {mb(s['rss_fetcher_max'])}"
                + (f" (CLI {mb(s['rss_cli_max'])})" if s.get("rss_cli_max") else "")
                + f" | {mb(s['rss_anon_fetcher_max'])} | {matrix_ratios(tool, sm)} |")
    if tools:
        lines += [
            "",
            "dhtshare's peer links are encrypted and authenticated (its default)"
            + (f"; {TOOL_LABELS[DHT_PLAIN]}: the same runs with `{PLAINTEXT_ENV}=1` in "
               "every dhtshare process, a benchmarking switch only.  Each run's node logs "
               "are checked for the mode asked.  Encrypted / plaintext: throughput (inverse "
               "wall medians) of the same run" if with_plain else "")
            + ".  Each round runs every tool once, in an order rotated by one each round.",
        ]
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
    lines += seeder_markdown(report.get("seeder"))
    lines += churn_markdown(report.get("churn"))
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


def precompile_dhtshare() -> str:
    """Compile dhtshare's modules to bytecode once, as ``pip install`` does.

    A user's install has its ``.pyc`` files; an editable install (or any run
    under ``PYTHONDONTWRITEBYTECODE=1``) would otherwise compile every module
    again in every CLI process, 30-40 ms of CPU per ``dhtshare fetch`` that no
    user pays.  The variable only stops Python from *writing* bytecode, so
    compiled files made here are still read.  Returns the package directory.
    """
    import compileall
    import importlib.util

    spec = importlib.util.find_spec("dhtshare")
    if spec is None or spec.origin is None:
        raise RuntimeError("dhtshare is not importable: pip install '.[bench]'")
    pkg = Path(spec.origin).parent
    compileall.compile_dir(str(pkg), quiet=1)
    return str(pkg)


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
    ap.add_argument("--scenarios", default="1x1,1x4,seeder,churn",
                    help="comma-separated: 1xN (one provider, N fetchers), seeder "
                         "(a long-running seeder), churn (a fetch after 30 %% of the "
                         "network left)")
    ap.add_argument("--seeder-size", type=parse_size, default=512 * MIB,
                    help="file size for the seeder scenario")
    ap.add_argument("--seeder-runs", type=int, default=10,
                    help="fresh fetchers of each tool against the long-running seeder")
    ap.add_argument("--churn-size", type=parse_size, default=512 * MIB,
                    help="file size for the churn scenario")
    ap.add_argument("--churn-runs", type=int, default=3,
                    help="runs of each tool in the churn scenario (a fresh network each)")
    ap.add_argument("--seed", type=int, default=1,
                    help="random seed: which nodes leave in the churn scenario")
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
    ap.add_argument("--no-plaintext", dest="plaintext", action="store_false",
                    help=f"leave {DHT_PLAIN!r} (dhtshare with {PLAINTEXT_ENV}=1, plaintext "
                         "peer links: a benchmarking switch) out of the 1xN matrix")
    args = ap.parse_args(argv)
    args.sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for s in args.scenarios:
        if not is_1xn(s) and s not in ("seeder", "churn"):
            ap.error(f"scenario {s!r}: want 1xN (N from 1 to 99), seeder or churn")
    if len(set(args.scenarios)) != len(args.scenarios):
        ap.error("--scenarios: each at most once")
    if not 1 <= args.seeder_runs <= 100 or not 1 <= args.churn_runs <= 100:
        ap.error("--seeder-runs and --churn-runs must be 1 to 100")
    if args.runs < 1 or args.runs > 100:
        ap.error("--runs must be 1 to 100")
    if not 0 <= args.latency_files <= 100:
        ap.error("--latency-files must be 0 to 100")
    return args


def torrent_sizes(args: argparse.Namespace) -> set[int]:
    """The file sizes some scenario transfers (each gets a source file and a torrent)."""
    out: set[int] = set()
    if any(is_1xn(s) for s in args.scenarios):
        out |= set(args.sizes)
    if "seeder" in args.scenarios:
        out.add(args.seeder_size)
    if "churn" in args.scenarios:
        out.add(args.churn_size)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.render is None:
        log(f"bytecode compiled for {precompile_dhtshare()}")
    if args.render is not None:
        report = json.loads(args.render.read_text())
        report["targets"] = targets(report)  # derived numbers: kept in step with this code
        args.render.write_text(json.dumps(report, indent=1) + "\n")
        md = markdown(report)
        if report.get("complete"):
            args.out.mkdir(parents=True, exist_ok=True)
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
    if os.environ.pop(PLAINTEXT_ENV, None) is not None:
        # every network of this bench is encrypted unless a run asks otherwise
        log(f"ignoring {PLAINTEXT_ENV} from the environment: every dhtshare network of "
            f"this bench is encrypted but those of the matrix's {DHT_PLAIN} runs")
    args.out.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)
    work = Path(tempfile.mkdtemp(prefix="dhtshare-bench-", dir=args.workdir))
    report: dict[str, Any] = {
        "started": started.strftime("%Y-%m-%d %H:%M:%SZ"),
        "argv": argv,
        "config": {"sizes": args.sizes, "runs": args.runs, "scenarios": args.scenarios,
                   "lt_torrent": args.lt_torrent, "lt_set": args.lt_set,
                   "chunk_size": MIB, "workdir": str(work),
                   "seeder_size": args.seeder_size, "seeder_runs": args.seeder_runs,
                   "churn_size": args.churn_size, "churn_runs": args.churn_runs,
                   "seed": args.seed, "matrix_tools": list(matrix_tools(args))},
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
        with_torrent = torrent_sizes(args)
        wanted = sorted(with_torrent | ({args.publish_size} if args.publish_size else set()))
        for size in wanted:
            t = time.perf_counter()
            src = generate(work / f"file-{fmt_size(size).replace(' ', '')}.bin", size)
            sources[size] = src
            if size in with_torrent:
                make_torrent(src, args.lt_torrent, work / "logs")
            log(f"generated {fmt_size(size)} in {time.perf_counter() - t:.1f} s "
                f"(torrent: {src.torrent_seconds:.2f} s)")
        report["sources"] = [{"size": s.size, "sha256": s.sha256,
                              "lt_create_torrent_seconds": round(s.torrent_seconds, 4)}
                             for s in sources.values()]
        run_matrix(args, sources, work, results)
        run_named_scenarios(args, sources, work, report)
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
        lt_settings.append(report.get("seeder", {}).get("setup", {}).get("lt_settings"))
        lt_settings = [x for x in lt_settings if x]
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
