"""One process of the DHT benchmark: hosts some ``dhtshare.net.dht.client.Dht`` nodes.

Started by ``bench/dht.py``, never by hand.  It binds ``--count`` nodes to
127.0.0.1 (OS-chosen ports), prints one ``{"ready": [...]}`` line, then obeys
JSON-line commands on stdin and answers each on stdout with the same ``id``.
Commands run concurrently (one task each), so the controller can keep several
lookups in flight.

Nothing in dhtshare is edited: the worker instruments each node's protocol
*instance* (``_call`` for RPCs sent, ``rpc_*`` for RPCs received), and counts
per operation through a context variable, so concurrent operations on the same
node are accounted separately.

The process exits when stdin closes, on ``quit``, or after ``--max-life``
seconds, whichever comes first, and stops every node it started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from dhtshare.core.identity import Identity
from dhtshare.core.ids import dht_key
from dhtshare.core.providers import Announcement
from dhtshare.net.dht.client import PROVIDERS_NS, Dht


class Op:
    """What one command cost: RPCs sent by kind, timeouts, and when they waited."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.counts: Counter[str] = Counter()
        #: (start, end, port) of every RPC that timed out, relative to ``start``.
        self.timeout_spans: list[tuple[float, float, int]] = []

    def blocked(self) -> float:
        """Seconds during which at least one timed-out RPC was outstanding."""
        total, end = 0.0, 0.0
        for a, b, _ in sorted(self.timeout_spans):
            a = max(a, end)
            if b > a:
                total += b - a
                end = b
        return total

    def to_json(self) -> dict[str, Any]:
        return {
            **self.counts,
            "blocked_on_timeouts": round(self.blocked(), 4),
            "timeout_ports": [port for _, _, port in self.timeout_spans],
        }


#: Counters of the command the current task works for (copied into child tasks).
_OP: contextvars.ContextVar[Op | None] = contextvars.ContextVar("op", default=None)
#: Upper bound on any single command, whatever the network does.
OP_TIMEOUT = 60.0
TTL = 1800.0
#: The counters ``counters`` sums (cheap to ask of hundreds of processes).
PACKET_KEYS = frozenset({"pkt_tx", "pkt_rx", "bytes_tx"})
#: The bitfield of a partial record of a 1 GiB file (1024 chunks) holding chunk 0.
FIRST_CHUNK = b"\x80" + bytes(127)


class Node:
    """One DHT node and its counters."""

    def __init__(self, dht: Dht, port: int) -> None:
        self.dht = dht
        self.port = port
        self.alive = True
        self.stats: Counter[str] = Counter()
        self._instrument()

    def _instrument(self) -> None:
        proto = self.dht.protocol
        stats = self.stats
        orig_call = proto._call

        async def counted_call(node: Any, method: str, *args: Any, **kw: Any) -> Any:
            op = _OP.get()
            skipped = proto.is_dead((node.ip, node.port))
            t0 = time.monotonic()
            result = await orig_call(node, method, *args, **kw)
            t1 = time.monotonic()
            if skipped:  # answered from the dead-peer cache: nothing was sent
                keys = ["dead_skips"]
            elif result[0]:
                keys = [f"tx_{method}"]
            else:  # rpcudp only answers (False, None) when the wait timed out
                keys = [f"tx_{method}", "timeouts"]
            for key in keys:
                stats[key] += 1
                if op is not None:
                    op.counts[key] += 1
            if op is not None and not skipped and not result[0]:
                op.timeout_spans.append((t0 - op.start, t1 - op.start, int(node.port)))
            return result

        proto._call = counted_call  # type: ignore[method-assign]

        # Every datagram on the wire, whoever causes it: the scale bench sums
        # these over all nodes around one publish or fetch, so that traffic an
        # operation sets off at other nodes (pings, suspect hints) counts too.
        transport = proto.transport
        orig_send = transport.sendto

        def counted_send(data: bytes, addr: Any = None) -> None:
            stats["pkt_tx"] += 1
            stats["bytes_tx"] += len(data)
            op = _OP.get()
            if op is not None:
                op.counts["pkt_tx"] += 1
            orig_send(data, addr)

        transport.sendto = counted_send
        orig_rx = proto.datagram_received

        def counted_rx(data: bytes, addr: Any) -> None:
            stats["pkt_rx"] += 1
            orig_rx(data, addr)

        proto.datagram_received = counted_rx  # type: ignore[method-assign]
        orig_request = proto.request

        def counted_request(address: Any, name: str, *args: Any) -> Any:
            stats[f"req_{name}"] += 1  # every RPC this node starts, by name
            return orig_request(address, name, *args)

        proto.request = counted_request  # type: ignore[method-assign]

        def wrap_rx(name: str) -> None:
            orig = getattr(proto, f"rpc_{name}")

            def counted(sender: Any, *args: Any) -> Any:
                out = orig(sender, *args)
                stats[f"rx_{name}"] += 1
                if name == "add_provider" and out is True:
                    stats["stored"] += 1
                return out

            setattr(proto, f"rpc_{name}", counted)

        for name in ("ping", "find_node", "get_providers", "add_provider", "remove_provider"):
            wrap_rx(name)


