"""A long-running node's settings, layered: flags > environment > ``config.toml`` > defaults.

Every option ``dhtshare node`` and ``bootstrap`` take can also come from the
environment (``DHTSHARE_<NAME>``) or from ``DATA_DIR/config.toml`` (stdlib
``tomllib``), and the timings that have no flag can come from either.  Each
value remembers where it came from, which ``dhtshare config show`` prints.
A bad value is one line naming where it was: the flag, the variable, or the
file, key and line.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dhtshare.errors import ConfigError

CONFIG_FILE = "config.toml"


def _text(v: Any) -> str:
    if not isinstance(v, str) or not v or len(v) > 255:
        raise ValueError("must be a non-empty string")
    return v


def _optional_text(v: Any) -> str | None:
    return None if v in (None, "") else _text(v)


def _port(v: Any) -> int:
    n = int(v) if isinstance(v, str) and v.strip().isdigit() else v
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < 65536:
        raise ValueError("must be a port number, 0 to 65535")
    return n


def _size(v: Any) -> int:
    from dhtshare.core.netaddr import parse_size

    if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        return v
    if not isinstance(v, str):
        raise ValueError("must be a size such as 10M or 0")
    try:
        return parse_size(v)
    except ConfigError as err:
        raise ValueError(str(err)) from err


def _seconds(v: Any) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError) as err:
        raise ValueError("must be a number of seconds") from err
    if isinstance(v, bool) or not x > 0 or x != x:
        raise ValueError("must be a positive number of seconds")
    return x


def _peers(v: Any) -> tuple[tuple[str, int], ...]:
    from dhtshare.core.netaddr import parse_peers

    items = v.split(",") if isinstance(v, str) else v
    if not isinstance(items, list | tuple) or not all(isinstance(x, str) for x in items):
        raise ValueError('must be a list of "HOST:PORT" strings')
    try:
        return parse_peers([x.strip() for x in items if x.strip()], None)
    except ConfigError as err:
        raise ValueError(str(err)) from err


def _choice(*allowed: str) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        if not isinstance(v, str) or v.lower() not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return v.lower()

    return parse


def _path(v: Any) -> Path | None:
    return None if v in (None, "") else Path(_text(v)).expanduser()


@dataclass(frozen=True)
class Setting:
    name: str  # the key in config.toml, and the Config field (or logging option)
    flag: str | None  # the command-line option, if there is one
    parse: Callable[[Any], Any]
    default: Any
    help: str

    @property
    def env(self) -> str:
        return "DHTSHARE_" + self.name.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting("host", "--host", _text, "0.0.0.0", "address to listen on"),
    Setting("port", "--port", _port, 7000, "UDP (DHT) and TCP (chunks) port"),
    Setting("peers", "--peer", _peers, (), "nodes to join through"),
    Setting("advertise", "--advertise", _optional_text, None, "address in our own records"),
    Setting("max_storage", "--max-storage", _size, 0, "replica bytes kept for others"),
    Setting("max_upload_rate", "--max-upload-rate", _size, 0, "bytes per second sent"),
    Setting("max_download_rate", "--max-download-rate", _size, 0, "bytes per second received"),
    Setting("metrics_port", "--metrics-port", _port, 0, "Prometheus metrics port (0: off)"),
    Setting("metrics_host", "--metrics-host", _text, "127.0.0.1", "metrics address"),
    Setting("log_level", "--log-level", _choice("debug", "info", "warning", "error"), "info",
            "log level"),
    Setting("log_format", "--log-format", _choice("text", "json"), "text", "log format"),
    Setting("log_file", "--log-file", _path, None, "log file (rotated)"),
    Setting("provider_ttl", None, _seconds, 1800.0, "seconds a provider record lives"),
    Setting("reannounce_interval", None, _seconds, 600.0, "seconds between re-announcements"),
    Setting("repair_interval", None, _seconds, 300.0, "seconds between replica checks"),
    Setting("handoff_timeout", None, _seconds, 30.0, "longest hand-off when stopping"),
    Setting("join_wait", None, _seconds, 30.0, "how long operations wait for a join"),
)
BY_NAME = {s.name: s for s in SETTINGS}
#: The settings without a flag: Config fields that only the environment or the file set.
TIMINGS = frozenset(s.name for s in SETTINGS if s.flag is None)
#: Older variable names that still work.
ALIASES = {"reannounce_interval": "DHTSHARE_REANNOUNCE"}


def plain(value: Any) -> Any:
    """A setting's value as JSON: paths as text, peers as "HOST:PORT"."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [f"{h}:{p}" for h, p in value]
    return value


@dataclass(frozen=True)
class Resolved:
    value: Any
    source: str  # "flag --port", "environment $DHTSHARE_PORT", "/d/config.toml:3", "default"


def read_file(path: Path) -> dict[str, tuple[Any, int]]:
    """The settings in ``path`` with their line numbers ({} when there is no file)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror or err}") from err
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: {err}") from err
    lines = text.splitlines()
    out: dict[str, tuple[Any, int]] = {}
    for key, value in data.items():
        line = next((i + 1 for i, x in enumerate(lines)
                     if re.match(rf"\s*{re.escape(key)}\s*=", x)), 0)
        if key not in BY_NAME:
            known = ", ".join(BY_NAME)
            raise ConfigError(f"{path} line {line}: unknown key {key!r} (known: {known})")
        out[key] = (value, line)
    return out


def resolve(data_dir: Path, given: dict[str, Any],
            env: dict[str, str] | None = None) -> dict[str, Resolved]:
    """Every setting's value and where it came from; ``given`` are the flags typed."""
    env = dict(os.environ) if env is None else env
    path = data_dir / CONFIG_FILE
    in_file = read_file(path)
    for name, (raw, line) in in_file.items():  # the whole file is checked, used or not
        try:
            BY_NAME[name].parse(raw)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"{path} line {line}: {name}: {err} (got {raw!r})") from err
    out: dict[str, Resolved] = {}
    for s in SETTINGS:
        var = s.env if s.env in env else ALIASES.get(s.name, s.env)
        if s.name in given:
            raw, where = given[s.name], f"flag {s.flag}"
        elif var in env and env[var] != "":
            raw, where = env[var], f"environment ${var}"
        elif s.name in in_file:
            raw, line = in_file[s.name]
            where = f"{path}:{line}"
        else:
            out[s.name] = Resolved(s.default, "default")
            continue
        try:
            value = s.parse(raw)
        except (ValueError, TypeError) as err:
            if where.startswith(str(path)):
                raise ConfigError(f"{path} line {line}: {s.name}: {err} "
                                  f"(got {raw!r})") from err
            raise ConfigError(f"{where}: {s.name}: {err} (got {raw!r})") from err
        out[s.name] = Resolved(value, where)
    return out


__all__ = ["BY_NAME", "CONFIG_FILE", "SETTINGS", "TIMINGS", "Resolved", "Setting", "plain",
           "read_file", "resolve"]
