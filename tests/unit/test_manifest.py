"""Unit and property tests for manifests (dhtshare.core.manifest)."""

from __future__ import annotations

import hashlib
import os
import random
import struct
import tempfile
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dhtshare.config import MAX_CHUNK_SIZE, MAX_CHUNKS, MAX_FILE_SIZE, MIB, MIN_CHUNK_SIZE
from dhtshare.core.ids import HASH_LEN
from dhtshare.core.manifest import (
    FORMAT_VERSION,
    MAX_MANIFEST_BYTES,
    Manifest,
    check_chunk_size,
    check_name,
    chunk_count,
)
from dhtshare.disk.hashing import hash_file
from dhtshare.errors import ConfigError, IntegrityError, ManifestError, StorageError

FUZZ = settings(max_examples=150, deadline=None, database=None)


def _pack(obj: Any) -> bytes:
    out: bytes = msgpack.packb(obj, use_bin_type=True)
    return out


def _fake_hashes(n: int) -> bytes:
    return b"".join(hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(n))


def _manifest(name: str = "file.bin", size: int = 1000, chunk_size: int = 512) -> Manifest:
    return Manifest(name, size, chunk_size, _fake_hashes(chunk_count(size, chunk_size)))


def _fields(**overrides: Any) -> dict[str, Any]:
    """The canonical field map of a small valid manifest, with overrides (in place)."""
    out: dict[str, Any] = {
        "v": FORMAT_VERSION,
        "name": "file.bin",
        "size": 1000,
        "chunk_size": 512,
        "hashes": _fake_hashes(2),
    }
    out.update(overrides)
    return out


# --- strategies -----------------------------------------------------------------------

names = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="/\\\0"),
    min_size=1,
    max_size=60,
).filter(lambda s: s not in (".", "..") and len(s.encode()) <= 255)


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    chunk_size = draw(
        st.integers(MIN_CHUNK_SIZE, MAX_CHUNK_SIZE) | st.sampled_from([512, 100_000, MIB])
    )
    n = draw(st.integers(0, 20))
    size = 0 if n == 0 else draw(st.integers((n - 1) * chunk_size + 1, n * chunk_size))
    hashes = draw(st.binary(min_size=n * HASH_LEN, max_size=n * HASH_LEN))
    return Manifest(draw(names), size, chunk_size, hashes)


# --- encoding round trip --------------------------------------------------------------


@FUZZ
@given(m=manifests())
def test_round_trip(m: Manifest) -> None:
    data = m.encode()
    assert isinstance(data, bytes)
    back = Manifest.decode(data)
    assert back == m
    assert back.encode() == data
    assert isinstance(m.hash, bytes)
    assert len(m.hash) == HASH_LEN
    assert m.hash == hashlib.sha256(data).digest()
    assert back.hash == m.hash
    assert Manifest.decode_verified(data, m.hash) == m
    assert m.chunk_count == chunk_count(m.size, m.chunk_size)
    for i in range(m.chunk_count):
        assert m.chunk_hash(i) == m.hashes[i * HASH_LEN : (i + 1) * HASH_LEN]


def test_encoding_is_a_map_in_field_order() -> None:
    m = _manifest()
    obj = msgpack.unpackb(m.encode(), raw=False)
    assert list(obj) == ["v", "name", "size", "chunk_size", "hashes"]
    assert obj == {
        "v": FORMAT_VERSION,
        "name": m.name,
        "size": m.size,
        "chunk_size": m.chunk_size,
        "hashes": m.hashes,
    }


def test_decode_accepts_bytearray() -> None:
    m = _manifest()
    assert Manifest.decode(bytearray(m.encode())) == m  # type: ignore[arg-type]


def test_decode_verified_rejects_wrong_hash() -> None:
    m = _manifest()
    data = m.encode()
    wrong = bytearray(m.hash)
    wrong[0] ^= 1
    with pytest.raises(IntegrityError):
        Manifest.decode_verified(data, bytes(wrong))  # type: ignore[arg-type]
    with pytest.raises(IntegrityError):
        Manifest.decode_verified(data + b"\x00", m.hash)
    with pytest.raises(IntegrityError):
        Manifest.decode_verified(data, _manifest(size=1001).hash)


def test_decode_verified_still_validates() -> None:
    bad = _pack(_fields(name="../evil"))
    with pytest.raises(ManifestError):
        Manifest.decode_verified(bad, hashlib.sha256(bad).digest())  # type: ignore[arg-type]


# --- chunk geometry -------------------------------------------------------------------


