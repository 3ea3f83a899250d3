"""Fuzzers for the control socket's request decoding (dhtshare.net.control, dhtshare.ops).

The control socket answers only its own user, but its bytes still come from
another process (any client, any version, any bug), and its contract is the
CLI's: every failure reaches the user as one ``DhtshareError`` line with an
exit code; anything else is logged with a traceback as a bug.  So:

* each op's ``*Args.from_wire`` gets arbitrary msgpack maps and may only
  raise ``ConfigError``, or return arguments of the documented types;
* ``ControlServer._run`` runs every op (and unknown ones) with arbitrary
  args against a stub node that is never joined, and must answer with one
  final ``error`` event carrying an exit code, never an "internal error";
* ``ControlServer._client`` reads arbitrary byte streams from a real Unix
  socket pair (no file system, no network) and must end the connection
  without an exception escaping.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dhtshare.core import messages as m
from dhtshare.core.framing import PREFIX, FrameDecoder, encode_frame
from dhtshare.errors import ConfigError, DhtshareError, NotJoined
from dhtshare.net.control import ControlServer
from dhtshare.ops import FetchArgs, HashArgs, Operations, PinArgs, PublishArgs

FUZZ = settings(max_examples=100, deadline=None, database=None, derandomize=True)

#: A directory that does not exist: any path under it fails to stat (ENOENT).
NOWHERE = "/nonexistent-dhtshare-fuzz-dir"
HASH = "ab" * 32


def pack(obj: Any) -> bytes:
    out: bytes = msgpack.packb(obj, use_bin_type=True)
    return out


# --- strategies -----------------------------------------------------------------------------------

#: Short texts: an error message may quote a value, and a long quote is a bug of its own
#: (test_an_error_quoting_a_long_hash_still_reaches_the_client).  No NUL in texts either:
#: test_a_nul_in_a_publish_path_is_a_user_error.
texts = st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=40)
scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | texts | st.binary(max_size=40)
    | st.sampled_from([HASH, HASH.upper(), " " + HASH, HASH[:-1], HASH + "0", "/", ".", "..",
                       "/tmp", "relative/x", 0, 1, 64, 65, -1, 512, 1 << 20, 16 << 20])
)
#: Shallow values only: test_a_deeply_nested_hash_is_a_config_error is the deep case.
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(texts | st.binary(max_size=3), inner, max_size=3),
    max_leaves=6,
)
#: Each key with values its op accepts, so that many maps get past parsing.
PLAUSIBLE = {
    "path": st.sampled_from(["/data/file.bin", "/", "/a/../b", "rel/file"]) | texts,
    "chunk_size": st.sampled_from([512, 1 << 20, 16 << 20, 511, (16 << 20) + 1, True]),
    "copy": st.booleans(),
    "replicas": st.integers(-1, 66),
    "hash": st.sampled_from([HASH, HASH.upper(), " " + HASH + "\n", HASH[:-1]]),
    "output": st.none() | st.sampled_from(["out.bin", "/tmp/out", ""]),
    "cwd": st.sampled_from(["/tmp", "/", "relative"]),
    "force": st.booleans(),
}


@st.composite
def arg_maps(draw: st.DrawFn) -> dict[str, Any]:
    """Most keys present, most values plausible, some hostile, some junk keys."""
    out = draw(st.dictionaries(texts, values, max_size=2), label="junk")
    for key, plausible in PLAUSIBLE.items():
        kind = draw(st.sampled_from(["plausible", "plausible", "plausible", "hostile", "none"]))
        if kind == "plausible":
            out[key] = draw(plausible, label=key)
        elif kind == "hostile":
            out[key] = draw(values, label=key)
    return out




def under_nowhere(args: dict[str, Any]) -> dict[str, Any]:
    """Absolute paths moved under :data:`NOWHERE`, so no op touches a real file."""
    return {k: NOWHERE + v if isinstance(v, str) and v.startswith("/") else v
            for k, v in args.items()}


# --- from_wire ------------------------------------------------------------------------------------


def _parse(cls: Any, args: dict[str, Any]) -> Any:
    try:
        return cls.from_wire(args)
    except ConfigError as err:
        error = err
    assert str(error), "an error the user sees must say something"
    assert error.exit_code == 2
    return None


@FUZZ
@given(args=arg_maps())
def test_publish_args_from_any_map(args: dict[str, Any]) -> None:
    """Only ``ConfigError``; what is accepted has the types ``publish`` relies on."""
    got = _parse(PublishArgs, args)
    if got is not None:
        assert isinstance(got.path, Path)
        assert isinstance(got.chunk_size, int)
        assert type(got.copy) is bool
        assert type(got.replicas) is int
        assert 0 <= got.replicas <= 64


@FUZZ
@given(args=arg_maps())
def test_fetch_args_from_any_map(args: dict[str, Any]) -> None:
    """Only ``ConfigError``; an accepted hash is 32 bytes, paths are paths."""
    got = _parse(FetchArgs, args)
    if got is not None:
        assert type(got.hash) is bytes
        assert len(got.hash) == 32
        assert isinstance(got.cwd, Path)
        assert got.output is None or isinstance(got.output, Path)
        assert type(got.force) is bool


@FUZZ
@given(args=arg_maps(), cls=st.sampled_from([HashArgs, PinArgs]))
def test_hash_and_pin_args_from_any_map(args: dict[str, Any], cls: Any) -> None:
    """Only ``ConfigError``; pin's replicas are 1 to 64 (0 or missing: the default)."""
    got = _parse(cls, args)
    if got is not None:
        assert type(got.hash) is bytes
        assert len(got.hash) == 32
        if isinstance(got, PinArgs):
            assert type(got.replicas) is int
            assert 1 <= got.replicas <= 64


