"""Unit, property and state-machine tests for the sans-IO piece picker (dhtshare.core.picker)."""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from dhtshare.core.picker import Picker

FUZZ = settings(max_examples=100, deadline=None, database=None)


# --- helpers --------------------------------------------------------------------------


def make(n: int, seed: int = 0, *, have: Iterable[int] = (), endgame_dup: int = 2) -> Picker[str]:
    return Picker(n, have, rng=random.Random(seed), endgame_dup=endgame_dup)


def drain(picker: Picker[str], peer: str) -> list[int]:
    """Request from ``peer`` until the picker has nothing more for it."""
    got: list[int] = []
    while (index := picker.next_request(peer)) is not None:
        got.append(index)
    return got


def check_internals(picker: Picker[str]) -> None:
    """The pool levels, positions and in-flight maps agree with each other."""
    pending: set[int] = set()
    for level_no, level in enumerate(picker._levels):
        for position, index in enumerate(level):
            assert picker._avail[index] == level_no
            assert picker._pos[index] == position
            assert not picker._have[index]
            assert index not in picker._inflight
            pending.add(index)
    for index in range(picker.n_chunks):
        if index not in pending:
            assert picker._pos[index] == -1
    for index, requesters in picker._inflight.items():
        assert requesters
        assert len(set(requesters)) == len(requesters)
        assert len(requesters) <= max(1, picker.endgame_dup)
        assert not picker._have[index]
        for requester in requesters:
            assert index in picker._peers[requester].inflight
    for peer, record in picker._peers.items():
        for index in record.inflight:
            assert peer in picker._inflight[index]
    received = sum(picker._have)
    assert picker.missing == picker.n_chunks - received
    assert len(pending) + len(picker._inflight) == picker.missing


def drive(
    picker: Picker[str], peers: Sequence[str], window: int = 8, max_rounds: int | None = None
) -> tuple[int, int]:
    """Download to completion: fill each peer's window, then each answers its oldest request.

    Returns (requests made, requests for a chunk already in flight elsewhere).
    """
    outstanding: dict[str, list[int]] = {peer: [] for peer in peers}
    requests = duplicates = rounds = 0
    limit = max_rounds if max_rounds is not None else 4 * picker.n_chunks + 10
    while not picker.complete:
        rounds += 1
        assert rounds <= limit, "download does not progress"
        for peer in peers:
            queue = outstanding[peer]
            while len(queue) < window:
                index = picker.next_request(peer)
                if index is None:
                    break
                requests += 1
                if any(index in other for other in outstanding.values()):
                    duplicates += 1
                queue.append(index)
        for peer in peers:
            queue = outstanding[peer]
            if queue:
                index = queue.pop(0)
                assert not picker.has(index)
                for other in picker.received(index, peer):
                    assert other != peer
                    outstanding[other].remove(index)
    assert all(picker.in_flight(peer) == 0 for peer in peers)
    return requests, duplicates


# --- construction ---------------------------------------------------------------------


def test_construction_validates() -> None:
    with pytest.raises(ValueError, match="n_chunks"):
        Picker(-1)
    with pytest.raises(ValueError, match="endgame_dup"):
        Picker(3, endgame_dup=0)
    with pytest.raises(IndexError):
        Picker(3, [3])
    picker = make(3)
    with pytest.raises(IndexError):
        picker.add_peer("a", [0, 5])
    assert picker.peers() == []  # the failed add changed nothing
    with pytest.raises(IndexError):
        picker.peer_has("a", -1)
    with pytest.raises(IndexError):
        picker.has(3)


def test_have_chunks_are_never_requested() -> None:
    picker = make(10, have=[1, 3, 5])
    assert picker.missing == 7
    assert picker.has(3)
    assert not picker.has(4)
    picker.add_peer("a", None)
    assert sorted(drain(picker, "a")) == [0, 2, 4, 6, 7, 8, 9]
    check_internals(picker)


def test_empty_download_is_complete() -> None:
    picker = make(0)
    assert picker.complete
    picker.add_peer("a", None)
    assert picker.next_request("a") is None


# --- rarest first and random ties -----------------------------------------------------


