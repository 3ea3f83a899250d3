"""The command line: ``dhtshare bootstrap | node | publish | fetch | status``.

Only this module prints, configures logging or exits.  Every
:class:`~dhtshare.errors.DhtshareError` becomes one line on stderr and a
non-zero exit code; a traceback means a bug.  Heavy modules are imported
inside the commands so that ``dhtshare fetch`` through a running node starts
fast.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from dhtshare.cli.render import (
    STATUS_TIMEOUT,
    Progress,
    error_line,
    show_fetch,
    show_publish,
    show_status,
)
from dhtshare.config import DEFAULT_REPLICAS
from dhtshare.errors import ConfigError, DhtshareError, NodeNotRunning

if TYPE_CHECKING:
    import asyncio

    from dhtshare.config import Config
    from dhtshare.node import Node


T = TypeVar("T")

app = typer.Typer(
    name="dhtshare",
    help="Trackerless peer-to-peer file sharing: chunks verified by SHA-256, "
    "providers found in a Kademlia DHT, data pulled from many peers at once.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

log = logging.getLogger("dhtshare")

#: Seconds a long-running node retries joining (its peers may be starting too).
LONG_RUNNING_JOIN = 60.0

DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Node data directory [env: DHTSHARE_DATA_DIR; "
                 "default: ~/.local/share/dhtshare]", show_default=False),
]
HostOpt = Annotated[str, typer.Option("--host", help="Address to listen on (UDP and TCP).")]
PortOpt = Annotated[int, typer.Option("--port", help="Port for both the DHT (UDP) and "
                                      "chunk transfers (TCP); 0 picks a free one.")]
PeerOpt = Annotated[
    list[str] | None,
    typer.Option("--peer", help="HOST:PORT of a node to join through (repeatable) "
                 "[env: DHTSHARE_PEERS, comma-separated].", show_default=False),
]
AdvertiseOpt = Annotated[
    str | None,
    typer.Option("--advertise", help="Address other hosts should use to reach this node "
                 "(default: as peers see it).", show_default=False),
]
MaxStorageOpt = Annotated[
    str,
    typer.Option("--max-storage", help="Most replica data this node keeps for the network "
                 "(bytes or K/M/G suffix; 0: no limit but the disk). A full node declines."),
]
VerboseOpt = Annotated[int, typer.Option("--verbose", "-v", count=True, help="More logging.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object as the result.")]


# --- plumbing --------------------------------------------------------------------------


def _setup_logging(verbose: int, default: int = logging.WARNING) -> None:
    level = default if verbose == 0 else (logging.INFO if verbose == 1 else logging.DEBUG)
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # The DHT library logs every timeout at ERROR; those are routine churn for us.
    for noisy in ("kademlia", "rpcudp"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL if verbose < 2 else logging.DEBUG)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL if verbose < 2 else logging.DEBUG)


def _fail(message: str, code: int = 1) -> None:
    typer.echo(error_line(message), err=True)
    raise typer.Exit(code)


def _guard(fn: Callable[[], T]) -> T:
    """Run ``fn``; user errors become one line on stderr and an exit code."""
    try:
        return fn()
    except DhtshareError as err:
        _fail(str(err), err.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    raise AssertionError("unreachable")  # pragma: no cover


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` in a fresh event loop, with user errors handled as in :func:`_guard`."""
    import asyncio

    return _guard(lambda: asyncio.run(coro))


def _data_dir(value: Path | None) -> Path:
    from dhtshare.config import default_data_dir

    return (value or default_data_dir()).expanduser()


def _peers(values: list[str] | None) -> tuple[tuple[str, int], ...]:
    from dhtshare.core.netaddr import parse_peers

    return parse_peers(values, os.environ.get("DHTSHARE_PEERS"))


