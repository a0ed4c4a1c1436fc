"""The Metadata seam: a deterministic state machine of commands and the log that applies them.

`commands` are the only way metadata changes; `state.MetadataState.apply` is deterministic (every
decision — generated names, chosen nodes, password salts — travels inside the command), so the same
command sequence gives the same state on every node. `log.LocalLog` applies commands on one node;
the cluster replaces it with a Raft-replicated log without the broker noticing.
"""

from .commands import Command
from .log import LocalLog, MetadataLog
from .state import MetadataError, MetadataState

__all__ = ["Command", "LocalLog", "MetadataError", "MetadataLog", "MetadataState"]
