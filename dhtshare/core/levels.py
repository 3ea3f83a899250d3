"""The picker's pool: pending chunks grouped by availability (sans-IO).

Rarest first with random ties needs one question answered fast on every free
request slot: "a uniformly random pending chunk among those held by the
fewest peers".  Sorting or scanning on each question would make a download
quadratic, so the pending chunks (not received, not in flight) are kept in
buckets by their availability, each bucket an array that supports add,
remove and random choice in O(1).

The invariant, for every chunk ``i``: ``i`` is pending exactly when
``pos[i] >= 0``, and then ``levels[avail[i]][pos[i]] == i``.

``avail`` counts only *partial* peers: a seed adds the same +1 to every
chunk, which changes no order, so :class:`~dhtshare.core.picker.Picker`
counts seeds apart and a seed joins or leaves in O(1).

Memory is 8 bytes per chunk (``avail`` and ``pos``) plus 4 per pending chunk.
"""

from __future__ import annotations

from array import array

__all__ = ["Levels"]


class Levels:
    """Pending chunks bucketed by partial availability, with O(1) moves.

    The arrays are public because the picker's hot loops read them directly
    (an attribute lookup per chunk is what they cannot afford); only the
    methods below change them.
    """

    __slots__ = ("avail", "levels", "pos")

    def __init__(self, have: bytearray) -> None:
        """Every chunk not in ``have`` pending, all at availability 0."""
        n = len(have)
        #: Partial peers holding each chunk, whether pending or not.
        self.avail = array("i", [0]) * n
        if 1 not in have:
            level0 = array("i", range(n))
            #: Each chunk's position in its level, -1 when not pending.
            self.pos = array("i", range(n))
        else:
            level0 = array("i", [i for i, got in enumerate(have) if not got])
            self.pos = array("i", [-1]) * n
            for position, index in enumerate(level0):
                self.pos[index] = position
        #: ``levels[k]``: the pending chunks held by ``k`` partial peers.
        self.levels: list[array[int]] = [level0]

    def add(self, index: int) -> None:
        """Put chunk ``index`` (not received, not in flight) into the pool."""
        level_no = self.avail[index]
        levels = self.levels
        while len(levels) <= level_no:
            levels.append(array("i"))
        level = levels[level_no]
        self.pos[index] = len(level)
        level.append(index)

    def remove(self, index: int) -> None:
        """Take pending chunk ``index`` out of the pool (swap with last)."""
        pos = self.pos
        level = self.levels[self.avail[index]]
        position = pos[index]
        last = level.pop()
        if last != index:
            level[position] = last
            pos[last] = position
        pos[index] = -1

    def inc(self, index: int) -> None:
        """One more partial peer holds ``index``; moves it up a level if pending."""
        avail = self.avail
        level_no = avail[index]
        avail[index] = level_no + 1
        pos = self.pos
        position = pos[index]
        if position < 0:
            return
        levels = self.levels
        level = levels[level_no]
        last = level.pop()
        if last != index:
            level[position] = last
            pos[last] = position
        if len(levels) == level_no + 1:
            levels.append(array("i"))
        level = levels[level_no + 1]
        pos[index] = len(level)
        level.append(index)

    def dec(self, index: int) -> None:
        """One partial holder of ``index`` fewer; moves it down a level if pending."""
        avail = self.avail
        level_no = avail[index]
        avail[index] = level_no - 1
        pos = self.pos
        position = pos[index]
        if position < 0:
            return
        levels = self.levels
        level = levels[level_no]
        last = level.pop()
        if last != index:
            level[position] = last
            pos[last] = position
        level = levels[level_no - 1]
        pos[index] = len(level)
        level.append(index)
