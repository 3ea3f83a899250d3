"""Strangers on the DHT's UDP port: amplification, spoofed ids, forged and replayed records.

Real UDP sockets on loopback addresses; the DHT nodes run in this process so
the tests can look into their tables and stores.  A "stranger" is a bare
socket speaking the DHT's wire format (rpcudp's: a kind byte, a 20-byte
message id, msgpack), sometimes bound to another loopback address
(127.0.0.66) so that it is a different source from the honest nodes.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import msgpack
import pytest
from kademlia.node import Node

from dhtshare.core.identity import Identity
from dhtshare.core.ids import dht_key
from dhtshare.core.providers import (
    MAX_DHT_BITFIELD,
    Announcement,
    ProviderRecord,
    SignedAnnouncement,
    Withdrawal,
)
from dhtshare.net.dht import datagram
from dhtshare.net.dht.client import PROVIDERS_NS, Dht
from dhtshare.net.dht.kad import AMPLIFICATION, MAX_ANSWER, PADDED_REQUEST
from tests.conftest import LOOPBACK, free_port

pytestmark = pytest.mark.timeout(60)

RPC_TIMEOUT = 0.5
STRANGER = "127.0.0.66"


class Net:
    def __init__(self) -> None:
        self.nodes: list[tuple[Dht, int]] = []

    async def add(self, join: bool = True) -> tuple[Dht, int]:
        for _ in range(20):
            port = free_port()
            dht = Dht(Identity.generate(), timeout=RPC_TIMEOUT)
            try:
                await dht.listen(LOOPBACK, port)
            except OSError:
                dht.stop()
                continue
            if join and self.nodes:
                assert await asyncio.wait_for(dht.bootstrap([(LOOPBACK, self.nodes[0][1])]), 10)
            self.nodes.append((dht, port))
            return dht, port
        raise RuntimeError("no free port for a DHT node")

    def close(self) -> None:
        for dht, _ in self.nodes:
            dht.stop()


@pytest.fixture
async def net() -> AsyncIterator[Net]:
    n = Net()
    try:
        yield n
    finally:
        n.close()
        for _ in range(3):
            await asyncio.sleep(0)


class Stranger:
    """A bare UDP socket that sends DHT requests and reads the answers."""

    def __init__(self, host: str = LOOPBACK) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.setblocking(False)
        self.addr: tuple[str, int] = self.sock.getsockname()
        self.id = os.urandom(20)

    def close(self) -> None:
        self.sock.close()

    @staticmethod
    def packet(name: str, args: list[Any]) -> bytes:
        return datagram.REQUEST + os.urandom(20) + msgpack.packb([name, args], use_bin_type=True)

    def send(self, port: int, name: str, args: list[Any]) -> bytes:
        packet = self.packet(name, args)
        self.sock.sendto(packet, (LOOPBACK, port))
        return packet

    async def ask_raw(self, port: int, packet: bytes, wait: float = 1.0) -> bytes | None:
        """Send ``packet``; the raw answer to it (``None`` if none came)."""
        loop = asyncio.get_running_loop()
        self.sock.sendto(packet, (LOOPBACK, port))
        try:
            async with asyncio.timeout(wait):
                while True:
                    data: bytes = await loop.sock_recv(self.sock, 65536)
                    if data[:1] == datagram.RESPONSE and data[1:21] == packet[1:21]:
                        return data
        except TimeoutError:
            return None

    async def ask(self, port: int, name: str, args: list[Any], wait: float = 1.0) -> Any:
        data = await self.ask_raw(port, self.packet(name, args), wait)
        return None if data is None else msgpack.unpackb(data[21:], raw=False)


@pytest.fixture
def stranger() -> Any:
    s = Stranger(STRANGER)
    try:
        yield s
    finally:
        s.close()


def signed_wire(me: Identity, key: bytes, port: int, issued: float | None = None,
                bitfield: bytes = b"", ttl: float = 600) -> list[Any]:
    issued_ms = int((time.time() if issued is None else issued) * 1000)
    complete = not bitfield
    return SignedAnnouncement.make(me, key, Announcement(port, ttl, complete, bitfield),
                                   issued_ms).to_wire()


def fill_store(dht: Dht, key: bytes, n: int, bitfield: bytes = b"") -> list[Identity]:
    """``n`` valid records of ``key`` at ``dht``, each from a source of its own."""
    people = [Identity.generate() for _ in range(n)]
    now = int(time.time() * 1000)
    for i, me in enumerate(people):
        ann = SignedAnnouncement.make(me, key, Announcement(7000 + i, 3600, not bitfield,
                                                            bitfield), now)
        host = f"10.0.{i // 250}.{i % 250 + 1}"
        assert dht.providers.add(key, ann, host, host)
    return people


def fill_table(dht: Dht, n: int = 20) -> None:
    """``n`` contacts in ``dht``'s routing table (at addresses where nobody answers)."""
    for i in range(n):
        dht.protocol.router.touch(Node(os.urandom(20), "10.77.0.1", 20000 + i))


