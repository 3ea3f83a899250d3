"""The encrypted link, in memory: the Noise handshake, AES-GCM records, and a session on each end.

What a passive observer sees (no plaintext), what an active one can do (nothing
but break the link: tampered, replayed, reordered or spliced records fail), and
who the peer is (its key proves its node id; a dialer refuses anyone but the
node it meant).  The same codec runs between real processes in
``tests/integration/test_link_security.py``.
"""

from __future__ import annotations

import contextlib
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dhtshare.config import PROTOCOL_VERSION
from dhtshare.core import messages as m
from dhtshare.core.handshake import IK, XX, Handshake, LinkKeys, LinkSecurity
from dhtshare.core.identity import Identity
from dhtshare.core.ids import HASH_LEN
from dhtshare.core.records import OVERHEAD, RECORD_MAX, SecureCodec
from dhtshare.core.session import (
    Event,
    HandshakeDone,
    Request,
    Response,
    Session,
    State,
)
from dhtshare.errors import LocalProtocolError, RemoteProtocolError

H = b"h" * HASH_LEN
ALICE, BOB, MALLORY = (Identity.generate() for _ in range(3))


def hello_of(identity: Identity, port: int = 1) -> m.Hello:
    return m.Hello(PROTOCOL_VERSION, identity.node_id, port, "test")


def joined(wire: tuple[object, ...] | list[object]) -> bytes:
    return b"".join(bytes(p) for p in wire)  # type: ignore[call-overload]


def drain(session: Session) -> list[Event]:
    out: list[Event] = []
    while (event := session.next_event()) is not None:
        out.append(event)
    return out


class Link:
    """A dialer and a responder session with encrypted codecs, joined in memory.

    Everything either side writes is kept in :attr:`seen` (what a passive
    observer of the wire would get) and delivered to the other, in pieces of
    ``split`` bytes when given, so record and message boundaries never matter.
    """

    def __init__(
        self,
        dialer: Identity = ALICE,
        responder: Identity = BOB,
        claimed: m.Hello | None = None,
        expect: bytes | None = None,
        dialer_link: LinkSecurity | None = None,
        rekey_every: int = 1 << 20,
        split: int | None = None,
    ) -> None:
        self.dialer_link = dialer_link or LinkSecurity(dialer)
        self.responder_link = LinkSecurity(responder)
        self.a = Session(
            claimed or hello_of(dialer), True, codec=SecureCodec(
                self.dialer_link.handshake(True, expect), on_secure=self.dialer_link.learn,
                rekey_every=rekey_every),
            expect=expect,
        )
        self.b = Session(hello_of(responder, 2), True, codec=SecureCodec(
            self.responder_link.handshake(False), rekey_every=rekey_every))
        self.seen = bytearray()
        self.split = split
        self.events: dict[int, list[Event]] = {id(self.a): [], id(self.b): []}

    def other(self, side: Session) -> Session:
        return self.b if side is self.a else self.a

    def deliver(self, sender: Session, wire: tuple[object, ...]) -> list[Event]:
        """Feed ``wire`` to the other side, and whatever that makes it answer back, until quiet."""
        pending: list[tuple[Session, bytes]] = [(sender, joined(wire))]
        got: list[Event] = []
        for _ in range(16):  # a handshake is three messages; replies settle long before
            if not pending:
                break
            src, data = pending.pop(0)
            self.seen += data
            dst = self.other(src)
            step = self.split or max(1, len(data))
            for i in range(0, len(data), step):
                dst.receive_data(data[i : i + step])
            evs = drain(dst)
            if dst is self.other(sender):
                got += evs
            else:
                self.events[id(dst)] += evs
            reply = joined(dst.data_to_send())
            if reply:
                pending.append((dst, reply))
        return got

    def open(self) -> tuple[list[Event], list[Event]]:
        """Both start; returns what the dialer and the responder saw."""
        wire_b = self.b.start()
        assert joined(wire_b) == b""  # the responder waits for the dialer's first message
        at_b = self.deliver(self.a, self.a.start())
        return self.events[id(self.a)], at_b


