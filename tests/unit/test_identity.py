"""Node identity: an Ed25519 key, and the node id that can only belong to it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dhtshare.core.identity import Identity, fingerprint, node_id_of, verify
from dhtshare.core.ids import NODE_ID_LEN
from dhtshare.errors import ConfigError

pytestmark = pytest.mark.timeout(30)


def test_node_id_is_derived_from_the_public_key() -> None:
    me = Identity.generate()
    assert len(me.node_id) == NODE_ID_LEN
    assert me.node_id == node_id_of(me.public_key)
    assert Identity(me.seed).node_id == me.node_id  # the seed is the whole identity
    assert Identity.generate().node_id != me.node_id


def test_signatures_verify_only_for_their_key_and_data() -> None:
    me, other = Identity.generate(), Identity.generate()
    sig = me.sign(b"handshake")
    assert verify(me.public_key, sig, b"handshake")
    assert not verify(me.public_key, sig, b"handshake!")
    assert not verify(other.public_key, sig, b"handshake")
    assert not verify(b"short", sig, b"handshake")


@settings(max_examples=100, deadline=None, database=None)
@given(key=st.binary(max_size=40), sig=st.binary(max_size=80), data=st.binary(max_size=64))
def test_verify_of_garbage_is_false_never_an_exception(key: bytes, sig: bytes, data: bytes) -> None:
    assert verify(key, sig, data) is False


def test_fingerprint_is_short_and_stable() -> None:
    me = Identity.generate()
    assert me.fingerprint == fingerprint(me.public_key)
    assert len(me.fingerprint.split(":")) == 8
    assert me.fingerprint in repr(me)
    assert me.seed.hex() not in repr(me)


def test_a_seed_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(ConfigError, match="32 bytes"):
        Identity(b"x" * 31)
