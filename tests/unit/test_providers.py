"""Unit and property tests for provider records (dhtshare.core.providers), sans IO."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dhtshare.core import provider_store, providers, tokens
from dhtshare.core.identity import Identity
from dhtshare.core.ids import NODE_ID_LEN
from dhtshare.core.provider_store import OWN, ProviderStore, source_of
from dhtshare.core.providers import (
    MAX_DHT_BITFIELD,
    MAX_TTL,
    SKEW_ALLOWANCE,
    Announcement,
    ProviderRecord,
    SignedAnnouncement,
    Signer,
    Withdrawal,
    is_loopback,
    stale,
)
from dhtshare.core.tokens import TOKEN_LEN, TokenIssuer

pytestmark = pytest.mark.timeout(60)

FUZZ = settings(max_examples=200, deadline=None, database=None)

KEY = b"k" * NODE_ID_LEN
OTHER_KEY = b"o" * NODE_ID_LEN
HOST = "127.0.0.1"
#: The wall clock the store tests run at (seconds since the epoch).
WALL = 1_700_000_000.0


def nid(i: int) -> bytes:
    return bytes([i % 256, i // 256]) + b"\x00" * (NODE_ID_LEN - 2)


def key_n(i: int) -> bytes:
    return b"K" + i.to_bytes(4, "big") + b"\x00" * (NODE_ID_LEN - 5)


def ann(
    node: bytes,
    port: int = 7000,
    ttl: int = 60,
    complete: bool = True,
    bitfield: bytes = b"",
    issued: float = WALL,
) -> SignedAnnouncement:
    """A record as a holder's store sees it (signatures are the RPC's to check)."""
    return SignedAnnouncement(node, port, ttl, complete, bitfield, int(issued * 1000),
                              b"p" * 32, b"s" * 64)


def add(s: ProviderStore, key: bytes, a: SignedAnnouncement, host: str = HOST,
        origin: str | None = None, now: float = 0, wall: float = WALL) -> bool:
    return s.add(key, a, host, host if origin is None else origin, now=now, wall=wall)


def by_id(records: list[ProviderRecord]) -> dict[bytes, ProviderRecord]:
    out = {r.node_id: r for r in records}
    assert len(out) == len(records), "one record per provider"
    return out


def check_invariants(s: ProviderStore) -> None:
    """The store's indexes agree with its records, and every cap holds."""
    total = 0
    per_source: dict[str, int] = {}
    per_provider: dict[bytes, int] = {}
    for key, entries in s._data.items():
        assert entries, "no empty keys"
        assert len(entries) <= s.max_per_key
        in_key: dict[str, int] = {}
        for node, e in entries.items():
            total += 1
            per_source[e.source] = per_source.get(e.source, 0) + 1
            per_provider[node] = per_provider.get(node, 0) + 1
            in_key[e.source] = in_key.get(e.source, 0) + 1
            assert (key, node) in s._by_source[e.source]
        assert all(n <= s.max_per_source_per_key for src, n in in_key.items() if src != OWN)
    assert total == s.records <= s.max_records
    assert len(s) <= s.max_keys
    assert {k: len(v) for k, v in s._by_source.items()} == per_source
    assert s._by_provider == per_provider
    assert all(n <= s.max_per_source for src, n in per_source.items() if src != OWN)
    tiers = {src: n for n, srcs in s._tiers.items() for src in srcs}
    assert tiers == per_source
    assert s._top == max(per_source.values(), default=0)


class FakeClock:
    """Stands in for the ``time`` module of the provider record, store and token modules."""

    def __init__(self, now: float = 1000.0, wall: float = WALL) -> None:
        self.now = now
        self.wall_offset = wall - now

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now + self.wall_offset


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    for module in (providers, provider_store, tokens):
        monkeypatch.setattr(module, "time", fake)
    return fake


# --- ProviderStore: records, expiry, replacement -----------------------------------------


def test_store_unions_several_providers_per_key() -> None:
    s = ProviderStore()
    add(s, KEY, ann(nid(1), 7001, 100, True), "10.0.0.1")
    add(s, KEY, ann(nid(2), 7002, 200, False, b"\xa0"), "10.0.0.2")
    add(s, KEY, ann(nid(3), 7003, 300, False))
    add(s, OTHER_KEY, ann(nid(4), 7004))

    got = by_id(s.get(KEY, now=10))
    assert set(got) == {nid(1), nid(2), nid(3)}
    one = got[nid(1)]
    assert (one.host, one.port, one.ttl, one.complete, one.bitfield) == (
        "10.0.0.1", 7001, 90.0, True, b"")
    assert (one.issued_at, one.signed_ttl, one.public_key, one.signature) == (
        int(WALL * 1000), 100, b"p" * 32, b"s" * 64)
    assert got[nid(2)].bitfield == b"\xa0"
    assert got[nid(2)].complete is False
    assert got[nid(3)].address == (HOST, 7003)
    assert [r.node_id for r in s.get(OTHER_KEY, now=10)] == [nid(4)]
    assert s.get(b"x" * NODE_ID_LEN, now=10) == []
    assert len(s) == 2
    assert s.records == 4


