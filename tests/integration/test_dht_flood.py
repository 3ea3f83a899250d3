"""A flood of valid-looking provider records against real node processes.

The flooder is a UDP socket on another loopback address (127.0.0.66; the
honest nodes are on 127.0.0.1) speaking the DHT's RPCs: it gets a write token
like anyone, then announces thousands of records, each signed with a fresh
key, which is all a stranger needs to pass every check: hundreds for the
honest file's key and thousands for random keys.  Its records claim complete
copies for the longest ttl and name a port where a TCP listener accepts and
never answers (the worst kind of fake for a fetch: it hangs rather than
refusing).

What must hold: each node keeps at most :data:`MAX_PER_SOURCE_PER_KEY` of the
flooder's records per key and :data:`MAX_PER_SOURCE` in all, its memory
grows by a few megabytes, the honest provider's record stays and is still
returned, a new honest provider's record still lands, and a fetch of the
honest file through the flooded nodes completes in seconds.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from dhtshare.core.identity import Identity
from dhtshare.core.ids import dht_key
from dhtshare.core.provider_store import (
    MAX_PER_SOURCE,
    MAX_PER_SOURCE_PER_KEY,
    MAX_PROVIDERS_PER_KEY,
)
from dhtshare.core.providers import MAX_TTL, Announcement, SignedAnnouncement
from dhtshare.net.dht.client import PROVIDERS_NS
from tests.conftest import (
    LOOPBACK,
    Cluster,
    NodeProc,
    cli_json,
    fetch_json,
    make_file,
    publish,
    sha256_file,
    wait_until,
)

pytestmark = pytest.mark.timeout(180)

FLOODER = "127.0.0.66"
#: Fakes for the honest file's key, and for random keys (per node flooded).
FAKES_SAME_KEY = 400
FAKES_RANDOM_KEYS = MAX_PER_SOURCE + 600
#: What a flooded node's memory may grow by (the records kept are ~4 MB).
RSS_GROWTH_LIMIT = 40 * 1024 * 1024
#: How long the fetch of the honest file may take, command start-up included.
FETCH_LIMIT = 10.0


class Flooder:
    """A bare DHT speaker on its own loopback address: requests out, answers matched."""

    def __init__(self, host: str = FLOODER) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((host, 0))
        self.sock.setblocking(False)
        self.id = os.urandom(20)
        self.sent_bytes = 0

    def close(self) -> None:
        self.sock.close()

    def call_many(
        self, target: tuple[str, int], calls: list[tuple[str, list[Any]]],
        window: int = 64, timeout: float = 60.0,
    ) -> list[Any]:
        """Send every call (at most ``window`` unanswered at once); their answers, in order.

        Each call's arguments start with the sender's node id.  An unanswered
        call gets ``None`` (it is sent once more first).
        """
        answers: list[Any] = [None] * len(calls)
        waiting: dict[bytes, tuple[int, float, int]] = {}
        nxt = 0
        deadline = time.monotonic() + timeout
        while (nxt < len(calls) or waiting) and time.monotonic() < deadline:
            while nxt < len(calls) and len(waiting) < window:
                self._send(target, waiting, nxt, calls[nxt], tries=1)
                nxt += 1
            readable, _, _ = select.select([self.sock], [], [], 0.05)
            while readable:
                try:
                    data, _addr = self.sock.recvfrom(65536)
                except BlockingIOError:
                    break
                if data[:1] != b"\x01":
                    continue  # a node asking us something: we never answer
                entry = waiting.pop(data[1:21], None)
                if entry is not None:
                    answers[entry[0]] = msgpack.unpackb(data[21:], raw=False)
            now = time.monotonic()
            for msg_id, (i, sent_at, tries) in list(waiting.items()):
                if now - sent_at > 1.0:
                    del waiting[msg_id]
                    if tries < 2:
                        self._send(target, waiting, i, calls[i], tries=tries + 1)
        return answers

    def _send(self, target: tuple[str, int], waiting: dict[bytes, tuple[int, float, int]],
              i: int, call: tuple[str, list[Any]], tries: int) -> None:
        msg_id = os.urandom(20)
        packet = b"\x00" + msg_id + msgpack.packb([call[0], call[1]], use_bin_type=True)
        self.sock.sendto(packet, target)
        self.sent_bytes += len(packet)
        waiting[msg_id] = (i, time.monotonic(), tries)

    def token(self, target: tuple[str, int], key: bytes) -> bytes:
        (answer,) = self.call_many(target, [("get_providers", [self.id, key])])
        assert answer is not None, f"{target} does not answer the flooder"
        token: bytes = answer[2]
        return token

    def records(self, target: tuple[str, int], keys: list[bytes],
                token: bytes) -> list[list[Any]]:
        """Every key's records as ``target`` returns them to an asker with a token."""
        answers = self.call_many(target, [("get_providers", [self.id, k, token]) for k in keys])
        assert all(a is not None for a in answers), "some lookups went unanswered"
        return [a[0] for a in answers]