# --- amplification ------------------------------------------------------------------------


async def test_get_providers_answers_a_stranger_within_three_times_its_request(
    net: Net, stranger: Stranger
) -> None:
    """Before this rule an 81-byte get_providers drew 18,660 bytes (230x) from a node
    holding 64 records with bitfields; now a stranger without a token gets at most
    3x its request's bytes, however much the node holds."""
    holder, port = await net.add()
    h = os.urandom(32)
    key = dht_key(PROVIDERS_NS, h)
    fill_store(holder, key, 64, b"\xff" * MAX_DHT_BITFIELD)
    fill_table(holder)

    request = stranger.packet("get_providers", [stranger.id, key])
    assert len(request) == 81
    raw = await stranger.ask_raw(port, request)
    assert raw is not None
    ratio = len(raw) / len(request)
    print(f"stranger without a token: {len(request)} B asked, {len(raw)} B answered "
          f"({ratio:.2f}x)")
    assert ratio <= AMPLIFICATION
    records, nodes, token, truncated, public_key = msgpack.unpackb(raw[21:], raw=False)
    assert (records, truncated, public_key) == ([], True, holder.identity.public_key)
    assert isinstance(token, bytes)
    assert nodes, "the closest contacts that fit still come"

    # A padded request may get three times as much back; still truncated here.
    padded = stranger.packet("get_providers", [stranger.id, key, None,
                                               bytes(PADDED_REQUEST - 85)])
    assert len(padded) == PADDED_REQUEST
    raw = await stranger.ask_raw(port, padded)
    assert raw is not None
    assert len(raw) <= AMPLIFICATION * len(padded)
    assert len(msgpack.unpackb(raw[21:], raw=False)[1]) == 20

    # With the token for its address the asker gets the full answer (up to MAX_ANSWER).
    with_token = stranger.packet("get_providers", [stranger.id, key, token])
    raw = await stranger.ask_raw(port, with_token)
    assert raw is not None
    records, nodes, _, truncated, _ = msgpack.unpackb(raw[21:], raw=False)
    assert truncated is False
    assert len(nodes) == 20
    assert len(raw) <= MAX_ANSWER
    assert len(records) >= 20
    print(f"with a token: {len(records)} records, {len(raw)} B")

    # A token is bound to the address it was given to.
    other = Stranger(LOOPBACK)
    try:
        answer = await other.ask(port, "get_providers", [other.id, key, token])
        assert answer[3] is True
    finally:
        other.close()


async def test_a_lookup_asks_again_with_the_token_and_gets_every_record(net: Net) -> None:
    holder, _ = await net.add()
    asker, _ = await net.add()
    h = os.urandom(32)
    key = dht_key(PROVIDERS_NS, h)
    people = fill_store(holder, key, 64)
    fill_table(holder)
    result = await asyncio.wait_for(asker.lookup_providers(h), 10)
    assert set(result.records) == {p.node_id for p in people}
    assert all(r.verify(key) for r in result.records.values())
    # The token was kept: the next lookup needs no second request.
    assert asker.protocol.token_for(holder.protocol.transport.get_extra_info("sockname"))


async def test_other_answers_to_strangers_stay_small(net: Net, stranger: Stranger) -> None:
    _, port = await net.add()
    for name, args in (("ping", [stranger.id]),
                       ("ping", [stranger.id, os.urandom(16)]),
                       ("add_provider", [stranger.id, os.urandom(20), b"x" * 8, []]),
                       ("remove_provider", [stranger.id, os.urandom(20), b"x" * 8, []])):
        request = stranger.packet(name, args)
        raw = await stranger.ask_raw(port, request)
        assert raw is not None
        assert len(raw) <= AMPLIFICATION * len(request), name


# --- ids and addresses --------------------------------------------------------------------


def contact_of(dht: Dht, node_id: bytes) -> tuple[str, int] | None:
    for nid, ip, port in dht.contacts():
        if nid == node_id:
            return (ip, port)
    return None


