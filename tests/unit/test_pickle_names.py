"""Raft's pickles keep naming the metadata classes as a node of version 0.1 did (`node.*`), so a data
directory written then loads, and old and new nodes read each other's log during an upgrade."""

from __future__ import annotations

import dataclasses
import pickle
import pickletools
from pathlib import Path
from typing import Any

import merpati.cluster.raft_log  # noqa: F401 - importing it freezes the pickled names
from merpati.cluster.pickle_names import PICKLED_MODULES
from merpati.node.metadata import commands as cmds
from merpati.node.metadata.state import MetadataState

# Written by the code of commit 6964551 (top-level `node` package): {"commands": [...], "state": ...}
OLD = Path(__file__).parent / "data" / "metadata-v0.1.pickle"


def history() -> list[cmds.Command]:
    """The commands the fixture was made from, in today's classes."""
    c = cmds
    return [
        c.AddVhost("/"),
        c.AddVhost("v2"),
        c.PutUser("ops", "aGFzaA==", ("administrator",)),
        c.SetPermissions("ops", "/"),
        c.DeclareExchange("/", "t", "topic"),
        c.DeclareExchange("/", "h", "headers"),
        c.DeclareExchange("/", "f", "fanout"),
        c.DeclareExchange("/", "d", "direct"),
        c.DeclareExchange("/", "dl", "x-delayed-message", arguments={"x-delayed-type": "topic"}),
        c.DeclareQueue("/", "q1", True, leader="n1", arguments={"x-max-length": 10}),
        c.DeclareQueue("/", "q2", True, leader="n2"),
        c.Bind("/", "t", "q", "q1", "a.*.#"),
        c.Bind("/", "h", "q", "q2", "", {"x-match": "any", "k": "v"}),
        c.Bind("/", "f", "q", "q1", ""),
        c.Bind("/", "d", "e", "t", "k"),
        c.SetPolicy("/", "p", "^q", {"max-length": 5}, 1, "queues"),
        c.NodeJoined("n1", "127.0.0.1:25672", "127.0.0.1:25673"),
        c.NodeJoined("n2", "127.0.0.1:25674", "127.0.0.1:25675"),
        c.MoveQueue("/", "q2", "n2", "n1"),
        c.QueueHandedOver("/", "q2", "n2", 1),
        c.SetNodeDraining("n2", True),
        c.NodeStarted("n1", False),
    ]


def named_modules(blob: bytes) -> set[str]:
    """The module paths a pickle names its classes by (protocol 4: STACK_GLOBAL strings)."""
    out = set()
    for op, arg, _ in pickletools.genops(blob):
        if op.name == "GLOBAL":
            out.add(arg.split(" ")[0])
        elif op.name in ("SHORT_BINUNICODE", "BINUNICODE") and "." in str(arg):
            if str(arg).split(".")[0] in ("node", "cluster", "merpati"):
                out.add(arg)
    return out


def canonical(value: Any, depth: int = 0) -> Any:
    """A plain-data picture of an object graph (sets sorted, objects as their fields), to compare
    states that pickle the same things in another order."""
    assert depth < 40
    if hasattr(value, "__func__"):  # a bound method (an exchange's route): by its name
        return value.__func__.__qualname__
    if isinstance(value, dict):
        return sorted(
            (repr(canonical(k, depth + 1)), canonical(v, depth + 1)) for k, v in value.items()
        )
    if isinstance(value, (set, frozenset)):
        return sorted(repr(canonical(v, depth + 1)) for v in value)
    if isinstance(value, (list, tuple)):
        return [canonical(v, depth + 1) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # Every field, also one added since the pickle was written (read as its default).
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return [type(value).__qualname__, canonical(fields, depth + 1)]
    if hasattr(value, "__dict__") or hasattr(type(value), "__slots__"):
        fields = dict(getattr(value, "__dict__", {}))
        for cls in type(value).__mro__:
            for slot in getattr(cls, "__slots__", ()):
                if hasattr(value, slot):
                    fields[slot] = getattr(value, slot)
        if not fields:
            return repr(value)
        return [type(value).__qualname__, canonical(fields, depth + 1)]
    return value


def test_what_a_node_of_the_old_version_pickled_loads_as_todays_classes() -> None:
    old = pickle.loads(OLD.read_bytes())
    assert old["commands"] == history()
    state = MetadataState()
    for cmd in history():
        state.apply(cmd)
    assert type(old["state"]) is MetadataState
    assert old["state"].queue("/", "q2").leader == state.queue("/", "q2").leader == "n1"
    # The old version recorded no member's log features: none are assumed (so no command it
    # could not read is proposed until every member has started again with today's version).
    assert old["state"].node_features == {}
    state.node_features.clear()
    assert canonical(old["state"]) == canonical(state)


def test_todays_pickles_name_the_classes_as_before() -> None:
    state = MetadataState()
    for cmd in history():
        state.apply(cmd)
    blob = pickle.dumps({"commands": history(), "state": state}, protocol=4)
    names = named_modules(blob)
    assert names and names <= set(PICKLED_MODULES), names - set(PICKLED_MODULES)
    # The same names a node of the old version wrote for the same history (the bytes differ
    # only in the order sets are written in).
    assert names == named_modules(OLD.read_bytes())
