"""Two peer-protocol connections over a real loopback socket, in process."""

from __future__ import annotations

import asyncio
import os

import pytest

from dhtshare.net.transport import Connection, connect, make_hello
from tests.conftest import LOOPBACK

pytestmark = pytest.mark.timeout(30)


async def test_bye_tells_the_peer_we_are_leaving() -> None:
    closed: asyncio.Queue[Connection] = asyncio.Queue()
    hello_a = make_hello(os.urandom(20), 1)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Connection(hello_a, None, closed.put_nowait), LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = await connect(LOOPBACK, port, make_hello(os.urandom(20), 2), None, 5)
        client.say_bye("upgrading")
        accepted = await asyncio.wait_for(closed.get(), 10)
        assert accepted.farewell == "upgrading"
        assert accepted.close_reason is not None
        assert "left the network" in accepted.close_reason
        await asyncio.wait_for(client.wait_closed(), 10)
        assert client.farewell is None  # it was the one leaving
    finally:
        server.close()
        await server.wait_closed()