def test_store_host_is_the_one_given_not_the_announcements() -> None:
    s = ProviderStore()
    a = replace(ann(nid(1)), advertise="198.51.100.7")
    assert s.add(KEY, a, "10.1.2.3", "10.1.2.3", now=0, wall=WALL)
    (rec,) = s.get(KEY, now=0)
    assert rec.host == "10.1.2.3"


def test_store_expires_each_entry_on_its_own() -> None:
    s = ProviderStore()
    add(s, KEY, ann(nid(1), ttl=10))
    add(s, KEY, ann(nid(2), ttl=100))

    assert {r.node_id for r in s.get(KEY, now=9.999)} == {nid(1), nid(2)}
    # Expired exactly at its deadline.
    got = s.get(KEY, now=10)
    assert [r.node_id for r in got] == [nid(2)]
    assert got[0].ttl == pytest.approx(90)
    assert s.get(KEY, now=99.9)[0].ttl == pytest.approx(0.1)
    assert s.get(KEY, now=100) == []
    # An empty key is dropped altogether.
    assert len(s) == 0
    assert s.records == 0


@pytest.mark.parametrize("skew", [-600.0, -60.0, 0.0, 60.0, 600.0, SKEW_ALLOWANCE - 1])
def test_store_keeps_a_skewed_providers_record_for_its_whole_ttl(skew: float) -> None:
    """Expiry runs on the holder's clock: a provider whose clock is ``skew`` s
    ahead of (or behind) the holder's is kept exactly as long as anyone."""
    s = ProviderStore()
    assert add(s, KEY, ann(nid(1), ttl=1800, issued=WALL + skew), wall=WALL)
    assert s.get(KEY, now=1799)
    assert s.get(KEY, now=1800) == []


def test_store_refuses_stale_replays_and_cuts_late_ones_short() -> None:
    s = ProviderStore()
    ttl = 1800
    # Issued so long ago that no clock skew explains it: a replay.
    old = WALL - ttl - SKEW_ALLOWANCE - 1
    assert stale(int(old * 1000), ttl, WALL)
    assert not add(s, KEY, ann(nid(1), ttl=ttl, issued=old))
    assert s.get(KEY, now=0) == []
    # Issued a while ago: kept, but no longer than its signed life plus the allowance.
    late = WALL - ttl - SKEW_ALLOWANCE + 100
    assert add(s, KEY, ann(nid(1), ttl=ttl, issued=late))
    assert s.get(KEY, now=99)
    assert s.get(KEY, now=100) == []


def test_store_only_a_newer_record_replaces_a_live_one() -> None:
    s = ProviderStore()
    assert add(s, KEY, ann(nid(1), 7000, issued=WALL), "10.0.0.1")
    # The same record replayed from elsewhere, or an older one: refused.
    assert not add(s, KEY, ann(nid(1), 9999, issued=WALL), "10.9.9.9")
    assert not add(s, KEY, ann(nid(1), 9999, issued=WALL - 1), "10.0.0.1")
    assert not s.may_replace(KEY, nid(1), int(WALL * 1000), "10.9.9.9", now=0)
    assert by_id(s.get(KEY, now=1))[nid(1)].address == ("10.0.0.1", 7000)
    # A repeat from the same address is a refresh.
    assert add(s, KEY, ann(nid(1), 7000, issued=WALL), "10.0.0.1", now=5)
    assert s.get(KEY, now=64)
    # A newer one, from anywhere (the provider moved), replaces it.
    assert add(s, KEY, ann(nid(1), 8000, issued=WALL + 1), "10.9.9.9", now=6)
    assert by_id(s.get(KEY, now=7))[nid(1)].address == ("10.9.9.9", 8000)
    assert s.records == 1
    # Once a record lapsed, anything goes again.
    assert add(s, KEY, ann(nid(1), 7001, issued=WALL - 10), "10.0.0.1", now=100)
    assert by_id(s.get(KEY, now=101))[nid(1)].port == 7001
    check_invariants(s)


def test_store_readd_refreshes_and_replaces_the_entry() -> None:
    s = ProviderStore()
    add(s, KEY, ann(nid(1), 7000, ttl=10, complete=False, bitfield=b"\x80"))
    add(s, KEY, ann(nid(2), 7002, ttl=10))
    add(s, KEY, ann(nid(1), 8000, ttl=10, complete=True, issued=WALL + 5), now=5)

    got = by_id(s.get(KEY, now=12))
    assert list(got) == [nid(1)]  # nid(2) lapsed at 10, nid(1) was refreshed to 15
    assert (got[nid(1)].port, got[nid(1)].ttl, got[nid(1)].complete) == (8000, 3.0, True)
    assert s.get(KEY, now=15) == []