def _config(data_dir: Path, host: str, port: int, peers: tuple[tuple[str, int], ...],
            advertise: str | None = None, join_timeout: float = 0.0) -> Config:
    from dhtshare.config import Config

    if not 0 <= port < 65536:
        raise ConfigError(f"port {port} is out of range (0-65535)")
    if host == "0.0.0.0" and advertise in ("0.0.0.0", "127.0.0.1"):
        raise ConfigError("--advertise must be an address other hosts can reach")
    env = os.environ
    kw: dict[str, Any] = {}
    for name, key in (("provider_ttl", "DHTSHARE_PROVIDER_TTL"),
                      ("reannounce_interval", "DHTSHARE_REANNOUNCE"),
                      ("repair_interval", "DHTSHARE_REPAIR_INTERVAL"),
                      ("handoff_timeout", "DHTSHARE_HANDOFF_TIMEOUT"),
                      ("join_wait", "DHTSHARE_JOIN_WAIT")):
        if key in env:
            try:
                kw[name] = float(env[key])
            except ValueError as err:
                raise ConfigError(f"{key} must be a number of seconds") from err
    return Config(data_dir=data_dir, host=host, port=port, advertise=advertise, peers=peers,
                  join_timeout=join_timeout, **kw)


def _stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT/SIGTERM; installed before anything starts."""
    import asyncio
    import signal

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _first(*events: asyncio.Event) -> None:
    """Wait until any of ``events`` is set."""
    import asyncio

    waits = [asyncio.ensure_future(ev.wait()) for ev in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


async def _wait_for_signal(node: Node, stop: asyncio.Event) -> None:
    await _first(stop, node.stopped, node.upkeep.gave_up)
    if node.upkeep.join_error is not None:
        raise node.upkeep.join_error
    log.info("shutting down")


def _ready_line(node: Node) -> None:
    print(f"dhtshare node {node.node_id.hex()[:16]} listening on "
          f"{node.config.host}:{node.port} (data dir {node.data_dir})", flush=True)


def _via_control(data_dir: Path, op: str, args: dict[str, Any], progress: Progress,
                 idle_timeout: float | None = None) -> dict[str, Any] | None:
    """Run ``op`` on the node of ``data_dir``; ``None`` when no node runs there."""
    from dhtshare.net import ctlclient

    try:
        return ctlclient.call(data_dir, op, args, progress.update,
                              idle_timeout or ctlclient.IDLE_TIMEOUT)
    except NodeNotRunning as err:
        if err.__cause__ is None:
            raise  # the node went away mid-operation: that is an error
        return None


def _short_lived_host(peers: tuple[tuple[str, int], ...]) -> str:
    from dhtshare.core.providers import is_loopback

    return "127.0.0.1" if all(is_loopback(h) for h, _ in peers) else "0.0.0.0"


async def _with_node(config: Config, body: Callable[[Node], Awaitable[T]],
                     allow_temp: bool) -> T:
    """Start a node for ``config`` (or on a temp data dir if that one is busy) and run body."""
    import shutil
    import tempfile
    from dataclasses import replace

    from dhtshare.errors import DataDirBusy
    from dhtshare.node import Node

    tmp: str | None = None
    try:
        try:
            async with Node.open(config) as node:
                return await body(node)
        except DataDirBusy:
            if not allow_temp:
                raise
            tmp = tempfile.mkdtemp(prefix="dhtshare-")
            async with Node.open(replace(config, data_dir=Path(tmp))) as node:
                return await body(node)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


# --- commands --------------------------------------------------------------------------


def _serve(data_dir: Path | None, host: str, port: int, peers: tuple[tuple[str, int], ...],
           advertise: str | None, verbose: int, max_storage: str) -> None:
    from dataclasses import replace

    from dhtshare.core.netaddr import parse_size

    _setup_logging(verbose, logging.INFO)
    try:
        config = _config(_data_dir(data_dir), host, port, peers, advertise, LONG_RUNNING_JOIN)
        config = replace(config, max_storage=parse_size(max_storage))
    except DhtshareError as err:
        _fail(str(err), err.exit_code)

    async def main() -> None:
        from dhtshare.node import Node

        stop = _stop_on_signals()
        async with Node.open(config) as node:
            # The control socket already answers (status says "joining"); the
            # ready line keeps meaning "up and part of the network".
            await _first(node.upkeep.joined, stop)
            if node.upkeep.joined.is_set() and node.upkeep.join_error is None:
                _ready_line(node)
            await _wait_for_signal(node, stop)

    _run(main())


@app.command()
def bootstrap(
    host: HostOpt = "0.0.0.0",
    port: PortOpt = 7000,
    data_dir: DataDirOpt = None,
    advertise: AdvertiseOpt = None,
    max_storage: MaxStorageOpt = "0",
    verbose: VerboseOpt = 0,
) -> None:
    """Run the first node of a new network, in the foreground (Ctrl-C stops it).

    Other nodes join with 'dhtshare node --peer THIS_HOST:PORT'.
    """
    _serve(data_dir, host, port, (), advertise, verbose, max_storage)


@app.command()
def node(
    peer: PeerOpt = None,
    host: HostOpt = "0.0.0.0",
    port: PortOpt = 7000,
    data_dir: DataDirOpt = None,
    advertise: AdvertiseOpt = None,
    max_storage: MaxStorageOpt = "0",
    verbose: VerboseOpt = 0,
) -> None:
    """Run a long-lived node that joins the network through --peer, in the foreground.

    It serves what it holds, and 'publish'/'fetch' with the same --data-dir go through it.
    A restart from the same data dir rejoins through its saved contacts.
    """
    try:
        peers = _peers(peer)
    except DhtshareError as err:
        _fail(str(err), err.exit_code)
    _serve(data_dir, host, port, peers, advertise, verbose, max_storage)


@app.command()
def publish(
    file: Annotated[Path, typer.Argument(help="The file to share.", show_default=False)],
    data_dir: DataDirOpt = None,
    peer: PeerOpt = None,
    chunk_size: Annotated[str, typer.Option("--chunk-size", help="Chunk size: bytes or "
                                            "K/M suffix, 512 to 16M.")] = "1M",
    copy: Annotated[bool, typer.Option("--copy", help="Keep a copy in the data dir and serve "
                                       "that, instead of serving FILE where it is.")] = False,
    replicas: Annotated[int | None, typer.Option(
        "--replicas", help="Durable copies of every chunk to place on other nodes before "
        f"returning [default: {DEFAULT_REPLICAS}, best effort]. Given explicitly, falling "
        "short is an error (exit 3), and without a running node publish exits once they "
        "are placed.", show_default=False)] = None,
    host: HostOpt = "",
    port: PortOpt = 0,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Share FILE: print its manifest hash (the last line of stdout).

    With a node running on the data dir, the node takes the file over and this
    command returns once the file is announced and replicated.  Otherwise it
    joins through --peer, replicates, and keeps serving in the foreground until
    interrupted (or, with an explicit --replicas, exits: the copies serve it).
    The file is served from where it is, not copied.
    """
    _setup_logging(verbose)
    from dhtshare.core.manifest import check_chunk_size
    from dhtshare.core.netaddr import parse_size

    try:
        size = check_chunk_size(parse_size(chunk_size))
        peers = _peers(peer)
        path = file.expanduser().resolve()
        if not path.exists():
            raise ConfigError(f"{file}: no such file")
        if not path.is_file():
            raise ConfigError(f"{file} is not a regular file")
        if not os.access(path, os.R_OK):
            raise ConfigError(f"{file} is not readable")
        ddir = _data_dir(data_dir)
    except DhtshareError as err:
        _fail(str(err), err.exit_code)

    want = DEFAULT_REPLICAS if replicas is None else replicas
    if not 0 <= want <= 64:
        _fail("--replicas must be 0 to 64", 2)

    def show(result: dict[str, Any]) -> None:
        show_publish(result, json_out, want, explicit=replicas is not None)

    def main() -> None:
        args = {"path": str(path), "chunk_size": size, "copy": copy, "replicas": want}
        with Progress("publishing", not json_out) as bar:
            result = _via_control(ddir, "publish", args, bar)
        if result is not None:
            show(result)
            return
        if not peers:
            raise NodeNotRunning(
                f"no dhtshare node is running on data dir {ddir}: start one with "
                "'dhtshare node --peer HOST:PORT', or pass --peer to publish and serve from here"
            )
        config = _config(ddir, host or _short_lived_host(peers), port, peers)

        async def one_shot() -> None:
            stop = _stop_on_signals()

            from dhtshare.ops import PublishArgs

            async def body(node: Node) -> None:
                with Progress("publishing", not json_out) as bar:
                    published = await node.ops.publish(
                        PublishArgs(path, size, copy, want), lambda _k, d: bar.update(d))
                result = published.to_json()
                show(result)
                if replicas is not None and want > 0:
                    return  # the replicas serve it from now on
                print("serving until interrupted (Ctrl-C)", file=sys.stderr, flush=True)
                await _wait_for_signal(node, stop)

            await _with_node(config, body, allow_temp=False)

        _run(one_shot())

    _guard(main)


