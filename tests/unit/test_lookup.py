"""The lookup state machine (dhtshare.core.lookup) on simulated networks, no sockets.

A simulated node answers a query with the contacts of its routing table
closest to the target, like ``find_node``; a dead node never answers.  The
tests drive :class:`~dhtshare.core.lookup.Lookup` the way the DHT adapter does and
check when it ends and what it returns.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dhtshare.core.lookup import Contact, Lookup, RttEstimator, distance

K = 20
WANT = 8


def make_id(rng: random.Random) -> bytes:
    return rng.randbytes(20)


@dataclass
class SimNet:
    contacts: dict[bytes, Contact]
    tables: dict[bytes, list[Contact]]
    dead: set[bytes]

    def answer(self, node: bytes, target: bytes) -> list[Contact]:
        table = self.tables[node]
        return sorted(table, key=lambda c: distance(c.id, target))[:K]

    def true_closest(self, target: bytes, exclude: bytes) -> list[bytes]:
        live = [i for i in self.contacts if i not in self.dead and i != exclude]
        return sorted(live, key=lambda i: distance(i, target))[:WANT]


def sim_net(n: int, seed: int, per_range: int = K) -> SimNet:
    """Kademlia tables: each node knows up to ``per_range`` nodes at each distance range.

    A distance range is the set of nodes sharing exactly ``i`` leading bits
    with the owner (one k-bucket of the paper); ``per_range`` below K models
    tables that were never completely filled.
    """
    rng = random.Random(seed)
    ids = [make_id(rng) for _ in range(n)]
    contacts = {i: Contact(i, "10.0.0.1", 1000 + k) for k, i in enumerate(ids)}
    tables = {}
    for i in ids:
        ranges: dict[int, list[bytes]] = {}
        for j in ids:
            if j != i:
                ranges.setdefault(160 - distance(i, j).bit_length(), []).append(j)
        table = []
        for members in ranges.values():
            table += rng.sample(members, min(per_range, len(members)))
        tables[i] = [contacts[j] for j in table]
    return SimNet(contacts, tables, set())


def run(net: SimNet, asker: bytes, target: bytes, stale_after: float = 0.05,
        max_steps: int = 10_000) -> tuple[Lookup, float]:
    """Drive a lookup with simulated time: answers take 1 ms, the dead never answer."""
    # The asker does not know who is dead: it starts from its whole table.
    seeds = sorted(net.tables[asker], key=lambda c: distance(c.id, target))[:K]
    lookup = Lookup(target, seeds, want=WANT, alpha=3, max_queries=64, self_id=asker)
    now = 0.0
    inflight: list[tuple[float, bytes]] = []
    for _ in range(max_steps):
        lookup.expire(now, stale_after)
        for c in lookup.to_query(now):
            if c.id not in net.dead:
                inflight.append((now + 0.001, c.id))
        if lookup.done:
            return lookup, now
        events = sorted(inflight)
        expiry = lookup.next_expiry(stale_after)
        next_answer = events[0][0] if events else float("inf")
        now = min(next_answer, expiry if expiry is not None else float("inf"))
        assert now != float("inf"), "stuck with nothing in flight"
        while inflight and min(inflight)[0] <= now:
            t, node = min(inflight)
            inflight.remove((t, node))
            lookup.answered(node, net.answer(node, target))
    raise AssertionError("lookup did not finish")


@settings(max_examples=40, deadline=None, database=None)
@given(seed=st.integers(0, 2**32), n=st.integers(30, 600), per_range=st.sampled_from([3, K]))
def test_lookup_finds_the_true_closest(seed: int, n: int, per_range: int) -> None:
    net = sim_net(n, seed, per_range)
    rng = random.Random(seed + 1)
    asker = rng.choice(list(net.contacts))
    target = make_id(rng)
    lookup, _ = run(net, asker, target)
    assert [c.id for c in lookup.closest()] == net.true_closest(target, asker)
    assert lookup.queries <= 64


@settings(max_examples=30, deadline=None, database=None)
@given(seed=st.integers(0, 2**32), n=st.integers(50, 400))
def test_lookup_with_dead_nodes_ends_after_one_stale_wait_and_finds_live_closest(
    seed: int, n: int
) -> None:
    net = sim_net(n, seed)
    rng = random.Random(seed + 2)
    ids = list(net.contacts)
    asker = rng.choice(ids)
    net.dead = set(rng.sample([i for i in ids if i != asker], n * 3 // 10))
    target = make_id(rng)
    lookup, elapsed = run(net, asker, target, stale_after=0.05)
    # Dead nodes cost stale waits, never a full RPC timeout: a handful of 50 ms
    # waits (some in parallel) plus 1 ms answers.
    assert elapsed < 1.0
    found = [c.id for c in lookup.closest()]
    truth = net.true_closest(target, asker)
    assert not set(found) & net.dead
    assert len(set(found) & set(truth)) >= WANT - 1


def test_a_dead_closest_node_goes_stale_and_does_not_hold_the_end() -> None:
    rng = random.Random(5)
    target = make_id(rng)
    live = [Contact(make_id(rng), "10.0.0.1", 2000 + i) for i in range(WANT)]
    dead = Contact(bytes(a ^ b for a, b in zip(target, b"\x00" * 19 + b"\x01", strict=True)),
                   "10.0.0.2", 1)
    lookup = Lookup(target, [dead, *live], want=WANT, alpha=WANT + 1)
    asked = lookup.to_query(0.0)
    assert dead in asked
    for c in live:
        lookup.answered(c.id, [])
    assert not lookup.done  # the closest of all has not answered yet
    lookup.expire(0.01, stale_after=0.05)
    assert not lookup.done
    lookup.expire(0.06, stale_after=0.05)
    assert lookup.done
    assert lookup.stale_count == 1
    assert dead not in lookup.closest()


def test_a_late_answer_is_still_used() -> None:
    rng = random.Random(6)
    target = make_id(rng)
    slow = Contact(make_id(rng), "10.0.0.3", 3)
    closer = Contact(target[:-1] + bytes([target[-1] ^ 1]), "10.0.0.4", 4)
    lookup = Lookup(target, [slow], want=1, alpha=1)
    assert lookup.to_query(0.0) == [slow]
    lookup.expire(1.0, stale_after=0.05)
    assert lookup.to_query(1.0) == []
    assert not lookup.done  # nobody answered yet: slow is not dead
    lookup.answered(slow.id, [closer])
    assert not lookup.done  # but it named someone closer: ask them
    assert lookup.to_query(1.0) == [closer]
    lookup.answered(closer.id, [])
    assert lookup.done
    assert lookup.closest() == [closer]
    assert lookup.hops == 2


def test_a_lone_stale_query_that_fails_ends_the_lookup() -> None:
    rng = random.Random(12)
    target = make_id(rng)
    gone = Contact(make_id(rng), "10.0.0.11", 1)
    lookup = Lookup(target, [gone], want=1, alpha=1)
    lookup.to_query(0.0)
    lookup.expire(1.0, stale_after=0.05)
    assert not lookup.done
    lookup.failed(gone.id)  # the RPC timeout
    assert lookup.done
    assert lookup.closest() == []


def test_slow_answers_are_waited_for_until_enough_have_come() -> None:
    """On a loaded machine every answer is late: the lookup must not end empty."""
    rng = random.Random(11)
    target = make_id(rng)
    nodes = [Contact(make_id(rng), "10.0.0.10", i) for i in range(WANT)]
    lookup = Lookup(target, nodes, want=WANT, alpha=3)
    now = 0.0
    while batch := lookup.to_query(now):
        now += 0.1
        lookup.expire(now, stale_after=0.05)
        assert batch
    assert lookup.stale_count == WANT
    assert not lookup.done  # all stale, none failed, none answered: keep waiting
    for c in nodes[:-1]:
        lookup.answered(c.id, [])
    assert not lookup.done  # seven of eight
    lookup.answered(nodes[-1].id, [])
    assert lookup.done
    assert len(lookup.closest()) == WANT


def test_queries_are_bounded_whatever_the_answers() -> None:
    rng = random.Random(7)
    target = make_id(rng)
    lookup = Lookup(target, [Contact(make_id(rng), "10.0.0.5", 1)], want=WANT, alpha=3,
                    max_queries=10)
    now = 0.0
    for _ in range(100):
        batch = lookup.to_query(now)
        for c in batch:  # every answer names fresh, ever closer-looking strangers
            lookup.answered(c.id, [Contact(make_id(rng), "10.0.0.6", k) for k in range(20)])
        if lookup.done:
            break
        now += 0.01
    assert lookup.done
    assert lookup.queries == 10


def test_own_id_and_malformed_ids_are_never_queried() -> None:
    rng = random.Random(8)
    me = make_id(rng)
    lookup = Lookup(make_id(rng), [Contact(me, "10.0.0.7", 1), Contact(b"short", "x", 2)],
                    self_id=me)
    assert lookup.to_query(0.0) == []
    assert lookup.done


def test_failed_queries_do_not_count_and_the_lookup_moves_on() -> None:
    rng = random.Random(9)
    target = make_id(rng)
    a, b = (Contact(make_id(rng), "10.0.0.8", i) for i in range(2))
    lookup = Lookup(target, [a, b], want=1, alpha=1)
    first = lookup.to_query(0.0)[0]
    lookup.failed(first.id)
    (second,) = lookup.to_query(0.0)
    assert second != first
    lookup.answered(second.id, [])
    assert lookup.done
    assert lookup.closest() == [second]
    assert lookup.failures == 1


def test_referrers_are_remembered() -> None:
    rng = random.Random(10)
    target = make_id(rng)
    seed, other = (Contact(make_id(rng), "10.0.0.9", i) for i in range(2))
    lookup = Lookup(target, [seed], want=2)
    lookup.to_query(0.0)
    lookup.answered(seed.id, [other])
    assert lookup.referrers(other.id) == [seed.id]
    assert lookup.referrers(seed.id) == []


@pytest.mark.parametrize(
    ("samples", "low", "high"),
    [
        ([], 0.25, 0.25),  # nothing measured yet: a cautious start
        ([0.0002] * 50, 0.010, 0.010),  # idle loopback: the floor
        ([0.030] * 50, 0.059, 0.061),  # loaded: twice the p90
        ([5.0] * 50, 0.5, 0.5),  # far away or overloaded: the ceiling
    ],
)
def test_stale_after_follows_measured_round_trips(
    samples: list[float], low: float, high: float
) -> None:
    rtt = RttEstimator()
    for x in samples:
        rtt.sample(x)
    assert low <= rtt.stale_after() <= high


def test_one_stall_does_not_inflate_the_estimate() -> None:
    rtt = RttEstimator()
    for _ in range(31):
        rtt.sample(0.001)
    rtt.sample(2.0)  # one event-loop stall
    assert rtt.stale_after() == rtt.floor


def test_a_burst_long_past_does_not_hold_the_estimate() -> None:
    """A node that asks seldom goes by its next answers, not by a burst of load long over."""
    now = [0.0]
    rtt = RttEstimator(clock=lambda: now[0])
    for _ in range(32):
        rtt.sample(0.050)  # a loaded machine
    assert rtt.stale_after() == pytest.approx(0.100)
    now[0] = 60.0  # idle since: the old window is all there is
    assert rtt.stale_after() == pytest.approx(0.100)
    for _ in range(2):
        rtt.sample(0.001)
    assert rtt.stale_after() == pytest.approx(0.100)  # two fresh answers are not enough
    rtt.sample(0.001)
    assert rtt.stale_after() == rtt.floor


def test_routing_table_finds_the_true_closest_contacts() -> None:
    """The bucket-pruned nearest-neighbour query equals a brute-force sort."""
    from dhtshare.net.dht.routing import Node, RoutingTable

    class NoPings:
        def check_alive(self, node: Node) -> None:
            pass

    rng = random.Random(13)
    for n in (0, 5, 60, 400, 900):
        me = Node(make_id(rng), "10.0.0.1", 1)
        table = RoutingTable(NoPings(), K, me)
        for i in range(n):
            table.add_contact(Node(make_id(rng), "10.0.0.2", 1000 + i))
        for i in range(40):  # ids close to our own: the buckets near us split
            near = bytearray(me.id)
            near[rng.randrange(20)] ^= 1 << rng.randrange(8)
            table.add_contact(Node(bytes(near), "10.0.0.3", 3000 + i))
        contacts = table.contacts()
        for _ in range(20):
            target = Node(rng.choice(contacts).id if contacts and rng.random() < 0.3
                          else make_id(rng))
            truth = sorted((c for c in contacts if c.id != target.id),
                           key=lambda c: c.long_id ^ target.long_id)[:K]
            assert [c.id for c in table.find_neighbors(target)] == [c.id for c in truth]