@pytest.mark.parametrize("seed", range(20))
def test_rarest_chunk_first(seed: int) -> None:
    picker = make(10, seed)
    picker.add_peer("a", range(10))
    picker.add_peer("b", [i for i in range(10) if i != 7])
    picker.add_peer("c", [i for i in range(10) if i != 7])
    assert picker.availability(7) == 1
    assert picker.availability(0) == 3
    assert picker.next_request("a") == 7


@pytest.mark.parametrize("seed", range(20))
def test_rarest_first_from_a_seed(seed: int) -> None:
    # Chunks the partial peer holds are more available: a seed serves the others first.
    picker = make(20, seed)
    picker.add_peer("seed", None)
    picker.add_peer("p", range(10))
    first = [picker.next_request("seed") for _ in range(10)]
    assert sorted(i for i in first if i is not None) == list(range(10, 20))


def test_rarest_first_orders_by_level() -> None:
    picker = make(6, 3)
    picker.add_peer("a", range(6))
    picker.add_peer("b", [2, 3, 4, 5])
    picker.add_peer("c", [4, 5])
    order = drain(picker, "a")
    assert sorted(order[:2]) == [0, 1]
    assert sorted(order[2:4]) == [2, 3]
    assert sorted(order[4:]) == [4, 5]


def test_random_ties_for_a_seed() -> None:
    firsts = set()
    for seed in range(60):
        picker = make(100, seed)
        picker.add_peer("a", None)
        firsts.add(picker.next_request("a"))
    assert len(firsts) >= 20


def test_random_ties_for_a_partial_peer() -> None:
    firsts = set()
    for seed in range(60):
        picker = make(200, seed)
        picker.add_peer("a", range(0, 200, 2))
        first = picker.next_request("a")
        assert first is not None
        assert first % 2 == 0
        firsts.add(first)
    assert len(firsts) >= 20


def test_same_seed_same_choices() -> None:
    orders = []
    for _ in range(2):
        picker = make(50, 7)
        picker.add_peer("a", None)
        orders.append(drain(picker, "a"))
    assert orders[0] == orders[1]


# --- what a peer is asked for ---------------------------------------------------------


def test_peer_only_asked_for_chunks_it_holds() -> None:
    picker = make(10)
    picker.add_peer("a", [2, 5])
    assert sorted(drain(picker, "a")) == [2, 5]
    picker.peer_has("a", 8)
    assert picker.next_request("a") == 8
    assert picker.next_request("a") is None
    assert picker.next_request("nobody") is None


def test_no_chunk_in_flight_twice_without_endgame() -> None:
    picker = make(50, endgame_dup=1)
    picker.add_peer("a", None)
    picker.add_peer("b", None)
    got: list[int] = []
    for _ in range(30):
        for peer in ("a", "b"):
            index = picker.next_request(peer)
            if index is not None:
                got.append(index)
    assert sorted(got) == list(range(50))
    assert picker.in_flight("a") == picker.in_flight("b") == 25
    assert picker.next_request("a") is None


def test_endgame_only_after_pool_is_empty() -> None:
    picker = make(4)
    picker.add_peer("a", None)
    picker.add_peer("b", None)
    first = [picker.next_request("a") for _ in range(3)]
    last = picker.next_request("b")
    # b got the pending one, not a duplicate
    assert sorted(i for i in [*first, last] if i is not None) == [0, 1, 2, 3]
    dup = picker.next_request("b")
    assert dup in first  # now the endgame


def test_endgame_respects_endgame_dup() -> None:
    picker = make(4, endgame_dup=2)
    for peer in "abc":
        picker.add_peer(peer, None)
    mine = drain(picker, "a")
    assert sorted(mine) == [0, 1, 2, 3]
    assert sorted(drain(picker, "b")) == [0, 1, 2, 3]  # each chunk duplicated once
    assert drain(picker, "c") == []  # every chunk already has 2 requesters
    assert drain(picker, "a") == []  # never asks the same peer twice
    check_internals(picker)


