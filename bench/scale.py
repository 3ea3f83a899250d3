"""Scale benchmark: hundreds of real ``dhtshare node`` processes, mass kills and steady churn.

    python bench/scale.py [--nodes 200] [--files 1200] [--kills 0.1,0.3,0.5]
                          [--churn 60] [--concurrency 4] [--seed 1] [--out bench/results]

Why: ``bench/dht.py`` measures the DHT alone (many instances per process,
counting packets and hops); this measures the network users run.  Every node
is its own ``dhtshare node`` process with its own loopback address
(127.0.X.Y, so per-address limits see distinct hosts, as on a real network),
and each lookup is a real fetch through a node's control socket: the DHT
lookup of the manifest's providers from that node's own routing table, the
encrypted link to the holder, the manifest, the chunks, each verified.  The
network is long-running: before the headline numbers it has seen nodes
leave (half of them without a word) and new ones join, every second.

Phases, one network throughout:

1. join: bootstrap, then four nodes through it, then the rest through a random
   node already up, ``--batch`` at a time.  Join time = spawn to ``state:
   joined`` in ``status`` (Python start-up included).
2. "fresh": ``--files`` new files published, each with ``--replicas 0`` on a
   random node (one holder each: a fetch works only if the DHT finds it),
   then each fetched once through another random node.
3. "steady churn": ``--churn`` s in which, every second, one node leaves
   (SIGKILL and SIGTERM in turn) and a new one joins through a random live
   node, while fetches of new single-holder files run all the time.
4. "long-running": phase 2 again, on the network churn left behind.
5. for each fraction in ``--kills``: new single-holder files published, that
   fraction of the live nodes SIGKILLed at once (any node but the bootstrap,
   holders included: files whose holder died are counted apart, they cannot be
   fetched), every file with a live holder fetched once at once after the
   kill, then the network is topped up to ``--nodes`` again.

Success = the fetch returned and the file's SHA-256 is right.  Fetches run
``--concurrency`` at a time, each through a different random node.  Writes
``<out>/scale-<timestamp>.json`` and the "A network of hundreds: real
processes" section of ``<out>/scale-latest.md``; prints the Markdown.  Every
process is stopped at the end, on errors and on Ctrl-C; the run is bounded by
``--budget``.  Traffic goes to 127.0.0.0/8 only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dht import pct
from mdreport import replace_section
from swarm import INTERRUPTS, report_header, run_guarded
from transfer import (
    Proc,
    dhtshare_argv,
    log,
    precompile_dhtshare,
)

from dhtshare.disk.hashing import sha256_file
from dhtshare.errors import DhtshareError
from dhtshare.net import ctlclient

BENCH = Path(__file__).resolve().parent
TITLE = "## A network of hundreds: real processes"
PORT = 7000
#: One control call (publish, fetch, status) may take at most this long.
CALL_TIMEOUT = 60.0
FILE_SIZE = 64 * 1024
CHUNK = 16 * 1024
JOIN_TIMEOUT = 60.0


# -- nodes --------------------------------------------------------------------------------
def address(index: int) -> str:
    """Node ``index``'s own loopback address: 127.0.1.1, 127.0.1.2, ... (200 per /24)."""
    return f"127.0.{1 + index // 200}.{1 + index % 200}"


@dataclass
class Member:
    index: int
    proc: Proc
    data_dir: Path
    peer: str | None
    spawned: float
    joined_s: float = math.nan
    alive: bool = False  # joined and not stopped
    gone: bool = False

    @property
    def addr(self) -> str:
        return f"{address(self.index)}:{PORT}"


