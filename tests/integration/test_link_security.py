"""An impostor between real node processes: refused at the link, and the fetch goes on.

A holder of a file is killed; its provider record still names its node id at
its address.  An impostor takes that address and says, in its HELLO, that it
is that node, but it holds its own key (it cannot hold the dead node's).  A
fresh node fetching the file must refuse the impostor before asking it
anything, and complete from the honest holder that is left.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dhtshare.core import messages as m
from dhtshare.core.framing import Buffer
from dhtshare.core.handshake import LinkSecurity
from dhtshare.core.identity import Identity
from dhtshare.net.transport import Connection, make_hello
from tests.conftest import LOOPBACK, Cluster, fetch_json, make_file, publish, sha256_file

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


class Impostor:
    """A listener on ``port`` whose HELLO claims ``claimed`` but whose key is its own."""

    def __init__(self, port: int, claimed: bytes) -> None:
        self.port = port
        self.claimed = claimed
        self.requests: list[m.Message] = []
        self.links = 0
        self.conns: list[Connection] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def handle(self, conn: Connection, msg: m.Message, body: Buffer) -> None:
        self.requests.append(msg)  # it would answer anything; it must never be asked

    def closed(self, conn: Connection) -> None:
        pass

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        me = Identity.generate()
        link = LinkSecurity(me)
        hello = make_hello(self.claimed, self.port)  # the lie

        def accept() -> Connection:
            self.links += 1
            conn = Connection(hello, self, link=link, initiator=False)
            self.conns.append(conn)
            return conn

        server = await asyncio.get_running_loop().create_server(
            accept, LOOPBACK, self.port, reuse_address=True)
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        server.close()
        for conn in self.conns:
            conn.close()
        await server.wait_closed()
        await asyncio.sleep(0.05)

    def __enter__(self) -> Impostor:
        self._thread.start()
        assert self._ready.wait(10), "the impostor did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture
def network(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        c.start(4)
        yield c
    finally:
        c.stop_all()


def test_an_impostor_at_a_holders_address_is_refused_and_the_fetch_completes(
    network: Cluster, tmp_path: Path
) -> None:
    _boot, holder, mirror, fetcher = network.nodes
    src = make_file(tmp_path / "real.bin", 3 * 1024 * 1024 + 5, seed=9)
    h = publish(holder, src, "--replicas", "0", "--chunk-size", "256K")
    fetch_json(mirror, h, tmp_path / "mirror.bin")  # a second, honest holder
    victim_id = bytes.fromhex((holder.data_dir / "node_id").read_text().strip())
    holder.stop(signal.SIGKILL)  # its records stay in the DHT, naming its address
    with Impostor(holder.port, victim_id) as impostor:
        result = fetch_json(fetcher, h, tmp_path / "got.bin")
        assert sha256_file(tmp_path / "got.bin") == sha256_file(src)
        assert impostor.requests == []  # refused before it was asked anything
        assert mirror.addr in result["peers"]
        assert holder.addr not in result["peers"]
    assert impostor.links > 0  # the fetcher did dial the dead holder's record...
    log = fetcher.log()
    assert "but its key belongs to node" in log, log[-3000:]  # ...and saw through the lie
