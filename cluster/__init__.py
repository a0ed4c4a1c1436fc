"""What crosses nodes: Raft metadata, membership, placement, forwarding, replication.

`cluster` imports `node`, never the reverse except through the seams of DESIGN.md. The first of
them made real here is the Metadata seam: `cluster.raft_log.RaftLog` implements
`node.metadata.log.MetadataLog` by replicating commands with pysyncobj, so a single node is a
one-member Raft cluster and a cluster differs from it only by the partner addresses it is given.
"""
