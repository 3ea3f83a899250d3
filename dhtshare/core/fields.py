"""Checks for the fields of an untrusted message: types, ranges and sizes.

Every decoded field passes one of these before a message object exists, so
the rest of dhtshare only ever sees well-formed values; anything else is a
:class:`RemoteProtocolError` naming the field.
"""

from __future__ import annotations

from typing import Any

from dhtshare.config import MAX_HEADER_SIZE
from dhtshare.core.ids import HASH_LEN
from dhtshare.errors import RemoteProtocolError, shown

MAX_REQ_ID = 2**32 - 1
MAX_TEXT = 4096


def int_in(v: Any, lo: int, hi: int, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise RemoteProtocolError(f"bad {what}: {shown(v)}")
    return v


def req_id(v: Any) -> int:
    return int_in(v, 0, MAX_REQ_ID, "request id")


def raw_bytes(v: Any, length: int | None, what: str, max_len: int = MAX_HEADER_SIZE) -> bytes:
    if not isinstance(v, bytes) or (length is not None and len(v) != length) or len(v) > max_len:
        raise RemoteProtocolError(f"bad {what}")
    return v


def hash32(v: Any) -> bytes:
    return raw_bytes(v, HASH_LEN, "hash")


def text(v: Any, what: str) -> str:
    if not isinstance(v, str) or len(v) > MAX_TEXT:
        raise RemoteProtocolError(f"bad {what}")
    return v


def str_map(v: Any, what: str) -> dict[str, Any]:
    if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
        raise RemoteProtocolError(f"bad {what}")
    return v


def arity(fields: list[Any], n: int, name: str) -> None:
    if len(fields) != n:
        raise RemoteProtocolError(f"{name} has {len(fields)} fields, expected {n}")


__all__ = ["MAX_REQ_ID", "MAX_TEXT", "arity", "hash32", "int_in", "raw_bytes", "req_id",
           "str_map", "text"]