def test_handshake_then_requests_and_answers_flow_encrypted() -> None:
    link = Link()
    at_a, at_b = link.open()
    assert at_a == [HandshakeDone(hello_of(BOB, 2))]
    assert at_b == [HandshakeDone(hello_of(ALICE))]
    assert link.a.peer_key == BOB.public_key
    assert link.b.peer_key == ALICE.public_key
    assert link.a.state is link.b.state is State.OPEN
    assert link.deliver(link.a, link.a.start_request(m.GetManifest(1, H))) == [
        Request(m.GetManifest(1, H), b"")
    ]
    secret = b"a secret chunk " * 10_000  # 150 KB: three records
    events = link.deliver(link.b, link.b.send(m.Data(1), secret))
    assert events == [Response(m.Data(1), secret)]
    # A passive observer saw none of it: not the payload, the hash, or the agent string.
    assert b"a secret chunk" not in link.seen
    assert H not in link.seen
    assert b"test" not in link.seen


@pytest.mark.parametrize("split", [1, 7, 4096, RECORD_MAX + OVERHEAD - 1])
def test_any_split_of_the_stream_gives_the_same_events(split: int) -> None:
    link = Link(split=split)
    link.open()
    link.deliver(link.a, link.a.start_request(m.GetManifest(1, H)))
    body = random.Random(split).randbytes(3 * RECORD_MAX + 5)
    assert link.deliver(link.b, link.b.send(m.Data(1), body)) == [Response(m.Data(1), body)]


def test_a_dialer_that_met_the_node_before_opens_with_ik() -> None:
    first = Link()
    first.open()
    again = Link(dialer_link=first.dialer_link, expect=BOB.node_id)
    at_a, at_b = again.open()
    assert at_a
    assert at_b
    assert again.a.codec._hs.pattern == IK  # type: ignore[attr-defined]
    assert first.a.codec._hs.pattern == XX  # type: ignore[attr-defined]


def test_a_peer_whose_key_is_not_the_node_it_claims_is_refused() -> None:
    """Mallory holds her own key but says (in HELLO) she is Alice."""
    link = Link(dialer=MALLORY, claimed=hello_of(ALICE))
    with pytest.raises(RemoteProtocolError, match="its key belongs to node"):
        link.open()
    assert link.b.state is State.BROKEN


def test_a_dialer_refuses_a_responder_that_is_not_the_node_it_meant() -> None:
    """The record said Bob is there; Mallory answered (with her own, valid key)."""
    link = Link(responder=MALLORY, expect=BOB.node_id)
    with pytest.raises(RemoteProtocolError, match=r"not node .* that we meant to reach"):
        link.open()
    assert link.a.peer_hello is None
    assert link.a.state is State.BROKEN


def test_ik_to_the_wrong_node_fails_the_handshake() -> None:
    """The dialer remembers Bob's static key, but Mallory is at the address."""
    first = Link()
    first.open()
    link = Link(responder=MALLORY, dialer_link=first.dialer_link, expect=BOB.node_id)
    with pytest.raises(RemoteProtocolError, match="handshake failed"):
        link.open()


def test_a_key_that_does_not_vouch_for_its_static_key_is_refused() -> None:
    """A stolen proof (Bob's signature over Bob's static key) with Mallory's static key."""
    keys = LinkKeys.of(MALLORY)
    forged = LinkKeys(BOB.public_key, keys.static_private, keys.static_public,
                      LinkKeys.of(BOB).proof)
    dialer = Handshake(forged, True)
    responder = Handshake(LinkKeys.of(ALICE), False)
    msg2 = responder.receive(dialer.start()[2:])
    msg3 = dialer.receive(msg2[2:])
    with pytest.raises(RemoteProtocolError, match="does not vouch"):
        responder.receive(msg3[2:])


def opened_link() -> tuple[Link, bytes]:
    link = Link()
    link.open()
    link.deliver(link.a, link.a.start_request(m.GetManifest(1, H)))
    return link, joined(link.b.send(m.Data(1), b"payload" * 100))


