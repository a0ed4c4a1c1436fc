"""The management API's routes: RabbitMQ's paths and JSON shapes over this node's broker.

Reads come from the live state (metadata, queues, connections) on the event loop. Every change to
metadata is a command proposed through `broker.propose` and awaited, exactly as a channel does, so
on a cluster the same handlers wait for Raft. Queue operations that are not metadata (purge, get,
publish) go through the `QueueHandle` seam. Vhost names are percent-encoded in paths (`%2F`).

One module per resource (overview, cluster_ops, connections, exchanges, queues, bindings,
vhosts_users, policies, limits, definitions, health), each a subclass of `base.ApiBase`; `routes.py`
combines them into `ManagementApi` and holds the route table.
"""

from .routes import ManagementApi

__all__ = ["ManagementApi"]
