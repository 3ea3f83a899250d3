"""The Kademlia DHT: the only place that touches the ``kademlia`` package.

:mod:`.kad` extends the library (routing table, datagram protocol, server);
:mod:`.client` is the facade the rest of dhtshare uses.
"""
