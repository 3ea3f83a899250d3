"""The asyncio shell over the network: peer links, the chunk server, the DHT, the control socket."""
