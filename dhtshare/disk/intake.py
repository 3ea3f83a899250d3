"""Which replicas a node agrees to hold for others, and how many one peer may ask for.

A PUT_MANIFEST is a request, not an order: a node that said yes to every
stranger was filled with hundreds of empty replicas that each held
descriptors and memory, and kept them across restarts.  A node now agrees
only within limits it can keep: so many replicas in all, so many still being
filled per asking peer (peers are named by the key their link proved), room
for at least a chunk; and a replica agreed to but never filled is dropped
after a while, so an abandoned offer costs nothing for long.  Bytes are
still checked chunk by chunk as they come (``ContentStore.check_room``).
"""

from __future__ import annotations

import time

from dhtshare.core.manifest import Manifest
from dhtshare.disk.store import ContentStore
from dhtshare.errors import StorageFull

#: Replicas (of any origin) a node holds at most.
MAX_REPLICAS = 4096
#: Replicas one peer may have asked for that are not yet complete.
MAX_PENDING_PER_ORIGIN = 32
#: Seconds an agreed replica may stay without a single chunk before it is dropped.
EMPTY_REPLICA_TTL = 600.0


def sweep_empty(store: ContentStore, now: float | None = None) -> int:
    """Drop replicas others asked for that got no chunk in :data:`EMPTY_REPLICA_TTL`."""
    now = time.time() if now is None else now
    stale = [h for h, e in store.entries.items()
             if e.durable and e.origin and e.held is not None and not any(e.held)
             and now - e.opened > EMPTY_REPLICA_TTL]
    for h in stale:
        store.drop(h)
    return len(stale)


def admit_replica(store: ContentStore, manifest: Manifest, origin: str,
                  now: float | None = None) -> None:
    """Raise :class:`StorageFull`, saying why, unless ``origin``'s replica may be held."""
    old = store.entries.get(manifest.hash)
    if old is not None and old.durable:
        return  # held already: agreeing again costs nothing
    sweep_empty(store, now)
    durable = [e for e in store.entries.values() if e.durable]
    if len(durable) >= MAX_REPLICAS:
        raise StorageFull(f"this node holds {len(durable)} replicas, its limit")
    pending = sum(1 for e in durable if e.origin == origin and not e.complete)
    if pending >= MAX_PENDING_PER_ORIGIN:
        raise StorageFull(f"{pending} replicas you asked for are still being filled here")
    store.check_room(min(manifest.size, manifest.chunk_size))


__all__ = ["EMPTY_REPLICA_TTL", "MAX_PENDING_PER_ORIGIN", "MAX_REPLICAS", "admit_replica",
           "sweep_empty"]
