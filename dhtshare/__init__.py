"""dhtshare: trackerless peer-to-peer file sharing over a Kademlia DHT."""

__version__ = "0.1.0"

__all__ = ["__version__"]
