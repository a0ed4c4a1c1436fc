"""The names Raft's pickles give the metadata classes, kept as they were.

pysyncobj pickles the metadata commands into its journal, the state into its snapshots, and both
onto the wire between nodes; a pickle names each class by its module path. Until the packages
were installed under one name (`merpati.node`, `merpati.cluster`, ...), those paths were
`node.metadata.commands`, `node.metadata.state` and `node.routing.*`. A data directory written
then, and a node of that version during a rolling upgrade, still use them; a node that wrote the
new names would be unreadable to the old one (which would stop applying the log).

So the pickled classes keep their old names for good: `freeze()` registers each old module name
(and its parent packages) as an alias of the module that now holds the classes, and gives those
classes the old `__module__`. Pickles written before, after and by either version are the same
bytes. tests/unit/test_pickle_names.py loads what a node of the old version wrote and checks that
every class in a pickled state or command is named as before.
"""

from __future__ import annotations

import importlib
import sys

PREFIX = "merpati."
# The modules whose classes end up in Raft's pickles, by their name before the rename.
PICKLED_MODULES = (
    "node.metadata.commands",
    "node.metadata.state",
    "node.routing.exchange",
    "node.routing.headers",
    "node.routing.topic",
)


def freeze() -> None:
    """Make the old module names resolve to today's modules and name their classes so."""
    for old in PICKLED_MODULES:
        parts = old.split(".")
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            if name not in sys.modules:
                sys.modules[name] = importlib.import_module(PREFIX + name)
        module = sys.modules[old]
        for value in vars(module).values():
            if isinstance(value, type) and value.__module__ == PREFIX + old:
                value.__module__ = old
