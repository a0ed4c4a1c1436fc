"""One AMQP 0-9-1 channel: its methods mapped onto the broker core.

Theory of operation: a channel handles its methods strictly in arrival order. Most run to completion
at once; a method that changes metadata proposes a command and, if the log has not applied it yet,
the channel parks every later frame (methods and publishes) until the reply is sent. On a single
node the log applies at once, so nothing is ever parked; in a cluster the same code waits for Raft.

Errors are raised as `ChannelError` (soft: the channel closes) or `ConnectionError091` (hard: the
connection closes); `connection` turns them into channel.close / connection.close frames.

Deliveries and settlements: every delivery in ack mode gets the channel's next delivery tag and an
entry in `unacked` (insertion order = tag order, which makes `multiple` a prefix walk). Settlements
map to the core outcomes: ack = accepted, reject/nack requeue=false = rejected, requeue=true and
channel close = released. The acknowledgement timeout looks at the first entry, the oldest
delivery, against the marks its connection's periodic check takes (`ack_timeout_check` in
channel_consume.py): a delivery costs no clock read.

The methods live in mixins that `Channel` inherits from, by concern:

- channel_declare.py: exchange/queue declare, bind, unbind, delete, purge (`DeclareMixin`);
- channel_consume.py: basic.qos/consume/cancel/get, ack/nack/reject/recover, and `Consumer091`
  (`ConsumeMixin`);
- channel_publish.py: basic.publish, confirm.select, tx.*, store commits (`PublishMixin`);
- channel_base.py: the errors, OUT_LIMIT, and `ChannelCore`, the type-only declaration of the state
  below and of the core methods the mixins call.

This module keeps the state, the method dispatch table, `_await` and parking, and teardown.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..core.message import Message
from ..core.queue import QueueHandle
from ..metadata.state import MetadataError
from . import render, spec
from .channel_base import OUT_LIMIT, ChannelError, ConnectionError091
from .channel_consume import ConsumeMixin, Consumer091
from .channel_declare import DeclareMixin
from .channel_publish import PublishMixin
from .constants import COMMAND_INVALID, NOT_FOUND, RESOURCE_LOCKED

if TYPE_CHECKING:
    from ..core.reply_to import ReplyTo
    from .connection import Connection091

__all__ = ["OUT_LIMIT", "Channel", "ChannelError", "ConnectionError091", "Consumer091"]


class Channel(DeclareMixin, ConsumeMixin, PublishMixin):
    def __init__(self, conn: Connection091, number: int) -> None:
        self.conn = conn
        self.broker = conn.broker
        self.counters = conn.broker.counters
        self.number = number
        self.is_open = True
        self.closing = False
        self.active = True  # channel.flow
        self.consumers: dict[str, Consumer091] = {}
        self.unacked: dict[int, tuple[QueueHandle, Message, Consumer091 | None]] = {}
        # (delivery tag, monotonic time) taken at each acknowledgement timeout check: how old
        # the oldest unacked delivery is at least (ack_timeout_check), without a clock read per
        # delivery.
        self.ack_marks: deque[tuple[int, float]] = deque()
        self.delivery_tag = 0
        self.consumer_prefetch = 0
        self.global_prefetch = 0
        self.last_queue = ""  # the queue an empty queue name refers to
        self.confirm = False
        self.publish_seq = 0
        self.ack_upto = 0  # highest publish seq confirmed and not yet acknowledged to the client
        # Publishes whose confirm waits for a store commit: (publish seq, store epoch), in order.
        self.pending: deque[tuple[int, int]] = deque()
        self.watching = False  # registered with the ledger for commits
        self.tx_epoch = 0
        self.tx: list[Callable[[], None]] | None = None
        # Frames that arrived while a metadata command was in flight.
        self.parked: deque[tuple[str, tuple]] | None = None
        self._retrying = False  # running a method again after catching up (at most once)
        # While this channel deletes a queue: the queue's name, and the tags of its consumers
        # here that the deletion cancelled, whose basic.cancel follows queue.delete-ok.
        self.deleting_queue: str | None = None
        # Direct reply-to: this channel's reply consumer's queue, once it consumes from
        # amq.rabbitmq.reply-to (node.core.reply_to).
        self.reply_to: ReplyTo | None = None
        self.held_cancels: list[str] = []
        self._exchange_cache: dict[str, Any] = {}
        self._handlers: dict[str, Callable[[Any], None]] = {
            "channel.flow": self._flow,
            "channel.flow-ok": self._ignore,
            "exchange.declare": self._exchange_declare,
            "exchange.delete": self._exchange_delete,
            "exchange.bind": self._exchange_bind,
            "exchange.unbind": self._exchange_unbind,
            "queue.declare": self._queue_declare,
            "queue.bind": self._queue_bind,
            "queue.unbind": self._queue_unbind,
            "queue.purge": self._queue_purge,
            "queue.delete": self._queue_delete,
            "basic.qos": self._basic_qos,
            "basic.consume": self._basic_consume,
            "basic.cancel": self._basic_cancel,
            "basic.get": self._basic_get,
            "basic.ack": self._basic_ack,
            "basic.reject": self._basic_reject,
            "basic.nack": self._basic_nack,
            "basic.recover-async": self._basic_recover_async,
            "basic.recover": self._basic_recover,
            "confirm.select": self._confirm_select,
            "tx.select": self._tx_select,
            "tx.commit": self._tx_commit,
            "tx.rollback": self._tx_rollback,
        }

    @property
    def vhost(self) -> str:
        return self.conn.vhost

    @property
    def user(self) -> str:
        return self.conn.user

    def next_tag(self) -> int:
        self.delivery_tag += 1
        return self.delivery_tag

    def send_method(self, method: Any) -> None:
        self.conn.send(render.method_frame(self.number, method))

    # -- dispatch -----------------------------------------------------------------------------

    def handle_method(self, method: Any) -> None:
        if self.parked is not None:
            self.parked.append(("m", (method,)))
            return
        handler = self._handlers.get(method.NAME)
        if handler is None:
            raise ConnectionError091(
                COMMAND_INVALID,
                f"method {method.NAME} is not valid from a client on a channel",
                method.CLASS_ID,
                method.METHOD_ID,
            )
        try:
            handler(method)
        except MetadataError as e:
            raise ChannelError(e.code, e.text, method.CLASS_ID, method.METHOD_ID)
        except ChannelError as e:
            if e.code == NOT_FOUND and self._retry_when_caught_up(method):
                return
            if not e.class_id:
                e.class_id, e.method_id = method.CLASS_ID, method.METHOD_ID
            raise
        except ConnectionError091 as e:
            if not e.class_id:
                e.class_id, e.method_id = method.CLASS_ID, method.METHOD_ID
            raise

    def _retry_when_caught_up(self, method: Any) -> bool:
        """A 404 from a lookup may be a name another node created a moment ago (Broker.caught_up):
        run the method once more when this node has applied what was committed before it. The
        lookups come before any effect, so running it again is the same as running it once."""
        return self.rerun_when_caught_up(lambda: self.handle_method(method), method)

    def rerun_when_caught_up(self, rerun: Callable[[], None], method: Any) -> bool:
        """Park this channel until the node caught up with the cluster's metadata, then `rerun`
        (once: a 404 raised by the rerun is the answer). False when there is nothing to wait for."""
        if self._retrying:
            return False
        fut = self.broker.caught_up()
        if fut is None:
            return False

        def again(_: Any) -> None:
            self._retrying = True
            try:
                rerun()
            finally:
                self._retrying = False

        self._await(fut, again, method)
        return True

    def _ignore(self, m: Any) -> None:
        return None

    def _await(self, fut: asyncio.Future, then: Callable[[Any], None], method: Any) -> None:
        """Continue with `then(result)` once `fut` resolves, keeping later frames in order."""
        if fut.done():
            then(_result(fut))
            return
        self.parked = deque()

        def resume(f: asyncio.Future) -> None:
            parked, self.parked = self.parked, None
            if self.closing or not self.is_open:
                return
            try:
                try:
                    then(_result(f))
                except MetadataError as e:
                    raise ChannelError(e.code, e.text, method.CLASS_ID, method.METHOD_ID)
                while parked and self.parked is None and self.is_open and not self.closing:
                    kind, args = parked.popleft()
                    if kind == "m":
                        self.handle_method(*args)
                    else:
                        self.publish(*args)
                if parked and self.parked is not None:
                    self.parked.extendleft(reversed(parked))
            except (ChannelError, ConnectionError091) as e:
                self.conn.protocol_error(self.number, e)
            self.conn.flush_soon()

        fut.add_done_callback(resume)

    # -- channel ------------------------------------------------------------------------------

    def _flow(self, m: spec.ChannelFlow) -> None:  # type: ignore[name-defined]
        self.active = m.active
        self.send_method(spec.ChannelFlowOk(active=m.active))
        if m.active:
            self.kick_consumers()

    # -- queue lookup (declarations and consumers both use these) -----------------------------

    def _queue_name(self, name: str) -> str:
        # An empty queue name means the last queue declared on this channel, as the spec says.
        if not name:
            if not self.last_queue:
                raise ChannelError(NOT_FOUND, "no previously declared queue")
            return self.last_queue
        return name

    def _check_exclusive(self, qdef: Any) -> None:
        if qdef.exclusive_owner is not None and qdef.exclusive_owner != self.conn.id:
            raise ChannelError(
                RESOURCE_LOCKED,
                f"cannot obtain exclusive access to locked queue '{qdef.name}' in vhost '{qdef.vhost}'. "
                "It could be originally declared on another connection or the exclusive property value "
                "does not match that of the original declaration.",
            )

    def _existing_queue(self, name: str) -> QueueHandle:
        qdef = self.broker.state.queue(self.vhost, name)
        q = self.broker.queue(self.vhost, name)
        if qdef is None or q is None:
            raise ChannelError(NOT_FOUND, f"no queue '{name}' in vhost '{self.vhost}'")
        self._check_exclusive(qdef)
        return q

    # -- replies and teardown -----------------------------------------------------------------

    def _reply(self, nowait: bool, method: Any) -> None:
        if not nowait:
            self.send_method(method)

    def teardown(self) -> None:
        """The channel is gone (closed either way, or its connection was lost)."""
        self.is_open = False
        self.parked = None
        self.tx = None
        consumers = list(self.consumers.values())
        self.consumers.clear()
        for c in consumers:
            c.queue.unsubscribe(c)
        self.release_all()
        self.ack_marks.clear()
        self.conn.confirm_dirty.discard(self)
        self.pending.clear()
        self.watching = False
        if self.broker.store is not None:
            self.broker.store.watchers.discard(self)


def _result(fut: asyncio.Future) -> Any:
    exc = fut.exception()
    if exc is not None:
        raise exc
    return fut.result()
