"""One libtorrent peer for the transfer benchmark (``bench/transfer.py`` drives it).

    python bench/lt_peer.py --role seed  --torrent F.torrent --save-path DIR
    python bench/lt_peer.py --role leech --torrent F.torrent --save-path DIR
    python bench/lt_peer.py --make-torrent FILE --torrent F.torrent [--format v1]

Talks JSON lines: it prints events on stdout and reads commands on stdin.

* seed: adds the torrent with the file present, waits until libtorrent has
  checked every piece (state ``seeding``), then prints
  ``{"event": "ready", "port": P}`` and serves.
* leech: starts a session listening on 127.0.0.1, prints ``ready`` with its
  port (the torrent is not added yet: like a running dhtshare node, the peer
  is up before the clock starts), then waits for
  ``{"cmd": "go", "peers": [[host, port], ...]}``.  On ``go`` it adds the
  torrent with those peers to connect to directly and prints
  ``{"event": "done", ...}`` once every piece passed libtorrent's hash check
  and every block is written to the file (the disk-write queue is flushed).
  It keeps serving (to the other leechers) until told to stop.
* both: ``{"cmd": "quit"}`` (or stdin closing, or ``--budget`` seconds) makes
  it destroy the session (which waits for pending disk writes), print
  ``{"event": "bye", ...}`` with its transfer counters and exit.

Settings (see :func:`session_settings`): TCP only on 127.0.0.1, no
DHT/LSD/UPnP/NAT-PMP, several connections per IP allowed, no rate limits,
unlimited unchoke slots, no protocol encryption, based on libtorrent's own
``high_performance_seed()`` preset.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any

try:
    import libtorrent as lt
except ImportError:  # pragma: no cover - depends on the environment
    sys.exit("bench/lt_peer.py needs libtorrent: pip install '.[bench]' (PyPI 'libtorrent')")

#: Settings from lt.high_performance_seed() that we put back to the defaults
#: because they are meant for a seed-only box and would slow a downloader down
#: (measured at 64 MiB on this benchmark; see bench/README.md).
KEEP_DEFAULT = ("max_queued_disk_bytes",)


def session_settings(port: int, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The fair configuration: fast, loopback-only, TCP-only, no limits."""
    base = dict(lt.high_performance_seed())
    default = lt.default_settings()
    for key in KEEP_DEFAULT:
        base[key] = default[key]
    base.update(
        {
            "listen_interfaces": f"127.0.0.1:{port}",
            "outgoing_interfaces": "",
            # nothing but direct connections
            "enable_dht": False,
            "enable_lsd": False,
            "enable_upnp": False,
            "enable_natpmp": False,
            # TCP only
            "enable_outgoing_utp": False,
            "enable_incoming_utp": False,
            "enable_outgoing_tcp": True,
            "enable_incoming_tcp": True,
            # every peer is 127.0.0.1
            "allow_multiple_connections_per_ip": True,
            # no limits, no choking
            "upload_rate_limit": 0,
            "download_rate_limit": 0,
            "unchoke_slots_limit": -1,
            "connections_limit": 200,
            # the 500 ms default tick delays the first connections and the request
            # pipeline's ramp-up: 64 MiB took 0.65 s instead of 0.21 s at 100 ms
            "tick_interval": 100,
            # verify pieces on every core (libtorrent's default is one thread)
            "hashing_threads": max(1, os.cpu_count() or 1),
            # Plaintext, as issue 9 asks to compare against (libtorrent's RC4
            # "encryption" is obfuscation, not authenticated encryption)
            "out_enc_policy": int(lt.enc_policy.disabled),
            "in_enc_policy": int(lt.enc_policy.disabled),
            # quiet; we only need status and errors
            "alert_mask": int(lt.alert_category.status | lt.alert_category.error
                              | lt.alert_category.storage),
            "user_agent": "dhtshare-bench/libtorrent",
        }
    )
    if overrides:
        base.update(overrides)
    return base


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are parsed as JSON when they can be (ints, bools)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"--set wants key=value, not {item!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def stdin_reader(q: queue.Queue[dict[str, Any] | None]) -> None:
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            q.put(json.loads(line))
        except json.JSONDecodeError:
            continue
    q.put(None)  # EOF: the orchestrator is gone