class Swarm:
    """The node processes, shared by the phase threads under one lock."""

    def __init__(self, root: Path, rng: random.Random) -> None:
        self.root = root
        self.rng = rng
        self.members: list[Member] = []
        self.lock = threading.Lock()

    def live(self, exclude: set[int] | None = None) -> list[Member]:
        with self.lock:
            return [m for m in self.members if m.alive and m.index not in (exclude or set())]

    def spawn(self, peer: str | None) -> Member:
        with self.lock:
            index = len(self.members)
        name = f"n{index:04d}"
        data_dir = self.root / "nodes" / name
        role = ["bootstrap"] if peer is None else ["node", "--peer", peer]
        argv = dhtshare_argv(*role, "--host", address(index), "--port", str(PORT),
                             "--data-dir", str(data_dir))
        with INTERRUPTS.deferred():
            proc = Proc(name, argv, self.root / "logs")
            m = Member(index, proc, data_dir, peer, time.monotonic())
            with self.lock:
                self.members.append(m)
        return m

    def wait_joined(self, batch: list[Member], timeout: float = JOIN_TIMEOUT) -> None:
        """Poll each node's ``status`` until it says ``joined`` (bounded)."""
        deadline = time.monotonic() + timeout
        pending = list(batch)
        while pending:
            for m in list(pending):
                if not m.proc.alive():
                    raise RuntimeError(f"node {m.index} exited:\n{m.proc.tail()}")
                with contextlib.suppress(DhtshareError, OSError):
                    st = ctlclient.call(m.data_dir, "status", {}, idle_timeout=5)
                    if st.get("state") == "joined":
                        m.joined_s = time.monotonic() - m.spawned
                        m.alive = True
                        pending.remove(m)
            if pending and time.monotonic() > deadline:
                raise RuntimeError(f"{len(pending)} node(s) not joined in {timeout:.0f} s:\n"
                                   f"{pending[0].proc.tail()}")
            if pending:
                time.sleep(0.1)

    def grow(self, count: int, batch: int) -> list[Member]:
        """Start ``count`` nodes, ``batch`` at a time, each through a random joined node."""
        added: list[Member] = []
        while len(added) < count:
            n = min(batch, count - len(added))
            if not self.members:
                n = 1
            live = self.live()
            wave = [self.spawn(self.rng.choice(live).addr if live else None) for _ in range(n)]
            if not live:  # the bootstrap: the next four join through it alone
                self.wait_joined(wave)
                added += wave
                wave = [self.spawn(wave[0].addr) for _ in range(min(4, count - 1))]
            self.wait_joined(wave)
            added += wave
        return added

    def stop(self, m: Member, sig: int) -> None:
        """Take ``m`` away: SIGKILL (vanishes without a word) or SIGTERM (leaves politely)."""
        with self.lock:
            m.alive = False
            m.gone = True
        m.proc.kill_group(sig)

    def reap(self) -> None:
        for m in self.members:
            if m.gone and m.proc in Proc.live and not m.proc.alive():
                m.proc.stop(grace=0.1)


# -- files and fetches --------------------------------------------------------------------
@dataclass
class SharedFile:
    path: Path
    sha256: str
    holder: Member
    hash: str = ""
    publish_s: float = math.nan


def publish_files(swarm: Swarm, count: int, folder: Path, pool: ThreadPoolExecutor,
                  tag: str, exclude: set[int] | None = None) -> list[SharedFile]:
    """``count`` new files, each published with ``--replicas 0`` on a random live node."""
    folder.mkdir(parents=True, exist_ok=True)
    live = swarm.live(exclude)
    files = []
    for i in range(count):
        path = folder / f"{tag}-{i:05d}.bin"
        path.write_bytes(os.urandom(FILE_SIZE))
        files.append(SharedFile(path, sha256_file(path), swarm.rng.choice(live)))

    def one(f: SharedFile) -> None:
        t0 = time.perf_counter()
        try:
            res = ctlclient.call(f.holder.data_dir, "publish",
                                 {"path": str(f.path), "chunk_size": CHUNK, "replicas": 0},
                                 idle_timeout=CALL_TIMEOUT)
        except (DhtshareError, OSError):
            if not f.holder.gone:  # only churn may take a holder away mid-publish
                raise
            return
        f.hash = str(res["hash"])
        f.publish_s = time.perf_counter() - t0

    list(pool.map(one, files))
    return [f for f in files if f.hash]


def fetch(f: SharedFile, via: Member, out_dir: Path, t_ref: float) -> dict[str, Any]:
    """One fetch of ``f`` through node ``via``'s control socket."""
    out = out_dir / f"{via.index:04d}-{f.path.name}"
    t0 = time.perf_counter()
    rec: dict[str, Any] = {"via": via.index, "holder": f.holder.index,
                           "since": round(time.monotonic() - t_ref, 3)}
    try:
        res = ctlclient.call(via.data_dir, "fetch",
                             {"hash": f.hash, "cwd": str(out_dir), "output": str(out)},
                             idle_timeout=CALL_TIMEOUT)
        rec["latency"] = time.perf_counter() - t0
        rec["ok"] = sha256_file(out) == f.sha256
        rec["unreachable"] = len(res.get("unreachable", []))
    except (DhtshareError, OSError) as err:
        rec["latency"] = time.perf_counter() - t0
        rec["ok"] = False
        rec["error"] = str(err)[:300]
    rec["via_gone"] = via.gone  # the fetching node itself was taken away (churn)
    return rec


