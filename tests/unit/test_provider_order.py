"""The order a fetch tries providers in (``ProviderSource.order``), when fakes abound.

The DHT takes a record's host from the packet that announced it, so a flood
of records signed with fresh keys all name the flooder's own few hosts.  A
fetch must reach the honest provider after one try per flooding host, not
one per fake, whatever the fakes claim (complete copies, the longest ttl).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from dhtshare.core.providers import ProviderRecord
from dhtshare.core.stats import Stats
from dhtshare.transfer.manifest_source import ProviderSource


def rec(host: str, port: int, complete: bool = True, ttl: float = 1800.0) -> ProviderRecord:
    return ProviderRecord(bytes([port % 256]) * 20, host, port, ttl, complete)


def source(dead: set[tuple[str, int]] | None = None) -> ProviderSource:
    services: Any = SimpleNamespace(provider_is_dead=lambda addr: addr in (dead or set()),
                                    stats=Stats())
    tg: Any = None
    return ProviderSource(services, b"m" * 32, tg)


def test_one_record_per_host_in_turn() -> None:
    fakes = [rec("10.6.6.6", 1000 + i, ttl=86400) for i in range(50)]
    honest = rec("192.0.2.1", 7000, ttl=600)
    order = source().order([*fakes, honest])
    assert order.index(honest) == 1  # after the flooder's best, before its second
    assert len(order) == 51


def test_within_a_turn_complete_and_fresher_first() -> None:
    a = rec("192.0.2.1", 7001, complete=False, ttl=1000)
    b = rec("192.0.2.2", 7002, complete=True, ttl=10)
    c = rec("192.0.2.3", 7003, complete=True, ttl=100)
    d = rec("192.0.2.3", 7004, complete=True, ttl=1000)
    assert source().order([a, b, c, d]) == [d, b, a, c]  # c: its host's second


def test_unreachable_providers_and_their_hosts_go_last() -> None:
    src = source(dead={("192.0.2.9", 7009)})
    fakes = [rec("10.6.6.6", 1000 + i, ttl=86400) for i in range(5)]
    src.book.unreachable.add(fakes[0].address)
    honest = rec("192.0.2.1", 7000, ttl=600)
    gone = rec("192.0.2.9", 7009)
    order = src.order([*fakes, gone, honest])
    assert order[0] == honest
    assert order[1:5] == fakes[1:]  # a host that failed us: after every other host
    assert order[5:] == [fakes[0], gone] or order[5:] == [gone, fakes[0]]
