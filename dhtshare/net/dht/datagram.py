"""The DHT's datagram layer: rpcudp's wire format, msgpack's C codec, no task per packet.

rpcudp (under kademlia) decodes with pure-Python umsgpack and starts two
tasks per datagram, which was two thirds of a lookup's CPU.
:class:`DatagramRpc` keeps its bytes on the wire (a kind byte, a 20-byte
message id, msgpack), so stock peers interoperate, but decodes with msgpack's
C codec and answers inline.  An answer is only accepted from the address the
question went to, and garbage is dropped without a word.  It also owns every
query and task the protocol starts, so stopping the node ends them all.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Coroutine
from typing import Any, ClassVar

import msgpack
from kademlia.node import Node
from kademlia.protocol import KademliaProtocol
from kademlia.storage import ForgetfulStorage

log = logging.getLogger(__name__)

MAX_DATAGRAM = 64 * 1024
#: Every RPC we answer fits in far less (an add_provider with its bitfield is
#: under 1 KiB); anything larger is dropped before a byte of it is decoded.
MAX_REQUEST = 2 * 1024
#: rpcudp's datagram layout: one kind byte, a 20-byte message id, msgpack.
REQUEST, RESPONSE = b"\x00", b"\x01"
HEADER_LEN = 21

Address = tuple[str, int]


def is_peer_address(address: Any) -> bool:
    """Whether ``address`` is one we may send a datagram to: an IPv4 literal and a port.

    Peers hand us addresses (contacts in their answers); asyncio closes the
    socket for good on a ``sendto`` that fails other than with an OSError (a
    host with a NUL, say), so nothing unchecked reaches it.
    """
    if not (isinstance(address, tuple) and len(address) == 2):
        return False
    host, port = address
    if not (isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536):
        return False
    if not isinstance(host, str) or len(host) > 15:
        return False
    ok = _hosts.get(host)
    if ok is None:
        ok = _is_unicast_ipv4(host)
        if len(_hosts) >= MAX_HOSTS_CACHED:
            _hosts.clear()
        _hosts[host] = ok
    return ok


#: Hosts already judged by :func:`is_peer_address` (the same few recur in every answer).
MAX_HOSTS_CACHED = 4096
_hosts: dict[str, bool] = {}


def _is_unicast_ipv4(host: str) -> bool:
    """A strict dotted quad (``inet_pton``), not 0.0.0.0, multicast or broadcast."""
    try:
        packed = socket.inet_pton(socket.AF_INET, host)
    except (OSError, ValueError):
        return False
    return packed != b"\0\0\0\0" and not 224 <= packed[0] <= 239 and packed != b"\xff" * 4


class Packed(bytes):
    """An answer already in msgpack (an RPC that measured it sends it as it is)."""


def pack(obj: Any) -> bytes:
    """msgpack as the wire has it (bytes as bin, strings as str)."""
    out: bytes = msgpack.packb(obj, use_bin_type=True)
    return out


class DatagramRpc(KademliaProtocol):  # type: ignore[misc]
    """kademlia's protocol on a datagram layer that sends, matches and answers inline."""

    #: The RPCs answered: rpcudp would dispatch any ``rpc_*`` attribute.
    rpcs: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self, source_node: Node, storage: ForgetfulStorage, ksize: int, timeout: float
    ) -> None:
        super().__init__(source_node, storage, ksize)
        self._wait_timeout = timeout
        self._tasks: set[asyncio.Future[Any]] = set()
        self._waiting: dict[bytes, tuple[asyncio.Future[Any], asyncio.TimerHandle, Address]] = {}
        #: Set by :meth:`Dht.leave`: from then on the node neither asks nor answers.
        self.leaving = False
        #: The size of the request being answered (RPCs are answered inline), so
        #: that an answer can be kept in proportion to it.
        self.request_size = 0

    # -- task hygiene ---------------------------------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def adopt(self, fut: asyncio.Future[Any]) -> None:
        """Keep a reference to a query nobody waits for until it finishes."""
        self._tasks.add(fut)
        fut.add_done_callback(self._tasks.discard)

    def cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for fut, timer, *_ in [*self._outstanding.values(), *self._waiting.values()]:
            timer.cancel()
            if not fut.done():
                fut.set_result((False, None))
        self._outstanding.clear()
        self._waiting.clear()

    # -- receiving --------------------------------------------------------------------------
    def datagram_received(self, data: bytes, addr: Address) -> None:
        """Decode and answer a datagram inline; garbage is dropped without a word.

        rpcudp's own path decodes with pure-Python umsgpack and starts two tasks
        per datagram; the bytes on the wire are the same (``0x00``/``0x01``,
        a 20-byte message id, then msgpack), so stock peers interoperate.
        """
        if not HEADER_LEN < len(data) <= MAX_DATAGRAM:
            return
        kind, msg_id = data[:1], data[1:HEADER_LEN]
        # Decoding costs CPU on the loop every transfer shares: a request must be
        # small, and an answer must be to a question we asked, from where it went.
        if kind == REQUEST:
            if len(data) > MAX_REQUEST:
                return
        elif kind == RESPONSE:
            if not self._expected(msg_id, addr):
                return
        else:
            return
        try:
            body = msgpack.unpackb(data[HEADER_LEN:], raw=False)
        except (ValueError, msgpack.UnpackException) as err:
            log.debug("dropped malformed datagram from %s: %r", addr, err)
            return
        if kind == REQUEST:
            self.request_size = len(data)
            self._serve(msg_id, body, addr)
        else:
            self._accept_response(msg_id, body, addr)

    def _expected(self, msg_id: bytes, addr: Address) -> bool:
        entry = self._waiting.get(msg_id)
        if entry is not None:
            return entry[2] == addr
        return msg_id in self._outstanding  # a request sent the stock way

    def _serve(self, msg_id: bytes, body: Any, addr: Address) -> None:
        if self.leaving:
            return  # an answer would put us back in the asker's table
        if not (isinstance(body, list) and len(body) == 2 and isinstance(body[0], str)
                and isinstance(body[1], list) and body[0] in self.rpcs):
            return
        try:
            answer = getattr(self, "rpc_" + body[0])(addr, *body[1])
        except Exception as err:  # wrong arity or types: the sender's problem
            log.debug("dropped malformed %s request from %s: %r", body[0], addr, err)
            return
        if self.open:
            body = answer if isinstance(answer, Packed) else pack(answer)
            self.transport.sendto(RESPONSE + msg_id + body, addr)

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    # -- asking -----------------------------------------------------------------------------
    def request(self, address: Address, name: str, *args: Any) -> asyncio.Future[Any]:
        """Send RPC ``name``; the future gives ``(True, answer)`` or ``(False, None)``.

        A closed node, or one that is leaving (except for its goodbyes), sends
        nothing: any query now would make the others welcome it back.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        if not self.open or (self.leaving and name != "leave") or not is_peer_address(address):
            fut.set_result((False, None))
            return fut
        msg_id = os.urandom(HEADER_LEN - 1)
        self.transport.sendto(REQUEST + msg_id + pack([name, list(args)]), address)
        timer = loop.call_later(self._wait_timeout, self._expire, msg_id)
        self._waiting[msg_id] = (fut, timer, address)
        return fut

    def _expire(self, msg_id: bytes) -> None:
        entry = self._waiting.pop(msg_id, None)
        if entry is not None and not entry[0].done():
            entry[0].set_result((False, None))

    def _accept_response(self, msg_id: bytes, data: Any, address: Address) -> None:
        entry = self._waiting.get(msg_id)
        if entry is None:
            outstanding = self._outstanding.get(msg_id)  # a request sent the stock way
            if outstanding is not None and not outstanding[0].done():
                super()._accept_response(msg_id, data, address)
            return
        fut, timer, sent_to = entry
        if sent_to != address:
            return  # an answer must come from where the question went
        del self._waiting[msg_id]
        timer.cancel()
        if not fut.done():
            fut.set_result((True, data))


__all__ = ["HEADER_LEN", "Address", "DatagramRpc", "Packed", "is_peer_address", "pack"]