def test_endgame_prefers_fewest_requesters() -> None:
    for seed in range(20):
        picker = make(2, seed, endgame_dup=3)
        for peer in "abc":
            picker.add_peer(peer, None)
        assert sorted(drain(picker, "a")) == [0, 1]
        b_first = picker.next_request("b")
        assert b_first is not None
        c_first = picker.next_request("c")
        assert c_first == 1 - b_first  # the chunk with one requester, not the one with two


def test_endgame_only_for_chunks_the_peer_holds() -> None:
    picker = make(3)
    picker.add_peer("a", None)
    picker.add_peer("b", [1])
    assert len(drain(picker, "a")) == 3
    assert picker.next_request("b") == 1
    assert picker.next_request("b") is None


def test_endgame_disabled_with_dup_one() -> None:
    picker = make(2, endgame_dup=1)
    picker.add_peer("a", None)
    picker.add_peer("b", None)
    drain(picker, "a")
    assert picker.next_request("b") is None


# --- received -------------------------------------------------------------------------


def test_received_returns_other_requesters_and_is_idempotent() -> None:
    picker = make(1, endgame_dup=3)
    for peer in "abc":
        picker.add_peer(peer, None)
        assert picker.next_request(peer) == 0
    assert sorted(picker.received(0, "b")) == ["a", "c"]
    assert picker.complete
    assert picker.received(0) == []
    assert picker.received(0, "a") == []
    assert all(picker.in_flight(peer) == 0 for peer in "abc")
    assert all(picker.next_request(peer) is None for peer in "abc")
    check_internals(picker)


def test_received_without_sender_returns_all_requesters() -> None:
    picker = make(1)
    picker.add_peer("a", None)
    picker.add_peer("b", None)
    picker.next_request("a")
    picker.next_request("b")
    assert sorted(picker.received(0)) == ["a", "b"]


def test_received_pending_chunk_leaves_the_pool() -> None:
    picker = make(3)
    assert picker.received(1) == []
    assert picker.missing == 2
    picker.add_peer("a", None)
    assert sorted(drain(picker, "a")) == [0, 2]
    check_internals(picker)


# --- failures and departures ----------------------------------------------------------


def test_failed_returns_chunk_to_pool() -> None:
    picker = make(1)
    picker.add_peer("a", None)
    assert picker.next_request("a") == 0
    assert picker.next_request("a") is None
    picker.failed("a", 0)
    assert picker.in_flight("a") == 0
    assert picker.next_request("a") == 0  # a timeout does not mean a lacks it
    check_internals(picker)


def test_failed_keeps_chunk_in_flight_elsewhere() -> None:
    picker = make(1)
    picker.add_peer("a", None)
    picker.add_peer("b", None)
    picker.next_request("a")
    picker.next_request("b")
    picker.failed("a", 0)
    assert picker.in_flight("a") == 0
    assert picker.in_flight("b") == 1
    picker.add_peer("c", None)
    assert picker.next_request("c") == 0  # endgame duplicate: b still has it
    assert sorted(picker.received(0)) == ["b", "c"]


def test_failed_is_tolerant_of_stale_reports() -> None:
    picker = make(2)
    picker.add_peer("a", None)
    picker.failed("a", 1)  # never requested
    picker.failed("ghost", 1)  # unknown peer
    index = picker.next_request("a")
    assert index is not None
    picker.received(index)
    picker.failed("a", index)  # late failure of a chunk already received
    assert picker.has(index)
    check_internals(picker)


def test_peer_lacks_is_not_asked_again() -> None:
    picker = make(3)
    picker.add_peer("a", [0, 1, 2])
    picker.add_peer("b", [1])
    first = picker.next_request("a")
    assert first is not None
    picker.failed("a", first, peer_lacks=True)
    rest = drain(picker, "a")
    assert first not in rest
    assert sorted(rest) == sorted({0, 1, 2} - {first})
    assert picker.availability(first) == (1 if first == 1 else 0)


def test_seed_that_lacks_a_chunk() -> None:
    picker = make(20, 5)
    picker.add_peer("a", None)
    assert picker.availability(4) == 1
    picker.failed("a", 4, peer_lacks=True)
    assert picker.availability(4) == 0
    assert picker.unavailable() == 1
    assert sorted(drain(picker, "a")) == [i for i in range(20) if i != 4]
    picker.add_peer("b", None)
    assert picker.next_request("b") == 4
    check_internals(picker)


