"""Replicated (quorum) queues: the replication protocol as a state machine without I/O.

log.py holds one replica's copy of a queue's log (entries with their leader epochs); replica.py
the roles (leader, follower), the fetch protocol, commit, fencing and the controller's election.
Not wired to the broker yet: the next steps (issue 13) are the QueueHandle of a replicated queue,
the metadata commands that carry replica sets and epochs, and the data over the node-to-node
gRPC streams.
"""
