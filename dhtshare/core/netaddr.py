"""Parsing of ``HOST:PORT`` peer addresses and sizes given on the command line."""

from __future__ import annotations

import re

from dhtshare.errors import ConfigError

_SIZE = re.compile(r"(\d+)\s*([kmg]i?b?|b)?", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_peer(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → ``(host, port)``."""
    text = text.strip()
    host, sep, port_s = text.rpartition(":")
    if not sep or not host or not port_s.isdigit():
        raise ConfigError(f"bad peer address {text!r}: expected HOST:PORT, e.g. 127.0.0.1:7000")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_s)
    if not 0 < port < 65536:
        raise ConfigError(f"bad peer address {text!r}: port must be 1-65535")
    return host, port


def parse_peers(values: list[str] | None, env: str | None) -> tuple[tuple[str, int], ...]:
    """Peers from ``--peer`` flags, else from ``DHTSHARE_PEERS`` (comma-separated)."""
    items = list(values or [])
    if not items and env:
        items = [p for p in env.split(",") if p.strip()]
    return tuple(parse_peer(p) for p in items)


def parse_size(text: str) -> int:
    """``1048576``, ``1M``, ``100K``, ``512``, ``1MiB`` → bytes."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise ConfigError(f"bad size {text!r}: use bytes or a K/M/G suffix, e.g. 1M")
    unit = (match.group(2) or "").lower().rstrip("b").rstrip("i")
    return int(match.group(1)) * _UNITS[unit]
