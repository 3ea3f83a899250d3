"""A token bucket: how long to wait so that bytes moved keep to a rate (sans-IO).

Bytes are charged when they move, even past what the bucket holds (a chunk
is not split for it); the debt is then the wait before the next move.  So
the rate holds over any window longer than one burst plus one chunk, and no
caller ever blocks the event loop: it is told how long to sleep.  A rate of
0 means no limit.
"""

from __future__ import annotations

#: Seconds of traffic the bucket may save up while idle: small, so that over
#: any 5-second window the rate is kept within a few per cent.
BURST_SECONDS = 0.05
#: ... but never less than this many bytes, so small rates still move a chunk.
MIN_BURST = 64 * 1024


class TokenBucket:
    """``rate`` bytes per second (0: unlimited), refilled lazily from the clock passed in."""

    def __init__(self, rate: float = 0.0, now: float = 0.0) -> None:
        self.rate = 0.0
        self._tokens = 0.0
        self._at = now
        self.set_rate(rate, now)

    @property
    def burst(self) -> float:
        return max(self.rate * BURST_SECONDS, MIN_BURST)

    def set_rate(self, rate: float, now: float) -> None:
        """Change the rate; what was saved up is kept, within the new burst."""
        if rate < 0:
            raise ValueError("a rate cannot be negative")
        self._refill(now)
        self.rate = float(rate)
        self._tokens = min(self._tokens, self.burst) if rate else 0.0

    def _refill(self, now: float) -> None:
        if self.rate and now > self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = max(self._at, now)

    def charge(self, nbytes: int, now: float) -> None:
        """``nbytes`` moved (or are about to): take them, into debt if need be."""
        if self.rate:
            self._refill(now)
            self._tokens -= nbytes

    def delay(self, now: float) -> float:
        """Seconds to wait before the next bytes may move (0: now)."""
        if not self.rate:
            return 0.0
        self._refill(now)
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


__all__ = ["BURST_SECONDS", "MIN_BURST", "TokenBucket"]
