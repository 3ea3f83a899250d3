"""One peer of a download: connect, ask for HAVE, then pump chunks until done.

The worker subscribes to the peer's HAVE updates and runs a
:class:`~dhtshare.transfer.pump.Pump` on the peer's single long-lived
connection.

Errors: a peer's misbehaviour (it is unreachable, slow, hangs up, breaks the
protocol, lacks the file or sends a bad chunk) ends its worker, and a bad
chunk bans it for the rest of the fetch; the download goes on with the other
peers.  Any other exception is a bug in our code: it is logged with its
traceback and raised, which fails the whole fetch.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging

from dhtshare.activity import activity
from dhtshare.core.bitfield import indices_from_bitfield
from dhtshare.core.ids import short
from dhtshare.errors import (
    NotFoundReply,
    PeerError,
    PeerTimeout,
    PeerUnreachable,
    RemoteProtocolError,
)
from dhtshare.net.transport import Connection
from dhtshare.transfer.pump import Pump
from dhtshare.transfer.services import Address, label
from dhtshare.transfer.state import Download

log = logging.getLogger(__name__)

#: How long the first peers wait for each other before requesting chunks.
START_GRACE = 0.3


async def run_worker(dl: Download, addr: Address, node_id: bytes | None = None) -> None:
    """Download from ``addr`` until the file is complete or the peer drops out.

    ``node_id`` is who the provider record says is there: the link refuses anyone else.
    """
    s = dl.services
    mh = dl.manifest.hash
    conn: Connection | None = None
    listener = functools.partial(_on_have, dl, addr)
    try:
        conn = await s.pool.get(addr, node_id)
        hello = conn.peer_hello
        if hello is None or hello.node_id == s.node_id or hello.node_id in dl.book.banned_ids:
            return
        conn.have_listeners[mh] = listener
        have = await conn.get_have(mh, s.config.request_timeout)
        n = dl.manifest.chunk_count
        held = None if have.complete else indices_from_bitfield(n, have.bitfield)
        activity("chunk_map_received", "%s holds %s of %d chunks", label(addr),
                 "all" if held is None else len(held), n, peer=label(addr),
                 chunks=n if held is None else len(held), manifest=mh)
        dl.picker.add_peer(addr, held)
        dl.starting.discard(addr)
        dl.wake_all()
        if dl.starting:
            await _wait_for_first_peers(dl, addr)
        await Pump(dl, addr, conn, hello.node_id).run()
    except NotFoundReply:
        log.debug("%s no longer has %s", label(addr), short(mh))
    except (PeerUnreachable, PeerTimeout) as err:
        dl.book.unreachable.add(addr)
        log.info("provider %s unreachable: %s", label(addr), err)
    except (PeerError, RemoteProtocolError) as err:
        log.info("peer %s dropped from fetch: %s", label(addr), err)
    except Exception:
        log.exception("fetch of %s failed on a bug while talking to %s", short(mh), label(addr))
        raise
    finally:
        dl.starting.discard(addr)
        if not dl.picker.is_banned(addr):
            dl.picker.remove_peer(addr)
            dl.wake_all()
        for peer, index in [k for k in dl.requests if k[0] == addr]:
            dl.forget(peer, index)
        if conn is not None and conn.have_listeners.get(mh) is listener:
            del conn.have_listeners[mh]


def _on_have(dl: Download, addr: Address, indices: tuple[int, ...]) -> None:
    activity("chunk_map_update_received", "%s has %d new chunks", label(addr), len(indices),
             peer=label(addr), chunks=len(indices), manifest=dl.manifest.hash)
    n = dl.manifest.chunk_count
    for i in indices:
        if i < n:
            dl.picker.peer_has(addr, i)
    ev = dl.wakeups.get(addr)
    if ev is not None:
        ev.set()


async def _wait_for_first_peers(dl: Download, addr: Address) -> None:
    """Let the other first peers finish their handshake, so the first
    requests are spread over all of them."""
    wake = dl.wakeups[addr]
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(START_GRACE):
            while dl.starting:
                await wake.wait()
                wake.clear()