async def test_a_spoofed_ping_does_not_move_a_live_contact(net: Net, stranger: Stranger) -> None:
    a, _ = await net.add()
    b, b_port = await net.add()
    a_port = net.nodes[0][1]
    assert contact_of(a, b.node_id) == (LOOPBACK, b_port)

    # The stranger claims b's id: a keeps b where it was (and checks b is alive).
    assert await stranger.ask(a_port, "ping", [b.node_id]) == a.node_id
    await asyncio.sleep(0.1)
    assert contact_of(a, b.node_id) == (LOOPBACK, b_port)
    await asyncio.sleep(RPC_TIMEOUT * 1.5)  # b answered the check: still there
    assert contact_of(a, b.node_id) == (LOOPBACK, b_port)
    assert stranger.addr not in {(ip, port) for _, ip, port in a.contacts()}

    # Once b is gone, the check fails and b's id is free again.
    b.stop()
    await asyncio.sleep(0)
    a.protocol._checked.clear()  # not the 10 s wait between checks
    await stranger.ask(a_port, "ping", [b.node_id])
    for _ in range(40):
        if contact_of(a, b.node_id) is None:
            break
        await asyncio.sleep(0.05)
    assert contact_of(a, b.node_id) is None
    await stranger.ask(a_port, "ping", [b.node_id])
    assert contact_of(a, b.node_id) == stranger.addr


async def test_one_address_is_one_contact(net: Net, stranger: Stranger) -> None:
    """A sender cannot fill a table with ids of its own making from one address."""
    a, a_port = await net.add()
    for _ in range(200):
        stranger.send(a_port, "ping", [os.urandom(20)])
    await asyncio.sleep(0.2)
    assert sum(1 for _, ip, port in a.contacts() if (ip, port) == stranger.addr) == 1


async def test_join_needs_a_peer_that_proves_its_id(net: Net) -> None:
    """A peer answering a join's ping with another node's id (and no valid signature)
    is not taken in."""
    victim, _ = await net.add()
    impostor = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    impostor.bind((LOOPBACK, 0))
    impostor.setblocking(False)
    loop = asyncio.get_running_loop()

    async def answer_pings() -> None:
        while True:
            data, addr = await loop.sock_recvfrom(impostor, 65536)
            body = msgpack.unpackb(data[21:], raw=False)
            nonce = body[1][1] if len(body[1]) > 1 else b""
            lie = [victim.node_id, victim.identity.public_key, os.urandom(64)] if nonce \
                else victim.node_id
            impostor.sendto(b"\x01" + data[1:21] + msgpack.packb(lie, use_bin_type=True), addr)

    server = asyncio.ensure_future(answer_pings())
    try:
        newcomer, _ = await net.add(join=False)
        answered = await asyncio.wait_for(
            newcomer.bootstrap([(LOOPBACK, impostor.getsockname()[1])]), 10)
        assert answered == 0
        assert newcomer.contacts() == []
        # The real one proves it.
        assert await asyncio.wait_for(newcomer.bootstrap([(LOOPBACK, net.nodes[0][1])]), 10)
        assert contact_of(newcomer, victim.node_id) == (LOOPBACK, net.nodes[0][1])
    finally:
        server.cancel()
        impostor.close()


async def test_an_answer_with_someone_elses_key_is_not_used(net: Net) -> None:
    asker, _ = await net.add()
    liar = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    liar.bind((LOOPBACK, 0))
    liar.setblocking(False)
    loop = asyncio.get_running_loop()
    claimed = os.urandom(20)
    key = os.urandom(20)
    people = Identity.generate()
    record = ProviderRecord(people.node_id, LOOPBACK, 7000, 60, True)

    async def answer() -> None:
        while True:
            data, addr = await loop.sock_recvfrom(liar, 65536)
            reply = [[record.to_wire()], [], b"t" * 8, False, Identity.generate().public_key]
            liar.sendto(b"\x01" + data[1:21] + msgpack.packb(reply, use_bin_type=True), addr)

    server = asyncio.ensure_future(answer())
    try:
        node = Node(claimed, LOOPBACK, liar.getsockname()[1])
        asker.protocol.router.touch(node)
        ok, _ = await asyncio.wait_for(asker.protocol.call_get_providers(node, key), 5)
        assert not ok
        assert contact_of(asker, claimed) is None
        assert not asker.is_dead(("127.0.0.1", node.port))  # disowned, not shunned
    finally:
        server.cancel()
        liar.close()


# --- records ------------------------------------------------------------------------------


async def token_of(s: Stranger, port: int, key: bytes) -> bytes:
    answer = await s.ask(port, "get_providers", [s.id, key])
    token: bytes = answer[2]
    return token


async def test_the_advertised_host_is_not_taken_from_strangers(
    net: Net, stranger: Stranger
) -> None:
    """A record points where its announcement came from: no reflecting fetchers elsewhere."""
    holder, port = await net.add()
    me = Identity.generate()
    key = os.urandom(20)
    token = await token_of(stranger, port, key)
    wire = signed_wire(me, key, 7000)
    wire[1] = "198.51.100.7"  # advertise: somebody else's host
    assert await stranger.ask(port, "add_provider", [me.node_id, key, token, wire]) is True
    (rec,) = holder.providers.get(key)
    assert rec.host == STRANGER
    # A node's own record keeps its --advertise host (for those asking it directly).
    own, own_port = await net.add()
    h = os.urandom(32)
    assert await own.announce(h, Announcement(own_port, 600, True, b"", "192.0.2.5")) >= 1
    ((mine),) = own.providers.get(dht_key(PROVIDERS_NS, h))
    assert mine.host == "192.0.2.5"
    (theirs,) = [r for r in holder.providers.get(dht_key(PROVIDERS_NS, h))]
    assert theirs.host == LOOPBACK


