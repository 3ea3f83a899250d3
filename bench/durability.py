"""Durability numbers through the CLI on 5 loopback nodes.

    python bench/durability.py [--size 1G] [--replicas 3] [--out bench/results]

Measures: the wall time of ``dhtshare publish FILE --replicas N`` (hashing,
announcing and placing N copies of every chunk), the time until repair has
restored N durable copies after a holder is SIGKILLed, and the bytes a
resumed fetch downloads after being killed half-way.  Writes JSON and a
Markdown table to --out.  Traffic stays on 127.0.0.1; every process started
is stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from limits import free_port

MIB = 1 << 20


def cli(*args: str, timeout: float = 900) -> dict[str, Any]:
    res = subprocess.run([sys.executable, "-m", "dhtshare", *args, "--json"],
                         capture_output=True, text=True, timeout=timeout, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"dhtshare {args[0]} failed: {res.stderr.strip()}")
    out: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


class Net:
    def __init__(self, root: Path, n: int, env: dict[str, str]) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self.addrs: list[str] = []
        self.dirs: list[Path] = []
        for i in range(n):
            port = free_port()
            ddir = root / f"n{i + 1}"
            cmd = [sys.executable, "-m", "dhtshare"]
            cmd += ["bootstrap"] if i == 0 else ["node", "--peer", self.addrs[0]]
            cmd += ["--host", "127.0.0.1", "--port", str(port), "--data-dir", str(ddir)]
            with open(root / f"n{i + 1}.log", "w") as log:
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True,
                                        env={**os.environ, **env})
            assert proc.stdout is not None
            if "listening on" not in proc.stdout.readline():
                raise RuntimeError(f"node {i + 1} did not start")
            self.procs.append(proc)
            self.addrs.append(f"127.0.0.1:{port}")
            self.dirs.append(ddir)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(40)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p.stdout:
                p.stdout.close()


def make_file(path: Path, size: int) -> None:
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(left, 4 * MIB)
            fh.write(os.urandom(n))
            left -= n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1G")
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--out", default="bench/results")
    a = ap.parse_args()
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    size = int(a.size[:-1]) * units[a.size[-1]] if a.size[-1] in units else int(a.size)
    results: dict[str, Any] = {"size": size, "replicas": a.replicas, "nodes": 5}
    with tempfile.TemporaryDirectory(prefix="dhtshare-dur-") as tmp:
        root = Path(tmp)
        src = root / "payload.bin"
        make_file(src, size)
        net = Net(root, 5, {"DHTSHARE_REPAIR_INTERVAL": "5"})
        try:
            time.sleep(1.0)
            t0 = time.perf_counter()
            pub = cli("publish", str(src), "--data-dir", str(net.dirs[0]),
                      "--replicas", str(a.replicas))
            results["publish_wall_s"] = round(time.perf_counter() - t0, 3)
            results["publish_hash_s"] = pub["hash_seconds"]
            results["replicas_reached"] = pub["replicas"]["reached"]
            h = pub["hash"]
            view = cli("holders", h, "--data-dir", str(net.dirs[4]))
            holders = [x["address"] for x in view["holders"] if x["durable"]]
            victim = next(i for i, addr in enumerate(net.addrs) if addr in holders and i != 4)
            net.procs[victim].kill()
            net.procs[victim].wait()
            t0 = time.perf_counter()
            restored = None
            while time.perf_counter() - t0 < 300:
                view = cli("holders", h, "--data-dir", str(net.dirs[4]))
                if view["durable_copies_min"] >= a.replicas:
                    restored = time.perf_counter() - t0
                    break
                time.sleep(0.5)
            results["repair_interval_s"] = 5
            results["repair_restore_s"] = None if restored is None else round(restored, 2)
            # Resume: SIGKILL a short-lived fetch (fresh data dir) half-way, then rerun.
            out = root / "fetched.bin"
            journal = root / f".fetched.bin.{h[:16]}.part.have"
            chunks = -(-size // MIB)
            fetch_args = ["fetch", h, "-o", str(out), "--data-dir", str(root / "fetcher"),
                          "--peer", net.addrs[4]]
            proc = subprocess.Popen([sys.executable, "-m", "dhtshare", *fetch_args],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            held = 0
            deadline = time.monotonic() + 120
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    held = journal.read_bytes()[42:].count(1)
                except OSError:
                    held = 0
                if held >= chunks // 2:
                    break
                time.sleep(0.002)
            proc.kill()
            proc.wait(60)
            again = cli(*fetch_args)
            results["resume"] = {
                "chunks_verified_at_kill": held,
                "bytes_missing_at_kill": size - held * MIB,
                "bytes_reused": again["bytes_reused"],
                "bytes_downloaded": again["bytes_downloaded"],
                "extra_bytes": again["bytes_downloaded"] - (size - again["bytes_reused"]),
            }
        finally:
            net.stop()
    outdir = Path(a.out)
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "durability-latest.json").write_text(json.dumps(results, indent=2) + "\n")
    r = results["resume"]
    table = "\n".join([
        "## Durability",
        "",
        f"`python bench/durability.py --size {a.size} --replicas {a.replicas}`: 5 nodes on "
        "127.0.0.1, repair interval 5 s.",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| publish {a.size} with --replicas {a.replicas} (wall, CLI) | "
        f"{results['publish_wall_s']} s (hashing {results['publish_hash_s']} s) |",
        f"| copies reached | {results['replicas_reached']} |",
        f"| repair: N durable copies again after SIGKILL of a holder | "
        f"{results['repair_restore_s']} s |",
        f"| resume: missing when killed | {r['bytes_missing_at_kill']} B |",
        f"| resume: downloaded by the rerun | {r['bytes_downloaded']} B "
        f"(reused {r['bytes_reused']} B) |",
        "",
    ])
    (outdir / "durability-latest.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
