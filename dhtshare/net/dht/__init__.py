"""The Kademlia DHT: the only place that touches the ``kademlia`` package.

:mod:`.routing` (k-buckets), :mod:`.datagram` (the wire) and :mod:`.kad` (RPCs
and the server) extend the library; :mod:`.client` is the facade the rest of
dhtshare uses.
"""
