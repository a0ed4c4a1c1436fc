"""AMQP 0-9-1 front end.

`spec` and `frames` are sans-I/O: bytes in, method tuples and publish events out; method
tuples in, bytes out. `connection` holds the protocol state (handshake, channels, content assembly)
and talks to the broker core; node.listener is the asyncio shell around it. Field tables and the
basic property list are shared with the core and the 1.0 front end, in node.wire.
"""
