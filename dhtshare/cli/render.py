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
    for item in result["content"]:
        held = "complete" if item["complete"] else "partial"
        print(f"  {item['hash']}  {item['size']:>12}  {held:8}  {item['name']}")


class Progress:
    """A progress bar on stderr when it is a terminal; silent otherwise."""

    def __init__(self, label: str, enabled: bool) -> None:
        self._bar: Any = None
        self._task: Any = None
        self._label = label
        self._enabled = enabled and sys.stderr.isatty()

    def __enter__(self) -> Progress:
        if self._enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )
            from rich.progress import Progress as Bar

            self._bar = Bar(
                "[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                TransferSpeedColumn(), TimeRemainingColumn(),
                console=Console(stderr=True), transient=True,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self._label, total=None)
        return self

    def update(self, data: dict[str, Any]) -> None:
        if self._bar is None:
            return
        if data.get("stage") == "joining":
            self._bar.update(self._task, description=f"{self._label} (joining the network)")
            return
        self._bar.update(self._task, completed=data.get("done", 0), total=data.get("total"),
                         description=self._label)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
