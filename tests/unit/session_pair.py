"""Two sessions joined by an in-memory link (h11's ``tests/helpers.py::ConnectionPair``).

Whatever one side's ``send``/``start_request``/``cancel`` returns is fed to the
other's ``receive_data``, and the events that come out are returned, so a
test reads as a conversation.  No sockets, no loop: each step is a function call.
"""

from __future__ import annotations

from collections.abc import Iterable

from dhtshare.config import PROTOCOL_VERSION
from dhtshare.core import messages as m
from dhtshare.core.framing import encode_frame
from dhtshare.core.ids import HASH_LEN, NODE_ID_LEN
from dhtshare.core.session import (
    MAX_INCOMING_REQUESTS,
    Body,
    Event,
    HandshakeDone,
    RecordCodec,
    Session,
)

H = b"h" * HASH_LEN
HELLO_A = m.Hello(PROTOCOL_VERSION, b"a" * NODE_ID_LEN, 1001, "test-a")
HELLO_B = m.Hello(PROTOCOL_VERSION, b"b" * NODE_ID_LEN, 1002, "test-b")


def frame(msg: m.Message, body: bytes = b"") -> bytes:
    """``msg`` as one frame, built without a session (what a raw, maybe hostile, peer sends)."""
    return encode_frame(m.encode(msg), body or m.payload(msg))


def joined(wire: Iterable[Body]) -> bytes:
    return b"".join(bytes(piece) for piece in wire)


def events(session: Session) -> list[Event]:
    """Every event the session has ready (raises what ``next_event`` raises)."""
    out: list[Event] = []
    while (event := session.next_event()) is not None:
        out.append(event)
    return out


def receiver(waiting: Iterable[int] = (), codec: RecordCodec | None = None,
             max_incoming: int = MAX_INCOMING_REQUESTS) -> Session:
    """A session past the handshake, waiting for answers to ``waiting`` (GET_MANIFESTs)."""
    session = Session(HELLO_B, True, max_incoming, codec)
    session.start()
    session.receive_data(frame(HELLO_A))
    assert events(session) == [HandshakeDone(HELLO_A)]
    for rid in waiting:
        session.start_request(m.GetManifest(rid, H))
    return session


def opened(hello: m.Hello = HELLO_B, peer: m.Hello = HELLO_A, serves: bool = True,
           max_incoming: int = MAX_INCOMING_REQUESTS) -> Session:
    """A session whose handshake is done, its peer played by raw frames."""
    session = Session(hello, serves, max_incoming)
    session.start()
    session.receive_data(frame(peer))
    assert events(session) == [HandshakeDone(peer)]
    return session


class SessionPair:
    """Sessions ``a`` and ``b`` with a perfect link between them."""

    def __init__(
        self,
        a_serves: bool = True,
        b_serves: bool = True,
        max_incoming: int = MAX_INCOMING_REQUESTS,
        codecs: tuple[RecordCodec, RecordCodec] | None = None,
        handshake: bool = True,
    ) -> None:
        ca, cb = codecs if codecs is not None else (None, None)
        self.a = Session(HELLO_A, a_serves, max_incoming, ca)
        self.b = Session(HELLO_B, b_serves, max_incoming, cb)
        if handshake:
            assert self.handshake() == ([HandshakeDone(HELLO_B)], [HandshakeDone(HELLO_A)])

    def other(self, side: Session) -> Session:
        return self.b if side is self.a else self.a

    def deliver(self, sender: Session, wire: Iterable[Body]) -> list[Event]:
        """Feed ``wire`` (from ``sender``) to the other side; its events."""
        receiver = self.other(sender)
        for piece in wire:
            receiver.receive_data(piece)
        return events(receiver)

    def handshake(self) -> tuple[list[Event], list[Event]]:
        """Both sides start at once; the events each one saw."""
        wire_a, wire_b = self.a.start(), self.b.start()
        return self.deliver(self.b, wire_b), self.deliver(self.a, wire_a)

    def send(self, sender: Session, msg: m.Message, body: Body = b"") -> list[Event]:
        return self.deliver(sender, sender.send(msg, body))

    def request(self, sender: Session, msg: m.Message, body: Body = b"") -> list[Event]:
        return self.deliver(sender, sender.start_request(msg, body))
