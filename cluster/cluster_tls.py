"""The cluster's certificate (`--cluster-tls-cert/-key/-ca`): one set of files for all traffic
between nodes, gRPC (forwarding.SECURITY) and the metadata Raft (raft_tls.RaftTls), reloaded
together on SIGHUP or when a file changes; open connections keep the certificate they were made
with, new ones take the new one."""

from __future__ import annotations

from pathlib import Path

from merpati.node.tls import CertificateWatcher, TLSConfigError

from .forwarding._common import SECURITY
from .raft_tls import RaftTls


class ClusterTls:
    def __init__(self, cert: str, key: str, ca: str) -> None:
        """Raises node.tls.TLSConfigError naming the file that is missing or unusable."""
        self.files = (cert, key, ca)
        self.raft = RaftTls(cert, key, ca)
        self._use_for_grpc()
        self.watcher = CertificateWatcher(self.files, self.load, "cluster TLS certificate")

    def load(self) -> None:
        self.raft.reload()
        self._use_for_grpc()

    def _use_for_grpc(self) -> None:
        material = []
        for path in self.files:
            try:
                material.append(Path(path).read_bytes())
            except OSError as e:
                raise TLSConfigError(f"cannot read cluster TLS file {path}: {e.strerror}")
        SECURITY.use_tls(*material)
