"""``dhtshare demo``, the command; :mod:`dhtshare.cli.demo` runs the network."""

from __future__ import annotations

from typing import Annotated

import typer

from dhtshare.cli.common import fail, setup_logging
from dhtshare.errors import DhtshareError


def demo(
    size: Annotated[str, typer.Option("--size", help="Size of the generated file.")] = "64M",
    nodes: Annotated[int, typer.Option("--nodes", help="Node processes to start.")] = 5,
    keep: Annotated[bool, typer.Option("--keep", help="Keep the work directory.")] = False,
) -> None:
    """Run a real local network (5 processes on 127.0.0.1), publish, fetch, verify.

    Starts the nodes, publishes a generated file on one, fetches it on
    another, compares SHA-256 and stops everything; nothing leaves 127.0.0.1.

    Example: dhtshare demo --size 256M
    """
    setup_logging(0)
    from dhtshare.cli.demo import run_demo
    from dhtshare.core.netaddr import parse_size

    try:
        run_demo(parse_size(size), nodes, keep, lambda line: print(line, flush=True))
    except DhtshareError as err:
        fail(str(err), err.exit_code)
    except KeyboardInterrupt:
        fail("interrupted", 130)
