"""What every command does around its work.

Logging set-up, user errors turned into one line on stderr and an exit code
(a traceback means a bug), the node configuration built from flags and
environment, signals, and reaching the node that runs on a data dir.  Heavy
modules are imported inside the functions so that a command that only talks
to a running node starts fast.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from dhtshare.cli.render import Progress, error_line
from dhtshare.errors import ConfigError, DhtshareError, NodeNotRunning, os_error

if TYPE_CHECKING:
    import asyncio

    from dhtshare.config import Config
    from dhtshare.node import Node


T = TypeVar("T")

#: The package's logger, as before the CLI was split (log lines keep their name).
log = logging.getLogger("dhtshare")


def setup_logging(verbose: int, default: int = logging.WARNING, level: str | None = None,
                  fmt: str | None = None, path: Path | None = None) -> None:
    """Log at ``default``, INFO with ``-v``, DEBUG with ``-vv``, or at ``--log-level``.

    ``--log-level``/``--log-format``/``--log-file`` win over ``$DHTSHARE_LOG_LEVEL``,
    ``$DHTSHARE_LOG_FORMAT`` and ``$DHTSHARE_LOG_FILE``, which win over ``-v``.
    A bad value is a one-line error.
    """
    from dhtshare.cli.logs import configure, level_named

    env = os.environ
    level = level or env.get("DHTSHARE_LOG_LEVEL") or None
    fmt = fmt or env.get("DHTSHARE_LOG_FORMAT") or "text"
    if path is None and env.get("DHTSHARE_LOG_FILE"):
        path = Path(env["DHTSHARE_LOG_FILE"])
    try:
        if level is not None:
            chosen = level_named(level)
        else:
            chosen = default if verbose == 0 else (logging.INFO if verbose == 1 else logging.DEBUG)
        configure(chosen, fmt.lower(), path.expanduser() if path else None,
                  quiet_libraries=verbose < 2)
    except DhtshareError as err:
        fail(str(err), err.exit_code)


def fail(message: str, code: int = 1) -> None:
    """End the command with ``message`` as one line on stderr and exit code ``code``."""
    typer.echo(error_line(message), err=True)
    raise typer.Exit(code)


def guard(fn: Callable[[], T]) -> T:
    """Run ``fn``; user errors become one line on stderr and an exit code."""
    try:
        return fn()
    except DhtshareError as err:
        fail(str(err), err.exit_code)
    except OSError as err:
        # A boundary that forgot to translate: still one line, never a traceback.
        log.debug("untranslated OSError", exc_info=True)
        fail(str(os_error(err, "access")), 1)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    raise AssertionError("unreachable")  # pragma: no cover


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` in a fresh event loop, with user errors handled as in :func:`guard`."""
    import asyncio

    return guard(lambda: asyncio.run(coro))


def resolve_data_dir(value: Path | None) -> Path:
    """``--data-dir``, else the default (``$DHTSHARE_DATA_DIR``, then the XDG data dir)."""
    from dhtshare.config import default_data_dir

    return (value or default_data_dir()).expanduser()


def peers_from(values: list[str] | None) -> tuple[tuple[str, int], ...]:
    """``--peer`` flags, else ``$DHTSHARE_PEERS``, parsed (a bad one is a ConfigError)."""
    from dhtshare.core.netaddr import parse_peers

    return parse_peers(values, os.environ.get("DHTSHARE_PEERS"))


def build_config(data_dir: Path, host: str, port: int, peers: tuple[tuple[str, int], ...],
                 advertise: str | None = None, join_timeout: float = 0.0,
                 upload_rate: str = "0", download_rate: str = "0",
                 metrics_port: int = 0, metrics_host: str = "127.0.0.1") -> Config:
    """The node's :class:`~dhtshare.config.Config` from flags and the environment.

    Timings have no flags: ``DHTSHARE_*`` variables or ``config.toml`` set them
    (the tests, the benchmarks and the docker network shorten them), read
    through the one settings table, :mod:`dhtshare.cli.settings`.
    """
    from dhtshare.cli.settings import TIMINGS, resolve
    from dhtshare.config import Config

    if not 0 <= port < 65536:
        raise ConfigError(f"port {port} is out of range (0-65535)")
    if host == "0.0.0.0" and advertise in ("0.0.0.0", "127.0.0.1"):
        raise ConfigError("--advertise must be an address other hosts can reach")
    env = os.environ
    kw: dict[str, Any] = {name: r.value for name, r in resolve(data_dir, {}).items()
                          if name in TIMINGS}
    plain = env.get("DHTSHARE_BENCH_PLAINTEXT_LINKS", "")
    if plain not in ("", "0", "1"):
        raise ConfigError("DHTSHARE_BENCH_PLAINTEXT_LINKS must be 0 or 1")
    if plain == "1":
        kw["plaintext_links"] = True
    kw["max_upload_rate"] = parse_rate(upload_rate, "--max-upload-rate")
    kw["max_download_rate"] = parse_rate(download_rate, "--max-download-rate")
    if not 0 <= metrics_port < 65536:
        raise ConfigError(f"--metrics-port {metrics_port} is out of range (0-65535; 0: off)")
    kw["metrics_port"], kw["metrics_host"] = metrics_port, metrics_host
    return Config(data_dir=data_dir, host=host, port=port, advertise=advertise, peers=peers,
                  join_timeout=join_timeout, **kw)


def parse_rate(text: str, flag: str) -> int:
    """A rate flag's bytes per second (``10M``, ``500K``, ``0``), or a ConfigError naming it."""
    from dhtshare.core.netaddr import parse_size

    try:
        return parse_size(text)
    except ConfigError as err:
        raise ConfigError(f"{flag}: {err}") from err


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT/SIGTERM; installed before anything starts."""
    import asyncio
    import signal

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def wait_first(*events: asyncio.Event) -> None:
    """Wait until any of ``events`` is set."""
    import asyncio

    waits = [asyncio.ensure_future(ev.wait()) for ev in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


async def wait_for_signal(node: Node, stop: asyncio.Event) -> None:
    """Serve until a signal, the node stopping on its own, or the node giving up joining."""
    await wait_first(stop, node.stopped, node.upkeep.gave_up)
    if node.upkeep.join_error is not None:
        raise node.upkeep.join_error
    log.info("shutting down")


def via_control(data_dir: Path, op: str, args: dict[str, Any], progress: Progress,
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


def node_op(data_dir: Path | None, op: str, args: dict[str, Any], label: str,
            idle_timeout: float | None = None) -> dict[str, Any]:
    """Run ``op`` on the node of the data dir (which must be running)."""
    ddir = resolve_data_dir(data_dir)

    def main() -> dict[str, Any]:
        with Progress(label, bool(label)) as bar:
            result = via_control(ddir, op, args, bar, idle_timeout)
        if result is None:
            raise NodeNotRunning(f"no dhtshare node is running on data dir {ddir}: "
                                 "start one with 'dhtshare node'")
        return result

    return guard(main)
