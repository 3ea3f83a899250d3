"""One long-lived connection per peer, shared by every fetch of this node."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from dhtshare.core import messages as m
from dhtshare.core.handshake import LinkSecurity
from dhtshare.errors import PeerError
from dhtshare.net.ratelimit import Limiter
from dhtshare.net.transport import Connection, Handler, connect

log = logging.getLogger(__name__)

Address = tuple[str, int]


class PeerPool:
    """Outbound connections keyed by the peer's advertised address."""

    def __init__(
        self,
        hello: m.Hello,
        handler: Handler | None,
        timeout: float,
        on_close: Callable[[Connection], None] | None = None,
        link: LinkSecurity | None = None,
        limiter: Limiter | None = None,
        local_host: str | None = None,
    ) -> None:
        self._hello = hello
        self._local_host = local_host
        self._link = link
        self._limiter = limiter
        self._handler = handler
        self._timeout = timeout
        self._on_close = on_close
        self._conns: dict[Address, Connection] = {}
        self._connecting: dict[Address, asyncio.Task[Connection]] = {}

    async def get(self, addr: Address, node_id: bytes | None = None) -> Connection:
        """The open connection to ``addr``, connecting (once) if needed.

        With ``node_id`` (from a signed record or a contact), the peer there
        must prove it is that node, or :class:`PeerError` says who it is.
        """
        conn = self._conns.get(addr)
        if conn is None or not conn.is_open:
            task = self._connecting.get(addr)
            if task is None:
                task = asyncio.get_running_loop().create_task(self._connect(addr, node_id))
                self._connecting[addr] = task
                task.add_done_callback(lambda _t: self._connecting.pop(addr, None))
            conn = await asyncio.shield(task)
        hello = conn.peer_hello
        if node_id is not None and hello is not None and hello.node_id != node_id:
            raise PeerError(f"peer {addr[0]}:{addr[1]} is node {hello.node_id.hex()[:16]}, "
                            f"not node {node_id.hex()[:16]}")
        return conn

    def peek(self, addr: Address) -> Connection | None:
        """The open connection to ``addr``, if there is one (never connects)."""
        conn = self._conns.get(addr)
        return conn if conn is not None and conn.is_open else None

    async def _connect(self, addr: Address, node_id: bytes | None) -> Connection:
        conn = await connect(addr[0], addr[1], self._hello, self._handler, self._timeout,
                             self._forget, link=self._link, expect=node_id,
                             limiter=self._limiter, local_host=self._local_host)
        self._conns[addr] = conn
        return conn

    def _forget(self, conn: Connection) -> None:
        for addr, c in list(self._conns.items()):
            if c is conn:
                del self._conns[addr]
        if self._on_close is not None:
            self._on_close(conn)

    def connections(self) -> list[Connection]:
        return [c for c in self._conns.values() if c.is_open]

    def close_all(self, bye: str | None = None) -> None:
        """Close every connection; with ``bye``, tell each peer we are leaving first."""
        for task in self._connecting.values():
            task.cancel()
        for conn in list(self._conns.values()):
            if bye is not None:
                conn.say_bye(bye)
            else:
                conn.close()
        self._conns.clear()
