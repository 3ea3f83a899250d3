"""``dhtshare config show``: the settings a node on this data dir starts with, and whence."""

from __future__ import annotations

import json

import typer

from dhtshare.cli.common import fail, resolve_data_dir, setup_logging
from dhtshare.cli.options import DataDirOpt, JsonOpt
from dhtshare.errors import DhtshareError

app = typer.Typer(help="The node's configuration: DATA_DIR/config.toml, the environment, "
                  "defaults.", no_args_is_help=True, add_completion=False)


@app.command("show")
def show(data_dir: DataDirOpt = None, json_out: JsonOpt = False) -> None:
    """Print every setting a node started on the data dir would use, and where it came from.

    Sources, strongest first: a flag given to 'dhtshare node' or 'bootstrap',
    the environment ($DHTSHARE_<NAME>), DATA_DIR/config.toml (its line), the
    default.  With a node running on the data dir, it shows what that node
    runs with (its flags too); otherwise what a node started now would use.

    Example: dhtshare config show --data-dir ~/.local/share/dhtshare
    """
    from dhtshare.cli.common import via_control
    from dhtshare.cli.render import Progress
    from dhtshare.cli.settings import plain, resolve

    setup_logging(0)
    try:
        ddir = resolve_data_dir(data_dir)
        running = via_control(ddir, "config", {}, Progress("", False))
        if running is not None and not running["settings"]:
            running = None  # a node started without a record of its sources (in-process)
        if running is not None:  # the node on this data dir: what it runs with, flags too
            rows = [(x["name"], x["value"], x["source"]) for x in running["settings"]]
        else:
            rows = [(k, plain(r.value), r.source) for k, r in resolve(ddir, {}).items()]
    except DhtshareError as err:
        fail(str(err), err.exit_code)
    if json_out:
        print(json.dumps({"running": running is not None,
                          "settings": {k: {"value": v, "source": src} for k, v, src in rows}}))
        return
    if running is None:
        print("# no node runs on this data dir: what one started now would use")
    width = max(len(k) for k, _, _ in rows)
    for name, value, source in rows:
        shown = "-" if value in (None, [], "") else value
        print(f"{name:<{width}}  {shown!s:<24}  {source}")