def test_a_flipped_bit_breaks_the_link() -> None:
    link, wire = opened_link()
    tampered = bytearray(wire)
    tampered[len(tampered) // 2] ^= 1
    link.a.receive_data(bytes(tampered))
    with pytest.raises(RemoteProtocolError, match="failed authentication"):
        drain(link.a)


def test_a_replayed_record_breaks_the_link() -> None:
    link, wire = opened_link()
    link.a.receive_data(wire)
    assert drain(link.a) == [Response(m.Data(1), b"payload" * 100)]
    link.a.receive_data(wire)  # the same bytes again: its nonce is spent
    with pytest.raises(RemoteProtocolError, match="failed authentication"):
        drain(link.a)


def test_records_from_another_link_cannot_be_spliced_in() -> None:
    _one, wire = opened_link()
    two, _ = opened_link()
    two.a.receive_data(wire)
    with pytest.raises(RemoteProtocolError, match="failed authentication"):
        drain(two.a)


@pytest.mark.parametrize(
    "garbage",
    [b"GET / HTTP/1.1\r\n\r\n", b"\x00\x00", b"\xff\xff" + b"x" * 100, os.urandom(600)],
    ids=["http", "empty-message", "oversized", "random"],
)
def test_garbage_instead_of_a_handshake_breaks_the_link(garbage: bytes) -> None:
    session = Session(hello_of(BOB), True, codec=SecureCodec(LinkSecurity(BOB).handshake(False)))
    session.start()
    session.receive_data(garbage)
    with pytest.raises(RemoteProtocolError):
        drain(session)


def test_an_oversized_record_length_is_refused_before_it_is_buffered() -> None:
    link, _ = opened_link()
    link.a.receive_data((RECORD_MAX + 1).to_bytes(4, "big"))
    with pytest.raises(RemoteProtocolError, match="a record of"):
        drain(link.a)


def test_a_stranger_who_never_finishes_the_handshake_costs_little() -> None:
    codec = SecureCodec(LinkSecurity(BOB).handshake(False))
    assert len(codec.get_buffer()) < 4096


def test_keys_are_renewed_on_schedule_on_both_ends() -> None:
    link = Link(rekey_every=3)
    link.open()
    initial = link.b.codec._send.key  # type: ignore[attr-defined]
    for req in range(1, 8):
        link.deliver(link.a, link.a.start_request(m.GetManifest(req, H)))
        body = bytes([req]) * (RECORD_MAX + 10)  # two records each
        assert link.deliver(link.b, link.b.send(m.Data(req), body)) == [
            Response(m.Data(req), body)
        ]
    sent = link.b.codec._send  # type: ignore[attr-defined]
    assert sent.n >= 14  # four renewals at least, and every record still opened
    assert sent.key != initial
    assert sent.key == link.a.codec._recv.key  # type: ignore[attr-defined]


def test_a_reserved_body_keeps_its_place_in_the_stream() -> None:
    """A file's range is filled in later (in a thread); what was sent after it follows it."""
    link = Link()
    link.open()
    link.deliver(link.a, link.a.start_request(m.GetManifest(1, H)))
    link.deliver(link.a, link.a.start_request(m.GetManifest(2, H)))
    body = random.Random(3).randbytes(2 * RECORD_MAX + 17)
    sealed = link.b.reserve(m.Data(1), len(body))
    after = link.b.send(m.NotFound(2))  # sealed while the body is being read
    pos = 0
    for slot in sealed.slots():
        slot[:] = body[pos : pos + len(slot)]
        pos += len(slot)
    sealed.encrypt()
    wire = (bytes(sealed.wire), *after)
    assert link.deliver(link.b, wire) == [Response(m.Data(1), body), Response(m.NotFound(2), b"")]


def test_a_plain_link_has_no_reserve() -> None:
    session = Session(hello_of(BOB), True)
    with pytest.raises(LocalProtocolError):
        session.reserve(m.Data(1), 10)


@settings(max_examples=40, deadline=None)
@given(st.binary(min_size=1, max_size=3000), st.integers(1, 500))
def test_garbage_after_the_handshake_raises_only_protocol_errors(junk: bytes, split: int) -> None:
    link = Link()
    link.open()
    for i in range(0, len(junk), split):
        link.a.receive_data(junk[i : i + split])
    with contextlib.suppress(RemoteProtocolError):
        drain(link.a)
