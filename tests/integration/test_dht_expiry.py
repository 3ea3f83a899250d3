"""Expired provider records leave a DHT node's store even when nobody asks for them.

A store drops a key's expired records when the key is read; a key nobody reads
again would keep them until the key cap evicts it.  So every ``add_provider`` a
node takes also sweeps a few keys (:data:`~dhtshare.net.dht.kad.CULL_STEP`).
Real nodes on 127.0.0.1; provider records age by a clock the test moves, so
nothing here waits for time to pass.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator

import pytest

from dhtshare.core import provider_store, tokens
from dhtshare.core import providers as providers_module
from dhtshare.core.identity import Identity
from dhtshare.core.ids import dht_key
from dhtshare.core.providers import Announcement
from dhtshare.net.dht.client import PROVIDERS_NS, Dht
from dhtshare.net.dht.kad import CULL_STEP
from tests.conftest import LOOPBACK, free_port

pytestmark = pytest.mark.timeout(60)

RPC_TIMEOUT = 0.5
TTL = 60.0


class ProviderClock:
    """Stands in for the ``time`` module of the provider record, store and token modules."""

    def __init__(self) -> None:
        self.now = time.monotonic()
        self._wall = time.time() - self.now

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now + self._wall


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> ProviderClock:
    """Installed before any node exists, so stores and tokens all read it."""
    fake = ProviderClock()
    for module in (providers_module, provider_store, tokens):
        monkeypatch.setattr(module, "time", fake)
    return fake


async def start(nodes: list[tuple[Dht, int]]) -> tuple[Dht, int]:
    """A node on a free port, joined through the first of ``nodes`` if any."""
    for _ in range(20):
        port = free_port()
        dht = Dht(Identity.generate(), timeout=RPC_TIMEOUT)
        try:
            await dht.listen(LOOPBACK, port)
        except OSError:  # lost the race for the port: try another
            dht.stop()
            continue
        nodes.append((dht, port))
        if len(nodes) > 1:
            assert await asyncio.wait_for(dht.bootstrap([(LOOPBACK, nodes[0][1])]), 10) == 1
        return dht, port
    raise RuntimeError("no free port for a DHT node")


@pytest.fixture
async def pair(clock: ProviderClock) -> AsyncIterator[tuple[Dht, Dht]]:
    """An announcer and the one other node, which holds its records."""
    nodes: list[tuple[Dht, int]] = []
    try:
        holder, _ = await start(nodes)
        announcer, _ = await start(nodes)
        yield announcer, holder
    finally:
        for dht, _ in nodes:
            dht.stop()
        for _ in range(3):  # let the transports' close callbacks run
            await asyncio.sleep(0)


async def announce(dht: Dht, h: bytes, ttl: float) -> None:
    port = dht.protocol.transport.get_extra_info("sockname")[1]
    assert await asyncio.wait_for(dht.announce(h, Announcement(port, ttl, True)), 15) == 1


async def test_an_expired_record_nobody_reads_goes_at_the_next_store(
    pair: tuple[Dht, Dht], clock: ProviderClock
) -> None:
    announcer, holder = pair
    old, new = os.urandom(32), os.urandom(32)
    await announce(announcer, old, TTL)
    assert len(holder.providers) == 1
    clock.now += TTL + 1
    assert len(holder.providers) == 1  # expired, but nothing has looked at it yet
    await announce(announcer, new, 10 * TTL)
    assert len(holder.providers) == 1
    assert holder.providers.get(dht_key(PROVIDERS_NS, new))
    assert announcer.providers.get(dht_key(PROVIDERS_NS, old)) == []


async def test_many_expired_keys_drain_within_a_few_stores(
    pair: tuple[Dht, Dht], clock: ProviderClock
) -> None:
    """Each store sweeps CULL_STEP keys: a pass in progress, then one over every key."""
    announcer, holder = pair
    n = 3 * CULL_STEP
    for _ in range(n):
        await announce(announcer, os.urandom(32), TTL)
    assert len(holder.providers) == n
    clock.now += TTL + 1
    # The pass under way when the records expired ends within ceil(n / step)
    # stores; the next one covers every key then held, the new ones too.
    finish = -(-n // CULL_STEP)
    bound = finish + -(-(n + finish) // CULL_STEP)
    fresh = 0
    while len(holder.providers) > fresh:
        assert fresh < bound, f"{len(holder.providers) - fresh} expired keys left"
        await announce(announcer, os.urandom(32), 10 * TTL)
        fresh += 1
    assert fresh > 1  # one store does not sweep them all: the cost of each is bounded