@app.command()
def fetch(
    hash_: Annotated[str, typer.Argument(metavar="HASH", help="Manifest hash (64 hex "
                                         "characters) printed by 'dhtshare publish'.")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="File to write, or an "
                      "existing directory to write the file's own name into "
                      "[default: its name in the current directory].", show_default=False)] = None,
    data_dir: DataDirOpt = None,
    peer: PeerOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    host: HostOpt = "",
    port: PortOpt = 0,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Download a file by its manifest hash, verifying every chunk.

    Goes through the node on the data dir when one runs; otherwise runs a
    short-lived node joined through --peer.  Exits 0 only when the file is
    complete and verified.
    """
    _setup_logging(verbose)
    try:
        from dhtshare.core.ids import parse_manifest_hash

        h = parse_manifest_hash(hash_)
        peers = _peers(peer)
        ddir = _data_dir(data_dir)
    except DhtshareError as err:
        _fail(str(err), err.exit_code)
    cwd = Path.cwd()

    def show(result: dict[str, Any]) -> None:
        show_fetch(result, json_out)

    def main() -> None:
        args = {"hash": h.hex(), "output": str(output) if output else None,
                "cwd": str(cwd), "force": force}
        with Progress("fetching", not json_out) as bar:
            result = _via_control(ddir, "fetch", args, bar)
            if result is None:
                if not peers:
                    raise NodeNotRunning(
                        f"no dhtshare node is running on data dir {ddir} and no --peer given: "
                        "start a node, or pass --peer HOST:PORT"
                    )
                config = _config(ddir, host or _short_lived_host(peers), port, peers)

                from dhtshare.ops import FetchArgs

                async def body(node: Node) -> dict[str, Any]:
                    res = await node.ops.fetch(FetchArgs(h, cwd, output, force),
                                               lambda _k, d: bar.update(d))
                    return res.to_json()

                result = _run(_with_node(config, body, allow_temp=True))
        show(result)

    _guard(main)


def _node_op(data_dir: Path | None, op: str, args: dict[str, Any], label: str,
             idle_timeout: float | None = None) -> dict[str, Any]:
    """Run ``op`` on the node of the data dir (which must be running)."""
    ddir = _data_dir(data_dir)

    def main() -> dict[str, Any]:
        with Progress(label, bool(label)) as bar:
            result = _via_control(ddir, op, args, bar, idle_timeout)
        if result is None:
            raise NodeNotRunning(f"no dhtshare node is running on data dir {ddir}: "
                                 "start one with 'dhtshare node'")
        return result

    return _guard(main)


def _checked_hash(text: str) -> str:
    from dhtshare.core.ids import parse_manifest_hash

    try:
        return parse_manifest_hash(text).hex()
    except DhtshareError as err:
        _fail(str(err), err.exit_code)
    raise AssertionError("unreachable")  # pragma: no cover


HashArg = Annotated[str, typer.Argument(metavar="HASH", help="Manifest hash.")]


@app.command()
def pin(
    hash_: HashArg,
    data_dir: DataDirOpt = None,
    replicas: Annotated[int, typer.Option("--replicas", help="Copies the network should "
                                          "keep, this one included.")] = DEFAULT_REPLICAS,
    json_out: JsonOpt = False,
) -> None:
    """Fetch a file into the node's store and keep it: it counts as a durable replica."""
    _setup_logging(0)
    result = _node_op(data_dir, "pin", {"hash": _checked_hash(hash_), "replicas": replicas},
                      "pinning")
    print(json.dumps(result) if json_out else f"pinned {result['name']} ({result['size']} "
          f"bytes), keeping {result['replicas']} copies")