class Peer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        settings = session_settings(args.port, parse_overrides(args.set))
        self.ses = lt.session(lt.session_params(settings))
        self.ti = lt.torrent_info(str(args.torrent))
        self.handle: Any = None
        self.deadline = time.monotonic() + args.budget
        self.commands: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=stdin_reader, args=(self.commands,), daemon=True).start()

    def port(self) -> int:
        for _ in range(100):
            p = int(self.ses.listen_port())
            if p:
                return p
            time.sleep(0.01)
        raise SystemExit("libtorrent did not open its listen socket")

    def add(self, peers: list[tuple[str, int]]) -> None:
        atp = lt.add_torrent_params()
        atp.ti = self.ti
        atp.save_path = str(self.args.save_path)
        # start at once: not paused, not queued by the auto-manager
        atp.flags &= ~(lt.torrent_flags.paused | lt.torrent_flags.auto_managed)
        atp.peers = peers
        self.handle = self.ses.add_torrent(atp)
        for host, port in peers:
            self.handle.connect_peer((host, port))

    def pump(self, timeout_ms: int = 100) -> list[Any]:
        self.ses.wait_for_alert(timeout_ms)
        alerts = list(self.ses.pop_alerts())
        for a in alerts:
            if isinstance(a, (lt.torrent_error_alert, lt.file_error_alert)):
                emit({"event": "error", "message": a.message()})
                raise SystemExit(3)
        return alerts

    def seeding(self) -> bool:
        st = self.handle.status()
        return bool(st.is_seeding) and st.state == lt.torrent_status.seeding

    def counters(self) -> dict[str, Any]:
        if self.handle is None:
            return {}
        st = self.handle.status()
        return {
            "payload_down": int(st.total_payload_download),
            "payload_up": int(st.total_payload_upload),
            "redundant": int(st.total_redundant_bytes),
            "failed": int(st.total_failed_bytes),
            "peers": int(st.num_peers),
            "state": str(st.state),
        }

    def serve_until_quit(self) -> None:
        while time.monotonic() < self.deadline:
            try:
                cmd = self.commands.get_nowait()
            except queue.Empty:
                self.pump(200)
                continue
            if cmd is None or cmd.get("cmd") == "quit":
                break
        counters = self.counters()
        self.close()
        emit({"event": "bye", **counters})

    def close(self) -> None:
        """Destroy the session: it waits for its disk threads, so every write lands."""
        self.handle = None
        self.ses = None

    def wait_flushed(self) -> float:
        """Wait until every block libtorrent received is written to the file.

        A piece counts as passed once it is hashed, which can happen while its
        blocks still wait in the disk-write queue; killing the process then
        loses them.  ``flush_cache`` posts ``cache_flushed_alert`` once that
        queue is empty for this torrent.
        """
        t0 = time.perf_counter()
        self.handle.flush_cache()
        while time.monotonic() < self.deadline:
            if any(isinstance(a, lt.cache_flushed_alert) for a in self.pump(20)):
                return time.perf_counter() - t0
        emit({"event": "error", "message": "writes not flushed in time"})
        raise SystemExit(3)

    def run_seed(self) -> None:
        t0 = time.perf_counter()
        self.add([])
        while not self.seeding():
            if time.monotonic() > self.deadline:
                emit({"event": "error", "message": "checking did not finish in time"})
                raise SystemExit(3)
            self.pump(50)
        default = lt.default_settings()
        changed = {k: v for k, v in self.ses.get_settings().items()
                   if k in default and default[k] != v}
        emit({"event": "ready", "port": self.port(), "check_seconds":
              round(time.perf_counter() - t0, 4), "pieces": self.ti.num_pieces(),
              "settings": changed})
        self.serve_until_quit()

    def run_leech(self) -> None:
        emit({"event": "ready", "port": self.port()})
        go: dict[str, Any] | None = None
        while go is None and time.monotonic() < self.deadline:
            try:
                cmd = self.commands.get(timeout=0.5)
            except queue.Empty:
                continue
            if cmd is None or cmd.get("cmd") == "quit":
                emit({"event": "bye"})
                return
            if cmd.get("cmd") == "go":
                go = cmd
        if go is None:
            return
        t0 = time.perf_counter()
        self.add([(str(h), int(p)) for h, p in go.get("peers", [])])
        while time.monotonic() < self.deadline:
            alerts = self.pump(20)
            if any(isinstance(a, lt.torrent_finished_alert) for a in alerts) or self.seeding():
                break
        else:
            emit({"event": "error", "message": "download did not finish in time",
                  **self.counters()})
            raise SystemExit(3)
        finished = time.perf_counter() - t0
        flush = self.wait_flushed()
        emit({"event": "done", "elapsed": round(time.perf_counter() - t0, 4),
              "finished_elapsed": round(finished, 4), "flush_seconds": round(flush, 4),
              **self.counters()})
        self.serve_until_quit()


def make_torrent(path: Path, out: Path, fmt: str) -> None:
    """A torrent of 1 MiB pieces for ``path``; prints the seconds it took."""
    flags = {"v1": lt.create_torrent.v1_only, "v2": lt.create_torrent.v2_only,
             "hybrid": 0}[fmt]
    t0 = time.perf_counter()
    ct = lt.create_torrent(lt.list_files(str(path)), 1 << 20, flags)
    lt.set_piece_hashes(ct, str(path.parent))
    out.write_bytes(lt.bencode(ct.generate()))
    emit({"event": "torrent", "seconds": round(time.perf_counter() - t0, 4),
          "pieces": lt.torrent_info(str(out)).num_pieces()})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--role", choices=("seed", "leech"))
    ap.add_argument("--torrent", type=Path, required=True)
    ap.add_argument("--save-path", type=Path)
    ap.add_argument("--make-torrent", type=Path, metavar="FILE",
                    help="only write the torrent of FILE (1 MiB pieces) to --torrent")
    ap.add_argument("--format", choices=("v1", "v2", "hybrid"), default="v1",
                    help="torrent format for --make-torrent (v1: SHA-1 per piece)")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free one")
    ap.add_argument("--budget", type=float, default=600.0, help="seconds before giving up")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a libtorrent setting (repeatable)")
    args = ap.parse_args()
    if args.make_torrent is not None:
        make_torrent(args.make_torrent, args.torrent, args.format)
        return
    if args.role is None or args.save_path is None:
        ap.error("--role and --save-path are required (or --make-torrent)")
    peer = Peer(args)
    if args.role == "seed":
        peer.run_seed()
    else:
        peer.run_leech()


if __name__ == "__main__":
    main()
