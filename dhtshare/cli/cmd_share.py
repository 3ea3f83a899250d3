"""Commands that share and fetch files, and manage what a node keeps.

``publish`` and ``fetch`` go through the node running on the data dir, or
else run a short-lived node of their own; ``pin``, ``unpin``, ``remove`` and
``holders`` need the running node.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from dhtshare.cli.common import (
    build_config,
    fail,
    guard,
    node_op,
    peers_from,
    resolve_data_dir,
    run,
    setup_logging,
    stop_on_signals,
    via_control,
    wait_for_signal,
)
from dhtshare.cli.options import (
    DataDirOpt,
    DownloadRateOpt,
    HashArg,
    HostOpt,
    JsonOpt,
    LogFileOpt,
    LogFormatOpt,
    LogLevelOpt,
    PeerOpt,
    PortOpt,
    QuietOpt,
    ShowPeersOpt,
    UploadRateOpt,
    VerboseOpt,
)
from dhtshare.cli.render import Progress, show_fetch, show_publish
from dhtshare.config import DEFAULT_CHUNK_SIZE, DEFAULT_REPLICAS, GIB, KIB, MIB
from dhtshare.errors import ConfigError, DhtshareError, NodeNotRunning

if TYPE_CHECKING:
    from dhtshare.config import Config
    from dhtshare.node import Node

T = TypeVar("T")


def _size_flag(size: int) -> str:
    """``size`` bytes written as ``--chunk-size`` takes it, in the largest whole unit."""
    for unit, suffix in ((GIB, "G"), (MIB, "M"), (KIB, "K")):
        if size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


#: ``--chunk-size`` when not given, as its help shows it ("1M").
DEFAULT_CHUNK_FLAG = _size_flag(DEFAULT_CHUNK_SIZE)


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


def publish(
    file: Annotated[Path, typer.Argument(help="The file to share.", show_default=False)],
    data_dir: DataDirOpt = None,
    peer: PeerOpt = None,
    chunk_size: Annotated[str, typer.Option("--chunk-size", help="Chunk size: bytes or "
                                            "K/M suffix, 512 to 16M.")] = DEFAULT_CHUNK_FLAG,
    copy: Annotated[bool, typer.Option("--copy", help="Keep a copy in the data dir and serve "
                                       "that, instead of serving FILE where it is.")] = False,
    replicas: Annotated[int | None, typer.Option(
        "--replicas", help="Durable copies of every chunk to place on other nodes before "
        f"returning [default: {DEFAULT_REPLICAS}, best effort]. Given explicitly, falling "
        "short is an error (exit 3), and without a running node publish exits once they "
        "are placed.", show_default=False)] = None,
    host: HostOpt = "",
    port: PortOpt = 0,
    max_upload_rate: UploadRateOpt = "0",
    max_download_rate: DownloadRateOpt = "0",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    show_peers: ShowPeersOpt = False,
    log_level: LogLevelOpt = None,
    log_format: LogFormatOpt = None,
    log_file: LogFileOpt = None,
    verbose: VerboseOpt = 0,
) -> None:
    """Share FILE: print its manifest hash (the last line of stdout).

    With a node running on the data dir, the node takes the file over and this
    command returns once the file is announced and replicated.  Otherwise it
    joins through --peer, replicates, and keeps serving in the foreground until
    interrupted (or, with an explicit --replicas, exits: the copies serve it).
    The file is served from where it is, not copied.

    Example: dhtshare publish movie.mkv --replicas 2
    """
    setup_logging(verbose, level=log_level, fmt=log_format, path=log_file)
    from dhtshare.core.manifest import check_chunk_size
    from dhtshare.core.netaddr import parse_size

    try:
        size = check_chunk_size(parse_size(chunk_size))
        peers = peers_from(peer)
        path = file.expanduser().resolve()
        if not path.exists():
            raise ConfigError(f"{file}: no such file")
        if not path.is_file():
            raise ConfigError(f"{file} is not a regular file")
        if not os.access(path, os.R_OK):
            raise ConfigError(f"{file} is not readable")
        ddir = resolve_data_dir(data_dir)
    except DhtshareError as err:
        fail(str(err), err.exit_code)

    want = DEFAULT_REPLICAS if replicas is None else replicas
    if not 0 <= want <= 64:
        fail("--replicas must be 0 to 64", 2)

    def show(result: dict[str, Any]) -> None:
        show_publish(result, json_out, want, explicit=replicas is not None)

    def main() -> None:
        args = {"path": str(path), "chunk_size": size, "copy": copy, "replicas": want}
        with Progress("publishing", not (json_out or quiet), show_peers) as bar:
            result = via_control(ddir, "publish", args, bar)
        if result is not None:
            show(result)
            return
        if not peers:
            raise NodeNotRunning(
                f"no dhtshare node is running on data dir {ddir}: start one with "
                "'dhtshare node --peer HOST:PORT', or pass --peer to publish and serve from here"
            )
        config = build_config(ddir, host or _short_lived_host(peers), port, peers,
                              upload_rate=max_upload_rate, download_rate=max_download_rate)

        async def one_shot() -> None:
            stop = stop_on_signals()

            from dhtshare.ops import PublishArgs

            async def body(node: Node) -> None:
                with Progress("publishing", not (json_out or quiet), show_peers) as bar:
                    published = await node.ops.publish(
                        PublishArgs(path, size, copy, want), lambda _k, d: bar.update(d))
                result = published.to_json()
                show(result)
                if replicas is not None and want > 0:
                    return  # the replicas serve it from now on
                print("serving until interrupted (Ctrl-C)", file=sys.stderr, flush=True)
                await wait_for_signal(node, stop)

            await _with_node(config, body, allow_temp=False)

        run(one_shot())

    guard(main)


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
    max_upload_rate: UploadRateOpt = "0",
    max_download_rate: DownloadRateOpt = "0",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    show_peers: ShowPeersOpt = False,
    log_level: LogLevelOpt = None,
    log_format: LogFormatOpt = None,
    log_file: LogFileOpt = None,
    verbose: VerboseOpt = 0,
) -> None:
    """Download a file by its manifest hash, verifying every chunk.

    Goes through the node on the data dir when one runs; otherwise runs a
    short-lived node joined through --peer.  Exits 0 only when the file is
    complete and verified.

    Example: dhtshare fetch 3f7c...e91a -o movie.mkv
    """
    setup_logging(verbose, level=log_level, fmt=log_format, path=log_file)
    try:
        from dhtshare.core.ids import parse_manifest_hash

        h = parse_manifest_hash(hash_)
        peers = peers_from(peer)
        ddir = resolve_data_dir(data_dir)
    except DhtshareError as err:
        fail(str(err), err.exit_code)
    cwd = Path.cwd()

    def show(result: dict[str, Any]) -> None:
        show_fetch(result, json_out)

    def main() -> None:
        args = {"hash": h.hex(), "output": str(output) if output else None,
                "cwd": str(cwd), "force": force}
        with Progress("fetching", not (json_out or quiet), show_peers) as bar:
            result = via_control(ddir, "fetch", args, bar)
            if result is None:
                if not peers:
                    raise NodeNotRunning(
                        f"no dhtshare node is running on data dir {ddir} and no --peer given: "
                        "start a node, or pass --peer HOST:PORT"
                    )
                config = build_config(ddir, host or _short_lived_host(peers), port, peers,
                              upload_rate=max_upload_rate, download_rate=max_download_rate)

                from dhtshare.ops import FetchArgs

                async def body(node: Node) -> dict[str, Any]:
                    res = await node.ops.fetch(FetchArgs(h, cwd, output, force),
                                               lambda _k, d: bar.update(d))
                    return res.to_json()

                result = run(_with_node(config, body, allow_temp=True))
        show(result)

    guard(main)


def _checked_hash(text: str) -> str:
    from dhtshare.core.ids import parse_manifest_hash

    try:
        return parse_manifest_hash(text).hex()
    except DhtshareError as err:
        fail(str(err), err.exit_code)
    raise AssertionError("unreachable")  # pragma: no cover


def pin(
    hash_: HashArg,
    data_dir: DataDirOpt = None,
    replicas: Annotated[int, typer.Option("--replicas", help="Copies the network should "
                                          "keep, this one included.")] = DEFAULT_REPLICAS,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    show_peers: ShowPeersOpt = False,
) -> None:
    """Fetch a file into the node's store and keep it: it counts as a durable replica.

    The running node on the data dir keeps the copy in its store (not your
    files) and helps keep the file's replication factor.

    Example: dhtshare pin 3f7c...e91a --replicas 3
    """
    setup_logging(0)
    args = {"hash": _checked_hash(hash_), "replicas": replicas}
    ddir = resolve_data_dir(data_dir)

    def main() -> dict[str, Any]:
        with Progress("pinning", not (json_out or quiet), show_peers) as bar:
            result = via_control(ddir, "pin", args, bar)
        if result is None:
            raise NodeNotRunning(f"no dhtshare node is running on data dir {ddir}: "
                                 "start one with 'dhtshare node'")
        return result

    result = guard(main)
    print(json.dumps(result) if json_out else f"pinned {result['name']} ({result['size']} "
          f"bytes), keeping {result['replicas']} copies")


def unpin(hash_: HashArg, data_dir: DataDirOpt = None, json_out: JsonOpt = False) -> None:
    """Let go of a pinned file: its chunks are copied to other nodes first, then dropped here.

    Nothing is lost: the command succeeds only once the other copies exist
    (exit 3 if too few nodes would take them; the pin then stays).

    Example: dhtshare unpin 3f7c...e91a
    """
    setup_logging(0)
    result = node_op(data_dir, "unpin", {"hash": _checked_hash(hash_)}, "")
    print(json.dumps(result) if json_out else f"unpinned {result['hash']}")


def remove(hash_: HashArg, data_dir: DataDirOpt = None, json_out: JsonOpt = False) -> None:
    """Stop sharing a file.  A replica is handed off first; your own file is never deleted.

    The node withdraws its provider records, so fetchers stop asking it.

    Example: dhtshare remove 3f7c...e91a
    """
    setup_logging(0)
    result = node_op(data_dir, "remove", {"hash": _checked_hash(hash_)}, "")
    print(json.dumps(result) if json_out else f"no longer sharing {result['hash']}")


def holders(hash_: HashArg, data_dir: DataDirOpt = None, json_out: JsonOpt = False) -> None:
    """Who has what: every live holder of a file and how many chunks each holds.

    Asks each holder the DHT names directly, so the list is what is true now.

    Example: dhtshare holders 3f7c...e91a --json
    """
    setup_logging(0)
    result = node_op(data_dir, "holders", {"hash": _checked_hash(hash_)}, "")
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