def test_remove_peer_releases_requests() -> None:
    picker = make(3, endgame_dup=1)
    picker.add_peer("a", None)
    picker.add_peer("b", range(3))
    assert len(drain(picker, "a")) == 3
    assert picker.next_request("b") is None
    picker.remove_peer("a")
    assert picker.in_flight("a") == 0
    assert picker.peers() == ["b"]
    assert sorted(drain(picker, "b")) == [0, 1, 2]
    assert picker.availability(0) == 1
    picker.remove_peer("a")  # unknown: no-op
    check_internals(picker)


def test_remove_peer_keeps_chunks_in_flight_elsewhere() -> None:
    picker = make(1)
    picker.add_peer("a", None)
    picker.add_peer("b", None)
    picker.next_request("a")
    picker.next_request("b")
    picker.remove_peer("a")
    assert picker.received(0, "b") == []
    check_internals(picker)


def test_ban() -> None:
    picker = make(4)
    picker.add_peer("a", None)
    picker.add_peer("b", [0])
    picker.next_request("a")
    picker.ban("a")
    assert picker.is_banned("a")
    assert not picker.is_banned("b")
    assert picker.peers() == ["b"]
    assert picker.in_flight("a") == 0
    picker.add_peer("a", None)
    picker.peer_has("a", 1)
    assert picker.peers() == ["b"]
    assert picker.next_request("a") is None
    assert picker.unavailable() == 3
    picker.ban("never-seen")
    assert picker.is_banned("never-seen")
    check_internals(picker)


def test_readding_a_peer_replaces_its_set() -> None:
    picker = make(4)
    picker.add_peer("a", [0, 1])
    assert picker.availability(0) == 1
    picker.add_peer("a", [2])
    assert [picker.availability(i) for i in range(4)] == [0, 0, 1, 0]
    assert picker.next_request("a") == 2
    picker.add_peer("a", None)
    assert picker.in_flight("a") == 1  # requests on the wire are kept
    assert [picker.availability(i) for i in range(4)] == [1, 1, 1, 1]
    picker.add_peer("b", range(4))
    assert picker.availability(3) == 2  # a full set counts like a seed
    check_internals(picker)


def test_unavailable() -> None:
    picker = make(10)
    assert picker.unavailable() == 10
    picker.add_peer("a", range(5))
    assert picker.unavailable() == 5
    picker.add_peer("b", [5, 6])
    assert picker.unavailable() == 3
    picker.add_peer("s", None)
    assert picker.unavailable() == 0
    picker.remove_peer("s")
    assert picker.unavailable() == 3
    picker.received(7)
    assert picker.unavailable() == 2
    picker.peer_has("b", 8)
    assert picker.unavailable() == 1
    picker.remove_peer("b")
    assert picker.unavailable() == 4


# --- the per-peer "lowest useful level" cache must never hide a rarer chunk ------------


def test_rarest_after_a_holder_leaves() -> None:
    for seed in range(10):
        picker = make(4, seed)  # nobody holds chunk 3: p and q are not seeds
        picker.add_peer("p", [0, 1, 2])
        picker.add_peer("q", [0, 1, 2])
        picker.add_peer("r", [2])
        first = picker.next_request("p")
        assert first in (0, 1)
        picker.remove_peer("q")  # the other of 0/1 is now the rarest
        assert picker.next_request("p") == 1 - first
        assert picker.next_request("p") == 2


def test_rarest_after_a_holder_lacks() -> None:
    for seed in range(10):
        picker = make(4, seed)  # nobody holds chunk 3: p and q are not seeds
        picker.add_peer("p", [0, 1, 2])
        picker.add_peer("q", [0, 1, 2])
        picker.add_peer("r", [2])
        first = picker.next_request("p")
        assert first in (0, 1)
        picker.failed("q", 1 - first, peer_lacks=True)
        assert picker.next_request("p") == 1 - first


def test_rarest_after_a_failure() -> None:
    picker = make(3)  # nobody holds chunk 2: p is not a seed
    picker.add_peer("p", [0, 1])
    picker.add_peer("q", [0])
    assert picker.next_request("p") == 1
    assert picker.next_request("p") == 0
    picker.failed("p", 1)
    assert picker.next_request("p") == 1


