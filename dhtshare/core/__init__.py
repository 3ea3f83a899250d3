"""The sans-IO core: rules and codecs with no sockets, no asyncio, no threads.

Everything here is a pure function of its inputs (and the clock or randomness
it is handed), so it is tested fast and exhaustively: the frame and message
codecs, the peer session state machine, the manifest codec, provider records,
the piece picker and the DHT lookup state machine.
"""
