"""The link handshake: Noise XX or IK, with the node's Ed25519 key vouching for it (sans-IO).

A link is only as trustworthy as the proof of who is at the other end.  The
handshake is the `noiseprotocol` package's (X25519, AES-GCM, SHA-256): it
gives both ends shared keys only the two of them hold, and each end's static
X25519 key.  What Noise alone cannot say is which *node* holds that static
key; so each side sends, encrypted inside the handshake, its Ed25519 public
key and a signature over its static key (as libp2p-noise does).  The node
id is derived from that public key (:func:`~dhtshare.core.identity.node_id_of`),
so a peer proves the id it claims, and a dialer refuses a peer whose key does
not belong to the node it meant to reach.

Two patterns: **XX** (1.5 round trips, nothing known in advance) and **IK**
(one round trip, when the dialer already knows the responder's static key from
an earlier link).  The static key is derived from the node's seed, so it is
as long-lived as its node id and what a dialer learned stays true.  The first
handshake message names its pattern in one byte.

Every handshake message goes on the wire as ``u16 length | message``; the
transport records that follow are :mod:`dhtshare.core.records`' business.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from noise.connection import Keypair, NoiseConnection
from noise.exceptions import (
    NoiseHandshakeError,
    NoiseInvalidMessage,
    NoiseValidationError,
    NoiseValueError,
)

from dhtshare.core.identity import PUBLIC_LEN, Identity, node_id_of, verify
from dhtshare.errors import RemoteProtocolError

XX = b"Noise_XX_25519_AESGCM_SHA256"
IK = b"Noise_IK_25519_AESGCM_SHA256"
#: The first handshake message's first byte: which pattern it opens.
_PATTERN_BYTE = {XX: 1, IK: 2}
_PATTERN_OF = {v: k for k, v in _PATTERN_BYTE.items()}
#: Bound into the handshake hash: a different protocol's handshake cannot be replayed here.
PROLOGUE = b"dhtshare/link/v1"
_STATIC_INFO = b"dhtshare/noise-static/v1"
_PROOF_DOMAIN = b"dhtshare/noise-static-proof/v1\0"
#: Our handshake messages are a few hundred bytes; anything longer is refused unread.
MAX_MESSAGE = 1024
LENGTH = struct.Struct(">H")
#: What the noise package and the curve code raise for a message they refuse.
_REFUSED = (NoiseHandshakeError, NoiseInvalidMessage, NoiseValidationError, NoiseValueError,
            InvalidTag, ValueError, IndexError)
#: Node ids whose static key a node remembers, for IK (about 100 bytes each).
KNOWN_STATICS = 4096


@dataclass(frozen=True, slots=True)
class LinkKeys:
    """A node's handshake credentials: its X25519 static key and the Ed25519 proof of it."""

    public_key: bytes  # Ed25519: the node's identity
    static_private: bytes
    static_public: bytes
    proof: bytes  # the identity's signature over the static key

    @classmethod
    def of(cls, identity: Identity) -> LinkKeys:
        # Derived, not random, so a node's static key lives as long as its id.
        seed = HKDF(hashes.SHA256(), 32, salt=None, info=_STATIC_INFO).derive(identity.seed)
        private = X25519PrivateKey.from_private_bytes(seed)
        public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return cls(identity.public_key, seed, public, identity.sign(_PROOF_DOMAIN + public))

    def payload(self) -> bytes:
        return bytes(msgpack.packb([self.public_key, self.proof]))


def check_payload(payload: bytes | bytearray, remote_static: bytes) -> bytes:
    """The peer's Ed25519 key, once it is shown to vouch for ``remote_static``."""
    try:
        obj = msgpack.unpackb(bytes(payload))
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as err:
        raise RemoteProtocolError("the peer's handshake payload is not readable") from err
    if not (isinstance(obj, list) and len(obj) == 2 and all(isinstance(x, bytes) for x in obj)):
        raise RemoteProtocolError("the peer's handshake payload is malformed")
    public_key, proof = obj
    vouched = verify(public_key, proof, _PROOF_DOMAIN + remote_static)
    if len(public_key) != PUBLIC_LEN or not vouched:
        raise RemoteProtocolError("the peer's key does not vouch for its handshake key")
    return bytes(public_key)


@dataclass(frozen=True, slots=True)
class Secrets:
    """What a finished handshake leaves: one key per direction, and who the peer is."""

    send_key: bytes
    recv_key: bytes
    peer_key: bytes  # Ed25519
    peer_static: bytes  # X25519, for IK next time
    handshake_hash: bytes


class KnownStatics:
    """Static keys of nodes we completed a handshake with, so the next dial can be IK."""

    def __init__(self, capacity: int = KNOWN_STATICS) -> None:
        self.capacity = capacity
        self._keys: OrderedDict[bytes, bytes] = OrderedDict()

    def get(self, node_id: bytes | None) -> bytes | None:
        return None if node_id is None else self._keys.get(node_id)

    def learn(self, node_id: bytes, static: bytes) -> None:
        self._keys[node_id] = static
        self._keys.move_to_end(node_id)
        while len(self._keys) > self.capacity:
            self._keys.popitem(last=False)


