"""The command line: ``dhtshare bootstrap | node | publish | fetch | status``.

Only the CLI prints, configures logging or exits.  Every
:class:`~dhtshare.errors.DhtshareError` becomes one line on stderr and a
non-zero exit code; a traceback means a bug.  Heavy modules are imported
inside the commands so that ``dhtshare fetch`` through a running node starts
fast.

This module only assembles the application: the commands live in
:mod:`.cmd_node` (running a node), :mod:`.cmd_share` (sharing and fetching
files) and :mod:`.cmd_demo`, the flags they share in :mod:`.options`, and
what every command does around its work in :mod:`.common`.
"""

from __future__ import annotations

import contextlib

import typer

from dhtshare.cli import cmd_config, cmd_demo, cmd_node, cmd_share

app = typer.Typer(
    name="dhtshare",
    help="Trackerless peer-to-peer file sharing: chunks verified by SHA-256, "
    "providers found in a Kademlia DHT, data pulled from many peers at once.",
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

# In the order ``dhtshare --help`` lists them.
for command in (
    cmd_node.bootstrap,
    cmd_node.node,
    cmd_share.publish,
    cmd_share.fetch,
    cmd_share.pin,
    cmd_share.unpin,
    cmd_share.remove,
    cmd_share.holders,
    cmd_node.status,
    cmd_node.ls,
    cmd_node.peers,
    cmd_node.limit,
    cmd_demo.demo,
):
    app.command()(command)
app.add_typer(cmd_config.app, name="config")


def main() -> None:
    """Console-script entry point."""
    with contextlib.suppress(BrokenPipeError):
        app()
