"""Swarm benchmark: fetch latency on many real node processes, before and right after churn.

    python bench/swarm.py [--nodes 150] [--files 30] [--fetches 60] [--kill-fraction 0.3]
                          [--seed 1] [--out bench/results] [--workdir /tmp] [--budget 900]

Why: ``bench/dht.py`` measures bare DHT lookups inside a few worker processes;
this measures what a user sees.  Every node is a real ``dhtshare node``
process on 127.0.0.1 and every step goes through the CLI, so a fetch pays the
CLI start-up, the DHT lookup from the node's own routing table, the manifest
and the chunks, exactly as it would on a real network.  The question is what
happens to that latency when many nodes vanish without a word (SIGKILL):
their entries stay in everyone's routing tables, and the first lookups that
meet them wait for RPC timeouts.

1. ``dhtshare bootstrap`` and 4 ``dhtshare node --peer BOOT`` (the first five),
   then the other nodes, each joining through one of the first five in turn;
   started ``--batch`` at a time, each batch waiting for every node's
   ``listening on`` line.  The join time is recorded.
2. ``--files`` random files of 64 KiB .. 1 MiB, each published with
   ``--replicas 0`` on a different random node (its holder, never killed).
3. Phase "all alive": ``--fetches`` fetches, one at a time, of a random file
   through a random live node that is not its holder
   (``dhtshare fetch HASH -o OUT --data-dir D --json``).  Latency = CLI wall
   time from spawn to exit; success = exit code 0 and the right SHA-256.
4. SIGKILL of ``round(kill_fraction * nodes)`` random nodes (never a holder
   or the bootstrap), then at once phase "after kill", then ``--wait`` s later
   phase "after kill +N s".
5. After each phase, ``dhtshare status --json`` on ``--status-nodes`` random
   live nodes: routing-table size and how many entries still point at killed
   nodes.

Note that a node that has fetched a file announces itself as a provider of
it, so files gain holders during the run, and some of those are killed: the
fetches after the kill also meet dead provider records (the ``unreachable``
key of fetch's JSON, when dhtshare reports it).

Writes ``<out>/swarm-<timestamp>.json`` (every fetch and number, params, host
info) and, for a complete run, the "Swarm" section of ``<out>/swarm-latest.md``;
prints the Markdown.  Every process is in its own process group and is stopped
at the end, on errors, on Ctrl-C/SIGTERM and when ``--budget`` runs out
(SIGTERM, SIGKILL after a grace).  Everything lives in a temporary directory
under ``--workdir``, removed at the end.  Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dht import pct
from limits import MIB, hash_file
from mdreport import replace_section
from transfer import (
    NODE_START_TIMEOUT,
    READY_RE,
    STOP_GRACE,
    DhtNode,
    dhtshare_argv,
    log,
    precompile_dhtshare,
    proc_status,
    publish,
    run_cli,
    stop_all,
    to_jsonable,
    versions,
)

BENCH = Path(__file__).resolve().parent
KIB = 1 << 10
#: The first five nodes: the bootstrap and four nodes joined through it.
SEEDS = 5
#: One fetch (or status, or publish) may take at most this long.
CLI_TIMEOUT = 60.0
#: The budget alarm fires this long before ``--budget`` so the cleanup fits inside it.
CLEANUP_RESERVE = 2 * STOP_GRACE + 10.0


class BudgetExceeded(BaseException):
    """``--budget`` ran out (a BaseException so no ``except Exception`` swallows it)."""


# -- the swarm ----------------------------------------------------------------------------
@dataclass
class Member:
    """One node process of the swarm and what the bench knows about it."""

    index: int
    node: DhtNode
    peer_port: int | None  # the port it joined through (None: the bootstrap)
    spawned: float
    ready_s: float = math.nan  # spawn -> "listening on", seconds
    alive: bool = True

    @property
    def port(self) -> int:
        return self.node.port

    @property
    def data_dir(self) -> Path:
        return self.node.data_dir


class Interrupts:
    """Ctrl-C, SIGTERM and the budget alarm as exceptions, except inside :meth:`deferred`.

    Not a signal mask: children inherit a blocked mask across exec, and a node
    with SIGTERM blocked could only be stopped with SIGKILL.
    """

    def __init__(self) -> None:
        self.budget = 0.0
        self.depth = 0
        self.pending: int | None = None

    def install(self, budget: float, t_start: float) -> None:
        """Handlers on; the alarm at ``t_start + budget``, less the cleanup's reserve."""
        self.budget = budget
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM):
            signal.signal(sig, self._on_signal)
        left = budget - CLEANUP_RESERVE - (time.monotonic() - t_start)
        signal.setitimer(signal.ITIMER_REAL, max(0.1, left))

    def uninstall(self) -> None:
        """Cancel the alarm and ignore Ctrl-C/SIGTERM: the cleanup is bounded, let it end."""
        signal.setitimer(signal.ITIMER_REAL, 0)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.depth:
            self.pending = self.pending or signum
            return
        self._raise(signum)

    def _raise(self, signum: int) -> None:
        if signum == signal.SIGALRM:
            raise BudgetExceeded(f"--budget {self.budget:g} s ran out")
        raise KeyboardInterrupt(f"signal {signum}")

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold signals for the block: used around starting a node, because an
        exception between the fork and the process being registered for
        :func:`stop_all` would leave that node running forever."""
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if not self.depth and self.pending is not None:
                signum, self.pending = self.pending, None
                self._raise(signum)


INTERRUPTS = Interrupts()


def spawn(index: int, root: Path, peer_port: int | None) -> Member:
    """Start node ``index`` (the bootstrap when ``peer_port`` is None) on 127.0.0.1:0."""
    name = f"n{index:03d}"
    with INTERRUPTS.deferred():
        node = DhtNode(name, root / "nodes" / name, root / "logs", peer_port)
    return Member(index, node, peer_port, time.monotonic())


def wait_batch(batch: list[Member], timeout: float = NODE_START_TIMEOUT) -> None:
    """Wait until every node of ``batch`` printed its ready line (bounded, all at once).

    Polls all of the batch's stdout logs together, so each node's own time to
    ready is recorded, not the time of the slowest one before it.
    """
    deadline = time.monotonic() + timeout
    pending = list(batch)
    while pending:
        for m in list(pending):
            with contextlib.suppress(OSError):
                found = READY_RE.search(m.node.proc.out_path.read_text(errors="replace"))
                if found:
                    m.node.port = int(found.group(1))
                    m.ready_s = time.monotonic() - m.spawned
                    pending.remove(m)
                    continue
            if not m.node.proc.alive():
                raise RuntimeError(f"node {m.index} exited with {m.node.proc.p.returncode}:\n"
                                   f"{m.node.proc.tail()}")
        if pending and time.monotonic() > deadline:
            m = pending[0]
            raise RuntimeError(f"{len(pending)} node(s) not ready in {timeout:.0f} s, e.g. "
                               f"node {m.index}:\n{m.node.proc.tail()}")
        if pending:
            time.sleep(0.05)


def start_swarm(count: int, batch_size: int, root: Path,
                members: list[Member]) -> dict[str, Any]:
    """Start ``count`` nodes into ``members``, a batch at a time; returns the join numbers.

    Batches keep a 2-core machine from being swamped by dozens of Python
    start-ups at once, which would measure the machine, not the join.  Later
    nodes join through the first five in turn, so no single node is everyone's
    entry point (as on a real network).
    """
    t0 = time.monotonic()
    batches: list[dict[str, Any]] = []

    def run_batch(indices: list[int], peer_of: Any) -> None:
        tb = time.monotonic()
        batch = [spawn(i, root, peer_of(i)) for i in indices]
        members.extend(batch)
        wait_batch(batch)
        batches.append({"nodes": indices[0] if len(indices) == 1 else
                        f"{indices[0]}-{indices[-1]}", "wall": time.monotonic() - tb})

    run_batch([0], lambda _i: None)
    boot = members[0].port
    run_batch(list(range(1, min(SEEDS, count))), lambda _i: boot)
    seeds = [m.port for m in members[:SEEDS]]
    for lo in range(SEEDS, count, batch_size):
        run_batch(list(range(lo, min(lo + batch_size, count))),
                  lambda i: seeds[(i - SEEDS) % len(seeds)])
    ready = [m.ready_s for m in members]
    return {
        "wall": time.monotonic() - t0,
        "batch_size": batch_size,
        "batches": batches,
        "ready_median": statistics.median(ready),
        "ready_max": max(ready),
        "peers_used": sorted({m.peer_port for m in members if m.peer_port}),
    }


def kill(members: list[Member], victims: list[int]) -> set[int]:
    """SIGKILL the process groups of ``victims`` (all first, then reap); their ports.

    SIGKILL, not SIGTERM: a node stopped politely tells its contacts it is
    leaving, and the point here is nodes that vanish without a word.
    """
    for i in victims:
        members[i].node.proc.kill_group(signal.SIGKILL)
        members[i].alive = False
    for i in victims:
        with contextlib.suppress(Exception):
            members[i].node.proc.p.wait(5)
    return {members[i].port for i in victims}


# -- files --------------------------------------------------------------------------------
@dataclass
class SharedFile:
    index: int
    path: Path
    size: int
    sha256: str
    holder: int = -1
    hash: str = ""
    publish_wall: float = math.nan
    fetched_by: list[int] = field(default_factory=list)  # nodes that fetched it (they serve it)


def make_files(count: int, seed: int, folder: Path) -> list[SharedFile]:
    """``count`` files of 64 KiB .. 1 MiB of seeded random bytes (same seed, same files)."""
    rng = random.Random(f"swarm-files-{seed}")
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(count):
        path = folder / f"file-{i:03d}.bin"
        path.write_bytes(rng.randbytes(rng.randint(64 * KIB, MIB)))
        digest, _ = hash_file(path)
        files.append(SharedFile(i, path, path.stat().st_size, digest))
    return files


def publish_files(files: list[SharedFile], members: list[Member], rng: random.Random,
                  logdir: Path) -> None:
    """Publish each file on its own random node with ``--replicas 0``: one holder each.

    No replicas, so whether a fetch works depends on finding that one holder
    through the DHT, not on copies placed next to the fetcher.
    """
    holders = rng.sample(range(len(members)), len(files))
    for f, h in zip(files, holders, strict=True):
        t0 = time.perf_counter()
        f.hash, _, _ = publish(members[h].node, f.path, logdir, f"publish-{f.index:03d}",
                               replicas=0, timeout=CLI_TIMEOUT)
        f.publish_wall = time.perf_counter() - t0
        f.holder = h


# -- fetches ------------------------------------------------------------------------------
def fetch_once(f: SharedFile, m: Member, out: Path, logdir: Path, tag: str) -> dict[str, Any]:
    """One ``dhtshare fetch`` through node ``m``: wall time, success, what its JSON says."""
    argv = dhtshare_argv("fetch", f.hash, "-o", str(out), "--data-dir", str(m.data_dir),
                         "--json")
    run = run_cli(argv, CLI_TIMEOUT, logdir, tag)
    info = run.json() or {}
    peers = info.get("peers")
    received = sum(peers.values()) if isinstance(peers, dict) else None
    sha_ok = False
    if run.rc == 0:
        with contextlib.suppress(OSError):
            sha_ok = hash_file(out)[0] == f.sha256
    rec: dict[str, Any] = {
        "file": f.index,
        "size": f.size,
        "node": m.index,
        "node_port": m.port,
        "latency": run.wall,
        "rc": run.rc,
        "ok": run.rc == 0 and sha_ok,
        "sha_ok": sha_ok,
        "elapsed_in_node": info.get("elapsed"),
        "peers": info.get("peers"),
        "unreachable": info.get("unreachable"),
        "bytes_downloaded": info.get("bytes_downloaded"),
        "bytes_received": received,
        "cpu": run.cpu,
    }
    if not rec["ok"]:
        rec["stderr"] = run.stderr.strip()[-1000:]
    return rec


def run_phase(name: str, files: list[SharedFile], members: list[Member], rng: random.Random,
              count: int, work: Path, t_kill: float | None) -> dict[str, Any]:
    """``count`` fetches, one at a time, each of a random file via a random live non-holder.

    One at a time so each latency is that of a lone user on a quiet network,
    not of fetches queueing for the 2 CPUs.
    """
    tag = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    t0 = time.monotonic()
    fetches = []
    for i in range(count):
        f = rng.choice(files)
        m = rng.choice([x for x in members if x.alive and x.index != f.holder])
        out = work / "out" / tag / f"{i:03d}-{f.path.name}"
        out.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        rec = fetch_once(f, m, out, work / "logs" / "cli", f"fetch-{tag}-{i:03d}")
        rec["since_kill"] = None if t_kill is None else started - t_kill
        fetches.append(rec)
        if rec["ok"]:
            f.fetched_by.append(m.index)
    return {"name": name, "started_since_kill": None if t_kill is None else t0 - t_kill,
            "wall": time.monotonic() - t0, "fetches": fetches}


def summarize(phase: dict[str, Any]) -> dict[str, Any]:
    """Median/p95/max over every fetch of a phase (failures count with their wall time)."""
    recs = phase["fetches"]
    lat = [r["latency"] for r in recs if not math.isnan(r["latency"])]
    inner = [r["elapsed_in_node"] for r in recs if isinstance(r["elapsed_in_node"], int | float)]
    unreachable = [r["unreachable"] for r in recs if isinstance(r["unreachable"], list)]
    overhead = [r["bytes_received"] / r["size"] for r in recs
                if r["ok"] and isinstance(r["bytes_received"], int)]
    return {
        "n": len(recs),
        "ok": sum(r["ok"] for r in recs),
        "failures": sum(not r["ok"] for r in recs),
        "median": statistics.median(lat) if lat else math.nan,
        "p95": pct(lat, 95),
        "max": max(lat) if lat else math.nan,
        "in_node_median": statistics.median(inner) if inner else math.nan,
        "over_1s": sum(x >= 1.0 for x in lat),
        "unreachable_reported": len(unreachable) == len(recs) and bool(recs),
        "fetches_with_unreachable": sum(bool(u) for u in unreachable),
        "unreachable_total": sum(len(u) for u in unreachable),
        # bytes the peers sent / file size: above 1 when a chunk came from two peers
        "received_over_size_mean": statistics.fmean(overhead) if overhead else math.nan,
        "fetches_with_duplicate_bytes": sum(x > 1 for x in overhead),
    }


# -- routing tables -----------------------------------------------------------------------
def sample_status(members: list[Member], rng: random.Random, count: int, dead_ports: set[int],
                  logdir: Path, tag: str) -> dict[str, Any]:
    """``dhtshare status --json`` on ``count`` random live nodes: table size, dead entries.

    A SIGKILLed node's entries leave a routing table only when their owner
    notices (a timeout, or a check), and until then the table hands them out to
    every lookup; this shows how many are left at each phase.
    """
    live = [m for m in members if m.alive]
    nodes = rng.sample(live, min(count, len(live)))
    rows = []
    for m in nodes:
        run = run_cli(dhtshare_argv("status", "--data-dir", str(m.data_dir), "--json"),
                      CLI_TIMEOUT, logdir, f"status-{tag}-{m.index:03d}")
        info = run.json()
        row: dict[str, Any] = {"node": m.index, "rc": run.rc, "wall": run.wall}
        if info is None:
            row["error"] = run.stderr.strip()[-500:]
        else:
            row["contacts"] = info.get("contacts")
            row["contacts_answered_recently"] = info.get("contacts_answered_recently")
            table = info.get("routing_table")
            if isinstance(table, list):
                ports = [int(e["address"].rsplit(":", 1)[1]) for e in table]
                row["table_entries"] = len(ports)
                row["dead_entries"] = sum(p in dead_ports for p in ports)
                dead_ago = [e.get("seen_ago") for e in table
                            if int(e["address"].rsplit(":", 1)[1]) in dead_ports]
                row["dead_seen_ago"] = dead_ago
        rows.append(row)
    contacts = [r["contacts"] for r in rows if isinstance(r.get("contacts"), int)]
    tabled = [r for r in rows if "table_entries" in r]
    return {
        "nodes": rows,
        "sampled": len(rows),
        "errors": sum("error" in r for r in rows),
        "contacts_median": statistics.median(contacts) if contacts else math.nan,
        "table_reported": bool(tabled),
        "table_entries": sum(r["table_entries"] for r in tabled),
        "dead_entries": sum(r["dead_entries"] for r in tabled),
        "nodes_with_dead": sum(r["dead_entries"] > 0 for r in tabled),
    }


# -- node logs ----------------------------------------------------------------------------
LEVEL_RE = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b (\S+): (.*)")


def log_summary(logdir: Path) -> dict[str, Any]:
    """Warnings and errors the nodes logged, grouped by message shape (numbers elided).

    The temp dir is removed at the end, so this is what survives of the logs.
    """
    shapes: Counter[str] = Counter()
    tracebacks = 0
    for path in sorted(logdir.glob("n*.err")):
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines():
                tracebacks += line.startswith("Traceback")
                found = LEVEL_RE.search(line)
                if found:
                    msg = re.sub(r"[0-9a-f]{16,}|\d+(\.\d+)?", "#", found.group(3))
                    shapes[f"{found.group(1)} {found.group(2)}: {msg[:160]}"] += 1
    return {"tracebacks": tracebacks, "top": shapes.most_common(15),
            "total": sum(shapes.values())}


# -- report -------------------------------------------------------------------------------
def secs(v: float | None) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{v:.3f} s"


def two_places(v: float | None) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{v:.2f}"


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The team's goals, each with its measured value."""
    by = {p["key"]: p["summary"] for p in report.get("phases", [])}
    out = []

    def add(name: str, key: str, field_: str, limit: str, test: Any) -> None:
        if key in by:
            v = by[key][field_]
            out.append({"target": name, "value": v, "limit": limit, "met": bool(test(v))})

    add("after-kill median latency, s", "after_kill", "median", "< 0.5", lambda v: v < 0.5)
    add("after-kill failures", "after_kill", "failures", "== 0", lambda v: v == 0)
    add("all-alive failures", "all_alive", "failures", "== 0", lambda v: v == 0)
    return out