def _geometry_cases() -> list[tuple[int, int]]:
    cases = []
    for cs in (512, 100_000, MIB):
        for size in (0, 1, cs - 1, cs, cs + 1, 2 * cs, 3 * cs - 1):
            cases.append((cs, size))
    return cases


@pytest.mark.parametrize(("chunk_size", "size"), _geometry_cases())
def test_chunk_geometry(chunk_size: int, size: int) -> None:
    expected_n = (size + chunk_size - 1) // chunk_size
    assert chunk_count(size, chunk_size) == expected_n
    m = Manifest("f", size, chunk_size, _fake_hashes(expected_n))
    assert m.chunk_count == expected_n
    lengths = [m.chunk_length(i) for i in range(expected_n)]
    offsets = [m.chunk_offset(i) for i in range(expected_n)]
    assert sum(lengths) == size
    assert offsets == [i * chunk_size for i in range(expected_n)]
    assert all(length == chunk_size for length in lengths[:-1])
    if expected_n:
        assert lengths[-1] == size - (expected_n - 1) * chunk_size
        assert 0 < lengths[-1] <= chunk_size
        assert offsets[-1] + lengths[-1] == size
    with pytest.raises(IndexError):
        m.chunk_length(expected_n)
    with pytest.raises(IndexError):
        m.chunk_length(-1)


def test_chunk_count_examples() -> None:
    assert chunk_count(0, 512) == 0
    assert chunk_count(1, 512) == 1
    assert chunk_count(512, 512) == 1
    assert chunk_count(513, 512) == 2
    assert chunk_count(100_001, 100_000) == 2
    assert chunk_count(MIB, MIB) == 1
    assert chunk_count(MIB + 1, MIB) == 2


@pytest.mark.parametrize("chunk_size", [MIN_CHUNK_SIZE, 512, 4096, 100_000, MIB, 16 * MIB])
def test_check_chunk_size_accepts(chunk_size: int) -> None:
    assert check_chunk_size(chunk_size) == chunk_size


@pytest.mark.parametrize("chunk_size", [511, 16 * MIB + 1, 0, -1, -512, 2**40])
def test_check_chunk_size_rejects(chunk_size: int) -> None:
    with pytest.raises(ConfigError):
        check_chunk_size(chunk_size)
    assert MAX_CHUNK_SIZE == 16 * MIB


# --- hostile manifests ----------------------------------------------------------------

