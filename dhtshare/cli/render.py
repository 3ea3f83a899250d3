"""What the command line prints: results, errors and the progress display.

Shared by the full command line (:mod:`dhtshare.cli.app`, built on typer) and
the quick path that hands ``fetch`` and ``status`` to a running node
(:mod:`dhtshare.cli.entry`), which must not import typer; so this module imports
nothing heavy, and rich only when a progress bar is actually drawn.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from dhtshare.errors import ReplicationShort

#: ``status`` answers at once, even while the node joins; this long means it is stuck.
STATUS_TIMEOUT = 10.0


def error_line(message: str) -> str:
    return f"dhtshare: error: {message}"


def show_fetch(result: dict[str, Any], json_out: bool) -> None:
    if json_out:
        print(json.dumps(result), flush=True)
        return
    secs = max(result["elapsed"], 1e-6)
    rate = result["size"] / secs / 1e6
    print(f"fetched {result['name']} ({result['size']} bytes) to {result['path']} from "
          f"{len(result['peers'])} peer(s) in {secs:.2f} s ({rate:.1f} MB/s), verified",
          flush=True)


def show_publish(result: dict[str, Any], json_out: bool, want: int, explicit: bool) -> None:
    """Print a publish result; falling short of an explicit ``--replicas`` is an error."""
    reached = result["replicas"]["reached"]
    if json_out:
        print(json.dumps(result), flush=True)
    else:
        copies = f", {reached} durable copies on other nodes" if want else ""
        print(f"published {result['name']} ({result['size']} bytes, {result['chunks']} "
              f"chunks) announced to {result['dht_stores']} DHT nodes{copies}", flush=True)
        print(result["hash"], flush=True)
    if reached < want:
        msg = (f"only {reached} of {want} requested copies could be placed: not enough "
               "reachable nodes with room")
        if explicit:
            raise ReplicationShort(msg)
        print(f"dhtshare: warning: {msg}", file=sys.stderr, flush=True)


def show_status(result: dict[str, Any], json_out: bool) -> None:
    if json_out:
        print(json.dumps(result), flush=True)
        return
    state = result.get("state", "joined")
    print(f"node {result['node_id'][:16]} on {result['host']}:{result['port']}, {state}, "
          f"{result['contacts']} DHT contacts, {result['bytes_served']} bytes served")
    if result.get("fingerprint"):
        print(f"  key {result['fingerprint']}")
    links = result.get("peers_connected")
    if links is not None:
        print(f"  peers: {links['inbound']} inbound, {links['outbound']} outbound links; "
              f"{result.get('contacts_answered_recently', 0)} DHT contacts answered lately")
    limits = result.get("limits") or {}
    if limits.get("upload") or limits.get("download"):
        print(f"  limits: upload {limits['upload'] or 'none'}, download "
              f"{limits['download'] or 'none'} bytes/s")
    for t in result.get("transfer_rates") or []:
        pct = 100 * t["done"] // t["total"] if t["total"] else 0
        print(f"  {t['kind']}ing {t['hash'][:16]}  {pct}% of {t['total']} bytes at "
              f"{t['rate']} bytes/s from {t['peers_sending']} peers")
    if result.get("metrics"):
        print(f"  metrics {result['metrics']}")
    for item in result["content"]:
        held = "complete" if item["complete"] else "partial"
        print(f"  {item['hash']}  {item['size']:>12}  {held:8}  {item['name']}")


def size_text(n: float) -> str:
    """Bytes for people: 1023 B, 4.0 KiB, 12.5 MiB, 3.1 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def table(rows: list[list[str]], header: list[str]) -> None:
    """Columns aligned to their widest cell (numbers to the right)."""
    cells = [header, *rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    right = [all(r[i].replace(".", "").replace(" ", "").rstrip("KMGTiBs/").isdigit()
                 for r in rows) and bool(rows) for i in range(len(header))]
    for r in cells:
        print("  ".join(c.rjust(w) if ra else c.ljust(w)
                        for c, w, ra in zip(r, widths, right, strict=True)).rstrip())


def _listed(result: dict[str, Any], key: str, json_out: bool, empty: str) -> list[Any]:
    """The rows of a listing to draw as a table; none when it went out as JSON or is empty."""
    if json_out:
        print(json.dumps(result), flush=True)
        return []
    rows: list[Any] = result[key]
    if not rows:
        print(empty)
    return rows


def show_ls(result: dict[str, Any], json_out: bool) -> None:
    files = _listed(result, "files", json_out,
                    "this node holds nothing yet (dhtshare publish FILE, or dhtshare fetch HASH)")
    if not files:
        return
    if "holders" in files[0]:
        def seen(f: dict[str, Any]) -> str:
            return "?" if f["last_seen_ago"] is None else f"{f['last_seen_ago']:.0f} s ago"

        table([[f["kind"], f["name"], size_text(f["size"]),
                f"{f['chunks_held']}/{f['chunks']}",
                "?" if f["holders"] is None else str(f["holders"]), seen(f), f["hash"]]
               for f in files],
              ["KIND", "NAME", "SIZE", "CHUNKS", "HOLDERS", "LAST ANNOUNCED", "MANIFEST HASH"])
        return
    table([[f["kind"], f["name"], size_text(f["size"]), f"{f['chunks_held']}/{f['chunks']}",
            f["hash"]] for f in files], ["KIND", "NAME", "SIZE", "CHUNKS", "MANIFEST HASH"])


def show_peers(result: dict[str, Any], json_out: bool) -> None:
    peers = _listed(result, "peers", json_out, "no peer links open now")
    if not peers:
        return
    table([[p["address"], (p["node_id"] or "?")[:16], p["direction"],
            size_text(p["bytes_sent"]), size_text(p["bytes_received"]),
            size_text(p["send_rate"]) + "/s", size_text(p["receive_rate"]) + "/s",
            str(p["requests_in_flight"])] for p in peers],
          ["ADDRESS", "NODE", "DIRECTION", "SENT", "RECEIVED", "SEND RATE", "RECV RATE",
           "IN FLIGHT"])


class Progress:
    """The live progress display on stderr when it is a terminal; silent otherwise.

    One bar per stage: hashing (before a publish) has its own; fetching and
    replicating share the command's bar, with the peers sending now, and with
    ``peers`` a line per peer (its address, rate and chunks) below it.
    """

    def __init__(self, label: str, enabled: bool, peers: bool = False) -> None:
        self._bar: Any = None
        self._tasks: dict[str, Any] = {}
        self._label = label
        self._enabled = enabled and sys.stderr.isatty()
        self._show_peers = peers
        self._peer_rows: list[dict[str, Any]] = []

    def __enter__(self) -> Progress:
        if self._enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                TaskProgressColumn,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )
            from rich.progress import Progress as RichProgress

            outer = self

            class Bar(RichProgress):
                def get_renderables(self) -> Any:
                    yield self.make_tasks_table(self.tasks)
                    if outer._show_peers and outer._peer_rows:
                        yield outer._peer_table()

            self._bar = Bar(
                "[progress.description]{task.description}", BarColumn(), TaskProgressColumn(),
                DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                TextColumn("{task.fields[peers]}"),
                console=Console(stderr=True), transient=True,
            )
            self._bar.__enter__()
        return self

    def _task(self, key: str, description: str, total: int | None = None) -> Any:
        if key not in self._tasks:
            self._tasks[key] = self._bar.add_task(description, total=total, peers="")
        return self._tasks[key]

    def _peer_table(self) -> Any:
        from rich.table import Table

        grid = Table.grid(padding=(0, 2))
        for justify in ("left", "right", "right", "right"):
            grid.add_column(justify=justify)
        for p in self._peer_rows:
            chunks = f"{p['chunks']} chunk{'' if p['chunks'] == 1 else 's'}"
            grid.add_row(f"  {p['address']}", f"{size_text(p['rate'])}/s", chunks,
                         size_text(p["bytes"]))
        return grid

    def update(self, data: dict[str, Any]) -> None:
        if self._bar is None:
            return
        stage = data.get("stage")
        if stage == "joining":
            self._bar.update(self._task("main", self._label),
                             description=f"{self._label} (joining the network)")
            return
        if stage == "hashing":
            task = self._task("hashing", "hashing", data.get("total"))
            self._bar.update(task, completed=data.get("done", 0), total=data.get("total"))
            return
        if "hashing" in self._tasks:  # hashing is over: its bar stays full
            for task in self._bar.tasks:
                if task.id == self._tasks["hashing"] and task.total is not None:
                    self._bar.update(task.id, completed=task.total)
        description = f"{self._label} ({stage})" if stage == "replicating" else self._label
        peers = ""
        if "sending" in data:
            n = data["sending"]
            peers = f"{n} peer{'' if n == 1 else 's'}"
            self._peer_rows = list(data.get("peers", []))
        self._bar.update(self._task("main", self._label), completed=data.get("done", 0),
                         total=data.get("total"), description=description, peers=peers)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
