"""The local control socket: how ``dhtshare publish``/``fetch`` talk to a running node.

A Unix socket in the data dir (permissions 0600), speaking the same framed
messages as peers (:class:`~dhtshare.core.messages.Control` requests answered by
:class:`~dhtshare.core.messages.ControlEvent` progress, result or error events),
so one codec owns every byte dhtshare puts on a wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from dhtshare.core import messages as m
from dhtshare.core.framing import FrameDecoder, encode_frame
from dhtshare.errors import DhtshareError, LocalProtocolError, RemoteProtocolError, os_error, shown
from dhtshare.net.ctlclient import peer_uid, trusted_uid

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 0.1
#: While an operation runs, the client hears from us at least this often.
KEEPALIVE_INTERVAL = 2.0

Emit = Callable[[str, dict[str, Any]], None]
OpHandler = Callable[[dict[str, Any], Emit], Awaitable[dict[str, Any]]]


class ControlServer:
    """Serves control requests with the node's op handlers."""

    def __init__(self, path: Path, ops: dict[str, OpHandler]) -> None:
        self.path = path
        self.ops = ops
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._client, path=str(self.path))
        finally:
            os.umask(old_umask)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        decoder = FrameDecoder(max_body=0)
        sock = writer.get_extra_info("socket")
        if sock is None or not trusted_uid(peer_uid(sock)):
            log.warning("refused a control connection from another user")
            self._tasks.discard(task)
            writer.close()
            return
        try:
            while data := await reader.read(65536):
                decoder.feed(data)
                while (frame := decoder.next_frame()) is not None:
                    msg = m.decode(frame.header)
                    if not isinstance(msg, m.Control):
                        raise RemoteProtocolError("expected a control request")
                    await self._run(msg, reader, writer)
        except (RemoteProtocolError, ConnectionError) as err:
            log.info("control client dropped: %s", err)
        except asyncio.CancelledError:
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _run(
        self, msg: m.Control, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Run one operation; if the client goes away (Ctrl-C), cancel it."""
        last = 0.0
        stage: object = None

        def emit(kind: str, data: dict[str, Any]) -> None:
            nonlocal last, stage
            now = time.monotonic()
            if kind == "progress":
                # Throttled, but a change of stage and the last step always go out.
                changed = data.get("stage") != stage
                final = data.get("total") is not None and data.get("done") == data.get("total")
                if now - last < PROGRESS_INTERVAL and not (changed or final):
                    return
                stage = data.get("stage")
            last = now
            writer.write(encode_frame(m.encode(m.ControlEvent(msg.req, kind, data))))

        handler = self.ops.get(msg.op)
        try:
            if handler is None:
                raise DhtshareError(f"unknown control operation {shown(msg.op)}")
            op = asyncio.ensure_future(handler(msg.args, emit))
            hangup = asyncio.ensure_future(reader.read(1))
            try:
                while not (op.done() or hangup.done()):
                    await asyncio.wait([op, hangup], timeout=KEEPALIVE_INTERVAL,
                                       return_when=asyncio.FIRST_COMPLETED)
                    if not (op.done() or hangup.done()):
                        # Quiet work (a join, a stalled peer): the client's idle
                        # timeout must not mistake it for a hung node.
                        writer.write(encode_frame(m.encode(m.ControlEvent(msg.req, "alive"))))
            finally:
                hangup.cancel()
            if not op.done():
                log.info("control client left; cancelling %s", msg.op)
                op.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await op
                return
            result = op.result()
            event = m.ControlEvent(msg.req, "result", result)
        except DhtshareError as err:
            event = m.ControlEvent(
                msg.req, "error", {"message": str(err), "exit_code": err.exit_code}
            )
        except OSError as err:
            # A boundary that forgot to translate: the user still gets a clear line.
            log.warning("control operation %s failed", msg.op, exc_info=True)
            user = os_error(err, "access")
            event = m.ControlEvent(msg.req, "error", {"message": str(user), "exit_code": 1})
        except Exception as err:
            log.exception("control operation %s failed", msg.op)
            event = m.ControlEvent(msg.req, "error", {"message": f"internal error: {err}"})
        try:
            frame = encode_frame(m.encode(event))
        except LocalProtocolError:  # larger than a frame may be: say so, not nothing
            log.warning("control operation %s: answer too large to send", msg.op)
            frame = encode_frame(m.encode(m.ControlEvent(
                msg.req, "error", {"message": f"the answer to {msg.op} is too large to send"})))
        writer.write(frame)
        await writer.drain()