def test_store_readd_with_shorter_ttl_shortens_it() -> None:
    s = ProviderStore()
    add(s, KEY, ann(nid(1), ttl=100))
    add(s, KEY, ann(nid(1), ttl=1, issued=WALL + 1))
    assert s.get(KEY, now=2) == []


def test_store_remove_needs_a_withdrawal_no_older_than_the_record() -> None:
    s = ProviderStore()
    add(s, KEY, ann(nid(1), issued=WALL))
    add(s, KEY, ann(nid(2)), "10.0.0.2")
    issued = int(WALL * 1000)
    assert s.issued(KEY, nid(1)) == issued
    assert s.issued(KEY, nid(3)) is None
    assert not s.remove(KEY, nid(1), issued - 1)  # a withdrawal older than the record
    assert not s.remove(KEY, nid(3), issued)
    assert not s.remove(OTHER_KEY, nid(1), issued)
    assert set(by_id(s.get(KEY, now=0))) == {nid(1), nid(2)}
    assert s.remove(KEY, nid(1), issued)
    assert [r.node_id for r in s.get(KEY, now=0)] == [nid(2)]
    assert not s.remove(KEY, nid(1), issued)  # already gone
    assert s.remove(KEY, nid(2))  # unconditionally: this node's own records
    assert len(s) == 0
    check_invariants(s)


# --- ProviderStore: caps and fair eviction ------------------------------------------------


def test_store_full_key_evicts_from_the_largest_source_not_by_ttl() -> None:
    """Long-ttl fakes from one address never push out a short-lived honest record."""
    s = ProviderStore(max_per_key=8, max_per_source_per_key=8)
    assert add(s, KEY, ann(nid(0), ttl=60), "10.0.0.1")  # the honest one
    for i in range(1, 50):
        assert add(s, KEY, ann(nid(i), ttl=int(MAX_TTL)), "10.6.6.6")
    got = by_id(s.get(KEY, now=0))
    assert len(got) == 8
    assert nid(0) in got
    # The flooder's newest seven survive: it only ever replaced its own.
    assert set(got) - {nid(0)} == {nid(i) for i in range(43, 50)}
    # Several sources: each newcomer evicts the oldest record of the largest.
    for i in range(3):
        assert add(s, KEY, ann(nid(100 + i)), f"10.1.1.{i}")
    assert nid(0) in by_id(s.get(KEY, now=0))
    assert sum(1 for r in s.get(KEY, now=0) if r.host == "10.6.6.6") == 4
    check_invariants(s)


def test_store_full_key_of_equal_sources_evicts_the_oldest() -> None:
    s = ProviderStore(max_per_key=3)
    for i in range(4):
        assert add(s, KEY, ann(nid(i)), f"10.0.0.{i}")
    assert set(by_id(s.get(KEY, now=0))) == {nid(1), nid(2), nid(3)}


def test_store_caps_one_source_per_key() -> None:
    s = ProviderStore(max_per_source_per_key=4)
    for i in range(20):
        assert add(s, KEY, ann(nid(i)), "10.6.6.6")
    got = s.get(KEY, now=0)
    assert {r.node_id for r in got} == {nid(i) for i in range(16, 20)}
    assert add(s, KEY, ann(nid(99)), "10.0.0.1")  # others are not affected
    assert len(s.get(KEY, now=0)) == 5
    check_invariants(s)


def test_store_caps_one_source_across_keys() -> None:
    s = ProviderStore(max_per_source=10)
    for i in range(25):
        assert add(s, key_n(i), ann(nid(i)), "10.6.6.6")
    assert s.held_from("10.6.6.6") == 10
    assert s.records == 10
    assert [len(s.get(key_n(i), now=0)) for i in range(25)] == [0] * 15 + [1] * 10
    assert add(s, key_n(0), ann(nid(500)), "10.0.0.1")
    assert s.held_from("10.0.0.1") == 1
    assert s.records == 11
    check_invariants(s)


def test_store_caps_one_provider_across_keys() -> None:
    """Beyond its cap a provider's new records are refused; it keeps, and may refresh, its own."""
    s = ProviderStore(max_per_provider=5)
    assert [add(s, key_n(i), ann(nid(7)), f"10.0.{i}.1") for i in range(12)] == \
        [True] * 5 + [False] * 7
    assert s.held_by(nid(7)) == 5
    assert [len(s.get(key_n(i), now=0)) for i in range(12)] == [1] * 5 + [0] * 7
    assert add(s, key_n(0), ann(nid(7), issued=WALL + 1), "10.0.0.1")  # a refresh
    assert add(s, key_n(20), ann(nid(8)), "10.0.0.1")  # another provider
    check_invariants(s)


