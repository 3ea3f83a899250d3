"""DHT benchmark: a multi-process loopback network of ``dhtshare.net.dht.client.Dht`` nodes.

    python bench/dht.py [--nodes 50] [--procs 5] [--lookups 1000] [--out bench/results]

Spawns ``--procs`` worker processes (``bench/dht_worker.py``), each hosting
``nodes/procs`` DHT nodes on 127.0.0.1, all joined through node 0, and drives
them over JSON lines on their stdin/stdout.  It measures:

1. the publish cost of a 1 GiB manifest (1024 chunks of 1 MiB): dhtshare
   announces one provider record per (provider, manifest), so a publish is one
   ``announce`` of the manifest hash; for contrast, the cost of a per-chunk
   scheme (1024 announces of the chunk hashes, 8 at a time);
2. provider-lookup latency and success with every node alive;
3. the same after 30 % of the nodes are killed abruptly (``stop()`` without
   ``withdraw``: their sockets just go silent), immediately and again 10 s
   later, split into hashes whose only provider survived and hashes that had
   two providers of which one was killed; plus the cost of a new announce.

Writes ``<out>/dht-<timestamp>.json``, prints a Markdown report and puts it as
the "DHT" section of ``<out>/dht-latest.md``.  Every worker is stopped on exit
(``quit``, then kill after a grace period); workers also exit on their own
when stdin closes or after ``--budget`` + 30 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mdreport import replace_section

from dhtshare.config import GIB, MIB
from dhtshare.core.manifest import Manifest

WORKER = Path(__file__).with_name("dht_worker.py")
LINE_LIMIT = 1 << 24
CALL_TIMEOUT = 75.0


# -- workers ------------------------------------------------------------------------------
class WorkerProc:
    """One worker process and its JSON-line request/response channel."""

    def __init__(self, proc: int, count: int, max_life: float) -> None:
        self.proc = proc
        self.count = count
        self.max_life = max_life
        self.p: asyncio.subprocess.Process | None = None
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.next_id = 0
        self.reader_task: asyncio.Task[None] | None = None
        self.ready: asyncio.Future[list[dict[str, Any]]] | None = None
        #: Set by :meth:`hard_kill` (the process may take a moment to be reaped).
        self.killed = False

    async def start(self) -> list[dict[str, Any]]:
        self.ready = asyncio.get_running_loop().create_future()
        self.p = await asyncio.create_subprocess_exec(
            sys.executable,
            str(WORKER),
            "--proc",
            str(self.proc),
            "--count",
            str(self.count),
            "--max-life",
            str(self.max_life),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=LINE_LIMIT,
        )
        self.reader_task = asyncio.create_task(self._read())
        return await asyncio.wait_for(self.ready, 30)

    async def _read(self) -> None:
        assert self.p is not None
        assert self.p.stdout is not None
        try:
            while True:
                line = await self.p.stdout.readline()
                if not line:
                    break
                msg = json.loads(line)
                if "ready" in msg:
                    if self.ready is not None and not self.ready.done():
                        self.ready.set_result(msg["ready"])
                    continue
                fut = self.pending.pop(msg.get("id"), None)
                if fut is None or fut.done():
                    continue
                if msg.get("ok"):
                    fut.set_result(msg["result"])
                else:
                    fut.set_exception(RuntimeError(f"worker {self.proc}: {msg.get('error')}"))
        finally:
            err = RuntimeError(f"worker {self.proc} exited")
            if self.ready is not None and not self.ready.done():
                self.ready.set_exception(err)
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(err)
            self.pending.clear()

    async def call(self, cmd: str, timeout: float = CALL_TIMEOUT, **kw: Any) -> Any:
        assert self.p is not None
        assert self.p.stdin is not None
        self.next_id += 1
        rid = self.next_id
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        self.p.stdin.write((json.dumps({"id": rid, "cmd": cmd, **kw}) + "\n").encode())
        await self.p.stdin.drain()
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self.pending.pop(rid, None)

    @property
    def running(self) -> bool:
        return self.p is not None and self.p.returncode is None and not self.killed

    async def hard_kill(self) -> None:
        """SIGKILL: the process, its nodes and their sockets vanish at once."""
        self.killed = True
        if self.p is not None and self.p.returncode is None:
            self.p.kill()
            await asyncio.wait_for(self.p.wait(), 5)

    async def close(self) -> None:
        if self.p is None:
            return
        try:
            if self.p.returncode is None:
                with contextlib.suppress(Exception):
                    await self.call("quit", timeout=3)
                if self.p.stdin is not None:
                    self.p.stdin.close()
                try:
                    await asyncio.wait_for(self.p.wait(), 5)
                except TimeoutError:
                    self.p.kill()
                    await asyncio.wait_for(self.p.wait(), 5)
        finally:
            if self.p.returncode is None:
                self.p.kill()
            if self.reader_task is not None:
                self.reader_task.cancel()


@dataclass
class NodeRef:
    g: int
    worker: WorkerProc
    local: int
    id: str
    port: int
    alive: bool = True


@dataclass
class Network:
    workers: list[WorkerProc]
    nodes: list[NodeRef] = field(default_factory=list)
    #: One node per worker process: a kill is the process's SIGKILL.
    per_process: bool = False

    async def call(self, g: int, cmd: str, **kw: Any) -> Any:
        ref = self.nodes[g]
        return await ref.worker.call(cmd, node=ref.local, **kw)

    def live(self) -> list[WorkerProc]:
        return [w for w in self.workers if w.running]

    async def stats(self) -> list[dict[str, Any]]:
        """Every node's stats, of the processes still running (killed ones report nothing)."""
        out: list[dict[str, Any]] = []
        for res in await asyncio.gather(*(w.call("stats") for w in self.live())):
            out.extend(res["nodes"])
        return out

    async def counters(self) -> Counter[str]:
        """Datagrams sent and received so far by every node of the running processes.

        A killed process takes its counts with it; the scale bench only
        differences counters across operations during which nobody is killed.
        """
        c: Counter[str] = Counter()
        for res in (await self.counters_by_worker()).values():
            c.update(res)
        return c

    async def counters_by_worker(self) -> dict[int, Counter[str]]:
        live = self.live()
        return {w.proc: Counter(res) for w, res in
                zip(live, await asyncio.gather(*(w.call("counters") for w in live)), strict=True)}

    async def record_holders(self, hashes: list[str]) -> list[int]:
        """For each hash, how many nodes hold at least one record of it."""
        held = [0] * len(hashes)
        for res in await asyncio.gather(
            *(w.call("has_record", hashes=hashes) for w in self.live())
        ):
            for row in res["records"]:
                for i, n in enumerate(row):
                    held[i] += n > 0
        return held

    async def kill(self, gs: Iterable[int]) -> None:
        by_worker: dict[int, list[int]] = {}
        for g in gs:
            ref = self.nodes[g]
            ref.alive = False
            by_worker.setdefault(ref.worker.proc, []).append(ref.local)
        if self.per_process:
            await asyncio.gather(*(self.workers[p].hard_kill() for p in by_worker))
            return
        await asyncio.gather(
            *(self.workers[p].call("kill", nodes=locs) for p, locs in by_worker.items())
        )


def totals(stats: list[dict[str, Any]]) -> Counter[str]:
    c: Counter[str] = Counter()
    for s in stats:
        c.update(s["stats"])
    return c


