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

    async def call(self, g: int, cmd: str, **kw: Any) -> Any:
        ref = self.nodes[g]
        return await ref.worker.call(cmd, node=ref.local, **kw)

    async def stats(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for res in await asyncio.gather(*(w.call("stats") for w in self.workers)):
            out.extend(res["nodes"])
        return out

    async def record_holders(self, hashes: list[str]) -> list[int]:
        """For each hash, how many nodes hold at least one record of it."""
        held = [0] * len(hashes)
        for res in await asyncio.gather(
            *(w.call("has_record", hashes=hashes) for w in self.workers)
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
        await asyncio.gather(
            *(self.workers[p].call("kill", nodes=locs) for p, locs in by_worker.items())
        )


def totals(stats: list[dict[str, Any]]) -> Counter[str]:
    c: Counter[str] = Counter()
    for s in stats:
        c.update(s["stats"])
    return c


# -- statistics ---------------------------------------------------------------------------
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


async def run_lookups(
    net: Network,
    rng: random.Random,
    targets: list[Target],
    count: int,
    concurrency: int,
) -> list[dict[str, Any]]:
    """``count`` lookups of random targets from random live non-provider nodes."""
    plan = []
    for _ in range(count):
        t = rng.choice(targets)
        askers = [r.g for r in net.nodes if r.alive and r.g not in t.providers]
        plan.append((t, rng.choice(askers)))
    sem = asyncio.Semaphore(concurrency)

    async def one(t: Target, g: int) -> dict[str, Any]:
        async with sem:
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
    args = ap.parse_args()
    if args.render is not None:
        md = markdown(json.loads(args.render.read_text()))
        replace_section(args.out / "dht-latest.md", md, "## DHT")
        print(md)
        return
    if args.load_keys is None:
        args.load_keys = 2 * args.nodes
    if args.nodes < 4 or args.lookups < 1 or args.hashes < 1:
        ap.error("need at least 4 nodes, 1 lookup and 1 hash")

    def log(msg: str) -> None:
        print(f"[dht {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    async def run() -> dict[str, Any]:
        return await asyncio.wait_for(bench(args, log), args.budget)

    try:
        report = asyncio.run(run())
    except TimeoutError:
        sys.exit(f"dht bench: exceeded --budget {args.budget:g} s; workers stopped, no report")
    now = datetime.now(UTC)
    report["when"] = now.strftime("%Y-%m-%d %H:%M UTC")
    report["host"] = (
        f"{platform.node()} ({os.cpu_count()} CPUs, Python {platform.python_version()})"
    )
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
