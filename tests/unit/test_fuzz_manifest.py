"""Fuzzers for hostile manifests (dhtshare.core.manifest.Manifest.decode).

A manifest comes from a stranger (GET_MANIFEST's answer, PUT_MANIFEST's
body) and its name becomes a file name on this disk.  These fuzzers build
*structurally plausible* manifests, canonically encoded maps with the right
keys in the right order, whose fields are hostile: names with ``..``,
absolute paths, NUL, control and bidi characters, over-long names; sizes
past the limit or implying more chunks than allowed; hash strings that do
not match the chunk count or are not whole digests.  ``decode`` must accept
exactly what docs/PROTOCOL.md's "Manifest encoding" allows (the oracle
:func:`spec_accepts`, written from the spec) and refuse the rest with
:class:`ManifestError` only, without allocating for what a field claims.
``tests/unit/test_manifest.py`` fuzzes random maps and bytes; this adds the
differential oracle over hostile field values and the allocation checks.
"""

from __future__ import annotations

import hashlib
import tracemalloc
import unicodedata
from pathlib import PurePosixPath
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dhtshare.config import KIB, MIB
from dhtshare.core.ids import ManifestHash
from dhtshare.core.manifest import Manifest
from dhtshare.errors import IntegrityError, ManifestError

FUZZ = settings(max_examples=150, deadline=None, database=None, derandomize=True)

MAX_CHUNKS = 4 * 1024 * 1024
MAX_SIZE = 2**50


def pack(obj: Any) -> bytes:
    out: bytes = msgpack.packb(obj, use_bin_type=True)
    return out


# --- the spec, from docs/PROTOCOL.md --------------------------------------------------------------

#: Unicode's Bidi_Control characters (PropList.txt).
BIDI_CONTROLS = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def name_ok(name: Any) -> bool:
    return (
        type(name) is str
        and name not in ("", ".", "..")
        and not any(c in "/\\\0" for c in name)
        and not any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in name)
        and not any(c in BIDI_CONTROLS for c in name)
        and len(name.encode("utf-8")) <= 255
    )


