"""What the channel's parts share: the errors, the backpressure limit, and `ChannelCore`.

`Channel` (channel.py) is assembled from mixins (channel_declare.py, channel_consume.py,
channel_publish.py); `ChannelCore` declares, for type checkers and readers only, the state and the
core methods those mixins use. It holds no values and defines no methods at run time.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..metadata.state import MetadataError
from .frames import ProtocolError091

if TYPE_CHECKING:
    from ..broker import Broker
    from ..core.message import Message
    from ..core.queue import QueueHandle
    from ..core.reply_to import ReplyTo
    from ..metrics.counters import NodeCounters
    from .channel_consume import Consumer091
    from .connection import Connection091


# Deliveries stop once this many bytes wait for the socket; they resume after the next write.
OUT_LIMIT = 256 * 1024


class ChannelError(ProtocolError091):
    """A soft error: closes the channel with `code`."""


class ConnectionError091(ProtocolError091):
    """A hard error: closes the connection with `code`."""


def _err(e: MetadataError) -> ChannelError:
    return ChannelError(e.code, e.text)


class ChannelCore:
    """The state `Channel.__init__` sets and the core methods `Channel` defines (see channel.py)."""

    conn: Connection091
    broker: Broker
    counters: NodeCounters
    number: int
    is_open: bool
    closing: bool
    active: bool
    consumers: dict[str, Consumer091]
    unacked: dict[int, tuple[QueueHandle, Message, Consumer091 | None]]
    ack_marks: deque[tuple[int, float]]
    delivery_tag: int
    consumer_prefetch: int
    global_prefetch: int
    last_queue: str
    confirm: bool
    publish_seq: int
    ack_upto: int
    pending: deque[tuple[int, int]]
    watching: bool
    tx_epoch: int
    tx: list[Callable[[], None]] | None
    parked: deque[tuple[str, tuple]] | None
    deleting_queue: str | None
    reply_to: ReplyTo | None
    held_cancels: list[str]
    _exchange_cache: dict[str, Any]

    if TYPE_CHECKING:

        @property
        def vhost(self) -> str: ...

        @property
        def user(self) -> str: ...

        def next_tag(self) -> int: ...

        def send_method(self, method: Any) -> None: ...

        def _await(self, fut: asyncio.Future, then: Callable[[Any], None], method: Any) -> None: ...

        def rerun_when_caught_up(self, rerun: Callable[[], None], method: Any) -> bool: ...

        def _reply(self, nowait: bool, method: Any) -> None: ...

        def _queue_name(self, name: str) -> str: ...

        def _check_exclusive(self, qdef: Any) -> None: ...

        def _existing_queue(self, name: str) -> QueueHandle: ...

        def kick_consumers(self) -> None: ...

        def notify_cancelled(self, tag: str) -> None: ...


def _settled(fut: asyncio.Future) -> asyncio.Future:
    """A future resolved with `fut`'s exception (or None) instead of failing."""
    out = asyncio.get_running_loop().create_future()
    fut.add_done_callback(lambda f: out.set_result(None if f.cancelled() else f.exception()))
    return out