# -- statistics ---------------------------------------------------------------------------
def run_bounded(
    bench_fn: Callable[[argparse.Namespace, Callable[[str], None]], Any],
    args: argparse.Namespace,
) -> tuple[dict[str, Any], datetime]:
    """Run a bench coroutine within ``--budget``; its report, stamped with when and where."""

    async def run() -> dict[str, Any]:
        result: dict[str, Any] = await asyncio.wait_for(bench_fn(args, log), args.budget)
        return result

    try:
        report = asyncio.run(run())
    except TimeoutError:
        sys.exit(f"dht bench: exceeded --budget {args.budget:g} s; workers stopped, no report")
    now = datetime.now(UTC)
    report["when"] = now.strftime("%Y-%m-%d %H:%M UTC")
    report["host"] = (
        f"{platform.node()} ({os.cpu_count()} CPUs, Python {platform.python_version()})"
    )
    return report, now


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); nan for an empty list."""
    if not values:
        return math.nan
    s = sorted(values)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


def ms(v: float) -> str:
    if math.isnan(v):
        return "n/a"
    return f"{v * 1000:.0f} ms" if v < 10 else f"{v:.1f} s"


def rate(ok: int, n: int) -> str:
    return f"{ok}/{n} ({100 * ok / n:.0f} %)" if n else "n/a"


# -- the benchmark ------------------------------------------------------------------------
@dataclass
class Target:
    hash: str
    providers: list[int]  # global node indices
    kind: str  # "single" (one provider, survives) or "dual" (two, one gets killed)


async def lookup_once(net: Network, t: Target, g: int) -> dict[str, Any]:
    """One provider lookup of ``t`` from node ``g``; success = every live provider found."""
    try:
        res = await net.call(g, "lookup", hash=t.hash)
    except Exception as err:  # a bounded failure is a result too
        return {
            "hash": t.hash,
            "kind": t.kind,
            "from": g,
            "error": str(err),
            "latency": math.nan,
            "ok": False,
            "stale": False,
            "op": {},
        }
    found = {(p[0], p[2]) for p in res["providers"]}
    live = [p for p in t.providers if net.nodes[p].alive]
    dead = [p for p in t.providers if not net.nodes[p].alive]
    ok = all((net.nodes[p].id, net.nodes[p].port) in found for p in live)
    stale = any(net.nodes[p].id in {f[0] for f in found} for p in dead)
    return {
        "hash": t.hash,
        "kind": t.kind,
        "from": g,
        "latency": res["latency"],
        "cost": res.get("cost", {}),
        "found": len(found),
        "ok": ok,
        "stale": stale,
        "op": res["op"],
    }


async def run_lookups(
    net: Network,
    rng: random.Random,
    targets: list[Target],
    count: int,
    concurrency: int,
    askers: list[int] | None = None,
) -> list[dict[str, Any]]:
    """``count`` lookups of random targets from random live non-provider nodes.

    ``askers`` limits who asks (the scale bench: nodes that finished joining).
    """
    plan = []
    pool = [r.g for r in net.nodes if r.alive] if askers is None else askers
    for _ in range(count):
        t = rng.choice(targets)
        plan.append((t, rng.choice([g for g in pool if g not in t.providers])))
    sem = asyncio.Semaphore(concurrency)

    async def one(t: Target, g: int) -> dict[str, Any]:
        async with sem:
            return await lookup_once(net, t, g)

    return list(await asyncio.gather(*(one(t, g) for t, g in plan)))


def timeout_pairs(results: list[dict[str, Any]]) -> Counter[tuple[int, int]]:
    return Counter((r["from"], port) for r in results for port in r["op"].get("timeout_ports", []))


def dead_in_tables(stats: list[dict[str, Any]], dead_ports: set[int]) -> dict[str, int]:
    """Routing-table entries of live nodes that point at killed nodes."""
    per_node = [len(dead_ports.intersection(s["contact_ports"])) for s in stats if s["alive"]]
    return {
        "entries": sum(per_node),
        "nodes_with_any": sum(n > 0 for n in per_node),
        "live_nodes": len(per_node),
        "dead_cache_entries": sum(s["dead_cache"] for s in stats if s["alive"]),
    }


def summarize_lookups(
    name: str, results: list[dict[str, Any]], concurrency: int, since_kill: float | None = None
) -> dict[str, Any]:
    lat = [r["latency"] for r in results if not math.isnan(r["latency"])]
    blocked = [r["op"].get("blocked_on_timeouts", 0.0) for r in results]
    by_kind = {}
    for kind in ("single", "dual"):
        rs = [r for r in results if r["kind"] == kind]
        by_kind[kind] = {
            "n": len(rs),
            "ok": sum(r["ok"] for r in rs),
            "stale": sum(r["stale"] for r in rs),
        }
    sent = [sum(v for k, v in r["op"].items() if k.startswith("tx_")) for r in results]
    # (asking node, dead node) pairs: the dead-peer cache is per node, so each pair
    # costs at least one timeout; more than one means concurrent lookups of the same
    # node all waited on the same corpse before the first timeout filled the cache.
    pairs = timeout_pairs(results)
    return {
        "name": name,
        "concurrency": concurrency,
        "since_kill_s": since_kill,
        "n": len(results),
        "ok": sum(r["ok"] for r in results),
        "errors": sum("error" in r for r in results),
        "by_kind": by_kind,
        "median": statistics.median(lat) if lat else math.nan,
        "p95": pct(lat, 95),
        "p99": pct(lat, 99),
        "max": max(lat) if lat else math.nan,
        "mean": statistics.fmean(lat) if lat else math.nan,
        "rpcs_per_lookup": statistics.fmean(sent) if sent else 0.0,
        "timeouts_per_lookup": statistics.fmean(r["op"].get("timeouts", 0) for r in results),
        "dead_skips_per_lookup": statistics.fmean(r["op"].get("dead_skips", 0) for r in results),
        "blocked_share": (sum(blocked) / sum(lat)) if lat and sum(lat) else 0.0,
        "blocked_mean_s": statistics.fmean(blocked) if blocked else 0.0,
        "timeouts_total": sum(pairs.values()),
        "timeout_pairs": len(pairs),
        "lookups_with_timeouts": sum(bool(r["op"].get("timeouts")) for r in results),
        "slow_over_1s": sum(x >= 1.0 for x in lat),
        **cost_summary(results),
    }


def cost_summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """What the lookups themselves report (queries, hops, stale queries), if they do."""
    costs = [r["cost"] for r in results if r.get("cost")]
    if not costs:
        return {"hops_max": None}
    hops = [c["hops"] for c in costs]
    return {
        "queries_per_lookup": statistics.fmean(c["queries"] for c in costs),
        "stale_per_lookup": statistics.fmean(c["stale"] for c in costs),
        "failures_per_lookup": statistics.fmean(c["failures"] for c in costs),
        "hops_median": statistics.median(hops),
        "hops_p95": pct([float(h) for h in hops], 95),
        "hops_p99": pct([float(h) for h in hops], 99),
        "hops_max": max(hops),
    }


def summarize_announces(name: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    walls = [i["wall"] for i in items]
    stored = [i["stored"] for i in items]
    return {
        "name": name,
        "n": len(items),
        "median": statistics.median(walls) if walls else math.nan,
        "p95": pct(walls, 95),
        "max": max(walls) if walls else math.nan,
        "stored_median": statistics.median(stored) if stored else 0,
        "stored_min": min(stored) if stored else 0,
        "timeouts_per_announce": statistics.fmean(i["op"].get("timeouts", 0) for i in items)
        if items
        else 0.0,
    }


async def announce(net: Network, g: int, hashes: list[str], concurrency: int = 1) -> dict[str, Any]:
    return dict(
        await net.call(
            g,
            "announce",
            hashes=hashes,
            concurrency=concurrency,
            op_timeout=CALL_TIMEOUT + 45,
            timeout=CALL_TIMEOUT + 60,
        )
    )


def op_sum(items: list[dict[str, Any]]) -> Counter[str]:
    c: Counter[str] = Counter()
    for i in items:
        c.update(
            {k: v for k, v in i["op"].items() if isinstance(v, int) and k != "blocked_on_timeouts"}
        )
    return c


async def bench(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    rng = random.Random(args.seed)
    procs = max(1, min(args.procs, args.nodes))
    counts = [args.nodes // procs + (p < args.nodes % procs) for p in range(procs)]
    workers = [WorkerProc(p, c, args.budget + 30) for p, c in enumerate(counts)]
    net = Network(workers)
    report: dict[str, Any] = {"params": vars(args) | {"procs": procs}}
    t_start = time.monotonic()
    try:
        # -- start and join -------------------------------------------------------------
        readies = await asyncio.gather(*(w.start() for w in workers))
        for w, ready in zip(workers, readies, strict=True):
            for local, info in enumerate(ready):
                net.nodes.append(NodeRef(len(net.nodes), w, local, info["id"], info["port"]))
        seed = ["127.0.0.1", net.nodes[0].port]
        t0 = time.monotonic()
        for ref in net.nodes[1:]:  # nodes join one after another, as a network grows
            res = await net.call(ref.g, "bootstrap", peer=seed)
            if res["answered"] != 1:
                raise RuntimeError(f"node {ref.g} could not join through node 0")
        join_wall = time.monotonic() - t0
        # The first nodes joined a near-empty network.  Before 2026-12 a node never
        # refreshed its table on its own (kademlia does it hourly), so the bench
        # gave every node a second join; --rejoin-pass measures that old setup.
        t0 = time.monotonic()
        if args.rejoin_pass:
            for ref in net.nodes[1:]:
                await net.call(ref.g, "bootstrap", peer=seed)
        await asyncio.sleep(args.settle)  # let background table refreshes finish
        refresh_wall = time.monotonic() - t0
        contacts = [s["contacts"] for s in await net.stats()]
        report["join"] = {
            "wall": join_wall,
            "refresh_wall": refresh_wall,
            "contacts_min": min(contacts),
            "contacts_median": statistics.median(contacts),
            "contacts_max": max(contacts),
        }
        log(
            f"joined {args.nodes} nodes in {procs} processes: {join_wall:.1f} s "
            f"(+{refresh_wall:.1f} s settling), routing table sizes "
            f"{min(contacts)}..{max(contacts)}"
        )

        # -- 1. publish cost --------------------------------------------------------------
        manifests = [
            Manifest(f"bench-{i}.bin", GIB, MIB, os.urandom(32 * (GIB // MIB)))
            for i in range(args.publish_trials)
        ]
        publishes = []
        for m in manifests:
            g = rng.randrange(args.nodes)
            before = totals(await net.stats())
            res = await announce(net, g, [m.hash.hex()])
            after = totals(await net.stats())
            item = res["items"][0]
            publishes.append(
                {
                    "node": g,
                    "wall": item["wall"],
                    "stored": item["stored"],
                    "op": item["op"],
                    "records_created": after["stored"] - before["stored"],
                    "rpcs_received": sum(
                        after[k] - before[k] for k in after if k.startswith("rx_")
                    ),
                }
            )
        holders = await net.record_holders([m.hash.hex() for m in manifests])
        m0, g0 = manifests[0], publishes[0]["node"]
        chunk_hashes = [m0.chunk_hash(i).hex() for i in range(m0.chunk_count)]
        pub_median = statistics.median(p["wall"] for p in publishes)
        log(
            f"publish (1 record/manifest): median {ms(pub_median)}"
            f", stores {[p['stored'] for p in publishes]}; now per-chunk contrast "
            f"({len(chunk_hashes)} announces, concurrency {args.chunk_concurrency})"
        )
        before = totals(await net.stats())
        res = await announce(net, g0, chunk_hashes, args.chunk_concurrency)
        after = totals(await net.stats())
        per_chunk_ops = op_sum(res["items"])
        per_chunk = {
            "node": g0,
            "announces": len(chunk_hashes),
            "concurrency": args.chunk_concurrency,
            "wall": res["wall"],
            "stored": sum(i["stored"] for i in res["items"]),
            "records_created": after["stored"] - before["stored"],
            "rpcs_received": sum(after[k] - before[k] for k in after if k.startswith("rx_")),
            "op": dict(per_chunk_ops),
            "announce_median": statistics.median(i["wall"] for i in res["items"]),
            "announce_p95": pct([i["wall"] for i in res["items"]], 95),
        }
        report["publish"] = {
            "manifest": {
                "size": GIB,
                "chunk_size": MIB,
                "chunks": m0.chunk_count,
                "encoded_bytes": len(m0.encode()),
            },
            "per_manifest": publishes,
            "holders_per_manifest": holders,
            "per_chunk": per_chunk,
        }
        log(f"per-chunk: {per_chunk['wall']:.1f} s, {per_chunk['stored']} stores")

        # -- 1b. where records land: many keys, each announced by a random node ----------
        load_keys = [os.urandom(32).hex() for _ in range(args.load_keys)]
        sem = asyncio.Semaphore(args.concurrency)

        async def load_one(h: str) -> None:
            async with sem:
                await announce(net, rng.randrange(args.nodes), [h])

        t0 = time.monotonic()
        await asyncio.gather(*(load_one(h) for h in load_keys))
        per_node = sorted(s["records"] for s in await net.stats())
        report["load"] = {
            "keys": len(load_keys),
            "wall": time.monotonic() - t0,
            "records_min": per_node[0],
            "records_median": statistics.median(per_node),
            "records_p99": pct([float(x) for x in per_node], 99),
            "records_max": per_node[-1],
        }
        sa = [x["stale_after"] for x in await net.stats() if x.get("stale_after")]
        if sa:
            log(f"stale-after estimates: median {ms(statistics.median(sa))}, max {ms(max(sa))}")
        log(f"records per node after {len(load_keys)} more announces: median "
            f"{report['load']['records_median']:g}, max {per_node[-1]}")

        # -- 2. lookups with every node alive --------------------------------------------
        n_kill = round(args.nodes * args.kill_fraction)
        doomed = rng.sample(range(args.nodes), n_kill)
        survivors = [g for g in range(args.nodes) if g not in doomed]
        targets = [
            Target(os.urandom(32).hex(), [rng.choice(survivors)], "single")
            for _ in range(args.hashes)
        ]
        for victim in rng.sample(doomed, min(args.dual, n_kill)):
            targets.append(Target(os.urandom(32).hex(), [rng.choice(survivors), victim], "dual"))
        setup_items = []
        for t in targets:
            for g in t.providers:
                setup_items += (await announce(net, g, [t.hash]))["items"]
        report["announce_before_kill"] = summarize_announces("before kill", setup_items)
        passes = []
        res1 = await run_lookups(net, rng, targets, args.lookups, 1)
        passes.append(summarize_lookups("all alive, one at a time", res1, 1))
        resc = await run_lookups(net, rng, targets, args.lookups, args.concurrency)
        passes.append(summarize_lookups("all alive", resc, args.concurrency))
        log(
            f"lookups, all alive: median {ms(passes[0]['median'])}, p95 {ms(passes[0]['p95'])},"
            f" ok {passes[0]['ok']}/{passes[0]['n']}"
        )

        # -- 3. kill 30 % ------------------------------------------------------------------
        await net.kill(doomed)
        t_kill = time.monotonic()
        dead_ports = {net.nodes[g].port for g in doomed}
        tables = [dead_in_tables(await net.stats(), dead_ports)]
        log(
            f"killed {n_kill} nodes ({len(targets) - args.hashes} of them providers of a "
            f"2-provider hash); lookups at concurrency {args.concurrency}"
        )
        fresh = [os.urandom(32).hex() for _ in range(2 * args.after_announces)]
        ann_nodes = rng.sample(survivors, min(len(survivors), args.after_announces))

        async def announces_after(hashes: list[str]) -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = []
            for g, h in zip(ann_nodes, hashes, strict=False):
                items += [i | {"from": g} for i in (await announce(net, g, [h]))["items"]]
            return items

        p1_since = time.monotonic() - t_kill
        res_k1, ann1 = await asyncio.gather(
            run_lookups(net, rng, targets, args.lookups, args.concurrency),
            announces_after(fresh[: args.after_announces]),
        )
        passes.append(
            summarize_lookups("after kill, immediately", res_k1, args.concurrency, p1_since)
        )
        tables.append(dead_in_tables(await net.stats(), dead_ports))
        report["announce_after_kill"] = summarize_announces("after kill, immediately", ann1)
        log(
            f"  immediately: median {ms(passes[-1]['median'])}, p95 {ms(passes[-1]['p95'])}, "
            f"ok {passes[-1]['ok']}/{passes[-1]['n']} ({time.monotonic() - t_kill:.1f} s)"
        )
        await asyncio.sleep(args.wait)
        p2_since = time.monotonic() - t_kill
        res_k2 = await run_lookups(net, rng, targets, args.lookups, args.concurrency)
        passes.append(
            summarize_lookups(f"after kill, +{args.wait:g} s", res_k2, args.concurrency, p2_since)
        )
        # The same once more one at a time: at 16 in flight on a 2-core machine
        # the rows above also measure CPU queueing; this one only the lookups.
        res_k3 = await run_lookups(net, rng, targets, args.lookups, 1)
        passes.append(summarize_lookups(f"after kill, +{args.wait:g} s, one at a time", res_k3,
                                        1, time.monotonic() - t_kill))
        ann2 = await announces_after(fresh[args.after_announces :])
        report["announce_after_kill_later"] = summarize_announces(
            f"after kill, +{args.wait:g} s", ann2
        )
        log(
            f"  +{args.wait:g} s: median {ms(passes[-1]['median'])}, p95 "
            f"{ms(passes[-1]['p95'])}, ok {passes[-1]['ok']}/{passes[-1]['n']}"
        )
        final = await net.stats()
        tables.append(dead_in_tables(final, dead_ports))
        again = set(timeout_pairs(res_k1)) & set(timeout_pairs(res_k2 + ann2))
        report["lookups"] = passes
        report["kill"] = {
            "killed": n_kill,
            "doomed": sorted(doomed),
            "dead_cache_median": statistics.median(s["dead_cache"] for s in final if s["alive"]),
            "contacts_median_after": statistics.median(s["contacts"] for s in final if s["alive"]),
            "dead_in_tables": dict(
                zip(["after kill", "after first round", "after second round"], tables, strict=True)
            ),
            "pairs_timed_out_twice": len(again),
        }
        report["raw"] = {
            "lookups_before": res1,
            "lookups_before_conc": resc,
            "lookups_after": res_k1,
            "lookups_after_later": res_k2,
            "announces_after": ann1,
            "announces_after_later": ann2,
            # Each node's contact ports were only needed to count dead entries.
            "node_stats": [{k: v for k, v in st.items() if k != "contact_ports"}
                           for st in final],
        }
        report["wall"] = time.monotonic() - t_start
        return report
    finally:
        await asyncio.gather(*(w.close() for w in workers), return_exceptions=True)


# -- report -------------------------------------------------------------------------------
def markdown(r: dict[str, Any]) -> str:
    p = r["params"]
    pub = r["publish"]
    per = pub["per_manifest"]
    chunk = pub["per_chunk"]
    med = statistics.median
    lines = [
        "## DHT",
        "",
        f"`python bench/dht.py --nodes {p['nodes']} --procs {p['procs']} "
        f"--lookups {p['lookups']}` at {r['when']} on {r['host']}: {p['nodes']} "
        f"`dhtshare.net.dht.client.Dht` nodes (RPC timeout 1.5 s, dead-peer cache 300 s) in "
        f"{p['procs']} processes on 127.0.0.1, joined one by one through node 0 "
        f"({r['join']['wall']:.1f} s"
        f"{', then a second join each' if p.get('rejoin_pass') else ''}); routing tables hold "
        f"{r['join']['contacts_min']}..{r['join']['contacts_max']} contacts "
        f"(median {r['join']['contacts_median']:g}).  Whole run {r['wall']:.0f} s.",
        "",
        f"### Publish cost of a 1 GiB file ({pub['manifest']['chunks']} chunks of 1 MiB)",
        "",
        "| scheme | announces | wall | DHT stores confirmed | add_provider RPCs sent "
        "| get_providers RPCs sent | records created across nodes | RPCs received (all nodes) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| one record per manifest (dhtshare), median of {len(per)} "
        f"| 1 | {ms(med(x['wall'] for x in per))} | {med(x['stored'] for x in per):g} "
        f"| {med(x['op'].get('tx_add_provider', 0) for x in per):g} "
        f"| {med(x['op'].get('tx_get_providers', 0) for x in per):g} "
        f"| {med(x['records_created'] for x in per):g} "
        f"| {med(x['rpcs_received'] for x in per):g} |",
        f"| one record per chunk (contrast), {chunk['concurrency']} at a time "
        f"| {chunk['announces']} | {ms(chunk['wall'])} | {chunk['stored']} "
        f"| {chunk['op'].get('tx_add_provider', 0)} | {chunk['op'].get('tx_get_providers', 0)} "
        f"| {chunk['records_created']} | {chunk['rpcs_received']} |",
        "",
        f"Per-manifest publishes: walls "
        f"{', '.join(ms(x['wall']) for x in per)}; nodes holding a record afterwards "
        f"(8 holders + the provider itself): {pub['holders_per_manifest']}.  Per-chunk: "
        f"each announce took median {ms(chunk['announce_median'])}, p95 "
        f"{ms(chunk['announce_p95'])}.",
        "",
        f"Where records land: after {r['load']['keys']} more keys, each announced by a "
        f"random node, nodes hold median {r['load']['records_median']:g} records, p99 "
        f"{r['load']['records_p99']:g}, max {r['load']['records_max']} (max / median "
        f"{r['load']['records_max'] / max(1, r['load']['records_median']):.2f}).",
        "",
        "### Provider lookups",
        "",
        f"{p['hashes']} hashes with one provider (which survives the kill) and {p['dual']} "
        f"with two (one of which is killed); {p['lookups']} lookups per row of a random "
        f"hash from a random live node that is not its provider.  Success = every live "
        f"provider found (right node id and port).  Then {r['kill']['killed']} of "
        f"{p['nodes']} nodes ({p['kill_fraction']:.0%}) are stopped without withdrawing.",
        "",
        "| phase | concurrency | success | sole provider alive | 1 of 2 providers alive "
        "| median | p95 | max | RPCs / lookup | stale queries / lookup | hops median / max "
        "| time blocked on timeouts |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in r["lookups"]:
        name = s["name"]
        if s["since_kill_s"] is not None:
            name += f" (starts {s['since_kill_s']:.1f} s after)"
        k1, k2 = s["by_kind"]["single"], s["by_kind"]["dual"]
        lines.append(
            f"| {name} | {s['concurrency']} | {rate(s['ok'], s['n'])} "
            f"| {rate(k1['ok'], k1['n'])} | {rate(k2['ok'], k2['n'])} "
            f"| {ms(s['median'])} | {ms(s['p95'])} | {ms(s['max'])} "
            f"| {s['rpcs_per_lookup']:.1f} "
            f"| {_num(s.get('stale_per_lookup'), '.2f')} "
            f"| {_num(s.get('hops_median'), 'g')} / {_num(s.get('hops_max'), 'g')} "
            f"| {100 * s['blocked_share']:.0f} % |"
        )
    after = [s for s in r["lookups"] if s["since_kill_s"] is not None]
    stale = sum(s["by_kind"]["dual"]["stale"] for s in after)
    nd = sum(s["by_kind"]["dual"]["n"] for s in after)
    k1s, k2s = after[0], after[min(1, len(after) - 1)]
    tabs = r["kill"]["dead_in_tables"]
    t0, t1, t2 = (tabs[k] for k in ("after kill", "after first round", "after second round"))
    lines += [
        "",
        f"Where the time goes after the kill: {100 * k1s['blocked_share']:.0f} % of the "
        f"first round's lookup time is spent waiting for 1.5 s RPC timeouts "
        f"(mean {k1s['blocked_mean_s']:.2f} s per lookup for {k1s['timeouts_per_lookup']:.2f} "
        f"timeouts; {k1s['lookups_with_timeouts']}/{k1s['n']} lookups hit at least one).  "
        f"The first round had {k1s['timeouts_total']} timeouts over {k1s['timeout_pairs']} "
        f"distinct (asking node, dead node) pairs: "
        f"{k1s['timeouts_total'] - k1s['timeout_pairs']} were concurrent lookups of one node "
        f"waiting on a corpse it was already waiting on.  Live nodes' routing tables held "
        f"{t0['entries']} entries pointing at killed nodes right after the kill "
        f"({t0['nodes_with_any']}/{t0['live_nodes']} nodes), {t1['entries']} after the first "
        f"round and {t2['entries']} after the second: an entry only goes when its owner "
        f"itself times out on it, and until then it is handed to every asker.  The second "
        f"round still had {k2s['timeouts_total']} timeouts ({k2s['lookups_with_timeouts']}/"
        f"{k2s['n']} lookups); {r['kill']['pairs_timed_out_twice']} (node, corpse) pairs timed "
        f"out in both rounds.",
        "",
        f"After the kill, {stale} of {nd} lookups of a 2-provider hash still returned the "
        f"killed provider's record (records live 30 min; a fetcher loses one refused "
        f"connection on it).",
        "",
        "### Announce latency",
        "",
        "| phase | announces | median | p95 | max | stores confirmed, median (min) "
        "| timeouts / announce |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key in ("announce_before_kill", "announce_after_kill", "announce_after_kill_later"):
        a = r[key]
        lines.append(
            f"| {a['name']} | {a['n']} | {ms(a['median'])} | {ms(a['p95'])} | {ms(a['max'])} "
            f"| {a['stored_median']:g} ({a['stored_min']}) | {a['timeouts_per_announce']:.2f} |"
        )
    lines.append("")
    return "\n".join(lines)


def _num(v: float | None, fmt: str) -> str:
    return "n/a" if v is None else format(v, fmt)


# -- scale: a network of hundreds (issue 11) ----------------------------------------------
SCALE_TITLE = "## DHT at scale"
#: Worker processes started at once (each imports dhtshare: ~0.3 s of CPU).
SPAWN_BATCH = 40


@dataclass
class Scale:
    """One network of the scale bench, and who in it may be killed or asked.

    Providers of lookup targets are never killed (a lookup of a hash whose
    only provider is dead has nothing to find), nor are nodes with a lookup
    in flight (their answer would be lost, not wrong); nodes still joining
    are not asked.
    """

    net: Network
    args: argparse.Namespace
    rng: random.Random
    max_life: float
    joined: set[int] = field(default_factory=set)
    protected: set[int] = field(default_factory=set)
    busy: Counter[int] = field(default_factory=Counter)
    #: Node processes started ahead of a churn phase, not yet joined (see :meth:`add_node`).
    spares: list[tuple[WorkerProc, dict[str, Any]]] = field(default_factory=list)

    async def prestart(self, count: int) -> None:
        """Start ``count`` one-node processes now, for the churn's joins to use.

        A Python process importing dhtshare costs ~0.3 s of CPU (over 1 s on
        a 2-core machine running hundreds of nodes): started during the churn,
        that would be measured as lookup latency.  A started node that has not
        joined is in nobody's table, so it is no part of the network yet.
        """
        if not self.net.per_process:
            return
        ws = [WorkerProc(len(self.net.workers) + i, 1, self.max_life) for i in range(count)]
        self.net.workers.extend(ws)
        for i in range(0, len(ws), SPAWN_BATCH):
            batch = ws[i:i + SPAWN_BATCH]
            for w, ready in zip(batch, await asyncio.gather(*(w.start() for w in batch)),
                                strict=True):
                self.spares.append((w, ready[0]))

    def askers(self) -> list[int]:
        return [g for g in sorted(self.joined) if self.net.nodes[g].alive]

    def killable(self) -> list[int]:
        return [g for g in self.askers() if g not in self.protected and not self.busy[g]]

    async def close(self) -> None:
        await asyncio.gather(*(w.close() for w in self.net.workers), return_exceptions=True)

    async def add_node(self) -> dict[str, float]:
        """A new node (its own process, or a new instance in the emptiest one) joins.

        It joins through a random live node, as a node restarting from its
        saved contacts would, not always through one seed.
        """
        net = self.net
        t0 = time.monotonic()
        if self.spares:
            w, info = self.spares.pop()
        elif net.per_process:
            w = WorkerProc(len(net.workers), 1, self.max_life)
            net.workers.append(w)
            info = (await w.start())[0]
        else:
            live = net.live()
            w = min(live, key=lambda x: sum(r.alive for r in net.nodes if r.worker is x))
            info = (await w.call("spawn", count=1))["nodes"][0]
        g = len(net.nodes)
        net.nodes.append(NodeRef(g, w, info["local"], info["id"], info["port"]))
        started = time.monotonic() - t0
        peer = net.nodes[self.rng.choice(self.askers())]
        res = await net.call(g, "bootstrap", peer=["127.0.0.1", peer.port])
        if res["answered"]:
            self.joined.add(g)
        return {"start": started, "join": res["wall"], "answered": res["answered"]}


async def build(args: argparse.Namespace, n: int, rng: random.Random,
                log: Callable[[str], None]) -> tuple[Scale, dict[str, Any]]:
    """Start ``n`` nodes and join them one after another through node 0, as a network grows."""
    per = max(1, args.per_proc)
    procs = math.ceil(n / per)
    counts = [n // procs + (p < n % procs) for p in range(procs)]
    max_life = args.budget + 30
    workers = [WorkerProc(p, c, max_life) for p, c in enumerate(counts)]
    sc = Scale(Network(workers, per_process=per == 1), args, rng, max_life)
    try:
        t0 = time.monotonic()
        for i in range(0, len(workers), SPAWN_BATCH):
            batch = workers[i:i + SPAWN_BATCH]
            for w, ready in zip(batch, await asyncio.gather(*(w.start() for w in batch)),
                                strict=True):
                for info in ready:
                    sc.net.nodes.append(
                        NodeRef(len(sc.net.nodes), w, info["local"], info["id"], info["port"]))
        spawn_wall = time.monotonic() - t0
        seed = ["127.0.0.1", sc.net.nodes[0].port]
        sc.joined.add(0)
        walls = []
        t0 = time.monotonic()
        for ref in sc.net.nodes[1:]:
            res = await sc.net.call(ref.g, "bootstrap", peer=seed)
            if res["answered"] != 1:
                raise RuntimeError(f"node {ref.g} could not join through node 0")
            walls.append(res["wall"])
            sc.joined.add(ref.g)
        join_wall = time.monotonic() - t0
        await asyncio.sleep(args.settle)  # the joins' background table refreshes
        contacts = [s["contacts"] for s in await sc.net.stats()]
    except BaseException:
        await sc.close()
        raise
    join = {
        "nodes": n, "procs": procs, "spawn_wall": spawn_wall, "wall": join_wall,
        "per_node_median": statistics.median(walls), "per_node_p95": pct(walls, 95),
        "per_node_max": max(walls), "contacts_min": min(contacts),
        "contacts_median": statistics.median(contacts), "contacts_max": max(contacts),
    }
    log(f"{n} nodes in {procs} processes: started in {spawn_wall:.1f} s, joined in "
        f"{join_wall:.1f} s (per node median {ms(join['per_node_median'])}), tables "
        f"{min(contacts)}..{max(contacts)}")
    return sc, join


async def packet_costs(sc: Scale, trials: int) -> dict[str, Any]:
    """DHT datagrams per publish, per provider lookup and per fetch, one operation at a time.

    Each is the sum over every node of datagrams sent, from just before the
    operation to ``--quiet`` seconds after it (so that what it sets off at
    other nodes counts too), less the background rate measured on the idle
    network over the same time.
    """
    net, rng, quiet = sc.net, sc.rng, sc.args.quiet
    # Queries that lookups left behind end within the 1.5 s RPC timeout (and a
    # timeout sends its hints then): they are not the idle network's background.
    await asyncio.sleep(2.0)
    c0 = await net.counters()
    t0 = time.monotonic()
    await asyncio.sleep(2.0)
    idle = time.monotonic() - t0
    background = ((await net.counters())["pkt_tx"] - c0["pkt_tx"]) / idle

    async def measured(fn: Callable[[], Any]) -> tuple[Any, float, float]:
        before = await net.counters()
        t = time.monotonic()
        out = await fn()
        await asyncio.sleep(quiet)
        window = time.monotonic() - t
        sent = (await net.counters())["pkt_tx"] - before["pkt_tx"]
        return out, sent - background * window, sent

    pubs: list[dict[str, Any]] = []
    published: list[tuple[str, int]] = []
    for _ in range(trials):
        g, h = rng.choice(sc.askers()), os.urandom(32).hex()
        res, pk, raw = await measured(lambda g=g, h=h: announce(net, g, [h]))  # type: ignore[misc]
        item = res["items"][0]
        pubs.append({"packets": pk, "raw": raw, "own": item["op"].get("pkt_tx", 0),
                     "stored": item["stored"], "wall": item["wall"]})
        published.append((h, g))
    looks: list[dict[str, Any]] = []
    fetches: list[dict[str, Any]] = []
    for h, provider in published:
        t = Target(h, [provider], "single")
        g = rng.choice([x for x in sc.askers() if x != provider])
        res, pk, raw = await measured(lambda t=t, g=g: lookup_once(net, t, g))  # type: ignore[misc]
        looks.append({"packets": pk, "raw": raw, "own": res["op"].get("pkt_tx", 0),
                      "ok": res["ok"], "wall": res["latency"]})
        g = rng.choice([x for x in sc.askers() if x != provider])
        res, pk, raw = await measured(
            lambda h=h, g=g: net.call(g, "fetch", hash=h))  # type: ignore[misc]
        fetches.append({
            "packets": pk, "raw": raw, "ok": res["lookup"]["found"] >= 1, "wall": res["wall"],
            "own_lookup": res["lookup"]["op"].get("pkt_tx", 0),
            "own_announces": sum(a["op"].get("pkt_tx", 0) for a in res["announces"]),
            "stored": [a["stored"] for a in res["announces"]],
        })

    def agg(items: list[dict[str, Any]]) -> dict[str, Any]:
        pk = [i["packets"] for i in items]
        return {"n": len(pk), "median": statistics.median(pk), "mean": statistics.fmean(pk),
                "max": max(pk), "wall_median": statistics.median(i["wall"] for i in items)}

    return {"background_per_s": background, "quiet_s": quiet,
            "publish": agg(pubs) | {"stored_min": min(p["stored"] for p in pubs)},
            "lookup": agg(looks) | {"ok": sum(x["ok"] for x in looks)},
            "fetch": agg(fetches) | {"ok": sum(x["ok"] for x in fetches)},
            "raw": {"publish": pubs, "lookup": looks, "fetch": fetches}}


async def record_load(sc: Scale, keys: int) -> dict[str, Any]:
    """Announce ``keys`` random keys from random nodes; records each node holds for others."""
    sem = asyncio.Semaphore(16)

    async def one() -> None:
        async with sem:
            await announce(sc.net, sc.rng.choice(sc.askers()), [os.urandom(32).hex()])

    await asyncio.gather(*(one() for _ in range(keys)))
    per_node = sorted(s["records"] for s in await sc.net.stats() if s["alive"])
    med = statistics.median(per_node)
    return {"keys": keys, "nodes": len(per_node), "min": per_node[0], "median": med,
            "p99": pct([float(x) for x in per_node], 99), "max": per_node[-1],
            "ratio": per_node[-1] / max(med, 1)}


async def make_targets(sc: Scale, count: int) -> list[Target]:
    """``count`` fresh hashes, each announced by one random node, which is then protected."""
    targets = []
    for _ in range(count):
        g = sc.rng.choice([x for x in sc.askers() if x not in sc.protected])
        t = Target(os.urandom(32).hex(), [g], "single")
        await announce(sc.net, g, [t.hash])
        sc.protected.add(g)
        targets.append(t)
    return targets


async def churn(sc: Scale, targets: list[Target], duration: float, rate: float,
                concurrency: int, log: Callable[[str], None]) -> dict[str, Any]:
    """For ``duration`` s, ``rate`` times a second one node dies (SIGKILL) and a new one joins.

    ``concurrency`` lookups are in flight all the while.  The joiners'
    processes are started beforehand (:meth:`Scale.prestart`); each step's
    kill and join run in a task of their own so the schedule holds while a
    slow join is under way; everything ends by ``duration`` + 30 s.
    """
    net, rng = sc.net, sc.rng
    await sc.prestart(int(duration * rate))
    await asyncio.sleep(1.0)  # the spares' start-up CPU is over
    t_start = time.monotonic()
    t_end = t_start + duration
    results: list[dict[str, Any]] = []
    joins: list[dict[str, float]] = []
    killed: list[int] = []
    max_lookups = int(duration * 500)

    async def looker() -> None:
        while time.monotonic() < t_end and len(results) < max_lookups:
            t = rng.choice(targets)
            g = rng.choice([x for x in sc.askers() if x not in t.providers])
            sc.busy[g] += 1
            try:
                r = await lookup_once(net, t, g)
            finally:
                sc.busy[g] -= 1
            results.append(r | {"at": time.monotonic() - t_start})

    async def step() -> None:
        victims = sc.killable()
        if victims:
            v = rng.choice(victims)
            killed.append(v)
            await net.kill([v])
        joins.append(await sc.add_node())

    steps: list[asyncio.Task[None]] = []
    before = await net.counters_by_worker()

    async def scheduler() -> None:
        for i in range(int(duration * rate)):
            await asyncio.sleep(max(0.0, t_start + i / rate - time.monotonic()))
            steps.append(asyncio.create_task(step()))

    try:
        async with asyncio.timeout(duration + 30):
            await asyncio.gather(scheduler(), *(looker() for _ in range(concurrency)))
            step_results = await asyncio.gather(*steps, return_exceptions=True)
    finally:
        for task in steps:
            task.cancel()
    errors = [repr(e) for e in step_results if isinstance(e, BaseException)]
    # What the nodes alive at the end sent during the churn (and its stragglers'
    # 1.5 s): the killed took their counters with them.
    await asyncio.sleep(2.0)
    sent: Counter[str] = Counter()
    for proc, c in (await net.counters_by_worker()).items():
        sent.update(c)
        sent.subtract(before.get(proc, Counter()))
    summary = summarize_lookups(f"during churn ({duration:g} s)", results, concurrency)
    series = []  # per 10 s of the churn: is it steady, or getting worse?
    for lo in range(0, math.ceil(duration), 10):
        lat = [x["latency"] for x in results if lo <= x.get("at", 0) < lo + 10
               and not math.isnan(x["latency"])]
        series.append({"from_s": lo, "n": len(lat), "median": statistics.median(lat) if lat
                       else math.nan, "p95": pct(lat, 95),
                       "ok": sum(x["ok"] for x in results if lo <= x.get("at", 0) < lo + 10)})
    jw = [j["join"] for j in joins]
    sw = [j["start"] for j in joins]
    log(f"churn {duration:g} s: {len(killed)} killed, {len(joins)} joined; lookups "
        f"{summary['ok']}/{summary['n']} ok, median {ms(summary['median'])}, p95 "
        f"{ms(summary['p95'])}, p99 {ms(summary['p99'])}")
    return {
        "duration": duration, "rate": rate, "wall": time.monotonic() - t_start,
        "killed": len(killed), "joined": len(joins),
        "joined_ok": sum(1 for j in joins if j["answered"]), "step_errors": errors,
        "join_median": statistics.median(jw) if jw else math.nan,
        "join_p95": pct(jw, 95), "start_median": statistics.median(sw) if sw else math.nan,
        "killed_ports": [net.nodes[g].port for g in killed],
        "series": series,
        "sent": dict(sent), "sent_per_lookup": sent["pkt_tx"] / max(1, len(results)),
        "lookups": summary, "raw_lookups": results,
    }


async def lookup_rows(sc: Scale, targets: list[Target], name: str, count: int,
                      since: float | None = None) -> list[dict[str, Any]]:
    """``count`` lookups one at a time, then ``count`` at ``--concurrency`` in flight."""
    rows = []
    for conc in (1, sc.args.concurrency):
        t = None if since is None else time.monotonic() - since
        res = await run_lookups(sc.net, sc.rng, targets, count, conc, sc.askers())
        rows.append(summarize_lookups(name, res, conc, t))
    return rows


async def kill_level(args: argparse.Namespace, n: int, fraction: float, rng: random.Random,
                     log: Callable[[str], None]) -> dict[str, Any]:
    """A fresh network, aged by ``--warm-churn`` s of churn, loses ``fraction`` of its nodes.

    The targets are announced after the warm-up (real nodes re-announce
    every 10 minutes; this is a kill right after one), then ``fraction`` of
    the nodes (never a target's provider) die at once: lookups at
    ``--concurrency`` in flight immediately, then one at a time ``--wait``
    s later.
    """
    sc, join = await build(args, n, rng, log)
    try:
        warm_targets = await make_targets(sc, 5)
        warm = await churn(sc, warm_targets, args.warm_churn, 1.0, 4, log)
        targets = await make_targets(sc, args.targets)
        stale_before = await stale_estimates(sc)
        victims = rng.sample(sc.killable(), round(len(sc.askers()) * fraction))
        await sc.net.kill(victims)
        t_kill = time.monotonic()
        log(f"killed {len(victims)} of {len(victims) + len(sc.askers())} ({fraction:.0%})")
        first = await run_lookups(sc.net, rng, targets, args.scale_lookups, args.concurrency,
                                  sc.askers())
        rows = [summarize_lookups("immediately", first, args.concurrency, 0.0)]
        await asyncio.sleep(max(0.0, t_kill + args.wait - time.monotonic()))
        stale = {"before_kill": stale_before, "before_later": await stale_estimates(sc)}
        t = time.monotonic() - t_kill
        later = await run_lookups(sc.net, rng, targets, args.scale_lookups, 1, sc.askers())
        rows.append(summarize_lookups(f"+{args.wait:g} s", later, 1, t))
        stale["end"] = await stale_estimates(sc)
        log("  stale-after estimates (median / p90 / max ms): " + ", ".join(
            f"{k} {1000 * v['median']:.0f} / {1000 * v['p90']:.0f} / {1000 * v['max']:.0f}"
            for k, v in stale.items()))
        for r in rows:
            log(f"  {fraction:.0%} killed, {r['name']}: {r['ok']}/{r['n']} ok, median "
                f"{ms(r['median'])}, p95 {ms(r['p95'])}, p99 {ms(r['p99'])}")
        return {"fraction": fraction, "nodes": n, "killed": len(victims), "join": join,
                "warm": {k: v for k, v in warm.items() if k != "raw_lookups"}, "rows": rows,
                "stale_after": stale,
                "raw_lookups": {"immediately": first, "later": later}}
    finally:
        await sc.close()


async def stale_estimates(sc: Scale) -> dict[str, float]:
    """How long live nodes wait before a query stops holding a lookup up (their RTT estimate)."""
    est = [st["stale_after"] for st in await sc.net.stats()
           if st["alive"] and st.get("stale_after") is not None]
    return {"median": statistics.median(est), "p90": pct(est, 90), "max": max(est)}


def strip_raw(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not k.startswith("raw")}


async def scale_bench(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    """The whole scale run: a size sweep, churn at the largest size, then the kill levels."""
    rng = random.Random(args.seed)
    report: dict[str, Any] = {"params": vars(args) | {"mode": "scale"}, "sizes": [],
                              "kills": []}
    t_start = time.monotonic()
    for n in args.sizes:
        sc, join = await build(args, n, rng, log)
        try:
            entry: dict[str, Any] = {"nodes": n, "join": join}
            entry["packets"] = await packet_costs(sc, args.packet_trials)
            pk = entry["packets"]
            log(f"  packets per publish {pk['publish']['median']:.0f}, per lookup "
                f"{pk['lookup']['median']:.0f}, per fetch {pk['fetch']['median']:.0f} "
                f"(background {pk['background_per_s']:.1f}/s)")
            entry["load"] = await record_load(sc, args.load_per_node * n)
            log(f"  record load max/median {entry['load']['ratio']:.2f} "
                f"({entry['load']['max']}/{entry['load']['median']:g})")
            targets = await make_targets(sc, args.targets)
            entry["alive"] = await lookup_rows(sc, targets, "all alive", args.scale_lookups)
            for r in entry["alive"]:
                log(f"  alive, {r['concurrency']} in flight: median {ms(r['median'])}, p95 "
                    f"{ms(r['p95'])}, p99 {ms(r['p99'])}, hops max {r['hops_max']}")
            if n in args.churn_sizes:
                ch = await churn(sc, targets, args.churn, 1.0, args.churn_concurrency, log)
                dead_ports = set(ch.pop("killed_ports"))
                entry["churn"] = ch
                entry["churn_tables"] = dead_in_tables(await sc.net.stats(), dead_ports)
                entry["after_churn"] = await lookup_rows(sc, targets, "after churn",
                                                         args.scale_lookups)
                entry["packets_after_churn"] = await packet_costs(sc, args.packet_trials)
                entry["load_after_churn"] = await record_load(sc, 0)
                for r in entry["after_churn"]:
                    log(f"  after churn, {r['concurrency']} in flight: {r['ok']}/{r['n']} ok,"
                        f" median {ms(r['median'])}, p95 {ms(r['p95'])}, p99 {ms(r['p99'])}")
        finally:
            await sc.close()
        report["sizes"].append(entry)
    for f in args.kill_levels:
        report["kills"].append(await kill_level(args, args.kill_size, f, rng, log))
    report["wall"] = time.monotonic() - t_start
    return report


def scale_markdown(r: dict[str, Any]) -> str:
    """The scale run as Markdown: what was run, the tables, and the goals."""
    p = r["params"]
    sizes = r["sizes"]
    per = p["per_proc"]
    how = ("one node per process (each its own Python interpreter, event loop and socket)"
           if per == 1 else f"{per} DHT instances per process")
    cmd = (f"python bench/dht.py --scale --sizes {','.join(map(str, p['sizes']))} "
           f"--per-proc {per} --scale-lookups {p['scale_lookups']} --churn {p['churn']:g}")
    lines = [
        SCALE_TITLE, "",
        f"`{cmd}` at {r['when']} on {r['host']}, load average {r['load_before']} at start: "
        f"`dhtshare.net.dht.client.Dht` nodes on 127.0.0.1, {how}.  Whole run "
        f"{r['wall']:.0f} s.", "",
        "### Sizes (all nodes alive)", "",
        "Joined one after another through node 0; join = that node's `bootstrap` (ping, "
        "lookup of its own id; the table refresh goes on in the background).  "
        f"{p['scale_lookups']} lookups per row of {p['targets']} hashes, each with one "
        "provider, from random nodes; latency inside the asking node's process.", "",
        "| nodes | processes | join, all (per node median / p95) | routing table min / median "
        "| one at a time: median / p95 / p99 | 16 in flight: median / p95 / p99 "
        "| hops median / p95 / max (log2 N) | found | record load max / median (p99) |",
        "|---:|---:|---|---|---|---|---|---:|---|",
    ]
    for e in sizes:
        j, a1, a16, ld = e["join"], e["alive"][0], e["alive"][1], e["load"]
        ok = a1["ok"] + a16["ok"]
        n = a1["n"] + a16["n"]
        lines.append(
            f"| {e['nodes']} | {j['procs']} | {j['wall']:.1f} s ({ms(j['per_node_median'])} / "
            f"{ms(j['per_node_p95'])}) | {j['contacts_min']} / {j['contacts_median']:g} "
            f"| {_lat(a1)} | {_lat(a16)} | {_hops(a1, a16)} ({math.log2(e['nodes']):.1f}) "
            f"| {100 * ok / n:.2f} % | {ld['ratio']:.2f} ({ld['max']} / {ld['median']:g}; "
            f"{ld['p99']:g}) |")
    lines += [
        "",
        f"Record load: after {p['load_per_node']} random keys per node, each announced by a "
        "random node (plus the bench's own), records each node holds for others.",
        "",
        "### DHT packets per operation", "",
        "Datagrams sent by all nodes together (requests and answers, and anything the "
        f"operation sets off elsewhere), from just before it to {p['quiet']:g} s after, less "
        f"the idle network's background over that time; median (max) of "
        f"{p['packet_trials']} operations run one at a time.  A fetch = what `dhtshare "
        "fetch` of a small file makes the DHT do: one provider lookup of the manifest hash "
        "(`ProviderSource`), an announce after the first verified chunk "
        "(`Node.chunk_verified`) and one when complete (`Ops.fetch`); a download that "
        "outlasts 0.2 s adds one lookup at 0.2, 0.6 and 1.4 s and then every 2 s while "
        "it has fewer than 16 peers.", "",
        "| nodes | per publish | per provider lookup | per fetch | stores per publish (min) "
        "| background, all nodes |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    rows = [(str(e["nodes"]), e["packets"]) for e in sizes]
    rows += [(f"{e['nodes']}, after {e['churn']['duration']:g} s churn",
              e["packets_after_churn"]) for e in sizes if "churn" in e]
    for name, pk in rows:
        lines.append(
            f"| {name} | {pk['publish']['median']:.0f} ({pk['publish']['max']:.0f}) "
            f"| {pk['lookup']['median']:.0f} ({pk['lookup']['max']:.0f}) "
            f"| {pk['fetch']['median']:.0f} ({pk['fetch']['max']:.0f}) "
            f"| 8 ({pk['publish']['stored_min']}) | {pk['background_per_s']:.1f} /s |")
    churned = [e for e in sizes if "churn" in e]
    if churned:
        e = churned[0]
        ch = e["churn"]
        lines += [
            "", f"### Steady churn at {e['nodes']} nodes", "",
            f"For {ch['duration']:g} s, once a second a random node is SIGKILLed (never a "
            "target's provider or a node with a lookup in flight) and a new node process "
            "starts and joins through a random live node; "
            f"{p['churn_concurrency']} lookups in flight throughout.  Targets were "
            "announced before the churn and not re-announced (real nodes re-announce every "
            f"10 min).  {ch['killed']} killed, {ch['joined_ok']}/{ch['joined']} joined "
            f"(process start median {ms(ch['start_median'])}, join median "
            f"{ms(ch['join_median'])}, p95 {ms(ch['join_p95'])}).  Afterwards live tables "
            f"held {e['churn_tables']['entries']} entries pointing at killed nodes.  The "
            f"nodes alive at the end sent {ch['sent'].get('pkt_tx', 0)} datagrams during "
            f"the churn, {ch['sent_per_lookup']:.1f} per lookup, "
            f"{ch['sent'].get('req_suspect', 0)} of them `suspect` hints and "
            f"{ch['sent'].get('req_ping', 0)} pings.", "",
            "| phase | in flight | lookups | found | median | p95 | p99 | max | hops max "
            "| RPCs / lookup | time blocked on 1.5 s timeouts |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for s in [*e["alive"], ch["lookups"], *e["after_churn"]]:
            lines.append(
                f"| {s['name']} | {s['concurrency']} | {s['n']} | {_pct(s)} "
                f"| {ms(s['median'])} | {ms(s['p95'])} | {ms(s['p99'])} | {ms(s['max'])} "
                f"| {s['hops_max']} | {s['rpcs_per_lookup']:.1f} "
                f"| {100 * s['blocked_share']:.0f} % |")
        la = e["load_after_churn"]
        lines += ["", f"Record load after the churn: max / median {la['ratio']:.2f} "
                  f"({la['max']} / {la['median']:g})."]
    if r["kills"]:
        k0 = r["kills"][0]
        lines += [
            "", f"### Killing 10, 30 and 50 % at once ({k0['nodes']} nodes)", "",
            "Each level on a freshly built network, aged first by "
            f"{p['warm_churn']:g} s of churn (one node killed and one joined a second, "
            f"4 lookups in flight); then {p['targets']} hashes are announced, and that "
            "fraction of the nodes (never a provider) is SIGKILLed at once.  Found = the "
            "provider found.  \"immediately\": lookups start right after the kill, "
            f"{p['concurrency']} in flight; \"+{p['wait']:g} s\": one at a time from "
            f"{p['wait']:g} s after it.", "",
            "| killed | phase | in flight | lookups | found | median | p95 | p99 | max "
            "| hops max | stale queries / lookup | time blocked on 1.5 s timeouts |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for k in r["kills"]:
            for s in k["rows"]:
                lines.append(
                    f"| {k['killed']} ({k['fraction']:.0%}) | {s['name']} | {s['concurrency']} "
                    f"| {s['n']} | {_pct(s)} | {ms(s['median'])} | {ms(s['p95'])} "
                    f"| {ms(s['p99'])} | {ms(s['max'])} | {s['hops_max']} "
                    f"| {_num(s.get('stale_per_lookup'), '.2f')} "
                    f"| {100 * s['blocked_share']:.0f} % |")
        lines += ["", "How long a query to a silent node holds a lookup up (each node's "
                  "estimate: twice the p90 of its last 32 round trips, 10 ms floor), "
                  "median / p90 / max over live nodes: " + "; ".join(
                      f"{k['fraction']:.0%}: before the kill " + _est(k["stale_after"]
                      ["before_kill"]) + f", at +{p['wait']:g} s "
                      + _est(k["stale_after"]["before_later"]) + ", after that row "
                      + _est(k["stale_after"]["end"]) for k in r["kills"]) + "."]
    lines += ["", "### Goals", "", "| goal | measured | met |", "|---|---|---|"]
    lines += [f"| {g} | {m} | {'yes' if ok else '**no**'} |" for g, m, ok in scale_goals(r)]
    lines.append("")
    return "\n".join(lines)


def scale_goals(r: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """Issue 11's goals against the run: (goal, what was measured, met)."""
    sizes = r["sizes"]
    out: list[tuple[str, str, bool]] = []
    hop_rows = [(e["nodes"], s) for e in sizes
                for s in [*e["alive"], *e.get("after_churn", [])]]
    worst = [(n, s["hops_max"], math.log2(n)) for n, s in hop_rows]
    out.append(("lookups in at most log2(N) hops",
                "max " + ", ".join(f"{h} at {n} (log2 {lg:.1f})" for n, h, lg in worst[::2]),
                all(h <= lg for _, h, lg in worst)))
    p95s = [(e["nodes"], s) for e in sizes for s in [*e["alive"], *e.get("after_churn", [])]
            if s["concurrency"] == 1]
    out.append(("p95 under 50 ms on loopback (one at a time)",
                ", ".join(f"{ms(s['p95'])} at {n} ({s['name']})" for n, s in p95s),
                all(s["p95"] < 0.05 for _, s in p95s)))
    conc = [(e["nodes"], s) for e in sizes for s in e["alive"] if s["concurrency"] > 1]
    out.append((f"the same at {conc[0][1]['concurrency']} in flight" if conc else "-",
                ", ".join(f"{ms(s['p95'])} at {n}" for n, s in conc),
                all(s["p95"] < 0.05 for _, s in conc)))
    loads = [(e["nodes"], e["load"]["ratio"]) for e in sizes]
    out.append(("record load max / median under 3",
                ", ".join(f"{x:.2f} at {n}" for n, x in loads), all(x < 3 for _, x in loads)))
    for f in (0.3,):
        ks = [k for k in r["kills"] if abs(k["fraction"] - f) < 1e-9]
        if ks:
            ok = sum(s["ok"] for s in ks[0]["rows"])
            n = sum(s["n"] for s in ks[0]["rows"])
            out.append((f"99.9 % of lookups succeed after {f:.0%} die",
                        f"{ok}/{n} ({100 * ok / n:.2f} %)", ok >= 0.999 * n))
    pubs = [(e["nodes"], e["packets"]["publish"]["median"]) for e in sizes]
    fet = [(e["nodes"], e["packets"]["fetch"]["median"]) for e in sizes]
    flat = max(x for _, x in pubs) <= 1.5 * min(x for _, x in pubs)
    out.append(("no store storms: packets per publish flat from 50 to 200",
                "publish " + ", ".join(f"{x:.0f} at {n}" for n, x in pubs) + "; fetch "
                + ", ".join(f"{x:.0f} at {n}" for n, x in fet), flat))
    return out


def _est(e: dict[str, float]) -> str:
    return " / ".join(f"{1000 * e[k]:.0f}" for k in ("median", "p90", "max")) + " ms"


def _lat(s: dict[str, Any]) -> str:
    return " / ".join(f"{1000 * s[k]:.0f}" for k in ("median", "p95", "p99")) + " ms"


def _hops(*rows: dict[str, Any]) -> str:
    med = max(s["hops_median"] for s in rows)
    return f"{med:g} / {max(s['hops_p95'] for s in rows):g} / {max(s['hops_max'] for s in rows)}"


def _pct(s: dict[str, Any]) -> str:
    return f"{s['ok']}/{s['n']} ({100 * s['ok'] / s['n']:.2f} %)" if s["n"] else "n/a"


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def log(msg: str) -> None:
    print(f"[dht {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def scale_main(args: argparse.Namespace, ap: argparse.ArgumentParser) -> None:
    """Run (or with --render, re-render) the scale bench; JSON and Markdown as the default run."""
    if args.render is not None:
        md = scale_markdown(json.loads(args.render.read_text()))
        replace_section(args.out / "dht-latest.md", md, SCALE_TITLE)
        print(md)
        return
    if args.churn_sizes is None:
        args.churn_sizes = [max(args.sizes)]
    if args.kill_size is None:
        args.kill_size = max(args.sizes)
    if args.budget == 300.0:  # the default run's; this one needs more
        args.budget = 2400.0
    if min(args.sizes) < 8 or args.scale_lookups < 1 or args.targets < 1:
        ap.error("need at least 8 nodes, 1 lookup and 1 target")
    load_before = " / ".join(f"{x:.1f}" for x in os.getloadavg())

    report, now = run_bounded(scale_bench, args)
    report["load_before"] = load_before
    report["load_after"] = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    args.out.mkdir(parents=True, exist_ok=True)
    out_json = args.out / f"dht-scale-{now.strftime('%Y%m%dT%H%M%SZ')}.json"
    report["params"]["out"] = str(args.out)
    out_json.write_text(json.dumps(report, indent=1, default=str))
    md = scale_markdown(report)
    replace_section(args.out / "dht-latest.md", md, SCALE_TITLE)
    print(md)
    log(f"wrote {out_json} and {args.out / 'dht-latest.md'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=50)
    ap.add_argument("--procs", type=int, default=5)
    ap.add_argument("--lookups", type=int, default=1000, help="lookups per row")
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument(
        "--concurrency",
        type=int,
        default=16,
        help="lookups in flight at once (except the one-at-a-time row)",
    )
    ap.add_argument("--hashes", type=int, default=20, help="hashes with one provider")
    ap.add_argument(
        "--dual", type=int, default=5, help="hashes with two providers, one of which is killed"
    )
    ap.add_argument("--publish-trials", type=int, default=5)
    ap.add_argument("--chunk-concurrency", type=int, default=8)
    ap.add_argument("--kill-fraction", type=float, default=0.3)
    ap.add_argument("--load-keys", type=int, default=None,
                    help="extra random keys announced to see where records land "
                    "[default: 2 per node]")
    ap.add_argument("--settle", type=float, default=3.0,
                    help="seconds to let joins' background table refreshes finish")
    ap.add_argument("--render", type=Path, metavar="JSON",
                    help="only rebuild <out>/dht-latest.md from a result file and print it")
    ap.add_argument("--rejoin-pass", action="store_true",
                    help="join every node a second time (how this bench filled tables "
                    "before nodes refreshed their own)")
    ap.add_argument("--after-announces", type=int, default=10)
    ap.add_argument(
        "--wait", type=float, default=10.0, help="seconds between the two post-kill lookup rounds"
    )
    ap.add_argument("--seed", type=int, default=1, help="seeds node choices (ids are random)")
    ap.add_argument(
        "--budget", type=float, default=300.0, help="hard limit on the whole run, seconds"
    )
    sc = ap.add_argument_group("scale (issue 11): --scale runs this instead of the above")
    sc.add_argument("--scale", action="store_true",
                    help="a size sweep, steady churn and 10/30/50 %% kills (see the docstring)")
    sc.add_argument("--sizes", type=_ints, default=[50, 100, 200],
                    help="network sizes of the sweep, comma-separated")
    sc.add_argument("--per-proc", type=int, default=1,
                    help="DHT nodes per worker process (1: every node its own process)")
    sc.add_argument("--scale-lookups", type=int, default=1000, help="lookups per row")
    sc.add_argument("--targets", type=int, default=50, help="hashes looked up, one provider each")
    sc.add_argument("--packet-trials", type=int, default=20,
                    help="publishes, lookups and fetches whose packets are counted, per size")
    sc.add_argument("--quiet", type=float, default=0.1,
                    help="seconds after an operation whose packets still count as its own")
    sc.add_argument("--load-per-node", type=int, default=10,
                    help="random keys announced per node to measure record load")
    sc.add_argument("--churn", type=float, default=60.0,
                    help="seconds of steady churn (one leaves, one joins each second)")
    sc.add_argument("--churn-sizes", type=_ints, default=None,
                    help="sizes that get the churn phase [default: the largest]")
    sc.add_argument("--churn-concurrency", type=int, default=4,
                    help="lookups in flight during churn")
    sc.add_argument("--warm-churn", type=float, default=20.0,
                    help="seconds of churn that age each kill level's fresh network")
    sc.add_argument("--kill-levels", type=_floats, default=[0.1, 0.3, 0.5],
                    help="fractions killed at once, each on a fresh network")
    sc.add_argument("--kill-size", type=int, default=None,
                    help="network size of the kill levels [default: the largest]")
    args = ap.parse_args()
    if args.scale:
        scale_main(args, ap)
        return
    if args.render is not None:
        md = markdown(json.loads(args.render.read_text()))
        replace_section(args.out / "dht-latest.md", md, "## DHT")
        print(md)
        return
    if args.load_keys is None:
        args.load_keys = 2 * args.nodes
    if args.nodes < 4 or args.lookups < 1 or args.hashes < 1:
        ap.error("need at least 4 nodes, 1 lookup and 1 hash")

    report, now = run_bounded(bench, args)
    args.out.mkdir(parents=True, exist_ok=True)
    out_json = args.out / f"dht-{now.strftime('%Y%m%dT%H%M%SZ')}.json"
    report["params"]["out"] = str(args.out)
    out_json.write_text(json.dumps(report, indent=1, default=str))
    md = markdown(report)
    replace_section(args.out / "dht-latest.md", md, "## DHT")
    print(md)
    log(f"wrote {out_json} and {args.out / 'dht-latest.md'}")


if __name__ == "__main__":
    main()
