"""What crosses nodes: Raft metadata, membership, placement, forwarding, replication.

`cluster` imports `node`, never the reverse except through the seams (docs/architecture.md):
`cluster.raft_log.RaftLog` implements `node.metadata.log.MetadataLog` by replicating commands
with pysyncobj, so a single node is a one-member Raft cluster and a cluster differs from it only
by the partner addresses it is given; `cluster.cluster_node.ClusterNode` is the broker's
`node.cluster_seam.ClusterSeam` (placement, RemoteQueues, queue moves).
"""

if __name__ != "merpati.cluster":  # pragma: no cover - a checkout's folder imported by its own name
    # Two copies of the same modules (`cluster.x` and `merpati.cluster.x`) would not recognise each
    # other's classes; the folder is the package merpati.cluster (pyproject.toml's package-dir).
    raise ImportError(
        f"import merpati.cluster, not {__name__} (pip install -e . makes it importable)"
    )