BAD_NAMES = [
    "",
    ".",
    "..",
    "../x",
    "x/..",
    "a/b",
    "/etc/passwd",
    "a\\b",
    "..\\x",
    "x\0y",
    "\0",
    "line\nbreak",
    "tab\there",
    "cr\r",
    "esc\x1b[31m",
    "bell\x07",
    "del\x7f",
    "c1\x85",
    "c1\x9b",
    "a" * 256,
    "é" * 128,  # 256 bytes of UTF-8
    "☃" * 86,  # 258 bytes
    "lone\udc80surrogate",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_hostile_names_rejected(name: str) -> None:
    with pytest.raises(ManifestError):
        check_name(name)
    with pytest.raises(ManifestError):
        Manifest(name, 0, 512, b"")
    if "\udc80" not in name:
        with pytest.raises(ManifestError):
            Manifest.decode(_pack(_fields(name=name)))


@pytest.mark.parametrize(
    "name",
    [
        "été café ☃.bin",
        "with space.txt",
        " leading and trailing ",
        "日本語のファイル",
        ".hidden",
        "...",
        "-rf",
        "a" * 255,
        "é" * 127 + "a",  # exactly 255 bytes
        "emoji 🎉.png",
    ],
)
def test_ordinary_names_accepted(name: str) -> None:
    assert check_name(name) == name
    m = Manifest(name, 1, 512, _fake_hashes(1))
    assert Manifest.decode(m.encode()) == m


@pytest.mark.parametrize("name", [None, b"file", 1, ["f"]])
def test_non_text_names_rejected(name: Any) -> None:
    with pytest.raises(ManifestError):
        Manifest(name, 0, 512, b"")
    with pytest.raises(ManifestError):
        Manifest.decode(_pack(_fields(name=name)))


@pytest.mark.parametrize(
    ("size", "chunk_size", "n_hashes"),
    [
        (513, 512, 1),
        (513, 512, 3),
        (512, 512, 0),
        (512, 512, 2),
        (0, 512, 1),
        (1, 512, 0),
        (100_001, 100_000, 1),
        (MIB + 1, MIB, 1),
    ],
)
def test_hash_count_must_match(size: int, chunk_size: int, n_hashes: int) -> None:
    hashes = _fake_hashes(n_hashes)
    with pytest.raises(ManifestError):
        Manifest("f", size, chunk_size, hashes)
    with pytest.raises(ManifestError):
        Manifest.decode(_pack(_fields(size=size, chunk_size=chunk_size, hashes=hashes)))


@pytest.mark.parametrize(
    "hashes", [b"x" * 63, b"x" * 65, b"x" * 33, "x" * 64, None, [b"x" * 32] * 2]
)
def test_hashes_must_be_whole_digests(hashes: Any) -> None:
    with pytest.raises(ManifestError):
        Manifest("f", 1000, 512, hashes)
    with pytest.raises(ManifestError):
        Manifest.decode(_pack(_fields(hashes=hashes)))


BAD_INTS = [True, False, "1000", 1000.0, None, b"\x03\xe8", [1000], {"n": 1}]


@pytest.mark.parametrize("size", [-1, -(2**63), MAX_FILE_SIZE + 1, 2**60, 2**64 - 1, *BAD_INTS])
def test_bad_size_rejected(size: Any) -> None:
    with pytest.raises(ManifestError):
        Manifest("f", size, 512, b"")
    with pytest.raises(ManifestError):
        Manifest.decode(_pack(_fields(size=size)))


def test_too_many_chunks_rejected() -> None:
    # Within MAX_FILE_SIZE, but more than MAX_CHUNKS chunks.  Checked before the
    # hash count, so no huge hash string is needed to trigger it.
    with pytest.raises(ManifestError):
        Manifest("f", (MAX_CHUNKS + 1) * 512, 512, b"")
    with pytest.raises(ManifestError):
        Manifest("f", MAX_FILE_SIZE, MAX_CHUNK_SIZE, b"")


@pytest.mark.parametrize("chunk_size", [511, 0, -512, 16 * MIB + 1, *BAD_INTS])
def test_bad_chunk_size_rejected(chunk_size: Any) -> None:
    with pytest.raises(ManifestError):
        Manifest("f", 0, chunk_size, b"")
    with pytest.raises(ManifestError):
        Manifest.decode(_pack(_fields(chunk_size=chunk_size, size=0, hashes=b"")))


@pytest.mark.parametrize("version", [0, 2, -1, 255, True, False, "1", 1.0, None, b"\x01", [1], {}])
def test_wrong_version_rejected(version: Any) -> None:
    with pytest.raises(ManifestError):
        Manifest.decode(_pack(_fields(v=version)))


def _without(key: str) -> dict[str, Any]:
    out = _fields()
    del out[key]
    return out


def _reordered(order: list[str]) -> dict[str, Any]:
    f = _fields()
    return {k: f[k] for k in order}


BAD_MAPS = {
    "extra-field": {**_fields(), "extra": 1},
    "extra-field-first": {"x": 1, **_fields()},
    **{f"missing-{k}": _without(k) for k in ("v", "name", "size", "chunk_size", "hashes")},
    "reordered-name-size": _reordered(["v", "size", "name", "chunk_size", "hashes"]),
    "reordered-v-last": _reordered(["name", "size", "chunk_size", "hashes", "v"]),
    "reordered-reversed": _reordered(["hashes", "chunk_size", "size", "name", "v"]),
    "renamed": {("V" if k == "v" else k): v for k, v in _fields().items()},
    "empty-map": {},
}


@pytest.mark.parametrize("obj", list(BAD_MAPS.values()), ids=list(BAD_MAPS))
def test_wrong_fields_rejected(obj: dict[str, Any]) -> None:
    with pytest.raises(ManifestError):
        Manifest.decode(_pack(obj))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        b"\x85",
        _pack([1, "f", 1000, 512, _fake_hashes(2)]),
        _pack([]),
        _pack(None),
        _pack("manifest"),
        _pack(1),
        _manifest().encode()[:-1],
        _manifest().encode() + b"\x00",
        _manifest().encode() + _manifest().encode(),
        # Keys as bin instead of str.
        _pack({k.encode(): v for k, v in _fields().items()}),
        # Old msgpack spec: bytes as raw str (not valid UTF-8 for hashes).
        msgpack.packb(_fields(), use_bin_type=False),
        b"\x85" + b"\xd4\x01\x00" * 10,  # ext types
        b"\xdf\xff\xff\xff\xff",  # map announcing 4 Gi entries
    ],
)
def test_malformed_bytes_rejected(data: bytes) -> None:
    with pytest.raises(ManifestError):
        Manifest.decode(data)


def test_oversized_input_rejected_before_parsing() -> None:
    data = bytes(MAX_MANIFEST_BYTES + 1)
    with pytest.raises(ManifestError):
        Manifest.decode(data)


# --- non-canonical encodings ----------------------------------------------------------


