"""Commands that run or ask about a node: ``bootstrap``, ``node``, ``status``, ``limit``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dhtshare.cli.common import (
    build_config,
    fail,
    node_op,
    peers_from,
    resolve_data_dir,
    run,
    setup_logging,
    stop_on_signals,
    wait_first,
    wait_for_signal,
)
from dhtshare.cli.options import (
    AdvertiseOpt,
    DataDirOpt,
    DownloadRateOpt,
    HostOpt,
    JsonOpt,
    LogFileOpt,
    LogFormatOpt,
    LogLevelOpt,
    MaxStorageOpt,
    MetricsHostOpt,
    MetricsPortOpt,
    PeerOpt,
    PortOpt,
    UploadRateOpt,
    VerboseOpt,
)
from dhtshare.cli.render import STATUS_TIMEOUT, show_status
from dhtshare.errors import DhtshareError

if TYPE_CHECKING:
    from dhtshare.node import Node

#: Seconds a long-running node retries joining (its peers may be starting too).
LONG_RUNNING_JOIN = 60.0


def _ready_line(node: Node) -> None:
    """The line on stdout that says the node is up (scripts and tests wait for it)."""
    print(f"dhtshare node {node.node_id.hex()[:16]} listening on "
          f"{node.config.host}:{node.port} (data dir {node.data_dir})", flush=True)


def _serve(data_dir: Path | None, host: str, port: int, peers: tuple[tuple[str, int], ...],
           advertise: str | None, verbose: int, max_storage: str,
           upload_rate: str = "0", download_rate: str = "0",
           logging_opts: tuple[str | None, str | None, Path | None] = (None, None, None),
           metrics: tuple[int, str] = (0, "127.0.0.1")) -> None:
    from dataclasses import replace

    from dhtshare.core.netaddr import parse_size

    setup_logging(verbose, logging.INFO, *logging_opts)
    try:
        config = build_config(resolve_data_dir(data_dir), host, port, peers, advertise,
                              LONG_RUNNING_JOIN, upload_rate, download_rate, *metrics)
        config = replace(config, max_storage=parse_size(max_storage))
    except DhtshareError as err:
        fail(str(err), err.exit_code)

    async def main() -> None:
        from dhtshare.node import Node

        stop = stop_on_signals()
        async with Node.open(config) as node:
            # The control socket already answers (status says "joining"); the
            # ready line keeps meaning "up and part of the network".
            await wait_first(node.upkeep.joined, stop)
            if node.upkeep.joined.is_set() and node.upkeep.join_error is None:
                _ready_line(node)
            await wait_for_signal(node, stop)

    run(main())


def bootstrap(
    host: HostOpt = "0.0.0.0",
    port: PortOpt = 7000,
    data_dir: DataDirOpt = None,
    advertise: AdvertiseOpt = None,
    max_storage: MaxStorageOpt = "0",
    max_upload_rate: UploadRateOpt = "0",
    max_download_rate: DownloadRateOpt = "0",
    log_level: LogLevelOpt = None,
    log_format: LogFormatOpt = None,
    log_file: LogFileOpt = None,
    verbose: VerboseOpt = 0,
    metrics_port: MetricsPortOpt = 0,
    metrics_host: MetricsHostOpt = "127.0.0.1",
) -> None:
    """Run the first node of a new network, in the foreground (Ctrl-C stops it).

    Other nodes join with 'dhtshare node --peer THIS_HOST:PORT'.
    Example: dhtshare bootstrap --port 7000 --log-format json --log-file ~/dhtshare.log
    """
    _serve(data_dir, host, port, (), advertise, verbose, max_storage, max_upload_rate,
           max_download_rate, (log_level, log_format, log_file), (metrics_port, metrics_host))


def node(
    peer: PeerOpt = None,
    host: HostOpt = "0.0.0.0",
    port: PortOpt = 7000,
    data_dir: DataDirOpt = None,
    advertise: AdvertiseOpt = None,
    max_storage: MaxStorageOpt = "0",
    max_upload_rate: UploadRateOpt = "0",
    max_download_rate: DownloadRateOpt = "0",
    log_level: LogLevelOpt = None,
    log_format: LogFormatOpt = None,
    log_file: LogFileOpt = None,
    verbose: VerboseOpt = 0,
    metrics_port: MetricsPortOpt = 0,
    metrics_host: MetricsHostOpt = "127.0.0.1",
) -> None:
    """Run a long-lived node that joins the network through --peer, in the foreground.

    It serves what it holds, and 'publish'/'fetch' with the same --data-dir go through it.
    A restart from the same data dir rejoins through its saved contacts.

    Example: dhtshare node --peer 192.168.1.10:7000 --max-upload-rate 10M
    """
    try:
        peers = peers_from(peer)
    except DhtshareError as err:
        fail(str(err), err.exit_code)
    _serve(data_dir, host, port, peers, advertise, verbose, max_storage, max_upload_rate,
           max_download_rate, (log_level, log_format, log_file), (metrics_port, metrics_host))


def ls(data_dir: DataDirOpt = None, json_out: JsonOpt = False) -> None:
    """List what the node on the data dir holds: published, fetched, pinned, replicas.

    One line per file: its kind, name, size, chunks held of all, and manifest
    hash ("replica" is held for another node; "pinned" is kept for you).

    Example: dhtshare ls --json
    """
    from dhtshare.cli.render import show_ls

    setup_logging(0)
    show_ls(node_op(data_dir, "ls", {}, ""), json_out)


def peers(data_dir: DataDirOpt = None, json_out: JsonOpt = False) -> None:
    """List the node's peer links open now: who, which way, bytes and rate each way.

    Links are encrypted; "IN FLIGHT" counts this node's requests waiting on
    that peer.  Rates are averages over each link's life.

    Example: dhtshare peers
    """
    from dhtshare.cli.render import show_peers

    setup_logging(0)
    show_peers(node_op(data_dir, "peers", {}, ""), json_out)


def limit(
    upload: Annotated[str | None, typer.Option(
        "--upload", help="New upload limit, bytes per second (K/M/G suffix; 0: none).")] = None,
    download: Annotated[str | None, typer.Option(
        "--download", help="New download limit, bytes per second (0: none).")] = None,
    data_dir: DataDirOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show or change the running node's bandwidth limits, at once and for all its links.

    'dhtshare limit --upload 5M' caps what the node sends at 5 MiB/s;
    with no option it prints the limits in force.  They last until the node
    stops (start it with --max-upload-rate/--max-download-rate to keep them).

    Example: dhtshare limit --upload 5M --download 20M
    """
    from dhtshare.cli.common import parse_rate

    setup_logging(0)
    args: dict[str, int] = {}
    try:
        if upload is not None:
            args["upload"] = parse_rate(upload, "--upload")
        if download is not None:
            args["download"] = parse_rate(download, "--download")
    except DhtshareError as err:
        fail(str(err), err.exit_code)
    result = node_op(data_dir, "limit", args, "")
    if json_out:
        print(json.dumps(result))
        return

    def shown(rate: int) -> str:
        return "no limit" if not rate else f"{rate / 1e6:g} MB/s ({rate} bytes/s)"

    print(f"upload:   {shown(result['upload'])}")
    print(f"download: {shown(result['download'])}")


def status(
    data_dir: DataDirOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show what the node on the data dir holds and how many contacts it has.

    Also its node id and key fingerprint, its address and how long it has run.

    Example: dhtshare status --json
    """
    setup_logging(0)
    result = node_op(data_dir, "status", {}, "", idle_timeout=STATUS_TIMEOUT)
    show_status(result, json_out)