def test_store_ipv6_sources_count_per_64() -> None:
    assert source_of("2001:db8:1:2:aaaa::1") == source_of("2001:db8:1:2:bbbb::9")
    assert source_of("2001:db8:1:2::1") != source_of("2001:db8:1:3::1")
    assert source_of("::ffff:10.0.0.1") == "10.0.0.1"
    assert source_of("10.0.0.1") == "10.0.0.1"
    assert source_of("not an address") == "not an address"
    s = ProviderStore(max_per_source_per_key=2)
    for i in range(6):
        add(s, KEY, ann(nid(i)), f"2001:db8:1:2::{i + 1:x}")
    assert len(s.get(KEY, now=0)) == 2


def test_store_total_cap_evicts_from_the_largest_source() -> None:
    s = ProviderStore(max_records=10, max_per_source=100)
    add(s, key_n(1000), ann(nid(1000)), "10.0.0.1")  # honest, alone
    for i in range(30):
        assert add(s, key_n(i), ann(nid(i)), "10.6.6.6")
    assert s.records == 10
    assert s.held_from("10.0.0.1") == 1
    assert s.held_from("10.6.6.6") == 9
    for i in range(30):
        assert add(s, key_n(100 + i), ann(nid(100 + i)), "10.7.7.7")
    # Two flooders of ten: they end up sharing; the honest record stays.
    assert s.held_from("10.0.0.1") == 1
    assert s.held_from("10.6.6.6") + s.held_from("10.7.7.7") == 9
    assert abs(s.held_from("10.6.6.6") - s.held_from("10.7.7.7")) <= 1
    check_invariants(s)


def test_store_own_records_are_exempt_from_source_caps() -> None:
    s = ProviderStore(max_per_source=3, max_per_provider=3)
    me = nid(1)
    for i in range(10):
        assert s.add(key_n(i), ann(me), "", OWN, own=True, now=0, wall=WALL)
    assert s.held_by(me) == 10
    check_invariants(s)


def test_store_cap_on_keys_evicts_the_oldest_key() -> None:
    s = ProviderStore(max_keys=2)
    k1, k2, k3, k4 = (bytes([i]) * NODE_ID_LEN for i in range(1, 5))
    add(s, k1, ann(nid(1)))
    add(s, k2, ann(nid(1)))
    add(s, k3, ann(nid(1)))
    assert len(s) == 2
    assert s.get(k1, now=0) == []
    assert s.get(k2, now=0)
    assert s.get(k3, now=0)

    # Writing to a key makes it the youngest: k3 now outlives k2.
    add(s, k2, ann(nid(2)), "10.0.0.2")
    add(s, k4, ann(nid(1)))
    assert len(s) == 2
    assert s.get(k3, now=0) == []
    assert {r.node_id for r in s.get(k2, now=0)} == {nid(1), nid(2)}
    assert s.get(k4, now=0)
    check_invariants(s)


def test_store_get_takes_one_record_per_source_in_turn() -> None:
    s = ProviderStore()
    for i in range(4):
        add(s, KEY, ann(nid(i)), "10.6.6.6")
    add(s, KEY, ann(nid(10)), "10.0.0.1")
    add(s, KEY, ann(nid(11)), "10.0.0.2")
    hosts = [r.host for r in s.get(KEY, now=0)]
    assert hosts[:3] == ["10.6.6.6", "10.0.0.1", "10.0.0.2"]
    assert hosts[3:] == ["10.6.6.6"] * 3


@FUZZ
@given(ops=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 11), st.integers(0, 6),
                              st.integers(1, 50), st.booleans()), max_size=80),
       now=st.floats(0, 60))
def test_store_caps_and_indexes_hold_whatever_is_added(
    ops: list[tuple[int, int, int, int, bool]], now: float
) -> None:
    s = ProviderStore(max_per_key=5, max_keys=4, max_per_source_per_key=2, max_per_source=6,
                      max_per_provider=3, max_records=12)
    t = 0.0
    for k, node, src, ttl, remove in ops:
        t += 0.5
        if remove:
            s.remove(key_n(k), nid(node))
        else:
            add(s, key_n(k), ann(nid(node), ttl=ttl, issued=WALL + t), f"10.0.0.{src}", now=t)
        check_invariants(s)
    s.cull(now=t + now)
    check_invariants(s)


# --- culling ----------------------------------------------------------------------------


def test_store_cull_drops_expired_entries_and_empty_keys() -> None:
    s = ProviderStore()
    add(s, KEY, ann(nid(1), ttl=10))
    add(s, KEY, ann(nid(2), ttl=50))
    add(s, OTHER_KEY, ann(nid(1), ttl=10))
    assert s.cull(now=5) == 0
    assert len(s) == 2
    assert s.cull(now=20) == 2
    assert len(s) == 1
    assert [r.node_id for r in s.get(KEY, now=20)] == [nid(2)]
    assert s.cull(now=50) == 1
    assert len(s) == 0
    assert s.cull(now=50) == 0
    check_invariants(s)