class Handshake:
    """One side of one handshake: bytes in, the messages to send back out, then :class:`Secrets`.

    The dialer (``initiator``) opens with :meth:`start`; the responder learns
    the pattern from that first message.  :meth:`receive` takes one whole
    message (without its length) and returns what to send back, framed, or
    ``b""``.  Any failure is a :class:`RemoteProtocolError`: the link is dead.
    """

    def __init__(self, keys: LinkKeys, initiator: bool, remote_static: bytes | None = None):
        self.keys = keys
        self.initiator = initiator
        self._remote_static = remote_static
        self._noise: NoiseConnection | None = None
        self._pattern: bytes | None = None
        self._peer_key = b""
        self.secrets: Secrets | None = None

    def _begin(self, pattern: bytes) -> NoiseConnection:
        noise = NoiseConnection.from_name(pattern)
        if self.initiator:
            noise.set_as_initiator()
        else:
            noise.set_as_responder()
        noise.set_prologue(PROLOGUE)
        noise.set_keypair_from_private_bytes(Keypair.STATIC, self.keys.static_private)
        if pattern == IK and self.initiator:
            assert self._remote_static is not None
            noise.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, self._remote_static)
        noise.start_handshake()
        self._noise, self._pattern = noise, pattern
        # Kept: the package drops its handshake state (and the peer's static key) when done.
        self._state = noise.noise_protocol.handshake_state
        return noise

    @property
    def pattern(self) -> bytes | None:
        """The pattern in use (``XX`` or ``IK``), once the first message went either way."""
        return self._pattern

    def start(self) -> bytes:
        """The dialer's first message, framed."""
        if not self.initiator or self._noise is not None:
            raise RuntimeError("only a dialer starts a handshake, once")
        if self._remote_static is not None:
            noise = self._begin(IK)
            message = noise.write_message(self.keys.payload())  # IK: -> e, es, s, ss
            return _framed(bytes([_PATTERN_BYTE[IK]]) + bytes(message))
        noise = self._begin(XX)
        return _framed(bytes([_PATTERN_BYTE[XX]]) + bytes(noise.write_message()))  # -> e

    def receive(self, message: bytes | bytearray | memoryview) -> bytes:
        """Take the peer's next message; what to send back (framed), or ``b""``."""
        if self.secrets is not None:
            raise RemoteProtocolError("a handshake message after the handshake")
        message = bytes(message)
        try:
            return self._receive(message)
        except _REFUSED as err:
            raise RemoteProtocolError(
                f"the link handshake failed: {str(err) or type(err).__name__}"
            ) from err

    def _receive(self, message: bytes) -> bytes:
        noise = self._noise
        if noise is None:  # the responder's first message: it names the pattern
            if self.initiator or not message:
                raise RemoteProtocolError("the link handshake did not open properly")
            pattern = _PATTERN_OF.get(message[0])
            if pattern is None:
                raise RemoteProtocolError(f"unknown link handshake pattern {message[0]}")
            noise = self._begin(pattern)
            payload = noise.read_message(message[1:])
            if pattern == IK:
                self._peer_key = check_payload(payload, self._rs())
                reply = noise.write_message(self.keys.payload())  # <- e, ee, se
                self._finish(noise)
                return _framed(bytes(reply))
            return _framed(bytes(noise.write_message(self.keys.payload())))  # <- e, ee, s, es
        # The dialer's second step (XX: <- e, ee, s, es; IK: the answer) or the
        # XX responder's last (-> s, se): either way the peer vouches for its key.
        payload = noise.read_message(message)
        self._peer_key = check_payload(payload, self._rs())
        reply = b""
        if self.initiator and self._pattern == XX:
            reply = _framed(bytes(noise.write_message(self.keys.payload())))  # -> s, se
        self._finish(noise)
        return reply

    def _rs(self) -> bytes:
        return bytes(self._state.rs.public_bytes)

    def _finish(self, noise: NoiseConnection) -> None:
        if not noise.handshake_finished:
            raise RemoteProtocolError("the link handshake ended early")
        proto = noise.noise_protocol
        self.secrets = Secrets(
            send_key=bytes(proto.cipher_state_encrypt.k),
            recv_key=bytes(proto.cipher_state_decrypt.k),
            peer_key=self._peer_key,
            peer_static=self._rs(),
            handshake_hash=bytes(proto.handshake_hash),
        )


def _framed(message: bytes) -> bytes:
    if len(message) > MAX_MESSAGE:  # pragma: no cover - our messages are small
        raise RuntimeError("handshake message too long")
    return LENGTH.pack(len(message)) + message


__all__ = [
    "IK",
    "LENGTH",
    "MAX_MESSAGE",
    "XX",
    "Handshake",
    "KnownStatics",
    "LinkKeys",
    "LinkSecurity",
    "Secrets",
    "check_payload",
    "node_id_of",
]


class LinkSecurity:
    """A node's side of every link: its keys, and the static keys of the nodes it has met."""

    def __init__(self, identity: Identity) -> None:
        self.keys = LinkKeys.of(identity)
        self.known = KnownStatics()

    def handshake(self, initiator: bool, expect: bytes | None = None) -> Handshake:
        """A dialer that knows ``expect``'s static key from before opens with IK."""
        return Handshake(self.keys, initiator, self.known.get(expect) if initiator else None)

    def learn(self, secrets: Secrets) -> None:
        self.known.learn(node_id_of(secrets.peer_key), secrets.peer_static)
