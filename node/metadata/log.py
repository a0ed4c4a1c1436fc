"""How commands reach the state machine: `MetadataLog` (the seam) and `LocalLog` (one node).

`propose` returns an asyncio future resolved with the command's result once it is applied on this
node (a `MetadataError` result fails the future). Listeners hear every applied command with its
result, in log order, whoever proposed it: that is how a node creates the queues it leads and how
it learns of bindings declared elsewhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from .commands import Command
from .state import MetadataError, MetadataState

Listener = Callable[[Command, Any], None]


class MetadataLog(Protocol):
    state: MetadataState

    def propose(self, cmd: Command) -> asyncio.Future: ...

    def subscribe(self, listener: Listener) -> None: ...

    def barrier(self) -> asyncio.Future | None:
        """Resolves once everything committed before the call has applied on this node (None:
        nothing can be behind, every command applies here at once)."""
        ...


class LocalLog:
    """A single node's log: commands apply at once, in the caller's order."""

    def __init__(self, state: MetadataState | None = None) -> None:
        self.state = state or MetadataState()
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def apply(self, cmd: Command) -> Any:
        result = self.state.apply(cmd)
        for listener in self._listeners:
            listener(cmd, result)
        return result

    def barrier(self) -> asyncio.Future | None:
        return None

    def propose(self, cmd: Command) -> asyncio.Future:
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        result = self.apply(cmd)
        if isinstance(result, MetadataError):
            fut.set_exception(result)
        else:
            fut.set_result(result)
        return fut