def fetch_all(swarm: Swarm, files: list[SharedFile], out_dir: Path, pool: ThreadPoolExecutor,
              t_ref: float) -> list[dict[str, Any]]:
    """Each file with a live holder once, through a random live node that is not its holder."""
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = []
    for f in files:
        if f.holder.gone:
            continue
        via = swarm.rng.choice(swarm.live({f.holder.index}))
        jobs.append((f, via))
    return list(pool.map(lambda j: fetch(j[0], j[1], out_dir, t_ref), jobs))


def summary(recs: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    counted = [r for r in recs if not r["via_gone"]]
    lat = [r["latency"] for r in counted]
    ok = sum(r["ok"] for r in counted)
    return {
        "fetches": len(counted),
        "ok": ok,
        "success": ok / len(counted) if counted else math.nan,
        "median": statistics.median(lat) if lat else math.nan,
        "p95": pct(lat, 95),
        "p99": pct(lat, 99),
        "max": max(lat) if lat else math.nan,
        "over_1s": sum(x >= 1 for x in lat),
        "fetcher_left": len(recs) - len(counted),
        "errors": sorted({r["error"] for r in counted if "error" in r})[:10],
        **extra,
    }


# -- phases -------------------------------------------------------------------------------
def churn_phase(swarm: Swarm, seconds: float, batch_files: int, work: Path,
                pool: ThreadPoolExecutor) -> dict[str, Any]:
    """Every second one node leaves and one joins, while fetches run all the time."""
    stop = threading.Event()
    left: list[int] = []
    joined: list[float] = []
    recs: list[dict[str, Any]] = []
    errors: list[str] = []

    def churner() -> None:
        tick = 0
        pending: list[Member] = []
        t_next = time.monotonic()
        while not stop.is_set():
            t_next += 1.0
            protected = {0} | {f.holder.index for f in active}
            victims = swarm.live(protected)
            if victims:
                m = swarm.rng.choice(victims)
                swarm.stop(m, signal.SIGKILL if tick % 2 == 0 else signal.SIGTERM)
                left.append(m.index)
            live = swarm.live()
            pending.append(swarm.spawn(swarm.rng.choice(live).addr))
            for p in list(pending):
                with contextlib.suppress(DhtshareError, OSError):
                    if ctlclient.call(p.data_dir, "status", {}, idle_timeout=2).get(
                            "state") == "joined":
                        p.joined_s = time.monotonic() - p.spawned
                        with swarm.lock:
                            p.alive = True
                        joined.append(p.joined_s)
                        pending.remove(p)
            tick += 1
            stop.wait(max(0.0, t_next - time.monotonic()))
        with contextlib.suppress(RuntimeError):
            swarm.wait_joined(pending, 30)
            joined.extend(p.joined_s for p in pending)

    active: list[SharedFile] = publish_files(swarm, batch_files, work / "files", pool, "churn0")
    thread = threading.Thread(target=churner, daemon=True)
    t0 = time.monotonic()
    thread.start()
    try:
        rounds = 0
        while time.monotonic() - t0 < seconds and rounds < 1000:
            recs += fetch_all(swarm, active, work / "out" / f"churn{rounds}", pool, t0)
            rounds += 1
            active = publish_files(swarm, batch_files, work / "files", pool, f"churn{rounds}")
    except (DhtshareError, OSError) as err:
        errors.append(str(err))
    finally:
        stop.set()
        thread.join(60)
    swarm.reap()
    return {"phase": "steady churn", "seconds": round(time.monotonic() - t0, 1),
            "left": len(left), "joined": len(joined),
            "join_median": statistics.median(joined) if joined else math.nan,
            "errors_outside_fetches": errors, "fetch": summary(recs), "records": recs}


def kill_phase(swarm: Swarm, fraction: float, files_n: int, work: Path,
               pool: ThreadPoolExecutor, nodes: int, batch: int) -> dict[str, Any]:
    """Single-holder files, then ``fraction`` of the live nodes SIGKILLed at once, then fetches."""
    tag = f"kill{round(fraction * 100)}"
    files = publish_files(swarm, files_n, work / "files", pool, tag)
    live = swarm.live({0})
    victims = swarm.rng.sample(live, round(fraction * (len(live) + 1)))
    for m in victims:
        swarm.stop(m, signal.SIGKILL)
    t_kill = time.monotonic()
    recs = fetch_all(swarm, files, work / "out" / tag, pool, t_kill)
    wall = time.monotonic() - t_kill
    swarm.reap()
    holders_dead = sum(f.holder.gone for f in files)
    t0 = time.monotonic()
    swarm.grow(nodes - len(swarm.live()), batch)
    return {"phase": f"{fraction:.0%} killed at once", "killed": len(victims),
            "files": len(files), "holder_killed": holders_dead, "fetch_wall": round(wall, 1),
            "refill_s": round(time.monotonic() - t0, 1),
            "fetch": summary(recs), "records": recs}


def plain_phase(swarm: Swarm, name: str, files_n: int, work: Path,
                pool: ThreadPoolExecutor) -> dict[str, Any]:
    tag = name.replace(" ", "-")
    files = publish_files(swarm, files_n, work / "files", pool, tag)
    t0 = time.monotonic()
    recs = fetch_all(swarm, files, work / "out" / tag, pool, t0)
    return {"phase": name, "files": len(files), "fetch_wall": round(time.monotonic() - t0, 1),
            "publish_median": statistics.median(f.publish_s for f in files),
            "publish_p95": pct([f.publish_s for f in files], 95),
            "fetch": summary(recs), "records": recs}


def bench(args: argparse.Namespace, work: Path, report: dict[str, Any]) -> None:
    rng = random.Random(args.seed)
    swarm = Swarm(work, rng)
    report["swarm"] = swarm
    pool = ThreadPoolExecutor(args.concurrency)
    try:
        t0 = time.monotonic()
        log(f"starting {args.nodes} node processes, {args.batch} at a time")
        swarm.grow(args.nodes, args.batch)
        joined = [m.joined_s for m in swarm.members]
        report["join"] = {"wall": round(time.monotonic() - t0, 1),
                          "median": statistics.median(joined), "p95": pct(joined, 95),
                          "max": max(joined)}
        log(f"joined in {report['join']['wall']} s; settling {args.settle:g} s")
        time.sleep(args.settle)
        phases: list[dict[str, Any]] = []
        report["phases"] = phases

        def done(ph: dict[str, Any]) -> None:
            phases.append(ph)
            s = ph["fetch"]
            log(f"{ph['phase']}: {s['ok']}/{s['fetches']} ok, median {s['median']:.3f} s, "
                f"p95 {s['p95']:.3f} s, p99 {s['p99']:.3f} s, max {s['max']:.3f} s")

        done(plain_phase(swarm, "fresh", args.files, work, pool))
        if args.churn > 0:
            done(churn_phase(swarm, args.churn, args.churn_files, work, pool))
            swarm.grow(max(0, args.nodes - len(swarm.live())), args.batch)
            done(plain_phase(swarm, "long-running", args.files, work, pool))
        for fraction in args.kills:
            done(kill_phase(swarm, fraction, args.files, work, pool, args.nodes, args.batch))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# -- report -------------------------------------------------------------------------------
def sec(v: float | None) -> str:
    if v is None or math.isnan(v):
        return "n/a"
    return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s"


def markdown(r: dict[str, Any]) -> str:
    p = r["params"]
    lines = [
        TITLE,
        "",
        f"`python bench/scale.py {' '.join(r['argv'])}` at {r['started']} "
        f"({r['host']['cpus']} CPUs, load {r['host']['loadavg_start'][0]:.1f} at start), "
        f"{p['nodes']} `dhtshare node` processes, each on its own 127.0.X.Y; files of "
        f"{FILE_SIZE // 1024} KiB ({FILE_SIZE // CHUNK} chunks), each published with "
        f"`--replicas 0` on one random node and fetched once through another, "
        f"{p['concurrency']} fetches at a time through the control socket.  Whole run "
        f"{r.get('seconds', 0):.0f} s"
        f"{'' if r.get('complete') else ' (**incomplete**: ' + str(r.get('error', '?')) + ')'}.",
        "",
    ]
    j = r.get("join")
    if j:
        lines += [f"Join ({p['nodes']} nodes, {p['batch']} started at a time, spawn to "
                  f"`joined`): median {sec(j['median'])}, p95 {sec(j['p95'])}, max "
                  f"{sec(j['max'])}; all joined in {j['wall']:.0f} s.", ""]
    lines += [
        "| phase | fetches | success | median | p95 | p99 | max | fetches >= 1 s | notes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for ph in r.get("phases", []):
        s = ph["fetch"]
        notes = []
        if "killed" in ph:
            notes.append(f"{ph['killed']} killed; {ph['holder_killed']} of {ph['files']} "
                         "files lost their only holder (not fetched)")
        if "left" in ph:
            notes.append(f"{ph['seconds']:.0f} s: {ph['left']} left, {ph['joined']} joined "
                         f"(join median {sec(ph['join_median'])}); {s['fetcher_left']} "
                         "fetches whose fetching node left, not counted")
        if "publish_median" in ph:
            notes.append(f"publish median {sec(ph['publish_median'])}, "
                         f"p95 {sec(ph['publish_p95'])}")
        lines.append(f"| {ph['phase']} | {s['fetches']} | {s['ok']}/{s['fetches']} "
                     f"({s['success']:.2%}) | {sec(s['median'])} | {sec(s['p95'])} "
                     f"| {sec(s['p99'])} | {sec(s['max'])} | {s['over_1s']} "
                     f"| {'; '.join(notes)} |")
    lines.append("")
    nl = r.get("node_logs")
    if nl:
        lines += [f"Node logs: {nl['total']} warnings or errors, {nl['tracebacks']} "
                  "tracebacks.", ""]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--nodes", type=int, default=200, help="node processes, bootstrap included")
    ap.add_argument("--files", type=int, default=1200,
                    help="single-holder files published (and fetched) per phase")
    ap.add_argument("--kills", default="0.1,0.3,0.5",
                    help="fractions killed at once, one phase each (topped up in between)")
    ap.add_argument("--churn", type=float, default=60.0,
                    help="seconds of steady churn (one leaves, one joins, every second); 0: none")
    ap.add_argument("--churn-files", type=int, default=40,
                    help="files per publish-then-fetch round during churn")
    ap.add_argument("--concurrency", type=int, default=4, help="fetches (and publishes) at once")
    ap.add_argument("--batch", type=int, default=10, help="nodes started at a time")
    ap.add_argument("--settle", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=BENCH / "results")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    ap.add_argument("--budget", type=float, default=1800.0,
                    help="hard limit on the whole run, seconds (cleanup included)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = ap.parse_args(argv)
    try:
        args.kills = [float(x) for x in args.kills.split(",") if x.strip()]
    except ValueError:
        ap.error("--kills takes fractions like 0.1,0.3,0.5")
    if not all(0 < k < 1 for k in args.kills):
        ap.error("--kills fractions must be between 0 and 1")
    if args.nodes < 10 or args.nodes > 2000 or args.files < 1 or args.concurrency < 1:
        ap.error("need 10 <= --nodes <= 2000, --files >= 1, --concurrency >= 1")
    return args


def jsonable(obj: Any) -> Any:
    if isinstance(obj, Swarm):
        return [{"index": m.index, "peer": m.peer, "joined_s": m.joined_s, "gone": m.gone}
                for m in obj.members]
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    precompile_dhtshare()
    started = datetime.now(UTC)
    t_start = time.monotonic()
    args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dhts-scale-", dir=args.workdir))
    report = report_header(started, argv, args)
    try:
        rc = run_guarded(bench, args, work, report, t_start)
    finally:
        args.out.mkdir(parents=True, exist_ok=True)
        json_path = args.out / f"scale-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
        json_path.write_text(json.dumps(jsonable(report), indent=1) + "\n")
        md = markdown(report)
        if report["complete"]:
            replace_section(args.out / "scale-latest.md", md, TITLE)
        print(md)
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        log(f"wrote {json_path} ({report['seconds']:.0f} s in all)")
    return rc


if __name__ == "__main__":
    sys.exit(main())