def spec_accepts(fields: dict[str, Any]) -> bool:
    v, name, size, cs, hashes = (fields[k] for k in ("v", "name", "size", "chunk_size", "hashes"))
    if not (type(v) is int and v == 1 and name_ok(name)):
        return False
    if not (type(size) is int and 0 <= size <= MAX_SIZE):
        return False
    if not (type(cs) is int and 512 <= cs <= 16 * MIB):
        return False
    n = -(-size // cs)
    return type(hashes) is bytes and n <= MAX_CHUNKS and len(hashes) == 32 * n


# --- strategies -----------------------------------------------------------------------------------

#: Characters that make names dangerous, mixed with ordinary ones.
_nasty = "./\\\0:~\n\r\t\x1b\x7f\x85\u2028\u2029\u200e\u202e\u2066\ufeff\u200b"
_name_chars = st.sampled_from(_nasty) | st.characters(codec="utf-8", exclude_characters="\u061c")
KNOWN_BAD_NAMES = [
        "..", ".", "../etc/passwd", "/etc/passwd", "a/../../b", "..\\..\\x", "C:\\x", "\\\\srv\\s",
        "x\0.txt", "\0", "~", "~/x", "a" * 255, "a" * 256, "é" * 127 + "a", "é" * 128,
        "☃" * 85, "☃" * 86, "ok.bin", " ", "...", ".hidden", "a\u2028b", "evil\u202etxt.exe",
]
names = st.one_of(
    st.text(_name_chars, max_size=12),
    st.sampled_from(KNOWN_BAD_NAMES),
    st.builds(lambda a, b: a + b, st.sampled_from(["", "../", "/", "..\\", "./"]),
              st.text(_name_chars, max_size=8)),
    st.none() | st.integers() | st.binary(max_size=8) | st.lists(st.text(max_size=3), max_size=2),
)
good_names = st.text(
    st.characters(exclude_categories=("Cs", "Cc", "Zl", "Zp"), exclude_characters="/\\\0"),
    min_size=1, max_size=40,
).filter(name_ok)
good_chunk_sizes = st.sampled_from([512, 513, 4096, MIB, 16 * MIB]) | st.integers(512, 16 * MIB)
bad_chunk_sizes = st.sampled_from([511, 0, -1, 16 * MIB + 1, 2**63 - 1, True, 1024.0, "1024", None])
bad_sizes = st.sampled_from([MAX_SIZE + 1, 2**63 - 1, 2**64 - 1, -1, -(2**63), True, False,
                             1000.0, "1000", None])
bad_versions = st.sampled_from([0, 2, True, 1.0, "1", None, b"\x01"])
FIELDS = ("v", "name", "size", "chunk_size", "hashes")


@st.composite
def hostile_fields(draw: st.DrawFn) -> dict[str, Any]:
    """The five fields, each legal unless drawn into ``bad`` (often none, at most three)."""
    bad = draw(st.sets(st.sampled_from(FIELDS), max_size=3), label="bad")
    cs: Any = draw(bad_chunk_sizes if "chunk_size" in bad else good_chunk_sizes)
    n = draw(st.integers(0, 6))
    if "size" in bad:
        geometry_ok = type(cs) is int and cs > 0
        size = draw(bad_sizes | st.sampled_from(
            [min(MAX_CHUNKS * cs + 1, 2**64 - 1), MAX_SIZE] if geometry_ok else [5]))
    elif type(cs) is int and cs > 0:
        # Clamped to what msgpack carries (a uint64), for a bad, huge chunk size.
        size = min(draw(st.integers(max(0, (n - 1) * cs + 1), n * cs)), 2**64 - 1) if n else 0
    else:
        size = draw(st.integers(0, 10_000))
    if type(size) is int and type(cs) is int and cs > 0 and size >= 0:
        n = -(-size // cs)
    count, extra = min(n, 8), 0
    if "hashes" in bad:
        # A few hashes too few or too many, digests cut or padded, or not bytes at all.
        count += draw(st.sampled_from([-1, 1, 2, 0]))
        extra = draw(st.sampled_from([-1, 1, 31, -31, 0]))
    length = max(0, 32 * max(count, 0) + extra)
    hashes: Any = hashlib.sha256(b"x").digest() * (length // 32) + b"\x01" * (length % 32)
    if "hashes" in bad and draw(st.booleans()):
        hashes = draw(st.sampled_from([None, "h" * 32, [b"h" * 32], 0]))
    return {
        "v": draw(bad_versions) if "v" in bad else 1,
        "name": draw(names if "name" in bad else good_names),
        "size": size,
        "chunk_size": cs,
        "hashes": hashes,
    }


def _decode(data: bytes) -> Manifest | None:
    try:
        return Manifest.decode(data)
    except ManifestError:
        return None


# --- properties -----------------------------------------------------------------------------------


@FUZZ
@given(fields=hostile_fields())
def test_hostile_fields_are_accepted_exactly_when_the_spec_allows_them(
    fields: dict[str, Any]
) -> None:
    """Decode accepts a canonical map iff every field is legal; else only ``ManifestError``.

    And what is accepted is safe to put in a directory: the name is one
    path component that stays where it is joined (``base / name`` has
    ``base`` as its parent), and the chunk geometry adds up.
    """
    data = pack(fields)
    got = _decode(data)
    assert (got is not None) == spec_accepts(fields), fields
    if got is None:
        return
    assert got.encode() == data
    base = PurePosixPath("/srv/downloads")
    assert (base / got.name).parent == base
    assert PurePosixPath(got.name).name == got.name
    assert got.chunk_count * 32 == len(got.hashes)
    lengths = [got.chunk_length(i) for i in range(got.chunk_count)]
    assert sum(lengths) == got.size
    assert all(0 < n <= got.chunk_size for n in lengths)


@FUZZ
@given(name=names, n=st.integers(0, 3))
def test_hostile_names_are_accepted_exactly_when_the_spec_allows_them(name: Any, n: int) -> None:
    """Every other field valid, the name hostile: ``..``, ``/``, ``\\``, NUL, controls, length.

    The name becomes a file name in the user's directory: one accepted with a
    separator or as ``..`` would write outside it.
    """
    fields = {"v": 1, "name": name, "size": n * 1000, "chunk_size": 1000,
              "hashes": hashlib.sha256(b"x").digest() * n}
    got = _decode(pack(fields))
    assert (got is not None) == spec_accepts(fields), name
    if got is not None:
        base = PurePosixPath("/srv/downloads")
        assert (base / got.name).parent == base
        assert got.name not in (".", "..")


def test_every_nasty_character_in_every_position_of_a_name() -> None:
    """A sweep, not a sample: each character of :data:`_nasty` alone, first, last, inside,
    doubled, and every name of :data:`KNOWN_BAD_NAMES`, each checked against the spec.
    """
    candidates = [*KNOWN_BAD_NAMES]
    for c in _nasty:
        candidates += [c, c + c, "a" + c, c + "a", "a" + c + "b"]
    for name in candidates:
        fields = {"v": 1, "name": name, "size": 0, "chunk_size": 512, "hashes": b""}
        assert (_decode(pack(fields)) is not None) == spec_accepts(fields), name


@FUZZ
@given(fields=hostile_fields(), data=st.data())
def test_reordered_missing_or_extra_keys_are_refused(
    fields: dict[str, Any], data: st.DataObject
) -> None:
    """Only the five keys in their order make a manifest: anything else smuggles data in."""
    items = list(fields.items())
    how = data.draw(st.sampled_from(["shuffle", "drop", "extra", "dup-key-bytes"]), label="how")
    if how == "shuffle":
        shuffled = data.draw(st.permutations(items), label="order")
        if shuffled == items:
            return
        obj: dict[Any, Any] = dict(shuffled)
    elif how == "drop":
        del items[data.draw(st.integers(0, 4), label="drop")]
        obj = dict(items)
    elif how == "extra":
        at = data.draw(st.integers(0, 5), label="at")
        obj = dict([*items[:at], ("x", data.draw(st.integers(-5, 5) | st.text(max_size=4))),
                    *items[at:]])
    else:
        obj = {k.encode(): v for k, v in items}
    assert _decode(pack(obj)) is None


@FUZZ
@given(
    cs=st.sampled_from([512, 4096, MIB, 16 * MIB]),
    over=st.integers(1, 2**20),
    declared=st.sampled_from([0, 32, 2**20]),
)
def test_sizes_implying_too_many_chunks_are_refused_without_allocating(
    cs: int, over: int, declared: int
) -> None:
    """A size implying more than 4 Mi chunks is refused from the numbers alone.

    Checked before the hash string's length, so a 60-byte manifest claiming
    2^50 bytes in 512-byte chunks (2^41 chunks, 64 TiB of hashes) costs
    nothing; ``hashes`` here is a bin header declaring ``declared`` bytes
    with none of them present, or empty.
    """
    size = min(MAX_SIZE, MAX_CHUNKS * cs + over)
    head = pack({"v": 1, "name": "f", "size": size, "chunk_size": cs, "hashes": b""})
    assert head.endswith(b"\xc4\x00")
    data = head[:-2] + (b"\xc6" + declared.to_bytes(4, "big") if declared else b"\xc4\x00")
    tracemalloc.start()
    try:
        assert _decode(data) is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * KIB


@FUZZ
@given(fields=hostile_fields(), wrong=st.booleans())
def test_decode_verified_checks_the_hash_first_then_only_raises_manifest_error(
    fields: dict[str, Any], wrong: bool
) -> None:
    """Bytes that do not hash to the requested hash: ``IntegrityError``, never parsed.

    Bytes that do: the same outcome as ``decode`` (a ``ManifestError`` or the
    manifest).  A fetch bans a peer on either, so neither may be another type.
    """
    data = pack(fields)
    digest = hashlib.sha256(data).digest()
    if wrong:
        with pytest.raises(IntegrityError):
            Manifest.decode_verified(data, ManifestHash(bytes(b ^ 1 for b in digest)))
        return
    try:
        got = Manifest.decode_verified(data, ManifestHash(digest))
    except ManifestError:
        assert not spec_accepts(fields)
    else:
        assert spec_accepts(fields)
        assert got.hash == digest


def _nested_map(depth: int) -> bytes:
    """``{"a": {"a": ... nil}}``, ``depth`` maps deep (each a legal 1-entry map)."""
    return b"\x81\xa1a" * depth + b"\xc0"


def _with_raw_version(raw: bytes) -> bytes:
    rest = pack({"name": "f", "size": 0, "chunk_size": 512, "hashes": b""})[1:]
    return b"\x85\xa1v" + raw + rest


@FUZZ
@given(depth=st.integers(1, 400))
def test_moderately_nested_values_are_refused(depth: int) -> None:
    """Nested maps where the version goes: refused cleanly while well below the recursion limit."""
    assert _decode(_with_raw_version(_nested_map(depth))) is None


def test_a_deeply_nested_version_is_a_manifest_error() -> None:
    """3 KiB of manifest: ``v`` is 1000 nested one-entry maps (msgpack allows 1024 levels).

    A peer answering GET_MANIFEST, or sending PUT_MANIFEST, raises a
    RecursionError where a ``ManifestError`` (ban the peer / BAD_REQUEST) is
    documented.
    """
    with pytest.raises(ManifestError):
        Manifest.decode(_with_raw_version(_nested_map(1000)))


def test_the_arabic_letter_mark_is_a_bidi_control() -> None:
    """PROTOCOL.md: no bidirectional-text controls in a name; U+061C is one (PropList.txt)."""
    with pytest.raises(ManifestError):
        Manifest.decode(pack({"v": 1, "name": "invoice\u061c.pdf", "size": 0,
                              "chunk_size": 512, "hashes": b""}))
