"""The fetch engine: from a manifest hash to a verified file on disk.

1. Find the manifest's providers in the DHT, fetch the manifest from one of
   them and check it against the hash (:mod:`.manifest_source`).
2. If this node holds the whole file already, copy it (:mod:`.local`).
3. Else download it (:mod:`.download`): one worker per provider, up to a
   limit, kept running by the :mod:`.supervisor`; each asks its peer which
   chunks it has and keeps a window of requests in flight on the peer's
   single long-lived connection (:mod:`.pump`).  The
   :class:`~dhtshare.core.picker.Picker` decides what to ask: rarest first,
   random among equals, duplicates only in the endgame.
4. Every chunk is hashed before it is written; a bad chunk bans its sender
   for the rest of the fetch.  Each verified chunk is served at once and
   pushed to subscribed peers.
5. Dead peers are replaced from the DHT; when chunks have no provider left,
   the fetch fails saying how many, and keeps the verified part on disk.
6. When complete, the file is synced and renamed into place.

Nothing a fetch starts outlives it: lookups, manifest requests and peer
workers run in task groups, and writes in threads are waited for before the
file they write is closed (:mod:`.tasks`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dhtshare.core.ids import ManifestHash
from dhtshare.core.manifest import Manifest
from dhtshare.errors import ConfigError
from dhtshare.transfer.download import download
from dhtshare.transfer.local import copy_local
from dhtshare.transfer.manifest_source import ProviderSource
from dhtshare.transfer.services import Address, FetchServices, Progress


@dataclass
class FetchResult:
    manifest: Manifest
    path: Path
    elapsed: float
    bytes_downloaded: int = 0
    bytes_reused: int = 0
    peers: dict[str, int] = field(default_factory=dict)
    banned: list[str] = field(default_factory=list)
    #: Providers named in the DHT that could not be reached (skipped quickly).
    unreachable: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "hash": self.manifest.hash.hex(),
            "name": self.manifest.name,
            "path": str(self.path),
            "size": self.manifest.size,
            "chunk_size": self.manifest.chunk_size,
            "chunks": self.manifest.chunk_count,
            "elapsed": round(self.elapsed, 4),
            "bytes_downloaded": self.bytes_downloaded,
            "bytes_reused": self.bytes_reused,
            "peers": dict(self.peers),
            "banned": list(self.banned),
            "unreachable": list(self.unreachable),
        }


def resolve_output(output: Path | None, cwd: Path, name: str) -> Path:
    """``-o`` as a file, or an existing directory to put ``name`` in, or ``cwd/name``."""
    if output is None:
        return cwd / name
    output = output if output.is_absolute() else cwd / output
    if output.is_dir():
        return output / name
    return output


def check_target(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise ConfigError(f"{path} already exists: pass --force to overwrite it")
    if path.exists() and path.is_dir():
        raise ConfigError(f"{path} is a directory")
    if not path.parent.is_dir():
        raise ConfigError(f"directory {path.parent} does not exist")


def _labels(addrs: set[Address]) -> list[str]:
    return sorted(f"{h}:{p}" for h, p in addrs)


class Fetch:
    """One download of one manifest; ``run`` drives it to a verified file."""

    def __init__(
        self,
        services: FetchServices,
        manifest_hash: ManifestHash,
        output: Path | None,
        cwd: Path,
        force: bool = False,
        progress: Progress | None = None,
    ) -> None:
        self.s = services
        self.mh = manifest_hash
        self.output = output
        self.cwd = cwd
        self.force = force
        self.progress: Progress = progress or (lambda _d, _t, _p: None)

    async def run(self) -> FetchResult:
        """Fetch the file; everything started for it has ended when this returns."""
        t0 = time.perf_counter()
        if self.output is not None:
            out = self.output if self.output.is_absolute() else self.cwd / self.output
            if not out.is_dir():
                check_target(out, self.force)
        async with ProviderSource.open(self.s, self.mh) as source:
            manifest = await source.manifest()
            target = resolve_output(self.output, self.cwd, manifest.name)
            check_target(target, self.force)
            local = self.s.store.get(self.mh)
            if local is not None and local.complete \
                    and await copy_local(self.s, manifest, local, target):
                elapsed = time.perf_counter() - t0
                return FetchResult(manifest, target, elapsed, 0, manifest.size, {}, [])
            dl = await download(self.s, source, manifest, target, self.progress)
            return FetchResult(
                manifest,
                target,
                time.perf_counter() - t0,
                dl.downloaded,
                dl.reused,
                dict(dl.peers_bytes),
                _labels(source.book.banned),
                _labels(source.book.unreachable),
            )

    async def manifest_only(self) -> Manifest:
        """The verified manifest, from this node or the network (no download)."""
        async with ProviderSource.open(self.s, self.mh) as source:
            return await source.manifest()


__all__ = ["Fetch", "FetchResult", "FetchServices", "check_target", "resolve_output"]
