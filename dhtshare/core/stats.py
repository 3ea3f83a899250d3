"""The node's counters: plain numbers the floors above bump at the event.

Values that exist elsewhere already (bytes on open links, stored bytes,
routing-table size) are read where they live at scrape time; this holds only
what nobody else counts.  :mod:`dhtshare.metrics` turns it into Prometheus
families; nothing here knows about Prometheus, sockets or time.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

#: Upper bounds (seconds) of the DHT lookup latency histogram's buckets.
LOOKUP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DIRECTIONS = ("inbound", "outbound")


@dataclass
class Histogram:
    """Observations per bucket (not cumulative; the last counts those above every bound)."""

    bounds: tuple[float, ...] = LOOKUP_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(LOOKUP_BUCKETS) + 1))
    total: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1


@dataclass
class Stats:
    """Counters of one node (monotonic, except the deficits)."""

    chunks_fetched: int = 0
    chunk_bytes_fetched: int = 0
    #: Chunks or manifests that failed verification, and distinct peers banned for it.
    verification_failures: int = 0
    bans: int = 0
    #: DHT lookups by kind (``providers``, ``nodes``), and their latency.
    lookups: dict[str, int] = field(default_factory=dict)
    lookup_seconds: dict[str, Histogram] = field(default_factory=dict)
    #: Durable copies made by repair rounds, and copies still short per file.
    repair_copies: int = 0
    deficits: dict[bytes, int] = field(default_factory=dict)
    #: Bytes moved by peer links already closed, by link direction.
    closed_sent: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DIRECTIONS, 0))
    closed_received: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(DIRECTIONS, 0))

    def lookup_done(self, kind: str, seconds: float) -> None:
        self.lookups[kind] = self.lookups.get(kind, 0) + 1
        self.lookup_seconds.setdefault(kind, Histogram()).observe(seconds)

    def link_closed(self, initiator: bool, sent: int, received: int) -> None:
        direction = "outbound" if initiator else "inbound"
        self.closed_sent[direction] += sent
        self.closed_received[direction] += received

    def banned(self, new: bool) -> None:
        """A peer sent data failing verification (``new``: it was not banned before)."""
        self.verification_failures += 1
        self.bans += new


__all__ = ["DIRECTIONS", "LOOKUP_BUCKETS", "Histogram", "Stats"]
