"""Bandwidth limits: the rate a node achieves against the rate it was given.

    python bench/ratelimit.py [--rates 4M,16M] [--links 1,4,16] [--seconds 6] [--out DIR]

A real node (in this process, its real chunk server and links on 127.0.0.1)
publishes a file.  For the **upload** rows it runs with ``max_upload_rate``
and N strangers' links pull chunks from it at once; for the **download**
rows the node is unlimited and the N links share one client-side limiter
with a download rate.  Each row pulls for about ``--seconds`` and reports
the aggregate chunk bytes received over the wall time, the worst 5-second
window (of the bytes that crossed the links' sockets, sampled every 0.1 s),
and each as a ratio to the limit.  Writes a
markdown table to stdout and JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dhtshare.config import MIB, Config
from dhtshare.core import messages as m
from dhtshare.core.handshake import LinkSecurity
from dhtshare.core.identity import Identity
from dhtshare.core.ids import parse_manifest_hash
from dhtshare.core.netaddr import parse_size
from dhtshare.net.ratelimit import Limiter
from dhtshare.net.transport import Connection, connect, make_hello
from dhtshare.node import Node
from dhtshare.ops import PublishArgs

CHUNKS = 32
WINDOW = 5.0


async def link(port: int, limiter: Limiter | None) -> Connection:
    me = Identity.generate()
    return await connect("127.0.0.1", port, make_hello(me.node_id, 1), None, 10,
                         link=LinkSecurity(me), limiter=limiter)


async def pull(conn: Connection, node: Node, h: bytes, until: float,
               arrivals: list[tuple[float, int]]) -> None:
    """Keep 4 chunk requests in flight on ``conn`` until ``until``; log each arrival."""
    manifest = node.store.entries[h].manifest
    i = 0
    pending: set[asyncio.Future[Any]] = set()
    while time.perf_counter() < until or pending:
        while len(pending) < 4 and time.perf_counter() < until:
            rid = conn.next_id()
            idx = i % CHUNKS
            pending.add(conn.start_request(m.GetChunk(rid, h, idx, manifest.chunk_hash(idx)),
                                           rid))
            i += 1
        done, pending = await asyncio.wait(pending, timeout=30,
                                           return_when=asyncio.FIRST_COMPLETED)
        if not done:
            raise RuntimeError("no chunk arrived in 30 s")
        for fut in done:
            _msg, body = fut.result()
            arrivals.append((time.perf_counter(), len(body)))


async def sample(conns: list[Connection], until: float,
                 samples: list[tuple[float, int]]) -> None:
    """Bytes received on all links so far, every 0.1 s (what crossed the sockets)."""
    while time.perf_counter() < until:
        samples.append((time.perf_counter(), sum(c.bytes_received for c in conns)))
        await asyncio.sleep(0.1)


def worst_window(samples: list[tuple[float, int]]) -> float:
    """The highest rate over any WINDOW seconds of the byte counts (bytes per second)."""
    best, j = 0.0, 0
    for t, n in samples:
        while samples[j][0] < t - WINDOW - 1e-9:
            j += 1
        t0, n0 = samples[j]
        if t - t0 >= WINDOW * 0.98:
            best = max(best, (n - n0) / (t - t0))
    return best


async def row(work: Path, direction: str, rate: int, links: int,
              seconds: float) -> dict[str, Any]:
    up = rate if direction == "upload" else 0
    config = Config(data_dir=work / f"{direction}-{rate}-{links}", host="127.0.0.1",
                    max_upload_rate=up)
    async with Node.open(config) as node:
        src = work / "file.bin"
        if not src.exists():
            src.write_bytes(os.urandom(CHUNKS * MIB))
        h = parse_manifest_hash((await node.ops.publish(PublishArgs(src, MIB))).hash)
        limiter = Limiter(download=rate) if direction == "download" else None
        conns = [await link(node.port, limiter) for _ in range(links)]
        arrivals: list[tuple[float, int]] = []
        samples: list[tuple[float, int]] = []
        start = time.perf_counter()
        try:
            await asyncio.gather(sample(conns, start + seconds, samples),
                                 *(pull(c, node, h, start + seconds, arrivals) for c in conns))
        finally:
            for c in conns:
                c.close()
        wall = time.perf_counter() - start
        total = sum(n for _, n in arrivals)
        achieved = total / wall
        window = worst_window(samples)
        return {"direction": direction, "limit": rate, "links": links,
                "seconds": round(wall, 3), "bytes": total, "achieved": round(achieved),
                "ratio": round(achieved / rate, 3), "worst_5s_window": round(window),
                "worst_5s_ratio": round(window / rate, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="4M,16M", help="limits to test (K/M/G suffixes)")
    ap.add_argument("--links", default="1,4,16", help="numbers of links at once")
    ap.add_argument("--seconds", type=float, default=6.0, help="how long each row pulls")
    ap.add_argument("--out", default="bench/results", help="directory for the JSON")
    args = ap.parse_args()
    rates = [parse_size(r) for r in args.rates.split(",")]
    links = [int(x) for x in args.links.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="dhtshare-ratelimit-") as tmp:
        for direction in ("upload", "download"):
            for rate in rates:
                for n in links:
                    r = asyncio.run(row(Path(tmp), direction, rate, n, args.seconds))
                    rows.append(r)
                    print(f"{direction} {rate / MIB:g} MiB/s x{n}: {r['ratio']:.3f} "
                          f"(worst 5 s window {r['worst_5s_ratio']:.3f})", file=sys.stderr)
    print("| direction | limit MiB/s | links | achieved MiB/s | achieved / limit | "
          "worst 5 s window / limit |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['direction']} | {r['limit'] / MIB:g} | {r['links']} | "
              f"{r['achieved'] / MIB:.2f} | {r['ratio']:.3f} | {r['worst_5s_ratio']:.3f} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (out / f"ratelimit-{stamp}.json").write_text(json.dumps({"rows": rows}, indent=1))


if __name__ == "__main__":
    main()