@app.command()
def unpin(hash_: HashArg, data_dir: DataDirOpt = None, json_out: JsonOpt = False) -> None:
    """Let go of a pinned file: its chunks are copied to other nodes first, then dropped here."""
    _setup_logging(0)
    result = _node_op(data_dir, "unpin", {"hash": _checked_hash(hash_)}, "")
    print(json.dumps(result) if json_out else f"unpinned {result['hash']}")


@app.command()
def remove(hash_: HashArg, data_dir: DataDirOpt = None, json_out: JsonOpt = False) -> None:
    """Stop sharing a file.  A replica is handed off first; your own file is never deleted."""
    _setup_logging(0)
    result = _node_op(data_dir, "remove", {"hash": _checked_hash(hash_)}, "")
    print(json.dumps(result) if json_out else f"no longer sharing {result['hash']}")


@app.command()
def holders(hash_: HashArg, data_dir: DataDirOpt = None, json_out: JsonOpt = False) -> None:
    """Who has what: every live holder of a file and how many chunks each holds."""
    _setup_logging(0)
    result = _node_op(data_dir, "holders", {"hash": _checked_hash(hash_)}, "")
    if json_out:
        print(json.dumps(result))
        return
    print(f"{result['name']}: {result['chunks']} chunks, at least "
          f"{result['durable_copies_min']} durable copies of each")
    for x in result["holders"]:
        kind = "replica" if x["durable"] else "copy"
        where = f"{x['address']} (this node)" if x["self"] else x["address"]
        print(f"  {where:22} {x['node_id'][:16]}  {kind:8} "
              f"{x['chunks_held']}/{result['chunks']} chunks")


@app.command()
def status(
    data_dir: DataDirOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show what the node on the data dir holds and how many contacts it has."""
    _setup_logging(0)
    result = _node_op(data_dir, "status", {}, "", idle_timeout=STATUS_TIMEOUT)
    show_status(result, json_out)


@app.command()
def demo(
    size: Annotated[str, typer.Option("--size", help="Size of the generated file.")] = "64M",
    nodes: Annotated[int, typer.Option("--nodes", help="Node processes to start.")] = 5,
    keep: Annotated[bool, typer.Option("--keep", help="Keep the work directory.")] = False,
) -> None:
    """Run a real local network (5 processes on 127.0.0.1), publish, fetch, verify."""
    _setup_logging(0)
    from dhtshare.cli.demo import run_demo
    from dhtshare.core.netaddr import parse_size

    try:
        run_demo(parse_size(size), nodes, keep, lambda line: print(line, flush=True))
    except DhtshareError as err:
        _fail(str(err), err.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)


def main() -> None:
    """Console-script entry point."""
    with contextlib.suppress(BrokenPipeError):
        app()
