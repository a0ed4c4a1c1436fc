"""Forwarding between nodes over gRPC (proto/merpati/v1/forwarding.proto).

- `wiring.start_forwarding(broker, ...)` -> `Forwarding`: the node's server, its peers, and the
  broker's `remote_queue_factory`; `add_peer` / `remove_peer` as membership changes; `stop()`.
- `server.ForwardingServer`: serves the queues this node leads.
- `client.Peer`: this node's link to another (batched Publish stream, health).
- `remote_queue.RemoteQueue`: the QueueHandle of a queue another node leads.

grpc.aio runs on uvloop as well as on asyncio's own loop (tests/cluster/test_forwarding.py runs
on both), so a node keeps uvloop in cluster mode.
"""