def test_rarest_after_peer_has() -> None:
    picker = make(2)
    picker.add_peer("p", [0])
    picker.add_peer("q", [0])
    assert picker.next_request("p") == 0
    assert picker.next_request("p") is None
    picker.peer_has("p", 1)
    assert picker.next_request("p") == 1


def test_rarest_after_peer_has_while_busy() -> None:
    picker = make(4)
    for peer in "pqr":
        picker.add_peer(peer, [0, 1])
    assert picker.next_request("p") in (0, 1)  # found at level 3
    picker.peer_has("p", 3)  # level 1 now holds something for p
    assert picker.next_request("p") == 3


# --- scale ----------------------------------------------------------------------------


def test_large_download_from_seeds_is_linear() -> None:
    n = 409_600  # 200 MiB at 512-byte chunks
    start = time.perf_counter()
    picker = make(n, 1)
    peers = ["s0", "s1", "s2", "s3"]
    for peer in peers:
        picker.add_peer(peer, None)
    requests, duplicates = drive(picker, peers, window=8)
    elapsed = time.perf_counter() - start
    assert picker.complete
    assert picker.missing == 0
    assert requests - duplicates == n
    # Only the endgame duplicates: at most one per chunk in flight when it began.
    assert duplicates <= len(peers) * 8
    assert elapsed < 10  # ~1 s here; an O(n^2) picker would take hours


def test_large_download_from_partial_peers() -> None:
    n = 100_000
    rng = random.Random(3)
    holdings: dict[str, list[int]] = {peer: [] for peer in ("p0", "p1", "p2", "p3")}
    names = list(holdings)
    for index in range(n):
        owners = rng.sample(names, rng.randint(1, 4))
        for owner in owners:
            holdings[owner].append(index)
    start = time.perf_counter()
    picker = make(n, 2)
    for peer, held in holdings.items():
        picker.add_peer(peer, held)
    assert picker.unavailable() == 0
    requests, duplicates = drive(picker, names, window=8)
    assert picker.complete
    assert requests - duplicates == n
    assert time.perf_counter() - start < 10


def test_idle_partial_peer_is_not_rescanned() -> None:
    # "idle" holds nothing pending, "busy" holds a large level-1 pool: polling idle
    # must not cost a scan of that pool every time while the download proceeds.
    n = 100_000
    picker = make(n, 4)
    picker.add_peer("busy", range(1, n))
    picker.add_peer("idle", [0])
    assert picker.next_request("idle") == 0
    start = time.perf_counter()
    for _ in range(2_000):
        assert picker.next_request("idle") is None
        index = picker.next_request("busy")
        assert index is not None
        picker.received(index)
    assert time.perf_counter() - start < 2


# --- properties -----------------------------------------------------------------------


