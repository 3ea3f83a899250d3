"""Fuzzers for the DHT's untrusted inputs: datagrams and lookup answers.

* :class:`dhtshare.net.dht.datagram.DatagramRpc` is driven in-process
  (``datagram_received`` with a fake transport): arbitrary datagrams must
  never raise, requests are answered only when well-formed and small, and
  an answer is accepted only for a question we asked, from where it went.
  A test-local subclass provides the RPCs, so this does not depend on the
  RPC table of ``net/dht/kad.py``.
* The contact lists of peers' lookup answers (``net/dht/lookups._contacts``,
  the whole of a ``find_node`` answer and the nodes part of a
  ``get_providers`` one) get arbitrary values, and its output drives a
  :class:`dhtshare.core.lookup.Lookup` fed adversarial answers: the lookup
  must stay within its budget and end.

Provider records and announcements (``core/providers.py``, and the records
part of ``lookups._parse_reply``) are deliberately not fuzzed here: their
wire format is being rewritten.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kademlia.node import Node
from kademlia.storage import ForgetfulStorage

from dhtshare.core.lookup import Contact, Lookup
from dhtshare.net.dht import datagram
from dhtshare.net.dht.datagram import DatagramRpc
from dhtshare.net.dht.lookups import _contacts

FUZZ = settings(max_examples=100, deadline=None, database=None, derandomize=True)

SELF_ID = b"\x01" * 20
PEER = ("127.0.0.1", 4001)
Address = tuple[str, int]


def pack(obj: Any) -> bytes:
    out: bytes = msgpack.packb(obj, use_bin_type=True)
    return out


# --- an in-process datagram endpoint --------------------------------------------------------------


@dataclass
class FakeTransport:
    sent: list[tuple[bytes, Address]] = field(default_factory=list)
    closing: bool = False

    def sendto(self, data: bytes, addr: Address) -> None:
        self.sent.append((bytes(data), addr))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True


class EchoRpc(DatagramRpc):
    """Two RPCs: ``echo`` answers, ``boom`` always fails (as a wrong-typed argument would)."""

    rpcs: ClassVar[frozenset[str]] = frozenset({"echo", "boom"})

    def rpc_echo(self, sender: Address, nodeid: Any, value: Any) -> Any:
        return [list(sender), type(value).__name__]

    def rpc_boom(self, sender: Address, nodeid: Any) -> Any:
        raise ValueError("wrong type")


def endpoint() -> tuple[EchoRpc, FakeTransport]:
    proto = EchoRpc(Node(SELF_ID), ForgetfulStorage(), 20, 1.0)
    transport = FakeTransport()
    proto.connection_made(transport)
    return proto, transport


def expected_answer(data: bytes) -> bytes | None:
    """The model of ``_serve``: what a request datagram should be answered with, if anything."""
    if not (datagram.HEADER_LEN < len(data) <= datagram.MAX_REQUEST) or data[:1] != b"\x00":
        return None
    try:
        body = msgpack.unpackb(data[datagram.HEADER_LEN:], raw=False)
    except ValueError:
        return None
    if not (type(body) is list and len(body) == 2 and body[0] == "echo"
            and type(body[1]) is list and len(body[1]) == 2):
        return None
    return datagram.RESPONSE + data[1:datagram.HEADER_LEN] + pack(
        [list(PEER), type(body[1][1]).__name__]
    )


# --- strategies -----------------------------------------------------------------------------------

scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=20) | st.binary(max_size=24)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=4))
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=4) | st.binary(max_size=4), inner, max_size=3),
    max_leaves=8,
)
rpc_names = st.sampled_from(["echo", "boom", "ping", "rpc_echo", "__init__", "spawn", ""])
msg_ids = st.binary(min_size=20, max_size=20)


@st.composite
def request_bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["echo", "echo", "call", "value", "bytes", "deep", "padded"]))
    if kind == "echo":  # well-formed, with any argument values
        return pack(["echo", [draw(values), draw(values)]])
    if kind == "call":
        return pack([draw(rpc_names | st.text(max_size=8)), draw(st.lists(values, max_size=4))])
    if kind == "value":
        return pack(draw(values))
    if kind == "deep":  # right at and past msgpack's nesting limit (1024)
        return b"\x92\xa4echo" + b"\x91" * draw(st.sampled_from([1000, 1023, 1024, 1030])) + b"\xc0"
    if kind == "padded":  # a well-formed call just under or over the request size limit
        size = draw(st.sampled_from([datagram.MAX_REQUEST - 100, datagram.MAX_REQUEST + 100]))
        return pack(["echo", [SELF_ID, b"x" * (size - 60)]])
    return draw(st.binary(max_size=80))


datagrams = st.builds(
    lambda kind, mid, body: kind + mid + body,
    st.sampled_from([b"\x00", b"\x00", b"\x01", b"\x02", b"\xff"]),
    msg_ids,
    request_bodies(),
) | st.binary(max_size=40) | st.just(b"\x00" * (datagram.MAX_DATAGRAM + 1))


# --- properties -----------------------------------------------------------------------------------


@FUZZ
@given(packets=st.lists(datagrams, max_size=10), leaving=st.booleans())
def test_requests_are_answered_only_when_well_formed_and_never_raise(
    packets: list[bytes], leaving: bool
) -> None:
    """Any datagram: no exception; an answer only for a small, well-formed call of a known RPC.

    The answer goes to the sender, under the request's message id; an RPC
    that is not in the table (even an existing attribute such as
    ``spawn``), the wrong arity, an RPC that raises, malformed msgpack or a
    request over the size limit get nothing; a leaving node answers nothing.
    """
    proto, transport = endpoint()
    proto.leaving = leaving
    want = []
    for packet in packets:
        proto.datagram_received(packet, PEER)
        answer = None if leaving else expected_answer(packet)
        if answer is not None:
            want.append((answer, PEER))
    assert transport.sent == want
    assert proto._waiting == {}


@dataclass
class Asked:
    """A question we sent: where to, under which id, and what should come of it."""

    addr: Address
    msg_id: bytes
    future: asyncio.Future[Any]
    expect: tuple[bool, Any] | None = None


@FUZZ
@given(
    n_asked=st.integers(1, 4),
    script=st.lists(
        st.tuples(
            st.sampled_from(["asked", "asked", "unknown"]),  # whose message id
            st.sampled_from(["right", "right", "wrong-host", "wrong-port"]),  # from where
            st.sampled_from([b"\x01", b"\x01", b"\x00"]),  # answer or request kind
            values.map(pack) | st.binary(max_size=30),  # body
            st.integers(0, 3),  # which question
        ),
        max_size=12,
    ),
)
def test_answers_are_accepted_only_for_our_questions_from_where_they_went(
    n_asked: int, script: list[tuple[str, str, bytes, bytes, int]]
) -> None:
    """Each question resolves once, with the first decodable answer from its address.

    Answers from another host or port, answers with ids we never used, and
    undecodable answers leave the question waiting; whatever is still
    waiting at the end resolves ``(False, None)`` when the node stops.
    """

    async def main() -> None:
        proto, transport = endpoint()
        asked = []
        for i in range(n_asked):
            addr = ("127.0.0.1", 5000 + i)
            fut = proto.request(addr, "echo", SELF_ID, i)
            packet, to = transport.sent[-1]
            assert to == addr
            assert packet[:1] == datagram.REQUEST
            asked.append(Asked(addr, packet[1:datagram.HEADER_LEN], fut))
        transport.sent.clear()
        for whose, where, kind, body, which in script:
            q = asked[which % n_asked]
            mid = q.msg_id if whose == "asked" else os.urandom(20)
            host, port = q.addr
            addr = {"right": q.addr, "wrong-host": ("127.0.0.2", port),
                    "wrong-port": (host, port + 100)}[where]
            proto.datagram_received(kind + mid + body, addr)
            if whose == "asked" and where == "right" and kind == b"\x01" and q.expect is None:
                with contextlib.suppress(ValueError):  # undecodable: still waiting
                    q.expect = (True, msgpack.unpackb(body, raw=False))
        for q in asked:
            if q.expect is None:
                assert not q.future.done()
        proto.cancel_tasks()
        for q in asked:
            ok, value = q.future.result()
            if q.expect is None:
                assert (ok, value) == (False, None)
            else:
                assert ok is True
                assert pack(value) == pack(q.expect[1])
        # The kind-0 packets of the script are requests: anything sent is an answer to one.
        assert all(p[:1] == datagram.RESPONSE for p, _ in transport.sent)

    asyncio.run(main())


contact_like = st.one_of(
    st.tuples(
        st.binary(min_size=20, max_size=20) | st.just(SELF_ID) | st.binary(max_size=24),
        st.sampled_from(["10.0.0.1", "127.0.0.1", "::1", ""]) | st.text(max_size=6),
        st.integers(-1, 70000) | st.sampled_from([0, 1, 65535, 65536]) | values,
    ).map(list),
    values,
)


@FUZZ
@given(raw=st.lists(contact_like, max_size=50))
def test_contact_lists_parse_to_well_typed_contacts_and_never_raise(raw: list[Any]) -> None:
    """A peer's list of contacts gives contacts a lookup can use, never an exception.

    Each: a 20-byte id that is not ours, a str host, a port from 1 to 65535;
    at most 40 of them (two k-buckets), whatever the peer sent.
    """
    nodes = _contacts(raw, SELF_ID)
    assert len(nodes) <= 40
    for c in nodes:
        assert isinstance(c, Contact)
        assert type(c.id) is bytes
        assert len(c.id) == 20
        assert c.id != SELF_ID
        assert isinstance(c.ip, str)
        assert isinstance(c.port, int)
        assert 0 < c.port < 65536


@FUZZ
@given(
    seeds=st.lists(st.binary(min_size=20, max_size=20), min_size=1, max_size=10),
    script=st.lists(
        st.tuples(
            st.sampled_from(["answer", "answer", "answer", "fail", "stray", "self", "expire"]),
            st.lists(contact_like, max_size=8),
            st.integers(0, 50),
        ),
        max_size=60,
    ),
)
def test_a_lookup_fed_hostile_answers_stays_in_budget_and_ends(
    seeds: list[bytes], script: list[tuple[str, list[Any], int]]
) -> None:
    """Whatever the peers answer, a lookup asks each node once, within alpha and its budget.

    Answers name parsed-but-hostile contacts (ourselves, duplicates, the
    node answering); strays answer for nodes never asked.  Each contact is
    queried at most once, never ourselves, never more than ``alpha`` at a
    time or ``max_queries`` in all; ``closest`` are answered nodes, closest
    first; and once every query is answered or failed, the lookup is done.
    """
    target = b"\x7f" * 20
    lookup = Lookup(target, [Contact(s, "10.0.0.1", 4000) for s in seeds], want=4, alpha=3,
                    max_queries=16, self_id=SELF_ID)
    queried: list[bytes] = []
    pending: list[bytes] = []
    now = 0.0
    for what, raw, pick in script:
        now += 0.01
        batch = lookup.to_query(now)
        assert lookup._active() <= 3  # white box: queries in flight and not yet stale
        queried += [c.id for c in batch]
        pending += [c.id for c in batch]
        if what == "expire":
            lookup.expire(now, 0.02)
            continue
        nodes = _contacts(raw, SELF_ID)
        if what == "stray":
            lookup.answered(os.urandom(20), nodes)
        elif what == "self":
            lookup.answered(SELF_ID, nodes)
        elif pending:
            node = pending.pop(pick % len(pending))
            if what == "answer":
                lookup.answered(node, nodes)
            else:
                lookup.failed(node)
    assert len(queried) == len(set(queried)), "a node was asked twice"
    assert SELF_ID not in queried
    assert lookup.queries == len(queried) <= 16
    # Drain: fail everything still in flight until nothing more is asked.
    for _ in range(20):
        for node in pending:
            lookup.failed(node)
        pending = [c.id for c in lookup.to_query(now)]
        if not pending:
            break
    assert lookup.done
    closest = lookup.closest()
    assert len(closest) <= 4
    distances = [int.from_bytes(c.id, "big") ^ int.from_bytes(target, "big") for c in closest]
    assert distances == sorted(distances)


# --- found by these fuzzers -----------------------------------------------------------------------


@pytest.mark.parametrize("host", ["a\0b", "\0", "é" * 70])
def test_contacts_from_an_answer_have_ip_literal_hosts(host: str) -> None:
    """``find_node`` answer ``[[id, "a\\0b", 4000]]``: the contact must be dropped."""
    assert _contacts([[b"\x02" * 20, host, 4000]], SELF_ID) == []


def test_a_query_to_a_bad_address_does_not_close_the_udp_socket() -> None:
    """A real UDP socket on 127.0.0.1 (nothing is sent: the address fails to parse).

    With the contact above, one hostile ``find_node`` answer during any
    lookup leaves the node deaf on the DHT until it restarts.
    """

    async def main() -> bool:
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_datagram_endpoint(
            lambda: DatagramRpc(Node(SELF_ID), ForgetfulStorage(), 20, 1.0),
            local_addr=("127.0.0.1", 0),
        )
        try:
            fut = proto.request(("a\0b", 4000), "ping", SELF_ID)
            await asyncio.sleep(0)
            still_open: bool = proto.open
            proto.cancel_tasks()
            assert fut.done()
            return still_open
        finally:
            transport.close()

    assert asyncio.run(main())