def test_store_cull_keeps_the_eviction_order_of_live_keys() -> None:
    """A sweep frees room from dead keys; the live ones keep their place in line."""
    s = ProviderStore(max_keys=3)
    keys = [bytes([i]) * NODE_ID_LEN for i in range(4)]
    add(s, keys[0], ann(nid(1), ttl=100))
    add(s, keys[1], ann(nid(1), ttl=10))
    add(s, keys[2], ann(nid(1), ttl=100))
    assert s.cull(now=20) == 1  # keys[1] is gone: room for a key without evicting
    add(s, keys[3], ann(nid(1), ttl=100), now=20)
    assert [len(s.get(k, now=20)) for k in keys] == [1, 0, 1, 1]
    add(s, keys[1], ann(nid(1), ttl=100), now=20)  # full: the oldest live key goes
    assert [len(s.get(k, now=20)) for k in keys] == [0, 1, 1, 1]


def test_store_cull_with_a_budget_sweeps_a_few_keys_per_call() -> None:
    """Each call looks at ``budget`` keys and the next carries on: every key in a pass."""
    s = ProviderStore()
    keys = [bytes([i]) * NODE_ID_LEN for i in range(10)]
    for key in keys:
        add(s, key, ann(nid(1), ttl=10))
    assert s.cull(now=20, budget=4) == 4
    assert len(s) == 6
    s.remove(keys[5], nid(1))  # gone mid-pass: skipped, not an error
    assert s.cull(now=20, budget=4) == 3
    assert s.cull(now=20, budget=4) == 2  # the end of the pass: fewer than the budget
    assert len(s) == 0
    add(s, keys[0], ann(nid(1), ttl=10), now=20)  # a new pass sees new keys
    assert s.cull(now=40, budget=4) == 1
    assert len(s) == 0


@FUZZ
@given(
    entries=st.lists(
        st.tuples(st.integers(0, 3), st.integers(1, 5), st.integers(1, 100)), max_size=40
    ),
    now=st.floats(0, 120),
)
def test_store_cull_changes_nothing_a_read_would_see(
    entries: list[tuple[int, int, int]], now: float
) -> None:
    """Culling only drops what :meth:`ProviderStore.get` would no longer return."""
    culled, untouched = ProviderStore(), ProviderStore()
    keys = [bytes([k]) * NODE_ID_LEN for k in range(4)]
    for i, (k, node, ttl) in enumerate(entries):
        for s in (culled, untouched):
            add(s, keys[k], ann(nid(node), ttl=ttl, issued=WALL + i), f"10.0.0.{node}")
    live = sum(len(untouched.get(k, now=now)) for k in keys)
    held = sum(len({n for k2, n, _ in entries if k2 == k}) for k in range(4))
    assert culled.cull(now=now) == held - live
    for k in keys:
        assert culled.get(k, now=now) == untouched.get(k, now=now)
    assert len(culled) == len(untouched)


def test_store_uses_the_monotonic_clock_by_default(clock: FakeClock) -> None:
    s = ProviderStore()
    a = ann(nid(1), ttl=10, issued=clock.time())
    s.add(KEY, a, HOST, HOST)
    clock.now += 4
    (rec,) = s.get(KEY)
    assert rec.ttl == pytest.approx(6)
    clock.now += 6
    assert s.get(KEY) == []
    s.add(KEY, ann(nid(1), ttl=10, issued=clock.time()), HOST, HOST)
    clock.now += 11
    s.cull()
    assert len(s) == 0


# --- signatures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def me() -> Identity:
    return Identity.generate()


def signed_record(a: SignedAnnouncement, host: str = HOST, ttl: float = 30.0) -> ProviderRecord:
    return ProviderRecord(a.node_id, host, a.port, ttl, a.complete, a.bitfield, a.issued_at,
                          a.ttl, a.public_key, a.signature)


def test_a_signed_announcement_verifies_for_its_key_only(me: Identity) -> None:
    a = SignedAnnouncement.make(me, KEY, Announcement(7000, 600, False, b"\xf0"), 123_456)
    assert a.node_id == me.node_id
    assert a.owned()
    assert a.verify(KEY)
    assert not a.verify(OTHER_KEY)
    back = SignedAnnouncement.from_wire(me.node_id, through_msgpack(a.to_wire()))
    assert back == a
    assert back.verify(KEY)
    # Any signed field changed, and the signature no longer holds.
    for changed in (replace(a, port=7001), replace(a, ttl=601), replace(a, complete=True),
                    replace(a, bitfield=b"\xf1"), replace(a, issued_at=123_457),
                    replace(a, signature=bytes(64))):
        assert not changed.verify(KEY)
    # Someone else's id with my key (or my id with someone else's key).
    other = Identity.generate()
    assert not replace(a, node_id=other.node_id).verify(KEY)
    assert not replace(a, node_id=other.node_id).owned()
    assert not replace(a, public_key=other.public_key).verify(KEY)


