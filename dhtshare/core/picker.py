"""Sans-IO piece picker: which chunk to ask which peer for next.

A download fetches the chunks of one file from several peers at once.  The
picker owns the bookkeeping that decides, whenever a request slot to some peer
frees up, which chunk to ask that peer for.  It does no I/O and knows nothing
about time: the caller reports events (a peer joined, announced a chunk, left,
a chunk arrived, a request failed) and asks :meth:`Picker.next_request`.

Rarest first
    A chunk held by few peers is the one most likely to become unobtainable
    (its holders may leave) and the one that, once we hold it, makes us most
    useful to others.  So among the chunks a peer can give us we ask for one
    with the lowest *availability* (number of connected peers holding it).

Random ties
    Many chunks usually share the lowest availability (at the start of a
    download from seeds, all of them).  If every downloader broke ties the same
    way (say, lowest index first) they would all fetch the same chunks from
    the same seeds and have nothing to trade with each other; picking uniformly
    at random among the ties spreads the swarm over the file.

Endgame
    Near the end every remaining chunk is in flight, and the download waits on
    the slowest peer.  Once a peer has nothing fresh to offer, we let it race
    a chunk already requested from someone else (the one with the fewest
    requesters), capped at ``endgame_dup`` requesters per chunk.  Whoever
    answers first wins; :meth:`Picker.received` returns the losers so the
    caller can cancel them.

Data structures (memory is ~13 bytes per chunk plus n/8 bytes per partial peer)
    * the pool (:class:`~dhtshare.core.levels.Levels`): the *pending* chunks
      (not received, not in flight) by availability counting *partial* peers
      only, with O(1) add, remove and uniform random choice.  Seeds (peers
      holding everything) are a single counter, because a seed adds the same
      +1 to every chunk and so never changes their order; a seed therefore
      joins and leaves in O(1).
    * per partial peer, a bitmap of the chunks it holds (n/8 bytes).
    * ``_inflight``: chunk -> small list of requesters, and a set of chunks per
      peer.

Complexity of :meth:`Picker.next_request`
    * Seed peer: the first non-empty level gives a uniform random pick: O(L),
      L = number of levels <= number of partial peers + 1, i.e. O(1) per chunk.
    * Partial peer: levels are scanned in ascending order; in a level a few
      random members are sampled (rejection sampling, so a hit is uniform
      among the peer's chunks at that level), and if none is held the level
      is scanned from a random offset (random, but not exactly uniform).  The
      worst case is O(pending) per call.  A per-peer cache remembers the
      lowest level that may hold something for the peer, valid until a chunk
      re-enters the pool or loses availability, so a peer with nothing (or
      nothing rare) to offer is not rescanned on every call while downloads
      proceed normally.  In the usual case (held chunks not too sparse in
      their level) a pick is O(1) expected, so a whole download is O(n).
    * Endgame (peer has no pending chunk): O(number of in-flight chunks),
      which the caller bounds through its request windows.

Adding or removing a partial peer costs O(n/8 + chunks it holds); turning a
seed into a partial peer (it answered "not found") costs O(n) once.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Iterable, Iterator
from itertools import islice
from typing import Generic, TypeVar

from dhtshare.core.levels import Levels

__all__ = ["Picker"]

P = TypeVar("P", bound=Hashable)

#: ``_BIT_OFFSETS[b]`` lists the set bits of the byte ``b``: walks a bitmap in
#: O(bytes + set bits) without testing every bit.
_BIT_OFFSETS: tuple[tuple[int, ...], ...] = tuple(
    tuple(bit for bit in range(8) if value >> bit & 1) for value in range(256)
)
#: Random members sampled in a level before falling back to a linear scan.
_SAMPLES = 8
#: Levels at most this large are scanned directly (sampling would not pay off).
_SCAN_DIRECTLY = 16
#: ``array('i')`` holds chunk indices and positions.
_MAX_CHUNKS = 2**31 - 1


def _iter_bits(bitmap: bytearray) -> Iterator[int]:
    """Yield the indices of the set bits of ``bitmap`` in ascending order."""
    offsets = _BIT_OFFSETS
    for byte_index, byte in enumerate(bitmap):
        if byte:
            base = byte_index << 3
            for bit in offsets[byte]:
                yield base + bit


class _Peer:
    """What the picker knows about one connected peer."""

    __slots__ = ("count", "epoch", "held", "inflight", "min_level")

    def __init__(self) -> None:
        #: Bitmap of held chunks, or None for a seed (holds every chunk).
        self.held: bytearray | None = None
        #: Number of chunks held (meaningful for partial peers).
        self.count = 0
        #: Chunks currently requested from this peer.
        self.inflight: set[int] = set()
        #: No pending chunk held by this peer sits below this level, as long
        #: as ``epoch`` equals the picker's epoch (see ``Picker._epoch``).
        self.min_level = 1
        self.epoch = -1


class Picker(Generic[P]):
    """Rarest-first chunk picker with random tie-breaking and an endgame mode.

    ``P`` is the caller's peer key (any hashable).  Chunk indices outside
    ``0..n_chunks-1`` raise :class:`IndexError`: they are a caller bug, the
    protocol layer validates what peers send before reporting it here.
    """

    def __init__(
        self,
        n_chunks: int,
        have: Iterable[int] = (),
        *,
        rng: random.Random | None = None,
        endgame_dup: int = 2,
    ) -> None:
        if not 0 <= n_chunks <= _MAX_CHUNKS:
            raise ValueError(f"n_chunks must be in 0..{_MAX_CHUNKS}, got {n_chunks}")
        if endgame_dup < 1:
            raise ValueError(f"endgame_dup must be >= 1, got {endgame_dup}")
        self._n = n_chunks
        #: Source of randomness for tie-breaking; seed it for reproducibility.
        self.rng = rng if rng is not None else random.Random()
        #: Maximum number of peers a chunk is requested from at once (1: no endgame).
        self.endgame_dup = endgame_dup
        self._have = bytearray(n_chunks)
        for index in have:
            self._check(index)
            self._have[index] = 1
        self._missing = n_chunks - self._have.count(1)
        self._pool = Levels(self._have)
        # The pool's arrays, read directly on the hot paths; only the pool changes them.
        self._levels = self._pool.levels
        self._avail = self._pool.avail
        self._pos = self._pool.pos
        self._inflight: dict[int, list[P]] = {}
        self._peers: dict[P, _Peer] = {}
        self._banned: set[P] = set()
        self._seeds = 0
        #: Bumped whenever a chunk enters the pool or loses availability, i.e.
        #: whenever a peer's ``min_level`` lower bound may have become wrong.
        self._epoch = 0

    # ----------------------------------------------------------------- queries

    @property
    def n_chunks(self) -> int:
        return self._n

    @property
    def missing(self) -> int:
        """Chunks not yet received."""
        return self._missing

    @property
    def complete(self) -> bool:
        return self._missing == 0

    def has(self, index: int) -> bool:
        """Whether chunk ``index`` has been received."""
        self._check(index)
        return bool(self._have[index])

    def availability(self, index: int) -> int:
        """Number of connected peers holding chunk ``index``."""
        self._check(index)
        return self._seeds + self._avail[index]

    def unavailable(self) -> int:
        """Chunks not received that no connected peer holds."""
        if self._seeds:
            return 0
        avail = self._avail
        # Pending chunks with no holder are exactly level 0; a chunk in flight
        # normally has a holder, unless its peer was re-added without it.
        return len(self._levels[0]) + sum(1 for i in self._inflight if avail[i] == 0)

    def in_flight(self, peer: P) -> int:
        """Number of outstanding requests to ``peer``."""
        record = self._peers.get(peer)
        return 0 if record is None else len(record.inflight)

    def peers(self) -> list[P]:
        """Connected (hence non-banned) peers."""
        return list(self._peers)

    def is_banned(self, peer: P) -> bool:
        return peer in self._banned

    # ------------------------------------------------------------ peer events

    def add_peer(self, peer: P, held: Iterable[int] | None) -> None:
        """Register ``peer`` holding ``held`` (None: every chunk, a seed).

        Re-adding a known peer replaces what it holds but keeps its in-flight
        requests (they are still outstanding on the wire).  Banned peers are
        ignored.
        """
        if peer in self._banned:
            return
        n = self._n
        bitmap: bytearray | None = None
        count = n
        if held is not None:
            # Validate everything before touching any state.
            bitmap = bytearray((n + 7) >> 3)
            count = 0
            for index in held:
                self._check(index)
                mask = 1 << (index & 7)
                if not bitmap[index >> 3] & mask:
                    bitmap[index >> 3] |= mask
                    count += 1
            if count == n:
                bitmap = None  # holds everything: cheaper as a seed
        record = self._peers.get(peer)
        if record is None:
            record = _Peer()
            self._peers[peer] = record
        else:
            self._drop_availability(record)
        record.held = bitmap
        record.count = count
        record.min_level = 1
        record.epoch = self._epoch
        if bitmap is None:
            self._seeds += 1
        else:
            inc = self._pool.inc
            for index in _iter_bits(bitmap):
                inc(index)

    def peer_has(self, peer: P, index: int) -> None:
        """``peer`` announced it now holds chunk ``index``."""
        self._check(index)
        record = self._peers.get(peer)
        if record is None or record.held is None:
            return
        held = record.held
        mask = 1 << (index & 7)
        if held[index >> 3] & mask:
            return
        held[index >> 3] |= mask
        record.count += 1
        self._pool.inc(index)
        if self._pos[index] >= 0 and record.epoch == self._epoch:
            record.min_level = min(record.min_level, self._avail[index])

    def remove_peer(self, peer: P) -> None:
        """``peer`` disconnected: release its requests, forget what it holds."""
        record = self._peers.pop(peer, None)
        if record is None:
            return
        inflight = self._inflight
        for index in record.inflight:
            requesters = inflight[index]
            requesters.remove(peer)
            if not requesters:
                del inflight[index]
                self._pend_add(index)
        record.inflight.clear()
        self._drop_availability(record)

    def ban(self, peer: P) -> None:
        """Disconnect ``peer`` and ignore it from now on."""
        self.remove_peer(peer)
        self._banned.add(peer)

    # -------------------------------------------------------- request events

    def next_request(self, peer: P) -> int | None:
        """Chunk to request from ``peer`` next (now marked in flight), or None.

        Rarest pending chunk the peer holds, random among ties; failing that
        (endgame) a chunk in flight elsewhere with the fewest requesters, if
        below ``endgame_dup``; failing that None.
        """
        record = self._peers.get(peer)
        if record is None:
            return None
        index = self._pick_pending(record)
        if index >= 0:
            self._pool.remove(index)
            self._inflight[index] = [peer]
            record.inflight.add(index)
            return index
        index = self._pick_endgame(peer, record)
        if index >= 0:
            self._inflight[index].append(peer)
            record.inflight.add(index)
            return index
        return None

    def received(self, index: int, from_peer: P | None = None) -> list[P]:
        """Chunk ``index`` was verified and stored.

        Returns the peers that still have it in flight (other than
        ``from_peer``, the one that delivered it, if given) so the caller can
        cancel them.  A repeated call returns [] and changes nothing.
        """
        self._check(index)
        if self._have[index]:
            return []
        self._have[index] = 1
        self._missing -= 1
        if self._pos[index] >= 0:
            self._pool.remove(index)
            return []
        requesters = self._inflight.pop(index, None)
        if requesters is None:
            return []
        peers = self._peers
        for requester in requesters:
            peers[requester].inflight.discard(index)
        return [requester for requester in requesters if requester != from_peer]

    def failed(self, peer: P, index: int, *, peer_lacks: bool = False) -> None:
        """The request to ``peer`` for ``index`` failed (timeout, bad data, not found).

        The chunk returns to the pool unless someone else has it in flight.
        ``peer_lacks`` also records that ``peer`` does not hold the chunk, so
        it is not asked for it again.  Unknown peers and chunks not requested
        from ``peer`` are ignored (late or duplicate reports).
        """
        self._check(index)
        record = self._peers.get(peer)
        if record is None:
            return
        if index in record.inflight:
            record.inflight.remove(index)
            requesters = self._inflight[index]
            requesters.remove(peer)
            if not requesters:
                del self._inflight[index]
                self._pend_add(index)
        if peer_lacks:
            self._forget(record, index)

    # ---------------------------------------------------------------- picking

    def _pick_pending(self, record: _Peer) -> int:
        """A rarest pending chunk that ``record`` holds, or -1."""
        levels = self._levels
        rand = self.rng.random
        held = record.held
        if held is None:
            for level in levels:
                if level:
                    return level[int(rand() * len(level))]
            return -1
        # A partial peer's chunks have partial availability >= 1.
        start = max(record.min_level, 1) if record.epoch == self._epoch else 1
        record.epoch = self._epoch
        for level_no in range(start, len(levels)):
            level = levels[level_no]
            size = len(level)
            if not size:
                continue
            if size > _SCAN_DIRECTLY:
                for _ in range(_SAMPLES):
                    index = level[int(rand() * size)]
                    if held[index >> 3] >> (index & 7) & 1:
                        record.min_level = level_no
                        return index
            offset = int(rand() * size)
            for part in (islice(level, offset, None), islice(level, offset)):
                for index in part:
                    if held[index >> 3] >> (index & 7) & 1:
                        record.min_level = level_no
                        return index
        record.min_level = len(levels)
        return -1

    def _pick_endgame(self, peer: P, record: _Peer) -> int:
        """An in-flight chunk to duplicate-request from ``peer``, or -1."""
        best = self.endgame_dup - 1  # most requesters a candidate may have
        if best < 1:
            return -1
        held = record.held
        candidates: list[int] = []
        for index, requesters in self._inflight.items():
            count = len(requesters)
            if count > best or peer in requesters:
                continue
            if held is not None and not held[index >> 3] >> (index & 7) & 1:
                continue
            if count < best:
                best = count
                candidates = [index]
            else:
                candidates.append(index)
        if not candidates:
            return -1
        return candidates[int(self.rng.random() * len(candidates))]

    # --------------------------------------------------------- bookkeeping

    def _check(self, index: int) -> None:
        if not 0 <= index < self._n:
            raise IndexError(f"chunk index {index} out of range 0..{self._n - 1}")

    def _pend_add(self, index: int) -> None:
        """Return chunk ``index`` to the pool: a peer's ``min_level`` may now be too high."""
        self._pool.add(index)
        self._epoch += 1

    def _drop_availability(self, record: _Peer) -> None:
        """Subtract what ``record`` holds from the availability counts."""
        if record.held is None:
            self._seeds -= 1
        else:
            dec = self._pool.dec
            for index in _iter_bits(record.held):
                dec(index)
        self._epoch += 1

    def _forget(self, record: _Peer, index: int) -> None:
        """Record that the peer of ``record`` does not hold chunk ``index``."""
        if record.held is None:
            # A seed that lacks a chunk becomes a partial peer holding all
            # others: O(n) once, for what should be a rare event.
            n = self._n
            bitmap = bytearray(b"\xff") * (n >> 3)
            if n & 7:
                bitmap.append((1 << (n & 7)) - 1)
            bitmap[index >> 3] &= ~(1 << (index & 7)) & 0xFF
            self._seeds -= 1
            record.held = bitmap
            record.count = n - 1
            record.min_level = 1
            inc = self._pool.inc
            for other in range(n):
                if other != index:
                    inc(other)
            self._epoch += 1
            return
        mask = 1 << (index & 7)
        if record.held[index >> 3] & mask:
            record.held[index >> 3] &= ~mask & 0xFF
            record.count -= 1
            self._pool.dec(index)
            self._epoch += 1