async def test_a_replayed_record_cannot_take_over_and_an_old_withdrawal_cannot_remove(
    net: Net, stranger: Stranger
) -> None:
    holder, port = await net.add()
    provider, provider_port = await net.add()
    h = os.urandom(32)
    key = dht_key(PROVIDERS_NS, h)
    bye = Withdrawal.make(provider.identity, key, int(time.time() * 1000) - 5).to_wire()
    assert await provider.announce(h, Announcement(provider_port, 600, True)) >= 1
    (honest,) = holder.providers.get(key)
    # The stranger replays the provider's signed record from its own address.
    token = await token_of(stranger, port, key)
    wire = [honest.port, None, honest.signed_ttl, honest.complete, honest.bitfield,
            honest.issued_at, honest.public_key, honest.signature]
    assert await stranger.ask(port, "add_provider", [provider.node_id, key, token, wire]) is False
    assert holder.providers.get(key)[0].host == LOOPBACK
    # ... or a withdrawal signed before the record.
    assert await stranger.ask(port, "remove_provider",
                              [provider.node_id, key, token, bye]) is False
    assert len(holder.providers.get(key)) == 1
    # The provider's own, newer withdrawal works.
    assert await provider.withdraw(h) >= 1
    assert holder.providers.get(key) == []


@pytest.mark.parametrize("skew", [-600.0, 600.0])
async def test_a_provider_whose_clock_is_ten_minutes_off_is_stored_and_found(
    net: Net, skew: float
) -> None:
    holder, port = await net.add()
    asker, _ = await net.add()
    me = Identity.generate()
    h = os.urandom(32)
    key = dht_key(PROVIDERS_NS, h)
    s = Stranger(LOOPBACK)
    try:
        token = await token_of(s, port, key)
        wire = signed_wire(me, key, 7000, issued=time.time() + skew, ttl=1800)
        assert await s.ask(port, "add_provider", [me.node_id, key, token, wire]) is True
    finally:
        s.close()
    (rec,) = holder.providers.get(key)
    assert rec.ttl == pytest.approx(1800, abs=2)  # its whole ttl, by the holder's clock
    found = await asyncio.wait_for(asker.find_providers(h), 10)
    assert [r.node_id for r in found] == [me.node_id]


async def test_a_holder_cannot_forge_records(net: Net) -> None:
    """A record altered or made up by the node that returns it is dropped by the asker."""
    holder, _ = await net.add()
    liar, _ = await net.add()
    asker, _ = await net.add()
    h = os.urandom(32)
    key = dht_key(PROVIDERS_NS, h)
    honest = Identity.generate()
    now = int(time.time() * 1000)
    good = SignedAnnouncement.make(honest, key, Announcement(7000, 600, True), now)
    assert holder.providers.add(key, good, "10.0.0.1", "10.0.0.1")
    # The liar's store is poked directly: a lying holder skips its own checks.  It
    # holds the honest record with another port (the same signature) and one made up.
    assert liar.providers.add(key, replace(good, port=9999), "10.0.0.1", "10.0.0.1")
    victim = Identity.generate()
    forged = replace(SignedAnnouncement.make(victim, key, Announcement(7001, 600, True), now),
                     port=9998)
    assert liar.providers.add(key, forged, "10.0.0.2", "10.0.0.2")
    for _ in range(2):  # and again, once the good record is known to be good
        found = await asyncio.wait_for(asker.find_providers(h), 10)
        assert [(r.node_id, r.port) for r in found] == [(honest.node_id, 7000)]


async def test_add_provider_checks_the_signature_before_storing(
    net: Net, stranger: Stranger
) -> None:
    holder, port = await net.add()
    me, other = Identity.generate(), Identity.generate()
    key = os.urandom(20)
    token = await token_of(stranger, port, key)
    wire = signed_wire(me, key, 7000)
    bad_sig = list(wire)
    bad_sig[7] = bytes(64)
    stale = signed_wire(me, key, 7000, issued=time.time() - 30 * 24 * 3600)
    for args in ([other.node_id, key, token, wire],  # someone else's id
                 [me.node_id, os.urandom(20), token, wire],  # signed for another key
                 [me.node_id, key, token, bad_sig],
                 [me.node_id, key, token, stale]):
        assert await stranger.ask(port, "add_provider", args) is False
    assert len(holder.providers) == 0
    assert await stranger.ask(port, "add_provider", [me.node_id, key, token, wire]) is True