def markdown(r: dict[str, Any]) -> str:
    p = r["params"]
    lines = [
        "## Swarm",
        "",
        f"`python bench/swarm.py {' '.join(r['argv'])}` at {r['started']} on {r['host']['name']} "
        f"({r['host']['cpus']} CPUs, load {r['host']['loadavg_start'][0]:.1f} at start), "
        f"dhtshare {r['versions'].get('dhtshare', '?')}: {p['nodes']} `dhtshare node` processes "
        f"on 127.0.0.1, joined through the first {SEEDS} in turn, {p['batch']} at a time; "
        f"{p['files']} files of 64 KiB .. 1 MiB, each published with `--replicas 0` on its own "
        f"node; {p['fetches']} CLI fetches per phase, one at a time, of a random file through "
        f"a random live node that is not its holder.  Whole run {r.get('seconds', 0):.0f} s"
        f"{'' if r.get('complete') else ' (**incomplete**: ' + r.get('error', '?') + ')'}.",
        "",
    ]
    j = r.get("join")
    if j:
        lines += [
            f"Joining took {j['wall']:.1f} s for {p['nodes']} nodes "
            f"(spawn to `listening on`: median {j['ready_median']:.2f} s, max "
            f"{j['ready_max']:.2f} s), then {p['settle']:g} s of settling.",
            "",
        ]
    if r.get("killed") is not None:
        k = r["killed"]
        lines += [
            f"Then {len(k['nodes'])} of {p['nodes']} nodes ({p['kill_fraction']:.0%}) are "
            f"SIGKILLed (never a holder or the bootstrap; {k['extra_holders_killed']} of them "
            f"had fetched a file in an earlier phase and announced it).",
            "",
        ]
    lines += [
        "| phase | fetches | success | median | p95 | max latency | in-node median "
        "| fetches >= 1 s | fetches that met unreachable providers |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for ph in r.get("phases", []):
        s = ph["summary"]
        name = ph["name"]
        if ph["started_since_kill"] is not None:
            name += f" (starts {ph['started_since_kill']:.1f} s after)"
        unr = (f"{s['fetches_with_unreachable']} ({s['unreachable_total']} providers)"
               if s["unreachable_reported"] else "n/a")
        lines.append(f"| {name} | {s['n']} | {s['ok']}/{s['n']} | {secs(s['median'])} "
                     f"| {secs(s['p95'])} | {secs(s['max'])} | {secs(s['in_node_median'])} "
                     f"| {s['over_1s']} | {unr} |")
    lines += [
        "",
        "Latency = `dhtshare fetch` wall time from spawn to exit (over every fetch, failed "
        "ones included); success = exit 0 and the right SHA-256; in-node = the fetch's own "
        "`elapsed` (without CLI start-up).",
        "",
    ]
    dup = [ph["summary"] for ph in r.get("phases", [])]
    if dup:
        lines += [
            "Bytes the peers sent / file size, mean per phase: "
            + ", ".join(f"{two_places(s['received_over_size_mean'])} "
                        f"({s['fetches_with_duplicate_bytes']} fetches above 1)" for s in dup)
            + " (above 1: a chunk was received from two peers, the endgame's duplicates).",
            "",
        ]
    nl = r.get("node_logs")
    if nl:
        lines += [f"Node logs (default level): {nl['total']} warnings or errors, "
                  f"{nl['tracebacks']} tracebacks.", ""]
    st = [ph for ph in r.get("phases", []) if ph.get("status")]
    if st:
        lines += [
            f"Routing tables, sampled with `dhtshare status --json` on {p['status_nodes']} "
            "random live nodes after each phase:",
            "",
            "| after phase | nodes | median contacts | table entries | entries pointing at "
            "killed nodes | nodes with any |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for ph in st:
            s = ph["status"]
            tab = s["table_reported"]
            lines.append(
                f"| {ph['name']} | {s['sampled'] - s['errors']}/{s['sampled']} "
                f"| {s['contacts_median']:g} | {s['table_entries'] if tab else 'n/a'} "
                f"| {s['dead_entries'] if tab else 'n/a'} "
                f"| {s['nodes_with_dead'] if tab else 'n/a'} |")
        lines.append("")
    tg = r.get("targets", [])
    if tg:
        lines += ["### Targets", "", "| target | measured | wanted | met |", "|---|---:|---|---|"]
        for t in tg:
            v = t["value"]
            shown = secs(v) if isinstance(v, float) else str(v)
            lines.append(f"| {t['target']} | {shown} | {t['limit']} "
                         f"| {'yes' if t['met'] else '**no**'} |")
        lines.append("")
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------------
def bench(args: argparse.Namespace, work: Path, report: dict[str, Any]) -> None:
    """The run itself; fills ``report`` as it goes, so an abort still leaves the numbers."""
    rng = random.Random(args.seed)
    logdir = work / "logs"
    members: list[Member] = []
    report["members"] = members  # rendered at the end, whatever happens
    log(f"starting {args.nodes} nodes, {args.batch} at a time")
    report["join"] = start_swarm(args.nodes, args.batch, work, members)
    log(f"joined in {report['join']['wall']:.1f} s; settling {args.settle:g} s")
    time.sleep(args.settle)

    files = make_files(args.files, args.seed, work / "files")
    report["files"] = files
    publish_files(files, members, rng, logdir / "cli")
    log(f"published {len(files)} files, median "
        f"{statistics.median(f.publish_wall for f in files):.2f} s each")

    phases: list[dict[str, Any]] = []
    report["phases"] = phases

    def phase(key: str, name: str, t_kill: float | None, dead: set[int]) -> None:
        ph = run_phase(name, files, members, rng, args.fetches, work, t_kill)
        ph["key"] = key
        ph["summary"] = summarize(ph)
        phases.append(ph)
        s = ph["summary"]
        log(f"{name}: {s['ok']}/{s['n']} ok, median {secs(s['median'])}, p95 "
            f"{secs(s['p95'])}, max {secs(s['max'])}")
        ph["status"] = sample_status(members, rng, args.status_nodes, dead, logdir / "cli", key)

    phase("all_alive", "all alive", None, set())

    holders = {f.holder for f in files}
    candidates = [m.index for m in members if m.index != 0 and m.index not in holders]
    victims = sorted(rng.sample(candidates, min(len(candidates),
                                                round(args.kill_fraction * args.nodes))))
    extra = {i for f in files for i in f.fetched_by}
    dead = kill(members, victims)
    t_kill = time.monotonic()
    report["killed"] = {"nodes": victims, "ports": sorted(dead),
                        "extra_holders_killed": len(extra.intersection(victims))}
    log(f"SIGKILLed {len(victims)} nodes")
    phase("after_kill", "after kill", t_kill, dead)
    time.sleep(args.wait)
    phase("after_kill_later", f"after kill +{args.wait:g} s", t_kill, dead)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=150, help="node processes, bootstrap included")
    ap.add_argument("--files", type=int, default=30, help="files, one holder each")
    ap.add_argument("--fetches", type=int, default=60, help="fetches per phase")
    ap.add_argument("--kill-fraction", type=float, default=0.3)
    ap.add_argument("--wait", type=float, default=10.0,
                    help="seconds between the after-kill phase and the last one")
    ap.add_argument("--batch", type=int, default=10, help="nodes started at a time")
    ap.add_argument("--settle", type=float, default=3.0,
                    help="seconds after joining before anything else (background refreshes)")
    ap.add_argument("--status-nodes", type=int, default=10,
                    help="live nodes whose routing table is sampled per phase")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=BENCH / "results")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    ap.add_argument("--budget", type=float, default=900.0,
                    help="hard limit on the whole run, seconds (cleanup included)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = ap.parse_args(argv)
    if args.nodes < SEEDS + 1:
        ap.error(f"--nodes must be at least {SEEDS + 1}")
    if not 1 <= args.files <= args.nodes - 1:
        ap.error("--files must be 1 to nodes - 1 (one holder each, never the same node)")
    if args.fetches < 1 or args.batch < 1 or not 0 <= args.kill_fraction < 1:
        ap.error("need --fetches >= 1, --batch >= 1 and 0 <= --kill-fraction < 1")
    if args.budget <= CLEANUP_RESERVE + 10:
        ap.error(f"--budget must be more than {CLEANUP_RESERVE + 10:g} s")
    return args


def jsonable(obj: Any) -> Any:
    """Members and files as plain dicts, then transfer.py's NaN-safe conversion."""
    if isinstance(obj, Member):
        return {"index": obj.index, "port": obj.port, "peer_port": obj.peer_port,
                "ready_s": obj.ready_s, "alive": obj.alive}
    if isinstance(obj, SharedFile):
        return {"index": obj.index, "size": obj.size, "sha256": obj.sha256, "hash": obj.hash,
                "holder": obj.holder, "publish_wall": obj.publish_wall,
                "fetched_by": obj.fetched_by}
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    return to_jsonable(obj)


def report_header(started: datetime, argv: list[str],
                  args: argparse.Namespace) -> dict[str, Any]:
    """What every real-process bench report starts with: when, how, on what machine."""
    return {
        "started": started.strftime("%Y-%m-%d %H:%M:%SZ"),
        "argv": argv,
        "params": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "host": {"name": platform.node(), "cpus": os.cpu_count(),
                 "python": platform.python_version(), "platform": platform.platform(),
                 "loadavg_start": os.getloadavg()},
        "versions": {k: v for k, v in versions().items() if k != "libtorrent"},
        "complete": False,
        "fds_at_start": open_fds(),
    }


def run_guarded(
    bench_fn: Callable[[argparse.Namespace, Path, dict[str, Any]], None],
    args: argparse.Namespace, work: Path, report: dict[str, Any], t_start: float,
) -> int:
    """Run a real-process bench within ``--budget``, then stop every node, whatever happens.

    Fills ``report`` with the outcome (``complete`` or ``error``), the stop
    time, the node logs' warnings and the run's length; returns the exit code.
    """
    rc = 1
    try:
        INTERRUPTS.install(args.budget, t_start)
        bench_fn(args, work, report)
        report["complete"] = True
        rc = 0
    except KeyboardInterrupt as err:
        report["error"] = f"interrupted ({err})"
        log("interrupted: stopping everything")
        rc = 130
    except BudgetExceeded as err:
        report["error"] = str(err)
        log(f"{err}: stopping everything")
    except Exception as err:
        report["error"] = f"{type(err).__name__}: {err}"
        log(f"failed: {report['error']}")
    finally:
        INTERRUPTS.uninstall()
        t_stop = time.monotonic()
        stop_all()
        report["stop_seconds"] = time.monotonic() - t_stop
        report["node_logs"] = log_summary(work / "logs")
        report["seconds"] = time.monotonic() - t_start
        report["host"]["loadavg_end"] = os.getloadavg()
    return rc


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    precompile_dhtshare()  # as an installed package has it: see transfer.py

    started = datetime.now(UTC)
    t_start = time.monotonic()
    args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dhtshare-swarm-", dir=args.workdir))
    report = report_header(started, argv, args)
    try:
        rc = run_guarded(bench, args, work, report, t_start)
    finally:
        report["orchestrator_vmhwm"] = proc_status(os.getpid()).get("VmHWM")
        report["fds_at_end"] = open_fds()
        report["targets"] = targets(report)
        args.out.mkdir(parents=True, exist_ok=True)
        json_path = args.out / f"swarm-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
        json_path.write_text(json.dumps(jsonable(report), indent=1) + "\n")
        md = markdown(report)
        if report["complete"]:
            replace_section(args.out / "swarm-latest.md", md, "## Swarm")
        print(md)
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        log(f"wrote {json_path} ({report['seconds']:.0f} s in all, stopping took "
            f"{report['stop_seconds']:.1f} s)")
    return rc


if __name__ == "__main__":
    sys.exit(main())