def _raw_map(entries: list[tuple[bytes, bytes]], head: bytes | None = None) -> bytes:
    """A msgpack map from already-encoded keys and values, exactly as given."""
    if head is None:
        head = bytes([0x80 | len(entries)])
    return head + b"".join(k + v for k, v in entries)


_M = Manifest("a", 200, 512, _fake_hashes(1))


def _canonical_entries() -> list[tuple[bytes, bytes]]:
    return [
        (_pack("v"), _pack(FORMAT_VERSION)),
        (_pack("name"), _pack(_M.name)),
        (_pack("size"), _pack(_M.size)),
        (_pack("chunk_size"), _pack(_M.chunk_size)),
        (_pack("hashes"), _pack(_M.hashes)),
    ]


def _replace(key: str, raw: bytes, key_raw: bytes | None = None) -> bytes:
    entries = []
    for k, v in _canonical_entries():
        if k == _pack(key):
            entries.append((key_raw or k, v if key_raw else raw))
        else:
            entries.append((k, v))
    return _raw_map(entries)


NON_CANONICAL = {
    "v-as-uint8": _replace("v", b"\xcc\x01"),
    "v-as-int8": _replace("v", b"\xd0\x01"),
    "v-as-uint64": _replace("v", b"\xcf" + struct.pack(">Q", 1)),
    "v-as-float": _replace("v", b"\xcb" + struct.pack(">d", 1.0)),
    "size-as-uint16": _replace("size", b"\xcd" + struct.pack(">H", 200)),
    "size-as-uint32": _replace("size", b"\xce" + struct.pack(">I", 200)),
    "size-as-int64": _replace("size", b"\xd3" + struct.pack(">q", 200)),
    "chunk-size-as-uint32": _replace("chunk_size", b"\xce" + struct.pack(">I", 512)),
    "chunk-size-as-uint64": _replace("chunk_size", b"\xcf" + struct.pack(">Q", 512)),
    "name-as-str8": _replace("name", b"\xd9\x01a"),
    "name-as-str16": _replace("name", b"\xda\x00\x01a"),
    "hashes-as-bin16": _replace("hashes", b"\xc5\x00\x20" + _M.hashes),
    "hashes-as-bin32": _replace("hashes", b"\xc6\x00\x00\x00\x20" + _M.hashes),
    "key-as-str8": _replace("v", b"", key_raw=b"\xd9\x01v"),
    "map16-header": _raw_map(_canonical_entries(), head=b"\xde\x00\x05"),
    "map32-header": _raw_map(_canonical_entries(), head=b"\xdf\x00\x00\x00\x05"),
    "fields-reordered": _raw_map([_canonical_entries()[i] for i in (0, 1, 3, 2, 4)]),
}


def test_canonical_reference_encoding() -> None:
    assert _raw_map(_canonical_entries()) == _M.encode()


@pytest.mark.parametrize("data", list(NON_CANONICAL.values()), ids=list(NON_CANONICAL))
def test_non_canonical_encoding_rejected(data: bytes) -> None:
    # Each variant is the very same map, merely encoded differently...
    assert msgpack.unpackb(data, raw=False) == msgpack.unpackb(_M.encode(), raw=False)
    assert data != _M.encode()
    # ...and only the canonical bytes are a manifest.
    with pytest.raises(ManifestError):
        Manifest.decode(data)


# --- fuzzing decode -------------------------------------------------------------------

