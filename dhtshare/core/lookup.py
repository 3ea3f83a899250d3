"""One iterative Kademlia lookup as a state machine, with no I/O.

The DHT adapter (:mod:`dhtshare.net.dht.client`) asks :meth:`Lookup.to_query` whom to
send a query to, feeds answers and failures back, and stops when
:attr:`Lookup.done` says so.  Keeping the rules here, away from sockets,
makes them testable on simulated networks of thousands of nodes in
milliseconds, and keeps the two ways a lookup can go wrong in one place:

* **finishing too early** (before the ``want`` closest nodes have answered),
  which makes an announce and a later lookup of the same key land on
  different nodes, so the lookup misses records;
* **finishing too late** (waiting for a node that left), which makes every
  lookup in a network with churn pay a timeout.

The rule: a lookup is done when the ``want`` closest nodes that *answered*
are known and no candidate closer than the farthest of them is still
unasked or has a query in flight.  A query unanswered for ``stale_after``
seconds stops counting (it no longer takes one of the ``alpha`` slots, and
once ``want`` nodes have answered it no longer holds up the end); if it
answers later, the answer is still used.
"""

from __future__ import annotations

import enum
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

#: How many nodes that referred a candidate are remembered (for dead-contact hints).
MAX_REFERRERS = 3


@dataclass(frozen=True, slots=True)
class Contact:
    """A DHT node as lookups see it."""

    id: bytes
    ip: str
    port: int

    @property
    def addr(self) -> tuple[str, int]:
        return (self.ip, self.port)


class State(enum.Enum):
    NEW = "new"
    PENDING = "pending"
    STALE = "stale"
    ANSWERED = "answered"
    FAILED = "failed"


@dataclass(slots=True)
class _Entry:
    contact: Contact
    distance: int
    #: Answers between a seed and this node: 0 for the lookup's own contacts.
    depth: int
    state: State = State.NEW
    sent_at: float = 0.0
    referrers: list[bytes] = field(default_factory=list)


def distance(a: bytes, b: bytes) -> int:
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


class Lookup:
    """The state of one lookup of ``target``.

    ``want`` is how many of the closest answering nodes the caller needs (the
    nodes that hold a key's records); ``alpha`` how many queries may be in
    flight; ``max_queries`` bounds the work whatever the network answers.
    """

    def __init__(
        self,
        target: bytes,
        seeds: Iterable[Contact],
        *,
        want: int = 8,
        alpha: int = 3,
        max_queries: int = 64,
        self_id: bytes = b"",
    ) -> None:
        self.target = target
        self.want = want
        self.alpha = alpha
        self.max_queries = max_queries
        self.self_id = self_id
        self._t = int.from_bytes(target, "big")
        self._entries: dict[bytes, _Entry] = {}
        self.queries = 0
        self.stale_count = 0
        self.failures = 0
        for c in seeds:
            self._add(c, 0, None)

    # -- feeding the machine ---------------------------------------------------------
    def _add(self, c: Contact, depth: int, referrer: bytes | None) -> None:
        if c.id == self.self_id or len(c.id) != len(self.target):
            return
        entry = self._entries.get(c.id)
        if entry is None:
            d = int.from_bytes(c.id, "big") ^ self._t
            entry = self._entries[c.id] = _Entry(c, d, depth)
        elif depth < entry.depth and entry.state is State.NEW:
            entry.depth = depth
        if referrer is not None and len(entry.referrers) < MAX_REFERRERS:
            entry.referrers.append(referrer)

    def to_query(self, now: float) -> list[Contact]:
        """The contacts to send a query to now (each is marked in flight)."""
        out: list[Contact] = []
        active = self._active()
        if active >= self.alpha or self.queries >= self.max_queries:
            return out
        bound = self._bound()
        for entry in sorted(
            (e for e in self._entries.values() if e.state is State.NEW and e.distance < bound),
            key=lambda e: e.distance,
        ):
            if active >= self.alpha or self.queries >= self.max_queries:
                break
            entry.state = State.PENDING
            entry.sent_at = now
            self.queries += 1
            active += 1
            out.append(entry.contact)
        return out

    def answered(self, node_id: bytes, nodes: Iterable[Contact]) -> None:
        """``node_id`` answered, naming ``nodes`` as the closest it knows."""
        entry = self._entries.get(node_id)
        if entry is None or entry.state not in (State.PENDING, State.STALE):
            return
        entry.state = State.ANSWERED
        for c in nodes:
            self._add(c, entry.depth + 1, node_id)

    def failed(self, node_id: bytes) -> None:
        """The query to ``node_id`` timed out or got garbage."""
        entry = self._entries.get(node_id)
        if entry is not None and entry.state in (State.PENDING, State.STALE, State.NEW):
            entry.state = State.FAILED
            self.failures += 1

    def expire(self, now: float, stale_after: float) -> None:
        """Queries older than ``stale_after`` stop holding the lookup up."""
        for entry in self._entries.values():
            # Same arithmetic as next_expiry, so waking at that time always expires.
            if entry.state is State.PENDING and entry.sent_at + stale_after <= now:
                entry.state = State.STALE
                self.stale_count += 1

    # -- reading it -------------------------------------------------------------------
    def _active(self) -> int:
        return sum(1 for e in self._entries.values() if e.state is State.PENDING)

    def _answered(self) -> list[_Entry]:
        return sorted(
            (e for e in self._entries.values() if e.state is State.ANSWERED),
            key=lambda e: e.distance,
        )

    def _bound(self) -> float:
        """Distance of the ``want``-th closest answer (infinite until there are that many)."""
        answered = self._answered()
        return answered[self.want - 1].distance if len(answered) >= self.want else math.inf

    @property
    def done(self) -> bool:
        bound = self._bound()
        short = bound == math.inf  # fewer than ``want`` answers so far
        for e in self._entries.values():
            if e.distance >= bound:
                continue
            if e.state is State.PENDING:
                return False
            if e.state is State.NEW and self.queries < self.max_queries:
                return False
            if e.state is State.STALE and short:
                # Slow is not dead: on a loaded machine every answer may be late,
                # and a lookup must not end empty-handed while some may still come.
                return False
        return True

    def next_expiry(self, stale_after: float) -> float | None:
        """When the oldest query in flight turns stale (``None`` if none is in flight)."""
        times = [e.sent_at for e in self._entries.values() if e.state is State.PENDING]
        return min(times) + stale_after if times else None

    def closest(self) -> list[Contact]:
        """The ``want`` closest nodes that answered, closest first."""
        return [e.contact for e in self._answered()[: self.want]]

    @property
    def hops(self) -> int:
        """Sequential answers needed to reach the closest nodes found (0 if none)."""
        return max((e.depth + 1 for e in self._answered()[: self.want]), default=0)

    def answered_contacts(self) -> list[Contact]:
        """Every node that answered, closest first."""
        return [e.contact for e in self._answered()]

    def referrers(self, node_id: bytes) -> list[bytes]:
        """The nodes that named ``node_id`` to us in this lookup."""
        entry = self._entries.get(node_id)
        return list(entry.referrers) if entry is not None else []

    def is_pending(self, node_id: bytes) -> bool:
        entry = self._entries.get(node_id)
        return entry is not None and entry.state in (State.PENDING, State.STALE)