# --- one operation, end to end on the node side ---------------------------------------------------


class StubNode:
    """A node that has never joined: any use of it is a ``NotJoined`` (a user-facing error)."""

    def __getattr__(self, name: str) -> Any:
        raise NotJoined(f"stub node: no {name}")


class Writer:
    """Enough of ``asyncio.StreamWriter`` for ``_run``: it collects what is written."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        return None


def control_server() -> ControlServer:
    ops = Operations(StubNode())  # a stand-in for the node
    return ControlServer(Path(NOWHERE) / "control.sock", ops.handlers())


def run_op(msg: m.Control) -> list[m.ControlEvent]:
    """Run one control request through ``ControlServer._run``; the events it wrote."""

    async def main() -> bytes:
        writer = Writer()
        await control_server()._run(msg, asyncio.StreamReader(), writer)  # type: ignore[arg-type]
        return bytes(writer.data)

    dec = FrameDecoder(max_body=0)
    dec.feed(asyncio.run(main()))
    out = []
    for f in dec.frames():
        event = m.decode(f.header)
        assert isinstance(event, m.ControlEvent)
        out.append(event)
    assert dec.idle
    return out


OPS = ["publish", "fetch", "status", "holders", "pin", "unpin", "remove"]


@FUZZ
@given(
    req=st.integers(0, 2**32 - 1),
    op=st.one_of(st.sampled_from(OPS), st.sampled_from(OPS), texts),
    args=arg_maps().map(under_nowhere),
)
def test_every_op_with_any_args_answers_one_user_facing_error(
    req: int, op: str, args: dict[str, Any]
) -> None:
    """Whatever the op and its args, the client gets one final event with an exit code.

    The stub node makes every op fail right after its arguments are parsed,
    so each run ends in a ``DhtshareError`` (bad arguments, a missing file,
    not joined): the event is ``error`` with ``message`` and ``exit_code``.
    An ``error`` without ``exit_code`` is the node's "internal error", a bug.
    """
    got = run_op(m.Control(req, op, args))
    assert got, "no answer at all"
    assert all(e.req == req for e in got)
    *progress, final = got
    assert all(e.kind in ("progress", "alive") for e in progress)
    assert final.kind == "error", final
    assert isinstance(final.data.get("message"), str)
    assert final.data["message"]
    assert isinstance(final.data.get("exit_code"), int), f"internal error: {final.data}"


# --- the connection: arbitrary bytes on the control socket ----------------------------------------


def serve_bytes(stream: bytes) -> bytes:
    """Send ``stream`` to ``ControlServer._client`` over a Unix socket pair, then EOF.

    Returns what the server wrote back.  An exception escaping ``_client``
    (which asyncio would log as "Unhandled exception in client_connected_cb")
    propagates from here.
    """

    async def main() -> bytes:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with ours:
            reader, writer = await asyncio.open_unix_connection(sock=theirs)
            task = asyncio.ensure_future(control_server()._client(reader, writer))
            loop = asyncio.get_running_loop()
            ours.setblocking(False)
            await loop.sock_sendall(ours, stream)
            ours.shutdown(socket.SHUT_WR)
            async with asyncio.timeout(10):
                await task
                answer = bytearray()
                while chunk := await loop.sock_recv(ours, 65536):
                    answer += chunk
            writer.close()
            await writer.wait_closed()
            return bytes(answer)

    return asyncio.run(main())


control_frames = st.builds(
    lambda req, op, args: encode_frame(m.encode(m.Control(req, op, under_nowhere(args)))),
    st.integers(0, 2**32 - 1), st.sampled_from([*OPS, "nope"]), arg_maps(),
)
pieces = st.one_of(
    control_frames,
    st.sampled_from([
        encode_frame(m.encode(m.ControlEvent(1, "result"))),  # not a request
        encode_frame(m.encode(m.GetManifest(1, b"h" * 32))),  # a peer message
        encode_frame(m.encode(m.Data(1)), b"body"),  # any body ends a control connection
        encode_frame(b"\xc1"),
        encode_frame(pack([32, 1, "status", []])),  # args not a map
        encode_frame(pack([32, 1, "status", {1: 2}])),  # int key
        PREFIX.pack(2**32 - 1, 0),
        PREFIX.pack(0, 1),
    ]),
    st.binary(max_size=200),
)


@settings(FUZZ, max_examples=40)
@given(stream=st.lists(pieces, min_size=1, max_size=4).map(b"".join))
def test_any_bytes_on_the_control_socket_end_the_connection_cleanly(stream: bytes) -> None:
    """Garbage, peer messages, bodies, oversized frames, valid requests: no exception escapes.

    And every byte the server writes back is a ``CONTROL_EVENT`` frame: the
    client never has to parse anything else.
    """
    answer = serve_bytes(stream)
    dec = FrameDecoder(max_body=0)
    dec.feed(answer)
    assert dec.idle
    assert all(isinstance(m.decode(f.header), m.ControlEvent) for f in dec.frames())


# --- found by these fuzzers -----------------------------------------------------------------------


def _deep(depth: int) -> Any:
    out: Any = None
    for _ in range(depth):
        out = [out]
    return out


@pytest.mark.parametrize("cls", [FetchArgs, HashArgs, PinArgs], ids=lambda c: c.__name__)
def test_a_deeply_nested_hash_is_a_config_error(cls: Any) -> None:
    """``{"hash": [[[...]]]}`` (1 KiB on the wire): the control client gets "internal error"."""
    args = msgpack.unpackb(pack({"hash": _deep(1000), "cwd": "/"}))
    with pytest.raises(ConfigError):
        cls.from_wire(args)


@pytest.mark.parametrize("op", ["fetch", "holders", "pin", "unpin", "remove"])
def test_an_error_quoting_a_long_hash_still_reaches_the_client(op: str) -> None:
    """20,000 NULs as the hash (20 KiB on the wire) become an 80 KiB quote in the error."""
    got = run_op(m.Control(1, op, {"hash": "\0" * 20_000, "cwd": "/"}))
    assert got[-1].kind == "error"


def test_a_nul_in_a_publish_path_is_a_user_error() -> None:
    """``{"path": "/x\\0y", "chunk_size": 1048576}``: a ``DhtshareError`` is documented."""
    with pytest.raises(DhtshareError, match="NUL"):
        PublishArgs.from_wire({"path": NOWHERE + "/a\0b", "chunk_size": 1 << 20})


def test_a_deeply_nested_control_frame_ends_the_connection_cleanly() -> None:
    """1 KiB frame ``[32, [[[...]]], "status", {}]``: asyncio logs an unhandled exception."""
    serve_bytes(encode_frame(b"\x94\x20" + b"\x91" * 1023 + b"\xc0" + pack("status") + pack({})))