class Worker:
    def __init__(self, proc: int, count: int) -> None:
        self.proc = proc
        self.count = count
        self.nodes: list[Node] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.done = asyncio.Event()

    async def start(self) -> list[dict[str, Any]]:
        return await self._add(self.count)

    async def _add(self, count: int) -> list[dict[str, Any]]:
        """Bind ``count`` new nodes; their ids, ports and local indices."""
        first = len(self.nodes)
        for _ in range(count):
            dht = Dht(Identity.generate())
            try:
                await dht.listen("127.0.0.1", 0)
            except BaseException:
                dht.stop()
                raise
            port = int(dht.protocol.transport.get_extra_info("sockname")[1])
            self.nodes.append(Node(dht, port))
        return [{"id": n.dht.node_id.hex(), "port": n.port, "local": first + i}
                for i, n in enumerate(self.nodes[first:])]

    def stop_all(self) -> None:
        for node in self.nodes:
            if node.alive:
                node.alive = False
                node.dht.stop()
        for task in list(self.tasks):
            task.cancel()

    def node(self, i: int) -> Node:
        node = self.nodes[i]
        if not node.alive:
            raise RuntimeError(f"node {self.proc}/{i} was killed")
        return node

    # -- commands ---------------------------------------------------------------------
    async def cmd_bootstrap(self, node: int, peer: list[Any]) -> dict[str, Any]:
        n = self.node(node)
        t0 = time.monotonic()
        answered = await n.dht.bootstrap([(str(peer[0]), int(peer[1]))])
        return {
            "answered": answered,
            "wall": time.monotonic() - t0,
            "contacts": len(n.dht.contacts()),
        }

    async def cmd_announce(
        self, node: int, hashes: list[str], concurrency: int = 1
    ) -> dict[str, Any]:
        n = self.node(node)
        sem = asyncio.Semaphore(max(1, concurrency))
        ann = Announcement(n.port, TTL, True)

        async def one(h: str) -> dict[str, Any]:
            async with sem:
                op = Op()
                _OP.set(op)
                stored = await n.dht.announce(bytes.fromhex(h), ann)
                return {"stored": stored, "wall": time.monotonic() - op.start, "op": op.to_json()}

        t0 = time.monotonic()
        items = await asyncio.gather(*(asyncio.create_task(one(h)) for h in hashes))
        return {"wall": time.monotonic() - t0, "items": items}

    async def cmd_lookup(self, node: int, hash: str) -> dict[str, Any]:
        n = self.node(node)
        op = Op()
        _OP.set(op)
        h = bytes.fromhex(hash)
        detailed = getattr(n.dht, "lookup_providers", None)  # absent before 2026-12
        cost: dict[str, Any] = {}
        if detailed is not None:
            res = await detailed(h)
            recs = [r for r in res.records.values() if r.node_id != n.dht.node_id]
            cost = {"queries": res.queries, "hops": res.hops, "stale": res.stale,
                    "failures": res.failures}
        else:
            recs = await n.dht.find_providers(h)
        return {
            "latency": time.monotonic() - op.start,
            "providers": [[r.node_id.hex(), r.host, r.port, r.complete] for r in recs],
            "op": op.to_json(),
            "cost": cost,
        }

    async def cmd_spawn(self, count: int = 1) -> dict[str, Any]:
        """New nodes in this process (churn joins when nodes share processes)."""
        return {"nodes": await self._add(count)}

    async def cmd_fetch(self, node: int, hash: str, announces: int = 2) -> dict[str, Any]:
        """The DHT operations of one ``dhtshare fetch`` of a small file, in order.

        The fetch path (dhtshare/transfer/manifest_source.py, supervisor.py)
        looks up the manifest's providers; the node then announces itself
        after its first verified chunk (``Node.chunk_verified``: a partial
        record) and again once the file is complete (``Ops.fetch``).  A
        download that outlasts 0.2 s also looks up again (0.2, 0.6, 1.4 s,
        then every 2 s while it has fewer than 16 peers): that is one more
        lookup each, priced by the lookup part of this command.
        """
        n = self.node(node)
        h = bytes.fromhex(hash)
        op = Op()
        _OP.set(op)
        res = await n.dht.lookup_providers(h)
        lookup = {"wall": time.monotonic() - op.start, "op": op.to_json(),
                  "found": sum(1 for r in res.records.values() if r.node_id != n.dht.node_id),
                  "hops": res.hops}
        parts = []
        for i in range(announces):
            part = Op()
            _OP.set(part)
            complete = i == announces - 1
            stored = await n.dht.announce(h, Announcement(n.port, TTL, complete,
                                                          b"" if complete else FIRST_CHUNK))
            parts.append({"stored": stored, "wall": time.monotonic() - part.start,
                          "op": part.to_json()})
        return {"wall": time.monotonic() - op.start, "lookup": lookup, "announces": parts}

    async def cmd_counters(self) -> dict[str, Any]:
        """Datagrams sent and received by every node of this process, dead ones included."""
        total: Counter[str] = Counter()
        for n in self.nodes:
            total.update({k: v for k, v in n.stats.items()
                          if k in PACKET_KEYS or k.startswith("req_")})
        return dict(total)

    async def cmd_kill(self, nodes: list[int]) -> dict[str, Any]:
        for i in nodes:
            node = self.nodes[i]
            if node.alive:
                node.alive = False
                node.dht.stop()  # abrupt: no withdraw, the socket just goes away
        return {"killed": len(nodes)}

    async def cmd_stats(self) -> dict[str, Any]:
        return {
            "nodes": [
                {
                    "alive": n.alive,
                    "contacts": len(n.dht.contacts()) if n.alive else 0,
                    "keys": len(n.dht.providers),
                    # Records held for others (an announcer also keeps its own).
                    "records": sum(len(v) - (n.dht.node_id in v)
                                   for v in n.dht.providers._data.values())
                    if n.alive else 0,
                    # vars(): rpcudp turns any missing attribute into a remote call.
                    "stale_after": vars(n.dht.protocol)["rtt"].stale_after()
                    if n.alive and "rtt" in vars(n.dht.protocol) else None,
                    "dead_cache": len(n.dht.protocol._dead) if n.alive else 0,
                    "contact_ports": [c[2] for c in n.dht.contacts()] if n.alive else [],
                    "stats": dict(n.stats),
                }
                for n in self.nodes
            ]
        }

    async def cmd_has_record(self, hashes: list[str]) -> dict[str, Any]:
        """How many records each node holds for each hash (its own store)."""
        keys = [dht_key(PROVIDERS_NS, bytes.fromhex(h)) for h in hashes]
        return {
            "records": [
                [len(n.dht.providers.get(k)) if n.alive else 0 for k in keys] for n in self.nodes
            ]
        }

    async def cmd_quit(self) -> dict[str, Any]:
        self.done.set()
        return {}

    # -- plumbing -----------------------------------------------------------------------
    def reply(self, msg: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()

    async def handle(self, line: bytes) -> None:
        rid = None
        try:
            req = json.loads(line)
            rid = req.pop("id")
            name = req.pop("cmd")
            fn: Callable[..., Awaitable[dict[str, Any]]] = getattr(self, f"cmd_{name}")
            limit = float(req.pop("op_timeout", OP_TIMEOUT))
            result = await asyncio.wait_for(fn(**req), limit)
            self.reply({"id": rid, "ok": True, "result": result})
        except asyncio.CancelledError:
            raise
        except Exception as err:
            self.reply({"id": rid, "ok": False, "error": f"{type(err).__name__}: {err}"})

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 24)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        self.reply({"ready": await self.start(), "proc": self.proc})
        while not self.done.is_set():
            line_task = asyncio.ensure_future(reader.readline())
            done_task = asyncio.ensure_future(self.done.wait())
            await asyncio.wait({line_task, done_task}, return_when=asyncio.FIRST_COMPLETED)
            done_task.cancel()
            if not line_task.done():
                line_task.cancel()
                break
            line = line_task.result()
            if not line:  # controller went away
                break
            task = asyncio.create_task(self.handle(line))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)


async def amain(args: argparse.Namespace) -> None:
    worker = Worker(args.proc, args.count)
    try:
        await asyncio.wait_for(worker.serve(), args.max_life)
    except TimeoutError:
        print(f"dht_worker {args.proc}: max life reached, exiting", file=sys.stderr)
    finally:
        worker.stop_all()
        await asyncio.sleep(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proc", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--max-life", type=float, default=600.0)
    args = parser.parse_args()
    # rpcudp logs every timeout at ERROR and asyncio warns about sends on closed
    # sockets; both are expected here and would only flood the terminal.
    logging.disable(logging.CRITICAL)
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