def test_a_record_verifies_whoever_stored_it(me: Identity) -> None:
    a = SignedAnnouncement.make(me, KEY, Announcement(7000, 600, True), int(WALL * 1000))
    rec = signed_record(a, "10.1.2.3")
    assert rec.verify(KEY, WALL)
    back = ProviderRecord.from_wire(through_msgpack(rec.to_wire()))
    assert back == rec
    # The host and the remaining ttl are the holder's to say, not signed.
    assert replace(rec, host="10.9.9.9", ttl=1.0).verify(KEY, WALL)
    for forged in (replace(rec, port=1), replace(rec, complete=False),
                   replace(rec, bitfield=b"\x01"), replace(rec, signed_ttl=601),
                   replace(rec, node_id=nid(1)), replace(rec, issued_at=rec.issued_at + 1)):
        assert not forged.verify(KEY, WALL)
    assert not rec.verify(OTHER_KEY, WALL)
    # A stale replay fails, whatever the signature.
    assert rec.verify(KEY, WALL + 600 + SKEW_ALLOWANCE - 1)
    assert not rec.verify(KEY, WALL + 600 + SKEW_ALLOWANCE + 1)
    # Unsigned records (defaults) never verify.
    assert not ProviderRecord(nid(1), HOST, 7000, 10.0, True).verify(KEY, WALL)


def test_a_record_never_claims_more_than_its_signed_ttl(me: Identity) -> None:
    a = SignedAnnouncement.make(me, KEY, Announcement(7000, 60, True), int(WALL * 1000))
    wire = signed_record(a, ttl=10_000).to_wire()
    assert wire[3] == 60
    wire[3] = 10_000  # a holder lying about it
    back = ProviderRecord.from_wire(wire)
    assert back is not None
    assert back.ttl == 60


def test_withdrawal_verifies_for_its_key_and_node(me: Identity) -> None:
    w = Withdrawal.make(me, KEY, 99)
    assert w.verify(KEY, me.node_id)
    assert not w.verify(OTHER_KEY, me.node_id)
    assert not w.verify(KEY, nid(1))
    assert not replace(w, issued_at=100).verify(KEY, me.node_id)
    back = Withdrawal.from_wire(through_msgpack(w.to_wire()))
    assert back == w
    for bad in (None, [], [1, 2], [99, b"p" * 31, b"s" * 64], [99, b"p" * 32, b"s" * 63],
                [-1, b"p" * 32, b"s" * 64], [True, b"p" * 32, b"s" * 64]):
        assert Withdrawal.from_wire(bad) is None


def test_signer_issue_times_only_go_up(me: Identity, clock: FakeClock) -> None:
    signer = Signer(me)
    first = signer.announcement(KEY, Announcement(7000, 60, True))
    second = signer.announcement(KEY, Announcement(7000, 60, True))  # the same millisecond
    assert first.issued_at == int(clock.time() * 1000)
    assert second.issued_at == first.issued_at + 1
    clock.now -= 600  # the clock steps back
    w = signer.withdrawal(KEY)
    assert w.issued_at > second.issued_at
    assert w.verify(KEY, me.node_id)
    assert second.verify(KEY)


def test_announcement_caps_ttl_and_drops_big_bitfields(me: Identity) -> None:
    a = SignedAnnouncement.make(me, KEY, Announcement(7000, 10 * MAX_TTL, True), 1)
    assert a.ttl == MAX_TTL
    assert SignedAnnouncement.make(me, KEY, Announcement(7000, 0.4, True), 1).ttl == 1
    big = SignedAnnouncement.make(
        me, KEY, Announcement(7000, 60, False, b"\xff" * (MAX_DHT_BITFIELD + 1)), 1)
    assert big.bitfield == b""
    assert big.verify(KEY)
    ok = SignedAnnouncement.make(
        me, KEY, Announcement(7000, 60, False, b"\xff" * MAX_DHT_BITFIELD), 1)
    assert ok.bitfield == b"\xff" * MAX_DHT_BITFIELD


# --- TokenIssuer -----------------------------------------------------------------------


def test_token_is_bound_to_the_host() -> None:
    t = TokenIssuer()
    token = t.issue(HOST)
    assert isinstance(token, bytes)
    assert len(token) == TOKEN_LEN
    assert t.issue(HOST) == token  # stable within a period
    assert t.check(HOST, token)
    assert not t.check("127.0.0.2", token)
    assert not t.check("10.0.0.1", token)
    assert t.check("10.0.0.1", t.issue("10.0.0.1"))
    assert t.issue("10.0.0.1") != token


@pytest.mark.parametrize(
    "garbage",
    [None, 0, 12345678, 1.5, "abcdefgh", [1, 2], b"", b"\x00" * TOKEN_LEN, b"x" * 7,
     b"x" * 9, b"x" * 1000],
)
def test_token_garbage_is_invalid(garbage: Any) -> None:
    t = TokenIssuer()
    t.issue(HOST)
    assert t.check(HOST, garbage) is False


