"""Commands that run or ask about a node: ``bootstrap``, ``node``, ``status``, ``limit``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dhtshare.cli.common import (
    build_config,
    fail,
    node_op,
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


#: The command's parameters that are settings (``dhtshare.cli.settings``), by setting name.
_SETTING_PARAMS = {"host": "host", "port": "port", "peer": "peers", "advertise": "advertise",
                   "max_storage": "max_storage", "max_upload_rate": "max_upload_rate",
                   "max_download_rate": "max_download_rate", "metrics_port": "metrics_port",
                   "metrics_host": "metrics_host", "log_level": "log_level",
                   "log_format": "log_format", "log_file": "log_file"}


def _typed(ctx: typer.Context) -> dict[str, Any]:
    """The settings given on the command line (not defaults), by setting name."""
    from click.core import ParameterSource

    given = {}
    for param, name in _SETTING_PARAMS.items():
        if ctx.get_parameter_source(param) is ParameterSource.COMMANDLINE:
            value = ctx.params[param]
            given[name] = [] if value is None else value
    return given


def _serve(ctx: typer.Context, data_dir: Path | None, verbose: int, bootstrap: bool) -> None:
    """Run a node with its settings layered: flags > environment > config.toml > defaults."""
    from dataclasses import replace

    from dhtshare.cli.settings import plain, resolve

    try:
        ddir = resolve_data_dir(data_dir)
        settings = resolve(ddir, _typed(ctx))
    except DhtshareError as err:
        fail(str(err), err.exit_code)
    v = {name: r.value for name, r in settings.items()}
    level = v["log_level"] if settings["log_level"].source != "default" else None
    setup_logging(verbose, logging.INFO, level, v["log_format"], v["log_file"])
    try:
        config = build_config(ddir, v["host"], v["port"], () if bootstrap else v["peers"],
                              v["advertise"], LONG_RUNNING_JOIN, str(v["max_upload_rate"]),
                              str(v["max_download_rate"]), v["metrics_port"], v["metrics_host"])
        sources = tuple((name, plain(r.value), r.source) for name, r in settings.items())
        config = replace(config, max_storage=v["max_storage"], sources=sources)
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
    ctx: typer.Context,
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
    _serve(ctx, data_dir, verbose, bootstrap=True)


def node(
    ctx: typer.Context,
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
    _serve(ctx, data_dir, verbose, bootstrap=False)


def ls(
    data_dir: DataDirOpt = None,
    holders: Annotated[bool, typer.Option(
        "--holders", help="Also ask the DHT how many nodes hold each file now and when "
        "one last announced it (a lookup per file).")] = False,
    json_out: JsonOpt = False,
) -> None:
    """List what the node on the data dir holds: published, fetched, pinned, replicas.

    One line per file: its kind, name, size, chunks held of all, and manifest
    hash ("replica" is held for another node; "pinned" is kept for you).

    Example: dhtshare ls --json
    """
    from dhtshare.cli.render import show_ls

    setup_logging(0)
    show_ls(node_op(data_dir, "ls", {"holders": holders}, ""), json_out)


def peers(data_dir: DataDirOpt = None, json_out: JsonOpt = False) -> None:
    """List the node's peer links open now: who, which way, bytes and rate each way.

    Links are encrypted; "IN FLIGHT" counts this node's requests waiting on
    that peer.  Rates are over the last five seconds.

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
        return "no limit" if not rate else f"{rate / 2**20:.4g} MiB/s ({rate} bytes/s)"

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
