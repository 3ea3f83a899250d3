"""``dhtshare config show``: the settings a node on this data dir starts with, and whence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from dhtshare.cli.common import fail, resolve_data_dir, setup_logging
from dhtshare.cli.options import DataDirOpt, JsonOpt
from dhtshare.errors import DhtshareError

app = typer.Typer(help="The node's configuration: DATA_DIR/config.toml, the environment, "
                  "defaults.", no_args_is_help=True, add_completion=False)


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [f"{h}:{p}" if isinstance(h, str) else _plain(h) for h, p in value]
    return value


@app.command("show")
def show(data_dir: DataDirOpt = None, json_out: JsonOpt = False) -> None:
    """Print every setting a node started on the data dir would use, and where it came from.

    Sources, strongest first: a flag given to 'dhtshare node' or 'bootstrap',
    the environment ($DHTSHARE_<NAME>), DATA_DIR/config.toml (its line), the
    default.  This command sees no node flags, so it shows the other three.

    Example: dhtshare config show --data-dir ~/.local/share/dhtshare
    """
    from dhtshare.cli.settings import resolve

    setup_logging(0)
    try:
        settings = resolve(resolve_data_dir(data_dir), {})
    except DhtshareError as err:
        fail(str(err), err.exit_code)
    if json_out:
        print(json.dumps({k: {"value": _plain(r.value), "source": r.source}
                          for k, r in settings.items()}))
        return
    width = max(len(k) for k in settings)
    for name, r in settings.items():
        value = _plain(r.value)
        shown = "-" if value in (None, [], "") else value
        print(f"{name:<{width}}  {shown!s:<24}  {r.source}")