def test_token_wrong_length_or_tampered_is_invalid() -> None:
    t = TokenIssuer()
    token = t.issue(HOST)
    assert not t.check(HOST, token[:-1])
    assert not t.check(HOST, token + b"\x00")
    assert not t.check(HOST, bytes([token[0] ^ 1]) + token[1:])
    assert not t.check(HOST, bytearray(token))  # only bytes are accepted
    assert not t.check(HOST, token.hex())


def test_token_from_another_issuer_is_invalid() -> None:
    a, b = TokenIssuer(), TokenIssuer()
    assert not b.check(HOST, a.issue(HOST))


def test_token_survives_one_rotation_not_two(clock: FakeClock) -> None:
    t = TokenIssuer(rotate=10)
    old = t.issue(HOST)
    clock.now += 9.5
    assert t.check(HOST, old)
    assert t.issue(HOST) == old  # no rotation yet
    clock.now += 1  # one rotation
    assert t.check(HOST, old)
    new = t.issue(HOST)
    assert new != old
    assert t.check(HOST, new)
    clock.now += 10  # a second rotation
    assert not t.check(HOST, old)
    assert t.check(HOST, new)
    clock.now += 10  # a third one
    assert not t.check(HOST, new)


def test_token_rotation_one_period_at_a_time(clock: FakeClock) -> None:
    t = TokenIssuer(rotate=10)
    token = t.issue(HOST)
    clock.now += 12
    assert t.check(HOST, token)  # rotated once: the previous secret still counts
    clock.now += 12
    assert not t.check(HOST, token)


def test_token_expires_after_long_idle_period(clock: FakeClock) -> None:
    t = TokenIssuer(rotate=10)
    token = t.issue(HOST)
    clock.now += 1000  # a hundred periods with no traffic at all
    assert not t.check(HOST, token)


# --- wire forms ------------------------------------------------------------------------

node_ids = st.binary(min_size=NODE_ID_LEN, max_size=NODE_ID_LEN)
hosts = st.text(min_size=1, max_size=255)
ports = st.integers(1, 65535)
bitfields = st.binary(max_size=MAX_DHT_BITFIELD)
proofs = st.tuples(st.integers(0, 2**63 - 1), st.binary(min_size=32, max_size=32),
                   st.binary(min_size=64, max_size=64))

records = st.builds(
    lambda n, h, p, ttl, signed, c, b, proof: ProviderRecord(
        n, h, p, float(min(ttl, signed)), c, b, proof[0], signed, proof[1], proof[2]),
    node_ids, hosts | st.just(""), ports, st.integers(0, int(MAX_TTL)),
    st.integers(1, int(MAX_TTL)), st.booleans(), bitfields, proofs,
)
announcements = st.builds(
    lambda n, p, ttl, c, b, proof, adv: SignedAnnouncement(n, p, ttl, c, b, *proof, adv),
    node_ids, ports, st.integers(1, int(MAX_TTL)), st.booleans(), bitfields, proofs,
    st.none() | hosts,
)


def through_msgpack(obj: Any) -> Any:
    return msgpack.unpackb(msgpack.packb(obj, use_bin_type=True), raw=False)


@FUZZ
@given(records)
def test_record_round_trip(rec: ProviderRecord) -> None:
    assert ProviderRecord.from_wire(rec.to_wire()) == rec
    assert ProviderRecord.from_wire(through_msgpack(rec.to_wire())) == rec
    assert ProviderRecord.from_wire(tuple(rec.to_wire())) == rec


@FUZZ
@given(announcements)
def test_announcement_round_trip(a: SignedAnnouncement) -> None:
    assert SignedAnnouncement.from_wire(a.node_id, a.to_wire()) == a
    assert SignedAnnouncement.from_wire(a.node_id, through_msgpack(a.to_wire())) == a


def test_record_ttl_is_sent_in_whole_seconds() -> None:
    rec = ProviderRecord(nid(1), HOST, 7000, 12.6, True, b"", 1, 60, b"p" * 32, b"s" * 64)
    back = ProviderRecord.from_wire(rec.to_wire())
    assert back is not None
    assert back.ttl == 13.0
    assert rec.address == (HOST, 7000)


GOOD_RECORD: list[Any] = [nid(1), HOST, 7000, 60, True, b"", 1, 60, b"p" * 32, b"s" * 64]
GOOD_ANN: list[Any] = [7000, None, 60, True, b"", 1, b"p" * 32, b"s" * 64]


def _replace(base: list[Any], i: int, value: Any) -> list[Any]:
    out = list(base)
    out[i] = value
    return out