class RttEstimator:
    """How long to wait for a DHT answer before a lookup stops counting on it.

    Twice the 90th percentile of the last ``window`` round trips, within
    ``[floor, ceiling]``: on an idle loopback that is the floor (10 ms), on a
    loaded machine or across the internet it follows what is measured.  A
    percentile over a window, unlike TCP's smoothed mean and deviation, is
    not thrown to the ceiling for minutes by one stall of the event loop.

    Once ``min_fresh`` round trips of the last ``fresh`` seconds are in, only
    those count.  A node asks seldom (a lookup is ~9 queries), so its window
    can be a burst of load that ended long ago: measured with 200 node
    processes, lookups 10 s after such a burst waited 40-50 ms instead of 10
    on each silent node, until each asker had sent 32 queries more.  The
    first answers of the next lookup now set its pace; a node that has asked
    nothing lately still goes by its last window (not the floor: across the
    internet that would send a query to every seed at once).
    """

    def __init__(
        self,
        floor: float = 0.010,
        ceiling: float = 0.5,
        initial: float = 0.25,
        window: int = 32,
        factor: float = 2.0,
        fresh: float = 5.0,
        min_fresh: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.floor = floor
        self.ceiling = ceiling
        self.initial = initial
        self.factor = factor
        self.fresh = fresh
        self.min_fresh = min_fresh
        self._clock = clock
        #: (when, round trip), oldest first.
        self._samples: deque[tuple[float, float]] = deque(maxlen=window)

    def sample(self, rtt: float) -> None:
        if rtt >= 0:
            self._samples.append((self._clock(), rtt))

    @property
    def samples(self) -> int:
        return len(self._samples)

    def stale_after(self) -> float:
        if not self._samples:
            return self.initial
        cutoff = self._clock() - self.fresh
        recent = [rtt for at, rtt in self._samples if at >= cutoff]
        use = recent if len(recent) >= self.min_fresh else [rtt for _, rtt in self._samples]
        ordered = sorted(use)
        p90 = ordered[int(0.9 * (len(ordered) - 1))]
        return min(self.ceiling, max(self.floor, self.factor * p90))


__all__ = ["Contact", "Lookup", "RttEstimator", "distance"]