_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=70)
    | st.sampled_from([0, 1, 511, 512, MAX_CHUNK_SIZE, MAX_FILE_SIZE, ".", "..", "a/b"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
_field_names = st.sampled_from(["v", "name", "size", "chunk_size", "hashes", "x"])
_maps = st.dictionaries(_field_names, _values, max_size=6) | st.fixed_dictionaries(
    {"v": _values, "name": _values, "size": _values, "chunk_size": _values, "hashes": _values}
)


def _decode_or_reject(data: bytes) -> Manifest | None:
    try:
        return Manifest.decode(data)
    except ManifestError:
        return None


@FUZZ
@given(obj=_maps | _values)
def test_arbitrary_msgpack_only_raises_manifest_error(obj: Any) -> None:
    m = _decode_or_reject(_pack(obj))
    if m is not None:
        assert m.encode() == _pack(obj)


@FUZZ
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_manifest_error(data: bytes) -> None:
    m = _decode_or_reject(data)
    if m is not None:
        assert m.encode() == data


@FUZZ
@given(m=manifests(), data=st.data())
def test_mutated_manifests_only_raise_manifest_error(m: Manifest, data: st.DataObject) -> None:
    raw = bytearray(m.encode())
    pos = data.draw(st.integers(0, len(raw) - 1), label="pos")
    raw[pos] = data.draw(st.integers(0, 255), label="byte")
    got = _decode_or_reject(bytes(raw))
    if got is not None:
        assert got.encode() == bytes(raw)
    cut = data.draw(st.integers(0, len(raw) - 1), label="cut")
    assert _decode_or_reject(m.encode()[:cut]) is None


# --- hash_file ------------------------------------------------------------------------


def _expected_hashes(data: bytes, chunk_size: int) -> list[bytes]:
    return [
        hashlib.sha256(data[i : i + chunk_size]).digest() for i in range(0, len(data), chunk_size)
    ]


def _check_file_manifest(m: Manifest, data: bytes, chunk_size: int) -> None:
    assert m.size == len(data)
    assert m.chunk_size == chunk_size
    expected = _expected_hashes(data, chunk_size)
    assert m.chunk_count == len(expected)
    assert [m.chunk_hash(i) for i in range(m.chunk_count)] == expected
    for i in range(m.chunk_count):
        off, n = m.chunk_offset(i), m.chunk_length(i)
        assert hashlib.sha256(data[off : off + n]).digest() == m.chunk_hash(i)
    assert Manifest.decode(m.encode()) == m


@pytest.mark.parametrize("chunk_size", [512, MIB])
@pytest.mark.parametrize("size", [0, 1, 512, 513, MIB + 1])
def test_hash_file(tmp_path: Path, size: int, chunk_size: int) -> None:
    data = random.Random(size).randbytes(size)
    path = tmp_path / "some file.bin"
    path.write_bytes(data)
    progress: list[int] = []
    m = hash_file(path, chunk_size, progress=progress.append)
    assert m.name == "some file.bin"
    _check_file_manifest(m, data, chunk_size)
    assert progress == sorted(progress)
    assert all(0 <= p <= size for p in progress)
    if size:
        assert progress[-1] == size


@pytest.mark.parametrize("chunk_size", [MIB, 100_000, 3 * MIB + 7])
def test_hash_file_many_blocks(tmp_path: Path, chunk_size: int) -> None:
    # Several hashing blocks, pipelined through the pool; chunk sizes that do not
    # divide the block target must still cut chunks at multiples of chunk_size.
    size = 17 * MIB + 3
    data = random.Random(17).randbytes(size)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    progress: list[int] = []
    m = hash_file(path, chunk_size, progress=progress.append)
    _check_file_manifest(m, data, chunk_size)
    assert len(progress) > 1
    assert progress == sorted(progress)
    assert progress[-1] == size


def test_hash_file_without_progress_and_with_name(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(b"hello")
    m = hash_file(path, 512, name="été café ☃.bin")
    assert m.name == "été café ☃.bin"
    _check_file_manifest(m, b"hello", 512)


def test_hash_file_non_utf8_file_name(tmp_path: Path) -> None:
    raw = os.fsencode(tmp_path) + b"/\xff\xfe.bin"
    try:
        with open(raw, "wb") as fh:
            fh.write(b"data")
    except OSError:
        pytest.skip("file system refuses non-UTF-8 names")
    path = Path(os.fsdecode(raw))
    with pytest.raises(ManifestError):
        hash_file(path, 512)
    m = hash_file(path, 512, name="renamed.bin")
    _check_file_manifest(m, b"data", 512)


def test_hash_file_rejects_bad_name_override(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(b"hello")
    with pytest.raises(ManifestError):
        hash_file(path, 512, name="../x.bin")


@pytest.mark.parametrize("chunk_size", [511, 16 * MIB + 1])
def test_hash_file_rejects_bad_chunk_size(tmp_path: Path, chunk_size: int) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(b"hello")
    with pytest.raises(ConfigError):
        hash_file(path, chunk_size)


def test_hash_file_missing_file(tmp_path: Path) -> None:
    with pytest.raises(StorageError):
        hash_file(tmp_path / "missing.bin", 512)


def test_hash_file_directory(tmp_path: Path) -> None:
    directory = tmp_path / "dir"
    directory.mkdir()
    with pytest.raises(StorageError):
        hash_file(directory, 512)


@FUZZ
@given(
    data=st.binary(max_size=4000),
    chunk_size=st.integers(MIN_CHUNK_SIZE, 2000) | st.sampled_from([MIB, MAX_CHUNK_SIZE]),
)
def test_hash_file_matches_sha256_per_slice(data: bytes, chunk_size: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f"
        path.write_bytes(data)
        progress: list[int] = []
        m = hash_file(path, chunk_size, progress=progress.append)
    _check_file_manifest(m, data, chunk_size)
    assert max(progress, default=0) == len(data)
