"""Unit and property tests for provider records (dhtshare.core.providers), sans IO."""

from __future__ import annotations

import math
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dhtshare.core import providers
from dhtshare.core.ids import NODE_ID_LEN
from dhtshare.core.providers import (
    MAX_DHT_BITFIELD,
    MAX_TTL,
    TOKEN_LEN,
    Announcement,
    ProviderRecord,
    ProviderStore,
    TokenIssuer,
    is_loopback,
)

FUZZ = settings(max_examples=200, deadline=None, database=None)

KEY = b"k" * NODE_ID_LEN
OTHER_KEY = b"o" * NODE_ID_LEN
HOST = "127.0.0.1"


def nid(i: int) -> bytes:
    return bytes([i]) * NODE_ID_LEN


def ann(
    port: int = 7000,
    ttl: float = 60.0,
    complete: bool = True,
    bitfield: bytes = b"",
    advertise: str | None = None,
) -> Announcement:
    return Announcement(port, ttl, complete, bitfield, advertise)


def by_id(records: list[ProviderRecord]) -> dict[bytes, ProviderRecord]:
    out = {r.node_id: r for r in records}
    assert len(out) == len(records), "one record per provider"
    return out


class FakeClock:
    """Stands in for the ``time`` module inside dhtshare.core.providers."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(providers, "time", fake)
    return fake


# --- ProviderStore ---------------------------------------------------------------------


def test_store_unions_several_providers_per_key() -> None:
    s = ProviderStore()
    s.add(KEY, nid(1), "10.0.0.1", ann(7001, 100, True), now=0)
    s.add(KEY, nid(2), "10.0.0.2", ann(7002, 200, False, b"\xa0"), now=0)
    s.add(KEY, nid(3), HOST, ann(7003, 300, False), now=0)
    s.add(OTHER_KEY, nid(4), HOST, ann(7004), now=0)

    got = by_id(s.get(KEY, now=10))
    assert set(got) == {nid(1), nid(2), nid(3)}
    assert got[nid(1)] == ProviderRecord(nid(1), "10.0.0.1", 7001, 90.0, True, b"")
    assert got[nid(2)] == ProviderRecord(nid(2), "10.0.0.2", 7002, 190.0, False, b"\xa0")
    assert got[nid(3)].address == (HOST, 7003)
    assert [r.node_id for r in s.get(OTHER_KEY, now=10)] == [nid(4)]
    assert s.get(b"x" * NODE_ID_LEN, now=10) == []
    assert len(s) == 2


def test_store_host_is_the_one_given_not_the_announcements() -> None:
    s = ProviderStore()
    s.add(KEY, nid(1), "10.1.2.3", ann(advertise="198.51.100.7"), now=0)
    (rec,) = s.get(KEY, now=0)
    assert rec.host == "10.1.2.3"


def test_store_expires_each_entry_on_its_own() -> None:
    s = ProviderStore()
    s.add(KEY, nid(1), HOST, ann(ttl=10), now=0)
    s.add(KEY, nid(2), HOST, ann(ttl=100), now=0)

    assert {r.node_id for r in s.get(KEY, now=9.999)} == {nid(1), nid(2)}
    # Expired exactly at its deadline.
    got = s.get(KEY, now=10)
    assert [r.node_id for r in got] == [nid(2)]
    assert got[0].ttl == pytest.approx(90)
    assert s.get(KEY, now=99.9)[0].ttl == pytest.approx(0.1)
    assert s.get(KEY, now=100) == []
    # An empty key is dropped altogether.
    assert len(s) == 0


def test_store_readd_refreshes_and_replaces_the_entry() -> None:
    s = ProviderStore()
    s.add(KEY, nid(1), HOST, ann(7000, ttl=10, complete=False, bitfield=b"\x80"), now=0)
    s.add(KEY, nid(2), HOST, ann(7002, ttl=10), now=0)
    s.add(KEY, nid(1), HOST, ann(8000, ttl=10, complete=True), now=5)

    got = by_id(s.get(KEY, now=12))
    assert list(got) == [nid(1)]  # nid(2) lapsed at 10, nid(1) was refreshed to 15
    assert got[nid(1)] == ProviderRecord(nid(1), HOST, 8000, 3.0, True, b"")
    assert s.get(KEY, now=15) == []


def test_store_only_the_registering_address_may_replace_a_live_record() -> None:
    s = ProviderStore()
    assert s.add(KEY, nid(1), HOST, ann(7000, ttl=10), now=0)
    assert not s.add(KEY, nid(1), "10.9.9.9", ann(8000, ttl=10), now=5)
    assert by_id(s.get(KEY, now=6))[nid(1)].host == HOST
    assert not s.remove(KEY, nid(1), "10.9.9.9")
    # Once the record lapsed, the node may register from its new address.
    assert s.add(KEY, nid(1), "10.9.9.9", ann(8000, ttl=10), now=11)
    assert by_id(s.get(KEY, now=12))[nid(1)].host == "10.9.9.9"


def test_store_readd_with_shorter_ttl_shortens_it() -> None:
    s = ProviderStore()
    s.add(KEY, nid(1), HOST, ann(ttl=100), now=0)
    s.add(KEY, nid(1), HOST, ann(ttl=1), now=0)
    assert s.get(KEY, now=2) == []


def test_store_cap_per_key_drops_the_entry_that_expires_first() -> None:
    s = ProviderStore(max_per_key=3)
    s.add(KEY, nid(1), HOST, ann(ttl=50), now=0)
    s.add(KEY, nid(2), HOST, ann(ttl=10), now=0)
    s.add(KEY, nid(3), HOST, ann(ttl=30), now=0)
    s.add(KEY, nid(4), HOST, ann(ttl=40), now=0)
    assert set(by_id(s.get(KEY, now=0))) == {nid(1), nid(3), nid(4)}

    # A newcomer that would lapse before everyone else is the one dropped.
    s.add(KEY, nid(5), HOST, ann(ttl=1), now=0)
    assert set(by_id(s.get(KEY, now=0))) == {nid(1), nid(3), nid(4)}

    # Re-adding a present provider does not count against the cap.
    s.add(KEY, nid(3), HOST, ann(ttl=5), now=0)
    assert set(by_id(s.get(KEY, now=0))) == {nid(1), nid(3), nid(4)}
    # Other keys have caps of their own.
    for i in range(3):
        s.add(OTHER_KEY, nid(10 + i), HOST, ann(), now=0)
    assert len(s.get(OTHER_KEY, now=0)) == 3


def test_store_cap_on_keys_evicts_the_oldest_key() -> None:
    s = ProviderStore(max_keys=2)
    k1, k2, k3, k4 = (bytes([i]) * NODE_ID_LEN for i in range(1, 5))
    s.add(k1, nid(1), HOST, ann(), now=0)
    s.add(k2, nid(1), HOST, ann(), now=0)
    s.add(k3, nid(1), HOST, ann(), now=0)
    assert len(s) == 2
    assert s.get(k1, now=0) == []
    assert s.get(k2, now=0)
    assert s.get(k3, now=0)

    # Writing to a key makes it the youngest: k3 now outlives k2.
    s.add(k2, nid(2), HOST, ann(), now=0)
    s.add(k4, nid(1), HOST, ann(), now=0)
    assert len(s) == 2
    assert s.get(k3, now=0) == []
    assert {r.node_id for r in s.get(k2, now=0)} == {nid(1), nid(2)}
    assert s.get(k4, now=0)


def test_store_remove_needs_the_matching_host() -> None:
    s = ProviderStore()
    s.add(KEY, nid(1), "10.0.0.1", ann(), now=0)
    s.add(KEY, nid(2), "10.0.0.2", ann(), now=0)

    assert not s.remove(KEY, nid(1), "10.0.0.2")
    assert not s.remove(KEY, nid(1), "10.0.0.11")
    assert not s.remove(KEY, nid(3), "10.0.0.1")
    assert not s.remove(OTHER_KEY, nid(1), "10.0.0.1")
    assert set(by_id(s.get(KEY, now=0))) == {nid(1), nid(2)}

    assert s.remove(KEY, nid(1), "10.0.0.1")
    assert [r.node_id for r in s.get(KEY, now=0)] == [nid(2)]
    assert not s.remove(KEY, nid(1), "10.0.0.1")  # already gone
    assert s.remove(KEY, nid(2), "10.0.0.2")
    assert len(s) == 0
    assert s.get(KEY, now=0) == []


def test_store_cull_drops_expired_entries_and_empty_keys() -> None:
    s = ProviderStore()
    s.add(KEY, nid(1), HOST, ann(ttl=10), now=0)
    s.add(KEY, nid(2), HOST, ann(ttl=50), now=0)
    s.add(OTHER_KEY, nid(1), HOST, ann(ttl=10), now=0)
    assert s.cull(now=5) == 0
    assert len(s) == 2
    assert s.cull(now=20) == 2
    assert len(s) == 1
    assert [r.node_id for r in s.get(KEY, now=20)] == [nid(2)]
    assert s.cull(now=50) == 1
    assert len(s) == 0
    assert s.cull(now=50) == 0


def test_store_cull_keeps_the_eviction_order_of_live_keys() -> None:
    """A sweep frees room from dead keys; the live ones keep their place in line."""
    s = ProviderStore(max_keys=3)
    keys = [bytes([i]) * NODE_ID_LEN for i in range(4)]
    s.add(keys[0], nid(1), HOST, ann(ttl=100), now=0)
    s.add(keys[1], nid(1), HOST, ann(ttl=10), now=0)
    s.add(keys[2], nid(1), HOST, ann(ttl=100), now=0)
    assert s.cull(now=20) == 1  # keys[1] is gone: room for a key without evicting
    s.add(keys[3], nid(1), HOST, ann(ttl=100), now=20)
    assert [len(s.get(k, now=20)) for k in keys] == [1, 0, 1, 1]
    s.add(keys[1], nid(1), HOST, ann(ttl=100), now=20)  # full: the oldest live key goes
    assert [len(s.get(k, now=20)) for k in keys] == [0, 1, 1, 1]


def test_store_cull_with_a_budget_sweeps_a_few_keys_per_call() -> None:
    """Each call looks at ``budget`` keys and the next carries on: every key in a pass."""
    s = ProviderStore()
    keys = [bytes([i]) * NODE_ID_LEN for i in range(10)]
    for key in keys:
        s.add(key, nid(1), HOST, ann(ttl=10), now=0)
    assert s.cull(now=20, budget=4) == 4
    assert len(s) == 6
    s.remove(keys[5], nid(1), HOST)  # gone mid-pass: skipped, not an error
    assert s.cull(now=20, budget=4) == 3
    assert s.cull(now=20, budget=4) == 2  # the end of the pass: fewer than the budget
    assert len(s) == 0
    s.add(keys[0], nid(1), HOST, ann(ttl=10), now=20)  # a new pass sees new keys
    assert s.cull(now=40, budget=4) == 1
    assert len(s) == 0


@FUZZ
@given(
    entries=st.lists(
        st.tuples(st.integers(0, 3), st.integers(1, 5), st.floats(0.5, 100)), max_size=40
    ),
    now=st.floats(0, 120),
)
def test_store_cull_changes_nothing_a_read_would_see(
    entries: list[tuple[int, int, float]], now: float
) -> None:
    """Culling only drops what :meth:`ProviderStore.get` would no longer return."""
    culled, untouched = ProviderStore(), ProviderStore()
    keys = [bytes([k]) * NODE_ID_LEN for k in range(4)]
    for k, node, ttl in entries:
        for s in (culled, untouched):
            s.add(keys[k], nid(node), HOST, ann(ttl=ttl), now=0)
    live = sum(len(untouched.get(k, now=now)) for k in keys)
    held = sum(len({n for k2, n, _ in entries if k2 == k}) for k in range(4))
    assert culled.cull(now=now) == held - live
    for k in keys:
        assert culled.get(k, now=now) == untouched.get(k, now=now)
    assert len(culled) == len(untouched)


def test_store_uses_the_monotonic_clock_by_default(clock: FakeClock) -> None:
    s = ProviderStore()
    s.add(KEY, nid(1), HOST, ann(ttl=10))
    clock.now += 4
    (rec,) = s.get(KEY)
    assert rec.ttl == pytest.approx(6)
    clock.now += 6
    assert s.get(KEY) == []
    s.add(KEY, nid(1), HOST, ann(ttl=10))
    clock.now += 11
    s.cull()
    assert len(s) == 0


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

records = st.builds(
    ProviderRecord,
    node_ids,
    hosts,
    ports,
    st.integers(0, int(MAX_TTL)).map(float),
    st.booleans(),
    bitfields,
)
announcements = st.builds(
    Announcement,
    ports,
    st.integers(1, int(MAX_TTL)).map(float),
    st.booleans(),
    bitfields,
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
def test_announcement_round_trip(a: Announcement) -> None:
    assert Announcement.from_wire(a.to_wire()) == a
    assert Announcement.from_wire(through_msgpack(a.to_wire())) == a


def test_record_ttl_is_sent_in_whole_seconds() -> None:
    rec = ProviderRecord(nid(1), HOST, 7000, 12.6, True)
    back = ProviderRecord.from_wire(rec.to_wire())
    assert back is not None
    assert back.ttl == 13.0
    assert rec.address == (HOST, 7000)


def test_announcement_caps_ttl_and_drops_big_bitfields() -> None:
    back = Announcement.from_wire([7000, None, 10 * MAX_TTL, True, b""])
    assert back is not None
    assert back.ttl == MAX_TTL
    assert Announcement.from_wire([7000, None, math.inf, True, b""]) == Announcement(
        7000, MAX_TTL, True
    )
    big = Announcement(7000, 60, False, b"\xff" * (MAX_DHT_BITFIELD + 1))
    assert big.to_wire()[-1] == b""
    assert Announcement.from_wire(big.to_wire()) == Announcement(7000, 60, False, b"")
    ok = Announcement(7000, 60, False, b"\xff" * MAX_DHT_BITFIELD)
    assert Announcement.from_wire(ok.to_wire()) == ok


def test_announcement_with_subsecond_ttl_survives_the_wire() -> None:
    a = Announcement(7000, 0.4, True)
    assert Announcement.from_wire(a.to_wire()) is not None


GOOD_RECORD: list[Any] = [nid(1), HOST, 7000, 60, True, b""]
GOOD_ANN: list[Any] = [7000, None, 60, True, b""]


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
        GOOD_RECORD[:5],
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
        _replace(GOOD_RECORD, 4, 1),
        _replace(GOOD_RECORD, 4, None),
        _replace(GOOD_RECORD, 5, "bits"),
        _replace(GOOD_RECORD, 5, b"\xff" * (MAX_DHT_BITFIELD + 1)),
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
        GOOD_ANN[:4],
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
        _replace(GOOD_ANN, 2, "60"),
        _replace(GOOD_ANN, 3, 1),
        _replace(GOOD_ANN, 4, None),
        _replace(GOOD_ANN, 4, b"\xff" * (MAX_DHT_BITFIELD + 1)),
    ],
)
def test_announcement_from_wire_rejects_malformed(wire: Any) -> None:
    assert Announcement.from_wire(wire) is None


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
    lambda inner: st.lists(inner, max_size=7)
    | st.lists(inner, max_size=7).map(tuple)
    | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=20,
)
# Lists of exactly the right lengths reach the field checks, not just the arity check.
six = st.lists(scalars, min_size=6, max_size=6)
five = st.lists(scalars, min_size=5, max_size=5)


@FUZZ
@given(anything | six | five)
def test_from_wire_never_raises(obj: Any) -> None:
    rec = ProviderRecord.from_wire(obj)
    assert rec is None or isinstance(rec, ProviderRecord)
    a = Announcement.from_wire(obj)
    assert a is None or isinstance(a, Announcement)
    if a is not None:
        assert 0 < a.ttl <= MAX_TTL
        assert 0 < a.port < 65536


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
