"""The client side of the control socket, blocking and free of asyncio.

``dhtshare publish``/``fetch``/``status`` through a running node are one
request and a stream of events on a Unix socket; doing that with a plain
socket keeps asyncio (and its import time) out of the commands users run
most.  If the user presses Ctrl-C, the socket closes and the node cancels the
operation.
"""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dhtshare.core import messages as m
from dhtshare.core.framing import FrameDecoder, encode_frame
from dhtshare.errors import (
    ConfigError,
    DhtshareError,
    NodeNotResponding,
    NodeNotRunning,
    RemoteProtocolError,
)

SOCKET_NAME = "control.sock"
#: A running node sends something at least every 2 s while it works on a request.
IDLE_TIMEOUT = 30.0
#: Unix socket paths are limited to 108 bytes; longer data dirs use a private runtime dir.
MAX_SUN_PATH = 100
_UCRED = struct.Struct("3i")  # pid, uid, gid (SO_PEERCRED)


def socket_path(data_dir: Path) -> Path:
    """Where the node of ``data_dir`` listens for control requests.

    In the data dir (0700) when the path fits a Unix socket address; else in
    a directory only this user can write, so that nobody else can put a
    socket of their own where the CLI will send its requests.
    """
    path = data_dir.resolve() / SOCKET_NAME
    if len(str(path)) <= MAX_SUN_PATH:
        return path
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]
    return private_dir() / f"{digest}.sock"


def private_dir() -> Path:
    """``$XDG_RUNTIME_DIR/dhtshare`` (or ``/tmp/dhtshare-UID``), checked to be ours alone."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    base = Path(runtime) / "dhtshare" if runtime and len(runtime) < 60 else None
    where = base or Path("/tmp") / f"dhtshare-{os.getuid()}"
    try:
        where.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(where)
    except OSError as err:
        raise ConfigError(f"cannot make a private directory {where} for the control socket: "
                          f"{err.strerror or err}; use a shorter --data-dir") from err
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise ConfigError(
            f"{where} is not a private directory of this user (someone else may have made "
            "it to intercept the control socket): remove it, or use a shorter --data-dir"
        )
    return where


def peer_uid(sock: socket.socket) -> int:
    """The user id of the process at the other end of a Unix socket (SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    return int(_UCRED.unpack(raw)[1])


def trusted_uid(uid: int) -> bool:
    """Only this user (or root, who could read its data dir anyway) may be at the other end."""
    return uid in (os.getuid(), 0)


def call(
    data_dir: Path,
    op: str,
    args: dict[str, Any],
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    idle_timeout: float = IDLE_TIMEOUT,
) -> dict[str, Any]:
    """Run ``op`` on the node of ``data_dir`` and return its result.

    Raises :class:`NodeNotRunning` when no node answers there,
    :class:`NodeNotResponding` when it goes quiet for ``idle_timeout``
    seconds, and the node's own error (as :class:`DhtshareError`, with its
    exit code) when the operation fails.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(idle_timeout)
    try:
        try:
            sock.connect(str(socket_path(data_dir)))
        except OSError as err:
            raise NodeNotRunning(f"no dhtshare node is running on data dir {data_dir}") from err
        if not trusted_uid(peer_uid(sock)):
            raise NodeNotRunning(
                f"the control socket of {data_dir} belongs to another user: not talking to it"
            )
        decoder = FrameDecoder(max_body=0)
        try:
            sock.sendall(encode_frame(m.encode(m.Control(1, op, args))))
            while True:
                frame = decoder.next_frame()
                if frame is None:
                    data = sock.recv(65536)
                    if not data:
                        raise NodeNotRunning("the node closed the control connection")
                    decoder.feed(data)
                    continue
                event = m.decode(frame.header)
                if not isinstance(event, m.ControlEvent):
                    raise RemoteProtocolError("unexpected message on the control socket")
                if event.kind == "alive":
                    continue
                if event.kind == "progress":
                    if on_progress is not None:
                        on_progress(event.data)
                    continue
                if event.kind == "error":
                    failure = DhtshareError(str(event.data.get("message", "unknown error")))
                    code = event.data.get("exit_code")
                    if isinstance(code, int):
                        failure.exit_code = code
                    raise failure
                return event.data
        except TimeoutError as err:
            raise NodeNotResponding(
                f"the node on data dir {data_dir} did not answer for {idle_timeout:.0f} s; "
                "it may be overloaded or stuck (see its log)"
            ) from err
    finally:
        sock.close()
