"""The ``dhtshare`` console entry point, with a quick path to a running node.

``dhtshare fetch HASH --data-dir D`` and ``dhtshare status`` on a machine
with a running node are one request on a Unix socket.  Building the typer
application costs more than the request itself (typer, click and their
imports are about 50 ms of CPU, half of what such a command costs), so this
module answers those two commands without it.

It only takes argument lines it fully understands: the exact options those
commands document, each at most once, and a well-formed hash.  Anything
else (``--help``, ``--peer``, ``-v``, an unknown or repeated option, a
malformed hash, no node running on the data dir) goes to the full command
line in :mod:`dhtshare.cli.app`, which gives the same results, messages and
exit codes; so the quick path can never answer differently, only sooner.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from dhtshare.errors import DhtshareError, NodeNotRunning


@dataclass(frozen=True)
class _Grammar:
    """The options one command takes: those with a value, and flags."""

    values: dict[str, str]
    flags: dict[str, str]
    positionals: int


_FETCH = _Grammar({"-o": "output", "--output": "output", "--data-dir": "data_dir"},
                  {"--force": "force", "--json": "json", "--quiet": "quiet", "-q": "quiet",
                   "--peers": "peers"}, 1)
_STATUS = _Grammar({"--data-dir": "data_dir"}, {"--json": "json"}, 0)


def _parse(argv: list[str], grammar: _Grammar) -> tuple[dict[str, str | bool], list[str]] | None:
    """Options and positionals, or ``None`` for anything the full CLI should handle."""
    opts: dict[str, str | bool] = {}
    positionals: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("-") and arg != "-":
            name, eq, value = arg.partition("=")
            dest = grammar.values.get(name) or grammar.flags.get(name)
            if dest is None or dest in opts:
                return None
            if name in grammar.values:
                if not eq:
                    i += 1
                    if i == len(argv):
                        return None
                    value = argv[i]
                if not value:
                    return None
                opts[dest] = value
            elif eq:
                return None
            else:
                opts[dest] = True
        else:
            positionals.append(arg)
        i += 1
    if len(positionals) != grammar.positionals:
        return None
    return opts, positionals


def _data_dir(value: str | bool | None) -> Path:
    from dhtshare.config import default_data_dir

    return (Path(value) if isinstance(value, str) else default_data_dir()).expanduser()


def _fetch(argv: list[str]) -> int | None:
    from dhtshare.cli.render import Progress, show_fetch
    from dhtshare.core.ids import parse_manifest_hash
    from dhtshare.net import ctlclient

    parsed = _parse(argv, _FETCH)
    if parsed is None:
        return None
    opts, (text,) = parsed
    try:
        h = parse_manifest_hash(text)
    except DhtshareError:
        return None
    output = opts.get("output")
    args = {"hash": h.hex(), "output": str(Path(output)) if isinstance(output, str) else None,
            "cwd": str(Path.cwd()), "force": bool(opts.get("force"))}
    json_out = bool(opts.get("json"))
    shown = not (json_out or opts.get("quiet"))
    with Progress("fetching", shown, bool(opts.get("peers"))) as bar:
        result = ctlclient.call(_data_dir(opts.get("data_dir")), "fetch", args, bar.update)
    show_fetch(result, json_out)
    return 0


def _status(argv: list[str]) -> int | None:
    from dhtshare.cli.render import STATUS_TIMEOUT, show_status
    from dhtshare.net import ctlclient

    parsed = _parse(argv, _STATUS)
    if parsed is None:
        return None
    opts, _ = parsed
    result = ctlclient.call(_data_dir(opts.get("data_dir")), "status", {},
                            idle_timeout=STATUS_TIMEOUT)
    show_status(result, bool(opts.get("json")))
    return 0


_QUICK = {"fetch": _fetch, "status": _status}


def quick(argv: list[str]) -> int | None:
    """Run ``argv`` through a running node if it is a quick command; else ``None``."""
    if not argv or argv[0] not in _QUICK:
        return None
    from dhtshare.cli.render import error_line

    try:
        return _QUICK[argv[0]](argv[1:])
    except NodeNotRunning as err:
        if err.__cause__ is not None:
            return None  # no node on that data dir: the full CLI knows what to do
        print(error_line(str(err)), file=sys.stderr, flush=True)
        return err.exit_code
    except DhtshareError as err:
        print(error_line(str(err)), file=sys.stderr, flush=True)
        return err.exit_code
    except KeyboardInterrupt:
        print(error_line("interrupted"), file=sys.stderr, flush=True)
        return 130


def main() -> None:
    """Console-script entry point."""
    try:
        code = quick(sys.argv[1:])
    except BrokenPipeError:
        code = 0
    if code is None:
        from dhtshare.cli.app import main as full

        full()
        return
    sys.exit(code)
