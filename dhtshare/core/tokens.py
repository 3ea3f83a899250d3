"""Write tokens: proof that an announcer receives packets at the address it sends from.

As in BitTorrent's BEP 5: a node answers a lookup with a short MAC of the
asker's IP address under a secret it rotates; an ``add_provider`` (and a
full ``get_providers`` answer) needs a token that checks out for the
packet's source.  Spoofing a source address is then useless: the token went
to the real owner of that address.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time

TOKEN_LEN = 8
TOKEN_ROTATE = 300.0


class TokenIssuer:
    """Write tokens bound to an IP address, valid for one to two rotation periods."""

    def __init__(self, rotate: float = TOKEN_ROTATE) -> None:
        self._rotate = rotate
        self._secrets = [os.urandom(16), os.urandom(16)]
        self._rotated_at = time.monotonic()

    def _maybe_rotate(self) -> None:
        now = time.monotonic()
        elapsed = now - self._rotated_at
        if elapsed >= 2 * self._rotate:
            self._secrets = [os.urandom(16), os.urandom(16)]  # idle: both are too old
            self._rotated_at = now
        elif elapsed >= self._rotate:
            self._secrets = [os.urandom(16), self._secrets[0]]
            self._rotated_at = now

    @staticmethod
    def _mac(secret: bytes, host: str) -> bytes:
        return hmac.new(secret, host.encode(), hashlib.sha256).digest()[:TOKEN_LEN]

    def issue(self, host: str) -> bytes:
        self._maybe_rotate()
        return self._mac(self._secrets[0], host)

    def check(self, host: str, token: object) -> bool:
        self._maybe_rotate()
        if not isinstance(token, bytes):
            return False
        return any(hmac.compare_digest(self._mac(s, host), token) for s in self._secrets)
