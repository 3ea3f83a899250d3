"""Where logs go and how they look: text or JSON lines, on stderr or in a rotated file.

The CLI's part of logging (only it configures logging): ``--log-level``,
``--log-format``, ``--log-file``.  What the lines say, the activity log
included, is :mod:`dhtshare.activity`'s.
"""

from __future__ import annotations

import datetime
import json
import logging
import logging.handlers
import sys
from pathlib import Path
from typing import Any

from dhtshare.activity import FIELDS
from dhtshare.errors import ConfigError

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}
FORMATS = ("text", "json")
#: A log file is rotated at this size, and this many old files are kept.
ROTATE_BYTES = 10 * 1024 * 1024
ROTATE_KEEP = 5
_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, then the event's fields, then msg."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        out: dict[str, Any] = {
            "ts": ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        for key in FIELDS:
            value = record.__dict__.get(key)
            if value is not None:
                out[key] = value.hex() if isinstance(value, bytes) else value
        out["msg"] = record.getMessage()
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure(level: int, fmt: str = "text", path: Path | None = None,
              quiet_libraries: bool = True) -> None:
    """Send every log line at ``level`` or above to stderr or a rotated ``path``."""
    if fmt not in FORMATS:
        raise ConfigError(f"log format must be text or json, not {fmt!r}")
    handler: logging.Handler
    if path is None:
        handler = logging.StreamHandler(sys.stderr)
    else:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.handlers.RotatingFileHandler(
                path, maxBytes=ROTATE_BYTES, backupCount=ROTATE_KEEP, encoding="utf-8")
        except OSError as err:
            raise ConfigError(f"cannot write the log file {path}: "
                              f"{err.strerror or err}") from err
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # The DHT library logs every timeout at ERROR; those are routine churn for us.
    noisy = logging.CRITICAL if quiet_libraries else logging.DEBUG
    for name in ("kademlia", "rpcudp", "asyncio"):
        logging.getLogger(name).setLevel(noisy)


def level_named(name: str) -> int:
    level = LEVELS.get(name.lower())
    if level is None:
        raise ConfigError(f"log level must be one of {', '.join(LEVELS)}, not {name!r}")
    return level


__all__ = ["JsonFormatter", "configure", "level_named"]