@FUZZ
@given(
    data=st.data(),
    n=st.integers(1, 40),
    n_peers=st.integers(1, 5),
    window=st.integers(1, 4),
    dup=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_download_completes_despite_failures_and_liars(
    data: st.DataObject, n: int, n_peers: int, window: int, dup: int, seed: int
) -> None:
    """Peers may time out or advertise chunks they lack; if the chunks they really hold
    cover the file and failures are finite, the download completes."""
    names = [f"p{i}" for i in range(n_peers)]
    truly: dict[str, set[int]] = {name: set() for name in names}
    for index in range(n):
        for owner in data.draw(st.sets(st.sampled_from(names), min_size=1)):
            truly[owner].add(index)
    claimed: dict[str, set[int]] = {}
    for name in names:
        extra = data.draw(st.sets(st.integers(0, n - 1), max_size=3))
        claimed[name] = truly[name] | extra
    rng = random.Random(seed)
    picker: Picker[str] = Picker(n, rng=random.Random(seed), endgame_dup=dup)
    for name in names:
        if claimed[name] == set(range(n)) and rng.random() < 0.5:
            picker.add_peer(name, None)
        else:
            picker.add_peer(name, claimed[name])
    outstanding: dict[str, list[int]] = {name: [] for name in names}
    timeouts_left = 2 * n
    for _ in range(20 * n + 20):
        if picker.complete:
            break
        for name in names:
            while len(outstanding[name]) < window:
                request = picker.next_request(name)
                if request is None:
                    break
                index = request
                assert not picker.has(index)
                assert index in claimed[name]
                assert index not in outstanding[name]
                outstanding[name].append(index)
        for name in names:
            if not outstanding[name]:
                continue
            index = outstanding[name].pop(rng.randrange(len(outstanding[name])))
            if index not in truly[name]:
                picker.failed(name, index, peer_lacks=True)
                claimed[name].discard(index)
            elif timeouts_left and rng.random() < 0.3:
                timeouts_left -= 1
                picker.failed(name, index)
            else:
                for other in picker.received(index, name):
                    outstanding[other].remove(index)
        for name in names:
            assert picker.in_flight(name) == len(outstanding[name])
    assert picker.complete
    check_internals(picker)


PEERS = ("a", "b", "c", "d")
N_MAX = 12
#: What a peer holds: everything (None) or a set of chunk numbers (taken modulo n).
HELD = st.none() | st.sets(st.integers(0, N_MAX - 1), max_size=N_MAX)


class PickerMachine(RuleBasedStateMachine):
    """Random interleavings of every event, checked against a naive reference model."""

    def __init__(self) -> None:
        super().__init__()
        self.picker: Picker[str] | None = None
        self.n = 1
        self.dup = 2
        self.have: set[int] = set()
        self.held: dict[str, set[int] | None] = {}
        self.banned: set[str] = set()
        self.inflight: dict[int, set[str]] = {}

    # model helpers
    def holds(self, peer: str, index: int) -> bool:
        held = self.held[peer]
        return held is None or index in held

    def avail(self, index: int) -> int:
        return sum(self.holds(peer, index) for peer in self.held)

    def pending(self) -> set[int]:
        return {i for i in range(self.n) if i not in self.have and i not in self.inflight}

    def chunk(self, index: int) -> int:
        return index % self.n

    @property
    def p(self) -> Picker[str]:
        assert self.picker is not None
        return self.picker

    @initialize(
        n=st.integers(1, N_MAX),
        dup=st.integers(1, 3),
        have=st.sets(st.integers(0, N_MAX - 1), max_size=4),
        seed=st.integers(0, 2**32 - 1),
        initial=st.dictionaries(st.sampled_from(PEERS), HELD, min_size=1),
    )
    def setup(
        self, n: int, dup: int, have: set[int], seed: int, initial: dict[str, set[int] | None]
    ) -> None:
        self.n = n
        self.dup = dup
        self.have = {i % n for i in have}
        self.picker = Picker(n, self.have, rng=random.Random(seed), endgame_dup=dup)
        for peer, held in initial.items():
            self.add_peer(peer, held)

    @rule(peer=st.sampled_from(PEERS), held=HELD)
    def add_peer(self, peer: str, held: set[int] | None) -> None:
        chunks = None if held is None else {self.chunk(i) for i in held}
        self.p.add_peer(peer, chunks)
        if peer not in self.banned:
            self.held[peer] = chunks

    @rule(peer=st.sampled_from(PEERS), index=st.integers(0, N_MAX - 1))
    def peer_has(self, peer: str, index: int) -> None:
        index = self.chunk(index)
        self.p.peer_has(peer, index)
        held = self.held.get(peer)
        if held is not None:
            held.add(index)

    @rule(peer=st.sampled_from(PEERS))
    def next_request_any(self, peer: str) -> None:
        self.next_request(peer)

    @precondition(lambda self: self.held)
    @rule(data=st.data(), times=st.integers(1, 4))
    def next_request_connected(self, data: st.DataObject, times: int) -> None:
        for _ in range(times):
            self.next_request(data.draw(st.sampled_from(sorted(self.held))))

    def next_request(self, peer: str) -> None:
        """Ask the picker, and check the answer against the model."""
        got = self.p.next_request(peer)
        if peer not in self.held:
            assert got is None
            return
        fresh = {i for i in self.pending() if self.holds(peer, i)}
        if fresh:
            assert got in fresh
            assert self.avail(got) == min(self.avail(i) for i in fresh)
            self.inflight[got] = {peer}
            return
        eligible = {
            i: len(requesters)
            for i, requesters in self.inflight.items()
            if peer not in requesters and self.holds(peer, i) and len(requesters) < self.dup
        }
        if not eligible:
            assert got is None
            return
        assert got in eligible
        assert eligible[got] == min(eligible.values())
        self.inflight[got].add(peer)

    @precondition(lambda self: self.inflight)
    @rule(data=st.data())
    def receive_requested(self, data: st.DataObject) -> None:
        index = data.draw(st.sampled_from(sorted(self.inflight)))
        sender = data.draw(st.sampled_from(sorted(self.inflight[index])))
        others = self.p.received(index, sender)
        assert len(others) == len(set(others))
        assert set(others) == self.inflight.pop(index) - {sender}
        self.have.add(index)
        assert self.p.received(index, sender) == []

    @rule(index=st.integers(0, N_MAX - 1))
    def receive_any(self, index: int) -> None:
        index = self.chunk(index)
        others = self.p.received(index)
        expected = set() if index in self.have else self.inflight.pop(index, set())
        assert set(others) == expected
        self.have.add(index)

    @rule(data=st.data(), peer_lacks=st.booleans())
    def fail(self, data: st.DataObject, peer_lacks: bool) -> None:
        peer = data.draw(st.sampled_from(PEERS))
        mine = sorted(i for i, requesters in self.inflight.items() if peer in requesters)
        index = data.draw(
            st.sampled_from(mine) if mine else st.integers(0, N_MAX - 1).map(self.chunk)
        )
        self.p.failed(peer, index, peer_lacks=peer_lacks)
        if peer not in self.held:
            return
        requesters = self.inflight.get(index)
        if requesters is not None and peer in requesters:
            requesters.discard(peer)
            if not requesters:
                del self.inflight[index]
        if peer_lacks:
            held = self.held[peer]
            if held is None:
                self.held[peer] = set(range(self.n)) - {index}
            else:
                held.discard(index)

    def _disconnect(self, peer: str) -> None:
        self.held.pop(peer, None)
        for index in list(self.inflight):
            self.inflight[index].discard(peer)
            if not self.inflight[index]:
                del self.inflight[index]

    @rule(peer=st.sampled_from(PEERS))
    def remove_peer(self, peer: str) -> None:
        self.p.remove_peer(peer)
        self._disconnect(peer)

    @precondition(lambda self: len(self.banned) < 2)  # keep peers to play with
    @rule(peer=st.sampled_from(PEERS))
    def ban(self, peer: str) -> None:
        self.p.ban(peer)
        self._disconnect(peer)
        self.banned.add(peer)

    @invariant()
    def agrees_with_model(self) -> None:
        if self.picker is None:
            return
        picker = self.picker
        assert sorted(picker.peers()) == sorted(self.held)
        for peer in PEERS:
            assert picker.is_banned(peer) == (peer in self.banned)
            expected = sum(1 for requesters in self.inflight.values() if peer in requesters)
            assert picker.in_flight(peer) == expected
        assert picker.missing == self.n - len(self.have)
        assert picker.complete == (len(self.have) == self.n)
        for index in range(self.n):
            assert picker.has(index) == (index in self.have)
            assert picker.availability(index) == self.avail(index)
        missing = [i for i in range(self.n) if i not in self.have]
        assert picker.unavailable() == sum(1 for i in missing if self.avail(i) == 0)
        check_internals(picker)

    def teardown(self) -> None:
        """Answer every request and bring in a seed: the download must complete."""
        if self.picker is None:
            return
        picker = self.picker
        for index in list(self.inflight):
            picker.received(index)
        picker.add_peer("final-seed", None)
        for _ in range(self.n + 1):
            if picker.complete:
                break
            for peer in picker.peers():
                for index in drain(picker, peer):
                    assert not picker.has(index)
                    picker.received(index, peer)
        assert picker.complete
        assert all(picker.in_flight(peer) == 0 for peer in picker.peers())


PickerMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None, database=None
)
test_picker_state_machine = PickerMachine.TestCase