@pytest.mark.parametrize(
    "wire",
    [
        None,
        b"",
        "record",
        {},
        [],
        GOOD_RECORD[:6],
        GOOD_RECORD[:9],
        [*GOOD_RECORD, 1],
        _replace(GOOD_RECORD, 0, b"x" * (NODE_ID_LEN - 1)),
        _replace(GOOD_RECORD, 0, b"x" * (NODE_ID_LEN + 1)),
        _replace(GOOD_RECORD, 0, "x" * NODE_ID_LEN),
        _replace(GOOD_RECORD, 1, "h" * 256),
        _replace(GOOD_RECORD, 1, b"127.0.0.1"),
        _replace(GOOD_RECORD, 2, 0),
        _replace(GOOD_RECORD, 2, 65536),
        _replace(GOOD_RECORD, 2, -1),
        _replace(GOOD_RECORD, 2, True),
        _replace(GOOD_RECORD, 2, "7000"),
        _replace(GOOD_RECORD, 2, 7000.0),
        _replace(GOOD_RECORD, 3, "60"),
        _replace(GOOD_RECORD, 3, None),
        _replace(GOOD_RECORD, 3, math.inf),
        _replace(GOOD_RECORD, 4, 1),
        _replace(GOOD_RECORD, 4, None),
        _replace(GOOD_RECORD, 5, "bits"),
        _replace(GOOD_RECORD, 5, b"\xff" * (MAX_DHT_BITFIELD + 1)),
        _replace(GOOD_RECORD, 6, -1),
        _replace(GOOD_RECORD, 6, 1.0),
        _replace(GOOD_RECORD, 6, None),
        _replace(GOOD_RECORD, 7, 0),
        _replace(GOOD_RECORD, 7, int(MAX_TTL) + 1),
        _replace(GOOD_RECORD, 8, b"p" * 31),
        _replace(GOOD_RECORD, 8, "p" * 32),
        _replace(GOOD_RECORD, 9, b"s" * 65),
        _replace(GOOD_RECORD, 9, None),
    ],
)
def test_record_from_wire_rejects_malformed(wire: Any) -> None:
    assert ProviderRecord.from_wire(wire) is None


@pytest.mark.parametrize(
    "wire",
    [
        None,
        7000,
        [],
        GOOD_ANN[:5],
        GOOD_ANN[:7],
        [*GOOD_ANN, 1],
        _replace(GOOD_ANN, 0, 0),
        _replace(GOOD_ANN, 0, 65536),
        _replace(GOOD_ANN, 0, False),
        _replace(GOOD_ANN, 0, "7000"),
        _replace(GOOD_ANN, 1, ""),
        _replace(GOOD_ANN, 1, "h" * 256),
        _replace(GOOD_ANN, 1, b"10.0.0.1"),
        _replace(GOOD_ANN, 2, 0),
        _replace(GOOD_ANN, 2, -5),
        _replace(GOOD_ANN, 2, math.nan),
        _replace(GOOD_ANN, 2, 60.5),
        _replace(GOOD_ANN, 2, int(MAX_TTL) + 1),
        _replace(GOOD_ANN, 3, 1),
        _replace(GOOD_ANN, 4, None),
        _replace(GOOD_ANN, 4, b"\xff" * (MAX_DHT_BITFIELD + 1)),
        _replace(GOOD_ANN, 5, -1),
        _replace(GOOD_ANN, 6, b"p" * 33),
        _replace(GOOD_ANN, 7, b""),
    ],
)
def test_announcement_from_wire_rejects_malformed(wire: Any) -> None:
    assert SignedAnnouncement.from_wire(nid(1), wire) is None


def test_announcement_from_wire_needs_a_node_id() -> None:
    assert SignedAnnouncement.from_wire(b"short", GOOD_ANN) is None
    assert SignedAnnouncement.from_wire(nid(1), GOOD_ANN) is not None


scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=300)
    | st.binary(max_size=600)
)
anything = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=11)
    | st.lists(inner, max_size=11).map(tuple)
    | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=24,
)
# Lists of exactly the right lengths reach the field checks, not just the arity check.
ten = st.lists(scalars, min_size=10, max_size=10)
eight = st.lists(scalars, min_size=8, max_size=8)
three = st.lists(scalars, min_size=3, max_size=3)


@FUZZ
@given(anything | ten | eight | three)
def test_from_wire_never_raises(obj: Any) -> None:
    rec = ProviderRecord.from_wire(obj)
    assert rec is None or isinstance(rec, ProviderRecord)
    if rec is not None:
        assert rec.verify(KEY, WALL) is False
    a = SignedAnnouncement.from_wire(nid(1), obj)
    assert a is None or isinstance(a, SignedAnnouncement)
    if a is not None:
        assert 0 < a.ttl <= MAX_TTL
        assert 0 < a.port < 65536
        assert a.verify(KEY) is False
    w = Withdrawal.from_wire(obj)
    assert w is None or w.verify(KEY, nid(1)) is False


# --- is_loopback -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("localhost", True),
        ("10.0.0.1", False),
        ("192.168.1.20", False),
        ("0.0.0.0", False),
        ("::", False),
        ("2001:db8::1", False),
        ("example.org", False),
        ("", False),
        ("not an address", False),
    ],
)
def test_is_loopback(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected
