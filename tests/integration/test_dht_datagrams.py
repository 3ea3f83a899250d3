"""Datagrams a node should not spend CPU on are dropped before they are decoded.

The DHT shares its event loop with every transfer; a stranger sending 64 KiB
msgpack datagrams, or "answers" to questions nobody asked, must not make the
node decode them.  Real UDP sockets on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest

from dhtshare.core.identity import Identity
from dhtshare.core.ids import NODE_ID_LEN
from dhtshare.net.dht import datagram
from dhtshare.net.dht.client import Dht
from tests.conftest import LOOPBACK, free_port

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def node() -> AsyncIterator[tuple[Dht, int]]:
    for _ in range(20):
        port = free_port()
        dht = Dht(Identity.generate(), timeout=1.0)
        try:
            await dht.listen(LOOPBACK, port)
        except OSError:
            dht.stop()
            continue
        try:
            yield dht, port
        finally:
            dht.stop()
            await asyncio.sleep(0)
        return
    raise RuntimeError("no free port")


def request(name: str, args: list[Any], pad: int = 0) -> tuple[bytes, bytes]:
    msg_id = os.urandom(20)
    body = msgpack.packb([name, [*args, b"x" * pad] if pad else args], use_bin_type=True)
    return msg_id, datagram.REQUEST + msg_id + body


async def ask(port: int, packet: bytes, wait: float = 0.5) -> bytes | None:
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOPBACK, 0))
        s.setblocking(False)
        s.sendto(packet, (LOOPBACK, port))
        try:
            async with asyncio.timeout(wait):
                data: bytes = await loop.sock_recv(s, 65536)
                return data
        except TimeoutError:
            return None


async def test_small_requests_are_answered(node: tuple[Dht, int]) -> None:
    _, port = node
    msg_id, packet = request("ping", [os.urandom(NODE_ID_LEN)])
    reply = await ask(port, packet)
    assert reply is not None
    assert reply[:21] == datagram.RESPONSE + msg_id


async def test_oversized_requests_and_unasked_answers_are_not_decoded(
    node: tuple[Dht, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, port = node
    decoded: list[int] = []
    real = msgpack.unpackb

    def counting(data: Any, **kw: Any) -> Any:
        decoded.append(len(data))
        return real(data, **kw)

    monkeypatch.setattr(datagram.msgpack, "unpackb", counting)
    _, big = request("ping", [os.urandom(NODE_ID_LEN)], pad=datagram.MAX_REQUEST)
    assert await ask(port, big, wait=0.3) is None
    unasked = datagram.RESPONSE + os.urandom(20) + msgpack.packb([True, b"y" * 30_000])
    assert await ask(port, unasked, wait=0.3) is None
    assert decoded == []
    # ...and the node still answers what it should.
    msg_id, packet = request("ping", [os.urandom(NODE_ID_LEN)])
    reply = await ask(port, packet)
    assert reply is not None
    assert reply[:21] == datagram.RESPONSE + msg_id
    assert len(decoded) == 1
