"""The node's bandwidth limits: one upload and one download bucket shared by every link.

Upload is held back where writers already wait (``Connection.drain``), so a
served chunk is sent whole and the next waits its turn; download is held
back by pausing the socket's reading, so TCP slows the sender down.  Neither
sleeps on the event loop.  Limits change at run time (``dhtshare limit``).
"""

from __future__ import annotations

import asyncio
import time

from dhtshare.core.bucket import TokenBucket


class Limiter:
    """Upload and download rates for a whole node, in bytes per second (0: none)."""

    def __init__(self, upload: float = 0.0, download: float = 0.0) -> None:
        now = time.monotonic()
        self.upload = TokenBucket(upload, now)
        self.download = TokenBucket(download, now)

    def set(self, upload: float | None = None, download: float | None = None) -> None:
        now = time.monotonic()
        if upload is not None:
            self.upload.set_rate(upload, now)
        if download is not None:
            self.download.set_rate(download, now)

    def sent(self, nbytes: int) -> None:
        self.upload.charge(nbytes, time.monotonic())

    async def upload_turn(self, nbytes: int = 0) -> None:
        """Wait until the upload bucket is out of debt, then take ``nbytes`` from it.

        Taking them at the moment the turn is granted (not when they are
        written, which may be after a file read) is what keeps many links
        that wait at once from all going at once.
        """
        for _ in range(1000):  # bounded: a rate lowered meanwhile only lengthens a wait
            now = time.monotonic()
            wait = self.upload.delay(now)
            if wait <= 0:
                self.upload.charge(nbytes, now)
                return
            await asyncio.sleep(wait)

    def received(self, nbytes: int) -> float:
        """Charge ``nbytes`` received; how long reading should pause (0: not at all)."""
        now = time.monotonic()
        self.download.charge(nbytes, now)
        return self.download.delay(now)

    @property
    def download_limited(self) -> bool:
        return bool(self.download.rate)

    def download_delay(self) -> float:
        return self.download.delay(time.monotonic())


__all__ = ["Limiter"]
