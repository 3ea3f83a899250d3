"""The activity log: one debug line per chunk, chunk map and DHT step, with its peer.

Info lines are the calm summary (a fetch or publish started and finished,
peers coming and going, repairs).  Debug lines logged through
:func:`activity` are the **activity log**: one per chunk requested, sent,
received, verified or rejected, per chunk-map exchange, per DHT announce and
lookup.  Each names its event and fields, so the JSON form
(:mod:`dhtshare.cli.logs`) is one object per event with stable keys:

    {"ts": "2026-12-02T02:10:11.123Z", "level": "debug", "logger": "dhtshare.activity",
     "event": "chunk_verified", "peer": "10.0.0.2:7000", "chunk": 17, "msg": "..."}

It checks ``isEnabledFor(DEBUG)`` first, so the hot path pays one call when
nobody asked for the activity log; pass hashes as bytes (the JSON formatter
writes them in hex), so no text is made for a line nobody reads.  Every
floor may use it.
"""

from __future__ import annotations

import logging
from typing import Any

#: The activity log's logger: debug lines with an ``event`` and its fields.
ACTIVITY = logging.getLogger("dhtshare.activity")
#: The keys a JSON line may carry besides ts, level, logger and msg, in this order.
FIELDS = ("event", "peer", "node", "manifest", "chunk", "bytes", "chunks", "seconds",
          "reason", "key", "hops", "found")


def activity(event: str, message: str, *args: object, **fields: Any) -> None:
    """One activity-log line (debug): ``event`` and ``fields`` become JSON keys."""
    if ACTIVITY.isEnabledFor(logging.DEBUG):
        ACTIVITY.debug(message, *args, extra={"event": event, **fields})


__all__ = ["ACTIVITY", "FIELDS", "activity"]