@contextlib.contextmanager
def tarpit(host: str = FLOODER) -> Iterator[int]:
    """A TCP port on ``host`` that accepts connections and never says a word."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as srv:
        srv.bind((host, 0))
        srv.listen(1024)
        yield int(srv.getsockname()[1])


def rss(node: NodeProc) -> int:
    """The node process's resident memory, in bytes."""
    for line in Path(f"/proc/{node.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def node_id(node: NodeProc) -> bytes:
    return bytes.fromhex((node.data_dir / "node_id").read_text().strip())


def fakes(key: bytes | None, n: int, port: int) -> list[tuple[bytes, list[Any]]]:
    """``n`` records, each signed by a fresh key, for ``key`` (or a random key each)."""
    now = int(time.time() * 1000)
    out = []
    for _ in range(n):
        me = Identity.generate()
        k = key if key is not None else os.urandom(20)
        ann = SignedAnnouncement.make(me, k, Announcement(port, MAX_TTL, True), now)
        out.append((k, [me.node_id, ann.to_wire()]))
    return out


def test_a_flood_of_signed_fakes_stays_capped_and_the_honest_file_is_fetched(
    cluster: Cluster, tmp_path: Path
) -> None:
    boot, publisher, second, fetcher = cluster.start(4)
    victims = [boot, second, fetcher]
    src = make_file(tmp_path / "honest.bin", 3_000_000, seed=9)
    h = publish(publisher, src, "--chunk-size", "256K", "--replicas", "0")
    key = dht_key(PROVIDERS_NS, bytes.fromhex(h))
    flooder = Flooder()
    try:
        with tarpit() as trap:
            same = fakes(key, FAKES_SAME_KEY, trap)
            scattered = fakes(None, FAKES_RANDOM_KEYS, trap)
            sent = len(same) + len(scattered)
            tokens = {}
            for v in victims:
                addr = (LOOPBACK, v.port)
                tokens[v.name] = token = flooder.token(addr, key)
                # The honest record landed before the flood.
                assert node_id(publisher) in {r[0] for r in flooder.records(addr, [key], token)[0]}
            before = {v.name: rss(v) for v in victims}
            t0 = time.monotonic()
            for v in victims:
                # Each record goes with its own fake node id as the sender's.
                answers = flooder.call_many((LOOPBACK, v.port), [
                    ("add_provider", [fake_id, k, tokens[v.name], wire])
                    for k, (fake_id, wire) in scattered + same])
                taken = sum(1 for a in answers if a is True)
                print(f"{v.name}: {taken}/{sent} fakes taken as they came")
            flood_time = time.monotonic() - t0
            after = {v.name: rss(v) for v in victims}

            for v in victims:
                addr = (LOOPBACK, v.port)
                token = tokens[v.name]
                (honest_key,) = flooder.records(addr, [key], token)
                from_flooder = [r for r in honest_key if r[1] == FLOODER]
                assert len(from_flooder) <= MAX_PER_SOURCE_PER_KEY
                assert len(honest_key) <= MAX_PROVIDERS_PER_KEY
                assert node_id(publisher) in {r[0] for r in honest_key}, \
                    f"{v.name} lost the honest record"
                others = flooder.records(addr, [k for k, _ in scattered], token)
                stored = sum(len(recs) for recs in others) + len(from_flooder)
                assert stored <= MAX_PER_SOURCE
                growth = after[v.name] - before[v.name]
                print(f"{v.name}: sent {sent}, stored {stored} "
                      f"({len(from_flooder)} for the honest key), "
                      f"RSS {before[v.name] / 2**20:.1f} -> {after[v.name] / 2**20:.1f} MiB")
                assert growth < RSS_GROWTH_LIMIT
            print(f"flood of {sent} records x {len(victims)} nodes took {flood_time:.1f} s")

            # A new honest provider's record still lands on the flooded nodes.
            again = cli_json("publish", str(src), "--data-dir", str(second.data_dir),
                             "--chunk-size", "256K", "--replicas", "0")
            assert again["dht_stores"] >= 2

            def second_landed() -> bool:
                return all(
                    node_id(second) in {r[0] for r in flooder.records(
                        (LOOPBACK, v.port), [key], tokens[v.name])[0]}
                    for v in (boot, fetcher))

            assert wait_until(second_landed, 10, 0.2), "a new honest record did not land"

            # And the file is fetched through the flooded nodes, in seconds.
            out = tmp_path / "copy.bin"
            t0 = time.monotonic()
            result = fetch_json(fetcher, h, out)
            took = time.monotonic() - t0
            print(f"fetch took {took:.2f} s (the command's start-up included)")
            assert sha256_file(out) == sha256_file(src)
            assert result["hash"] == h
            assert result["bytes_downloaded"] >= src.stat().st_size  # from the honest peers
            assert set(result["peers"]) <= {publisher.addr, second.addr}
            assert took < FETCH_LIMIT
    finally:
        flooder.close()
    for n in cluster.nodes:
        assert "Traceback" not in n.log(), n.log()[-3000:]
